"""One stream's state: resampler, ring buffer, VAD, per-stream stage states and its outbox.

Data path per audio frame (on the event loop, budget ~0.1 ms for VAD streams):
``AudioIn`` (input rate, float32) -> :class:`StreamResampler` (16 kHz) -> :class:`RingBuffer`
-> :class:`VadSegmenter` -> ``vad`` events -> each stage's ``on_audio`` (which may schedule engine
work on the shared schedulers) -> events queued in the :class:`Outbox`.
Nothing here touches the socket; the app drains the outbox.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections import deque
from typing import Callable

from .audio import MODEL_RATE, RingBuffer, StreamResampler
from .metrics import Metrics
from .outbox import Outbox, SlowConsumer
from .protocol.connection import StreamConfig
from .protocol.messages import AudioIn
from .stages.base import Stage, StageStream, StreamContext
from .vad import VadEvent, VadSegmenter

# Event types that may be dropped for a slow reader (stale interim information only). Converted audio is
# droppable only when its stream asked for live delivery (vc.delivery=realtime): the stage says so per event.
DROPPABLE = frozenset({"transcript_interim", "budget"})


def latency(queue_s: float, compute_s: float, total_s: float) -> dict:
    """The per-result latency breakdown, in milliseconds."""
    return {"queue_ms": round(queue_s * 1000.0, 3), "compute_ms": round(compute_s * 1000.0, 3),
            "total_ms": round(total_s * 1000.0, 3)}


class Session:
    """Per-stream state. ``notify`` is called whenever the outbox gains an event; ``on_overflow`` once,
    when the client reads so slowly that the outbox passes its hard limit (events are then discarded)."""

    def __init__(self, config: StreamConfig, stages: dict[str, Stage], metrics: Metrics, *, ring_seconds: float,
                 outbox_soft: int, outbox_hard: int, notify: Callable[[], None] = lambda: None,
                 on_overflow: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.perf_counter, session_id: str | None = None):
        self.id = session_id or uuid.uuid4().hex
        self.principal = "anonymous"           # set by the server: who may resume this stream
        self.resume_token = secrets.token_urlsafe(24)
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.outbox = Outbox(outbox_soft, outbox_hard)
        self._notify = notify
        self._on_overflow = on_overflow
        self.overflowed = False
        self.next_eid = 0                  # every event gets an id; non-droppable ones are kept until acked
        self.retained: deque[tuple[int, dict]] = deque()
        self.dropped_by_type: dict[str, int] = {}      # stale events shed for a slow reader, by type
        self.retain_limit = 4 * outbox_hard
        self.conn = None                   # the ServerConnection that feeds this session (kept for resume)
        self.detached_at: float | None = None
        self.in_rate = config.audio.sample_rate
        self.resampler = StreamResampler(self.in_rate, MODEL_RATE)
        self.ring = RingBuffer(int(ring_seconds * MODEL_RATE))
        self.vad: VadSegmenter | None = None
        self.vad_events_on = False
        if "vad" in config.pipelines:
            self.vad = VadSegmenter(**config.options["vad"])
            self.vad_events_on = bool(config.options["vad"].get("events", True))
        self.segments: list[tuple[int, int | None]] = []   # speech segments, 16 kHz [start, end)
        self.ctx = ctx = StreamContext(self.id, self.ring, self.emit, self.position, self.in_rate, config.output_sample_rate,
                            config.pipelines, clock, self.vad, backlogged=lambda: self.outbox.backlogged)
        self.streams: dict[str, StageStream] = {}
        try:
            for name in config.pipelines:
                if name in stages:
                    self.streams[name] = stages[name].open(ctx, config.options[name])
        except Exception:
            for stream in self.streams.values():
                stream.close()
            raise
        self.received = 0          # input-rate samples received
        self.created = clock()
        self.closed = False

    # -- positions -----------------------------------------------------------------------------------
    def position(self, prefix: str, sample16: int) -> dict:
        """A 16 kHz position as ms and as an input-rate sample index."""
        return {f"{prefix}_ms": round(sample16 * 1000.0 / MODEL_RATE, 3),
                f"{prefix}_sample": int(round(sample16 * self.in_rate / MODEL_RATE))}

    # -- events --------------------------------------------------------------------------------------
    def emit(self, event: dict, droppable: bool | None = None) -> None:
        """Queue an event for the client; also shown to the other stages of this stream."""
        if droppable is None:
            droppable = event.get("type") in DROPPABLE
        event["eid"] = self.next_eid
        self.next_eid += 1
        if not droppable:
            self.retained.append((event["eid"], event))
            if len(self.retained) > self.retain_limit:
                self.retained.popleft()
        if self.overflowed:
            return
        try:
            dropped = self.outbox.put(event, droppable)
        except SlowConsumer:
            self.overflowed = True
            self._on_overflow()
            return
        if dropped is not None:
            kind = dropped.get("type", "?")
            self.dropped_by_type[kind] = self.dropped_by_type.get(kind, 0) + 1
            self.metrics.events_dropped.inc()
        if event.get("type") == "audio" and self.dropped_by_type.get("audio"):
            event["dropped"] = self.dropped_by_type["audio"]     # live audio: blocks shed so far (not yet sent)
        for name, stream in self.streams.items():
            if event.get("stage") != name:
                stream.on_event(event)
        self._notify()

    def lagging(self, limit_s: float) -> bool:
        """A stage has more than ``limit_s`` seconds of received audio still to process."""
        return any(stream.lag_s() > limit_s for stream in self.streams.values())

    def drained(self) -> None:
        """The writer took events off a backlogged outbox (called by the server): lossless producers that
        paused for the client may go on."""
        if self.outbox.kept <= self.outbox.soft // 2:
            for stream in self.streams.values():
                stream.on_drained()

    # -- resume --------------------------------------------------------------------------------------
    def ack(self, eid: int) -> None:
        """The client holds every event up to ``eid``: stop retaining them."""
        while self.retained and self.retained[0][0] <= eid:
            self.retained.popleft()

    def attach(self, notify: Callable[[], None], on_overflow: Callable[[], None], last_eid: int) -> list[dict]:
        """Bind to a new connection after a drop; return the retained events the client has not seen.
        Stale droppable events queued while detached (interims, converted audio) are discarded."""
        self._notify, self._on_overflow = notify, on_overflow
        self.detached_at = None
        self.overflowed = False
        self.outbox = Outbox(self.outbox.soft, self.outbox.hard)
        self.ack(last_eid)
        return [ev for eid, ev in self.retained if eid > last_eid]

    def detach(self, now: float) -> None:
        self._notify = lambda: None
        self._on_overflow = lambda: None
        self.detached_at = now

    # -- input ---------------------------------------------------------------------------------------
    def stream_position(self) -> dict:
        """How much audio had been received when an event was produced (input-rate samples and ms)."""
        return {"stream_ms": round(self.received * 1000.0 / self.in_rate, 3), "stream_sample": self.received}

    def on_audio(self, audio: AudioIn) -> None:
        self.received = audio.start + audio.samples.shape[0]
        x = self.resampler.process(audio.samples)
        self._ingest(x, audio.received_at)

    def _ingest(self, x, received_at: float) -> None:
        t0 = self.clock()
        self.ring.append(x)
        vad_events: list[VadEvent] = self.vad.process(x) if self.vad is not None and x.size else []
        t1 = self.clock()
        self._emit_vad(vad_events, received_at, t0, t1)
        for stream in self.streams.values():
            stream.on_audio(self.ring.end, vad_events)

    def _emit_vad(self, events: list[VadEvent], received_at: float, t0: float, t1: float) -> None:
        for ev in events:
            if ev.kind == "speech_start":
                self.segments.append((ev.start, None))
            elif self.segments:
                self.segments[-1] = (ev.start, ev.end)
            if len(self.segments) > 1000:
                del self.segments[:-1000]
            if not self.vad_events_on:
                continue
            out = {"type": "vad", "stage": "vad", "event": ev.kind, **self.position("start", ev.start)}
            if ev.end is not None:
                out.update(self.position("end", ev.end))
            out.update(self.position("decided", ev.decided_at))
            out.update(self.stream_position())
            total = self.clock() - received_at
            out["latency"] = latency(max(0.0, t0 - received_at), t1 - t0, total)
            self.metrics.stage_latency.labels("vad").observe(total)
            self.emit(out)

    def on_update(self, options: dict) -> None:
        if "vad" in options and self.vad is not None:
            self.vad.configure(**options["vad"])
            if "events" in options["vad"]:
                self.vad_events_on = bool(options["vad"]["events"])
        for name, opts in options.items():
            if name in self.streams:
                self.streams[name].on_update(opts)

    async def flush(self) -> None:
        """Force end of utterance: VAD closes its segment, stages emit their finals."""
        await self.begin_flush()

    def begin_flush(self):
        """End the utterance at the audio received so far, now: VAD closes its segment and each stage
        closes its utterance (synchronously, so audio that arrives later belongs to the next one). Returns
        the awaitable that delivers the finals; the reader need not wait for it."""
        now = self.clock()
        events = self.vad.flush() if self.vad is not None else []
        self._emit_vad(events, now, now, now)
        self.ctx.ending = "flush"
        try:
            for stream in self.streams.values():
                stream.on_audio(self.ring.end, events)
                stream.close_utterance()
        finally:
            self.ctx.ending = None
        return self._drain_flush()

    async def _drain_flush(self) -> None:
        for stream in list(self.streams.values()):
            await stream.flush()

    async def finish(self) -> None:
        """End of stream: drain the resampler tail, close segments, deliver all finals."""
        now = self.clock()
        tail = self.resampler.finish()
        if tail.size:
            self._ingest(tail, now)
        events = self.vad.finish() if self.vad is not None else []
        self._emit_vad(events, now, now, now)
        self.ctx.ending = "stop"
        for stream in self.streams.values():
            stream.on_audio(self.ring.end, events)
            await stream.finish()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in self.streams.values():
            stream.close()
        # Sessions sit in reference cycles (context -> bound emit -> session): free the big parts now
        # instead of at the cyclic collector's next full pass.
        self.ring.release()
        self.retained.clear()
        self.outbox = Outbox(self.outbox.soft, self.outbox.hard)
