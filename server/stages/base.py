"""Stage interfaces: shared stage objects and per-stream stage state."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Callable

from ..audio import RingBuffer
from ..protocol.options import PipelineSchema
from ..vad import VadEvent


@dataclass
class StreamContext:
    """What a stage's per-stream state may use. ``emit(event, droppable)`` queues an event for the
    client; ``position(prefix, sample16)`` renders a 16 kHz position as ``{prefix}_ms`` and
    ``{prefix}_sample`` (input-rate samples); ``ring`` holds the stream's 16 kHz audio."""

    session_id: str
    ring: RingBuffer
    emit: Callable[[dict, bool], None]
    position: Callable[[str, int], dict]
    input_rate: int
    output_rate: int
    pipelines: tuple[str, ...]
    clock: Callable[[], float]
    vad: object | None = None        # the stream's VadSegmenter (read-only for stages)
    ending: str | None = None        # "flush" or "stop" while the session ends an utterance or the stream
    backlogged: Callable[[], bool] = lambda: False   # the client is behind: lossless producers should wait


def with_test_delay(run_batch: Callable, settings) -> Callable:
    """``run_batch`` slowed by ``settings.engine_delay_ms`` (the overload-testing aid), or unchanged."""
    delay = getattr(settings, "engine_delay_s", 0.0)
    if not delay:
        return run_batch

    def slowed(items):
        time.sleep(delay)
        return run_batch(items)
    return slowed


class StageStream(abc.ABC):
    """Per-stream state of one stage. Called on the event loop; must not block it."""

    def on_audio(self, end: int, vad_events: list[VadEvent]) -> None:
        """New 16 kHz audio is in the ring up to absolute index ``end``."""

    def on_update(self, options: dict) -> None:
        """Options changed mid-stream (already validated)."""

    def on_event(self, event: dict) -> None:
        """An event emitted by another stage of the same stream (e.g. wakeword for wake-gated ASR)."""

    def on_drained(self) -> None:
        """The client caught up (``ctx.backlogged()`` turned false): resume work paused for it."""

    def lag_s(self) -> float:
        """Seconds of received audio this stage still has to process and must not lose (the server stops
        reading the stream's input while this is large, so the ring never overwrites pending work)."""
        return 0.0

    async def flush(self) -> None:
        """End of utterance now: emit finals for buffered work."""

    async def finish(self) -> None:
        """End of stream: emit every final, then stop background work."""

    def close(self) -> None:
        """Abrupt end (disconnect, fatal error): cancel background work, release state."""


class Stage(abc.ABC):
    """A pipeline shared by every stream: owns models and schedulers, never per-stream state."""

    name: str
    schema: PipelineSchema

    @abc.abstractmethod
    def open(self, ctx: StreamContext, options: dict) -> StageStream: ...

    async def start(self) -> None:
        """Load and warm models (called once, before the server reports ready)."""

    async def stop(self) -> None:
        """Release models and executors."""

    def describe(self) -> dict:
        return self.schema.describe()
