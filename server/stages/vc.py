"""Voice-conversion stage: the caller's voice streamed back pitch- (and formant-) shifted.

Data path per stream: 16 kHz ring -> blocks of 256 samples (16 ms) on an absolute grid -> two
512-sample analysis frames per block (read from the ring, so no audio state lives in the model) +
the stream's vocoder state -> the shared :class:`BatchScheduler` (one ONNX call for every waiting
stream) -> 256 new samples -> trimmed of the model's 24 ms start-up -> resampled to the stream's
output rate -> ``audio`` events (s16le PCM, sequence numbers, input-aligned positions).

Output sample ``m`` (at the output rate) is the conversion of input time ``m / output_rate``: the
model's 384-sample delay is removed at the start and flushed with silence at the end, so the
returned audio lines up with the input and has the same length. Algorithmic latency: 24 ms (the
analysis frame) + up to 16 ms (block) ; the server adds its queueing and compute (``latency``).

Budget policy (``budget_ms``, default 40): a block whose deadline has passed before it could be
sent to the engine is **passed through unconverted** (the input, delayed like converted audio) and
flagged ``converted: false``, so a late stream never falls further behind; a ``budget`` event says so.
Blocks depend on the previous block's state, so one block per stream is in flight at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np

from voxserve.engines.base import run_items
from voxserve.engines.factory import create_engine

from ..audio import StreamResampler
from ..protocol.options import Option, PipelineSchema
from ..scheduler import RUN_LATE, BatchScheduler, StageFailed
from ..session import latency
from ..vad import VadEvent
from .base import Stage, StageStream, StreamContext, with_test_delay

log = logging.getLogger("voxserve.vc")

N_FFT, HOP, K = 512, 128, 2
BLOCK = HOP * K
DELAY = N_FFT - HOP                     # 384 samples: output lags input by this much inside the model

VC_SCHEMA = PipelineSchema(
    "vc",
    (
        Option("semitones", float, 4.0, "pitch shift in semitones (fractional allowed)", min=-12.0, max=12.0),
        Option("formant", float, 0.0, "formant shift in semitones, independent of pitch (0 keeps the voice's "
                                      "formants)", min=-12.0, max=12.0),
        Option("gain_db", float, 0.0, "output gain in dB", min=-40.0, max=20.0),
        Option("budget_ms", float, 40.0, "latency budget per block: a late block is reported (budget event); "
                                         "with delivery=realtime it passes through unconverted", min=5.0, max=5000.0),
        Option("delivery", str, "lossless", "lossless: every block converted and delivered (a slow reader gets "
                                            "backpressure); realtime: for live playback, late blocks pass through "
                                            "unconverted and stale ones may be dropped for a slow reader (audio "
                                            "events then carry the count in 'dropped')",
               choices=("lossless", "realtime"), updatable=False),
    ),
    doc="pitch-shifted voice conversion, streamed back as audio events",
)


def model_path() -> Path:
    import voxserve.models as m

    return Path(m.__file__).parent / "vc" / "pitch_shift.onnx"


class VcStage(Stage):
    name = "vc"
    schema = VC_SCHEMA
    # 16 ms blocks with a 40 ms budget: their tail grows with the whole machine's load long before the
    # default 0.8 (measured on 2 cores under mixed load: VC p99 177-1189 ms at 0.8, 72-172 ms at 0.6,
    # budget events about six-fold fewer; still over 40 ms there: RESULTS "Admission: VC's headroom")
    machine_target = 0.6

    def __init__(self, settings, metrics, admission=None):
        self.settings = settings
        self.metrics = metrics
        self.admission = admission
        path = model_path()
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: run `python -m voxserve.models.pitch_shift` to export it")
        self.engine = create_engine(path, settings.engine, intra_op_threads=settings.intra_op_threads,
                                    max_batch=settings.max_batch, name="pitch_shift")
        run = with_test_delay(self._run, settings, "vc")
        self.schedulers = {"vc": BatchScheduler("vc", run, max_batch=max(settings.max_batch, 64),
                                                max_wait_s=settings.max_wait_ms / 1000.0, metrics=metrics,
                                  timeout_s=settings.engine_timeout_s,
                                  runtime=getattr(admission, "runtime", None))}

    def _run(self, items: list[dict]) -> list:
        """One batched call through :func:`run_items` (the path the engine contract suite checks): an
        item that does not fit the engine's inputs fails alone (its slot holds the EngineError)."""
        return run_items(self.engine, items)

    async def start(self) -> None:
        sched = self.schedulers["vc"]
        sched.start()
        for n in (1, 8, 32):
            await asyncio.gather(*[sched.submit(_initial_request(4.0, 0.0, 0.0), deadline=time.perf_counter() + 10)
                                   for _ in range(n)])

    async def stop(self) -> None:
        await self.schedulers["vc"].stop()

    def describe(self) -> dict:
        d = self.schema.describe()
        d["models"] = {"pitch_shift": {"engine": self.engine.describe()["detail"], "algorithmic_latency_ms": 24.0,
                                       "block_ms": BLOCK / 16}}
        return d

    def open(self, ctx: StreamContext, options: dict) -> "VcStream":
        return VcStream(self, ctx, options)


def _initial_request(semitones: float, formant: float, gain_db: float) -> dict:
    return {"frames": np.zeros((K, N_FFT), np.float32), "semitones": np.array([semitones], np.float32),
            "formant": np.array([formant], np.float32), "gain_db": np.array([gain_db], np.float32),
            "prev_phase": np.zeros(N_FFT // 2 + 1, np.float32), "synth_phase": np.zeros(N_FFT // 2 + 1, np.float32),
            "ola": np.zeros(DELAY, np.float32), "prev_gain": np.ones(1, np.float32)}


class VcStream(StageStream):
    def __init__(self, stage: VcStage, ctx: StreamContext, options: dict):
        self.stage = stage
        self.ctx = ctx
        self.opts = dict(options)
        init = _initial_request(0, 0, 0)
        self.state = {k: init[k] for k in ("prev_phase", "synth_phase", "ola", "prev_gain")}
        self.next_block = 0                     # blocks done; block b covers input [b*BLOCK, (b+1)*BLOCK)
        self.inflight: asyncio.Future | None = None
        self.arrivals: dict[int, float] = {}
        self.known_blocks = 0
        self.out_resampler = StreamResampler(16000, ctx.output_rate)
        self.trim = DELAY                       # model output samples still to drop (start-up delay)
        self.out_total = 0                      # samples emitted at the output rate
        self.model_out = 0                      # 16 kHz samples of input-aligned output produced
        self.seq = 0
        self.limit: int | None = None           # at the end: total 16 kHz samples to return
        self.closed = False
        self.last_budget_event = 0.0
        self.pending_updates: list[tuple[int, dict]] = []     # (16 kHz input position, options) not yet in force

    def on_update(self, options: dict) -> None:
        """Options take effect at the stream position where the update arrived: blocks of earlier audio
        not yet converted (a client sending faster than real time) keep the options they were sent with."""
        self.pending_updates.append((self.ctx.ring.end, dict(options)))
        self._apply_updates(self.next_block)

    def _apply_updates(self, block: int) -> None:
        while self.pending_updates and self.pending_updates[0][0] <= block * BLOCK:
            self.opts.update(self.pending_updates.pop(0)[1])

    def on_audio(self, end: int, vad_events: list[VadEvent]) -> None:
        now = self.ctx.clock()
        for b in range(self.known_blocks, end // BLOCK):
            self.arrivals[b] = now                # when the block's last sample arrived
        self.known_blocks = max(self.known_blocks, end // BLOCK)
        self._schedule()

    def _ready_blocks(self) -> int:
        if self.limit is not None:                            # flushing: zero-padded blocks up to the end
            return -(-(self.limit + DELAY) // BLOCK)
        return self.ctx.ring.end // BLOCK

    def on_drained(self) -> None:
        self._schedule()

    def lag_s(self) -> float:
        if self.realtime:
            return 0.0                     # late blocks pass through at once: nothing piles up
        return max(0, self.ctx.ring.end - self.next_block * BLOCK) / 16000.0

    def _paused(self) -> bool:
        """Lossless delivery: convert no further ahead while the client is behind (it resumes on_drained)."""
        return not self.realtime and self.ctx.backlogged()

    def _schedule(self) -> None:
        while not self.closed and self.inflight is None and self.next_block < self._ready_blocks() \
                and not self._paused():
            b = self.next_block
            self._apply_updates(b)
            arrival = self.arrivals.get(b, self.ctx.clock())
            deadline = arrival + self.opts["budget_ms"] / 1000.0
            block_end = (b + 1) * BLOCK
            frames = np.stack([self._read(block_end - (K - 1 - i) * HOP - N_FFT, block_end - (K - 1 - i) * HOP)
                               for i in range(K)])
            if self.limit is None and self.ctx.clock() > deadline:
                if self.realtime:
                    self._passthrough(b, arrival)             # too late to convert: keep real time
                    continue
                self._report_late(arrival)                    # lossless: convert it anyway, say it is late
            req = {"frames": frames, "semitones": np.array([self.opts["semitones"]], np.float32),
                   "formant": np.array([self.opts["formant"]], np.float32),
                   "gain_db": np.array([self.opts["gain_db"]], np.float32), **self.state}
            fut = self.stage.schedulers["vc"].submit(req, deadline=deadline, policy=RUN_LATE,
                                                     owner=self.ctx.session_id)
            self.inflight = fut
            fut.add_done_callback(lambda f, blk=b, t=arrival: self._done(blk, t, f))

    def _read(self, start: int, stop: int) -> np.ndarray:
        ring = self.ctx.ring
        if stop <= ring.end:
            return ring.read(start, stop)
        avail = max(start, min(stop, ring.end))
        part = ring.read(start, avail) if avail > start else np.zeros(0, np.float32)
        return np.concatenate([part, np.zeros(stop - start - part.shape[0], np.float32)])   # end of stream

    @property
    def realtime(self) -> bool:
        return self.opts.get("delivery") == "realtime"

    def _report_late(self, arrival: float) -> None:
        now = self.ctx.clock()
        self.stage.budget_missed("vc", "late", owner=self.ctx.session_id)
        if now - self.last_budget_event > 1.0:
            self.last_budget_event = now
            self.ctx.emit({"type": "budget", "stage": "vc", "budget_ms": self.opts["budget_ms"],
                           "observed_ms": round((now - arrival) * 1000, 1), "action": "late"}, True)

    def _passthrough(self, b: int, arrival: float) -> None:
        block_end = (b + 1) * BLOCK
        raw = self._read(block_end - BLOCK - DELAY, block_end - DELAY)     # the input this block's output covers
        gain = 10 ** (self.opts["gain_db"] / 20)
        self.arrivals.pop(b, None)
        self.next_block = b + 1
        now = self.ctx.clock()
        self.stage.budget_missed("vc", "passthrough", owner=self.ctx.session_id)
        if now - self.last_budget_event > 1.0:
            self.last_budget_event = now
            self.ctx.emit({"type": "budget", "stage": "vc", "budget_ms": self.opts["budget_ms"],
                           "observed_ms": round((now - arrival) * 1000, 1), "action": "passthrough"}, True)
        self._emit(raw * gain, converted=False, queue_s=now - arrival, compute_s=0.0, total_s=now - arrival)

    def _done(self, b: int, arrival: float, fut: asyncio.Future) -> None:
        self.inflight = None
        if self.closed or fut.cancelled():
            return
        try:
            out = fut.result()
        except StageFailed as exc:
            self.ctx.emit({"type": "error", "code": "stage_failed", "message": f"vc: {exc}", "fatal": False,
                           "fault": "server"}, False)
            self._passthrough(b, arrival)
            self._schedule()
            return
        res = out.value
        self.state = {"prev_phase": res["next_prev_phase"], "synth_phase": res["next_synth_phase"],
                      "ola": res["next_ola"], "prev_gain": res["next_prev_gain"]}
        self.arrivals.pop(b, None)
        self.next_block = b + 1
        now = self.ctx.clock()
        self.stage.metrics.stage_latency.labels("vc").observe(now - arrival)
        if self.stage.admission is not None and out.batch_size:
            self.stage.admission.cost_model("vc").observe(out.marginal_s, BLOCK / 16000)
        self._emit(res["audio"], converted=True, queue_s=out.queue_s, compute_s=out.compute_s, total_s=now - arrival)
        self._schedule()

    def _emit(self, audio: np.ndarray, *, converted: bool, queue_s: float, compute_s: float, total_s: float) -> None:
        if self.trim:
            cut = min(self.trim, audio.shape[0])
            audio = audio[cut:]
            self.trim -= cut
        if self.limit is not None:
            audio = audio[: max(0, self.limit - self.model_out)]
        self.model_out += audio.shape[0]
        y = self.out_resampler.process(audio.astype(np.float32)) if audio.size else np.zeros(0, np.float32)
        if self.limit is not None and self.model_out >= self.limit:
            y = np.concatenate([y, self.out_resampler.finish()])
        if not y.size:
            return
        rate = self.ctx.output_rate
        pcm = np.clip(np.round(y * 32767.0), -32768, 32767).astype("<i2").tobytes()
        start = self.out_total
        self.out_total += y.shape[0]
        ev = {"type": "audio", "stage": "vc", "seq": self.seq, "pcm": pcm, "sample_rate": rate,
              "encoding": "s16le", "converted": converted,
              "start_ms": round(start * 1000.0 / rate, 3), "end_ms": round(self.out_total * 1000.0 / rate, 3),
              "start_sample": int(round(start * self.ctx.input_rate / rate)),
              "end_sample": int(round(self.out_total * self.ctx.input_rate / rate)),
              "latency": latency(queue_s, compute_s, total_s)}
        pos = self.ctx.ring.end
        ev.update({"stream_ms": round(pos / 16.0, 3), "stream_sample": int(round(pos * self.ctx.input_rate / 16000))})
        self.seq += 1
        self.ctx.emit(ev, self.realtime)          # lossless blocks are never shed (and are replayed on resume)

    async def _drain(self) -> None:
        while not self.closed:
            if self.inflight is not None:
                await asyncio.wait([self.inflight])
                await asyncio.sleep(0)
                continue
            if self._paused() and self.next_block < self._ready_blocks():
                await asyncio.sleep(0.005)                   # the client is behind: wait for it
                continue
            self._schedule()
            if self.inflight is None:
                return

    async def flush(self) -> None:
        await self._drain()

    async def finish(self) -> None:
        """Convert every received sample: the model's delay is flushed with silence, output trimmed to the input's length."""
        self.limit = self.ctx.ring.end
        await self._drain()

    def close(self) -> None:
        self.closed = True
        if self.inflight is not None and not self.inflight.done():
            self.inflight.cancel()
