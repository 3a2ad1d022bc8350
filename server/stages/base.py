"""Stage interfaces: shared stage objects and per-stream stage state."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Callable

from ..admission import TARGET_UTILISATION
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


class InjectedFault(RuntimeError):
    """Raised by an engine call that ``--inject-faults`` told to fail (testing aid)."""


def with_test_delay(run_batch: Callable, settings, model: str = "") -> Callable:
    """``run_batch`` with the testing aids applied: slowed by ``settings.engine_delay_ms``, and failing as
    ``settings.inject_faults`` says for ``model`` (every Nth batch raises, or the Nth batch hangs for an
    hour); unchanged when neither is set."""
    from ..settings import parse_faults

    delay = getattr(settings, "engine_delay_s", 0.0)
    fault = parse_faults(getattr(settings, "inject_faults", "") or "").get(model)
    if not delay and fault is None:
        return run_batch
    calls = [0]

    def wrapped(items):
        calls[0] += 1
        if delay:
            time.sleep(delay)
        if fault is not None:
            kind, n = fault
            if kind == "raise" and calls[0] % n == 0:
                raise InjectedFault(f"injected fault in batch {calls[0]} of {model}")
            if kind == "hang" and calls[0] == n:
                time.sleep(3600.0)
        return run_batch(items)
    return wrapped


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

    def close_utterance(self) -> None:
        """``flush``, synchronous part: end the current utterance at the audio received so far (called in
        message order; audio arriving afterwards starts the next utterance)."""

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
    #: the share of the machine's cores admission lets the engine load reach while this pipeline has
    #: streams open (the tightest among the open pipelines applies; see ``Admission.machine_target``)
    machine_target: float = TARGET_UTILISATION

    @abc.abstractmethod
    def open(self, ctx: StreamContext, options: dict) -> StageStream: ...

    async def start(self) -> None:
        """Load and warm models (called once, before the server reports ready)."""

    async def stop(self) -> None:
        """Release models and executors."""

    def describe(self) -> dict:
        return self.schema.describe()

    def budget_missed(self, label: str, action: str, *, holds_admission: bool = True,
                      owner: object = None) -> None:
        """A stream of this stage missed a latency budget: counted in the metrics (``label``, ``action``)
        and, unless the miss is shedding by design (``holds_admission=False``: a skipped ASR interim),
        reported to admission, which holds new engine streams while misses keep coming (``owner``: the
        stream's session id, so that misses of a stream that has ended stop counting)."""
        self.metrics.budget_violations.labels(label, action).inc()
        admission = getattr(self, "admission", None)
        if holds_admission and admission is not None:
            admission.missed(self.name, owner)
