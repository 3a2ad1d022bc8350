"""Wakeword stage: openWakeWord-compatible detection for many streams through one batched front end.

Data path per stream: 16 kHz ring -> 80 ms steps (1280 samples) -> a :class:`StepRequest` carrying
the stream's histories -> the flavour's :class:`BatchScheduler` (one engine pass for every waiting
stream) -> new histories + per-head scores -> threshold / patience / refractory -> ``wakeword`` events.

One request per stream and flavour is in flight at a time; steps that arrive meanwhile are
**coalesced** into the next request (the budget policy: nothing is skipped, late work is merged and
reported with a ``budget`` event). Budget: ``budget_ms`` from the arrival of a step's audio to its
scores (default 200 ms).

Warm-up (no blind start): the front end's histories start as a stream that has heard digital silence
(``WakewordFrontEnd.initial_state``). A head trained on that padding (``warmup_steps`` in its .json; the
heads ``voxserve-wakeword train`` makes: step 4, 0.32 s) is scored from that step on, so a phrase said as a
stream opens is found; other heads are scored only once all N of their embeddings come from the stream's own
audio (step N + 9: 2.0 s for N = 16), since they were trained on real audio only and score the padding
unpredictably.

VAD gating: with ``gating`` on, steps are computed only while the VAD hears speech (and for
``gate_hangover_ms`` after). When speech starts, the last 9 + N steps (N = the longest head input of
the stream: 2.0 s for 16-embedding heads) are computed first, which rebuilds the acoustic state (mel
history or incremental-embedding caches: both depend only on the last 76 mel frames) and the embedding
history exactly as if nothing had been skipped, so every score
inside and around speech is identical to ungated detection; only steps in long silence are not scored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from pathlib import Path

import numpy as np

from ..protocol.options import Option, PipelineSchema
from ..scheduler import RUN_LATE, BatchScheduler, StageFailed
from ..session import latency
from ..vad import VadEvent
from .base import Stage, StageStream, StreamContext, with_test_delay
from .wakeword_model import MEL_WINDOW, STEP, Head, HeadError, StepRequest, WakewordFrontEnd

log = logging.getLogger("voxserve.wakeword")

MAX_BACKFILL_STEPS = 34      # rebuilds 68 mel frames (9 steps) + 25 embeddings (the longest heads)
MAX_STEPS_PER_REQUEST = 64

DETECTION_OPTIONS = (
    Option("threshold", float, None, "score at or above which a step counts; null (the default): each head's "
           "calibrated threshold from its .json (0.5 for heads without one)", min=0.0, max=1.0),
    Option("patience", int, None, "consecutive 80 ms steps at or above threshold before firing; null (the "
           "default): each head's calibrated patience from its .json (1 for heads without one)", min=1, max=50),
    Option("refractory_ms", int, 2000, "after firing, the same head stays quiet this long", min=0, max=60000),
)

WAKEWORD_SCHEMA = PipelineSchema(
    "wakeword",
    (
        Option("models", list, [], "wakeword heads to run (names from /v1/info); empty = all loaded"),
        *DETECTION_OPTIONS,
        Option("heads", dict, {}, "per-head overrides of threshold / patience / refractory_ms, e.g. "
               '{"hey_jarvis": {"threshold": 0.6}}; an update replaces the whole map', fields=DETECTION_OPTIONS),
        Option("gating", bool, True, "skip the front end during long silence (VAD-gated; events unchanged)"),
        Option("gate_hangover_ms", int, 1000, "keep scoring this long after speech ends", min=0, max=10000),
        Option("budget_ms", float, 200.0, "latency budget from audio arrival to scores", min=10.0, max=10000.0),
    ),
    doc="openWakeWord-compatible wakeword detection (shared front end, one head per wake word)",
    requires=("vad",),
)


def default_model_dir() -> Path:
    import voxserve.models as m

    return Path(m.__file__).parent / "wakeword"


def discover_heads(paths: list[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            out += sorted(p.glob("*.onnx"))
        elif p.exists():
            out.append(p)
        else:
            raise HeadError(f"wakeword model path {p} does not exist")
    return out


class WakewordStage(Stage):
    name = "wakeword"
    schema = WAKEWORD_SCHEMA

    def __init__(self, settings, metrics, admission=None):
        self.settings = settings
        self.metrics = metrics
        self.admission = admission
        paths = [default_model_dir()] if default_model_dir().is_dir() else []
        paths += [p for p in settings.wakeword_models.split(",") if p.strip()]
        heads: dict[str, Head] = {}
        for path in discover_heads(paths):
            head = Head.load(path)
            if head.name in heads:
                raise HeadError(f"two wakeword heads are named {head.name!r}: {heads[head.name].path} and {path}")
            heads[head.name] = head
        if not heads:
            raise HeadError("no wakeword heads found: ship models in voxserve/models/wakeword or pass "
                            "--wakeword-models PATH")
        self.heads = heads
        opts = tuple(dataclasses.replace(o, choices=tuple(sorted(heads))) if o.name in ("models", "heads") else o
                     for o in WAKEWORD_SCHEMA.options)
        self.schema = dataclasses.replace(WAKEWORD_SCHEMA, options=opts)   # per instance: the loaded heads
        self.frontends: dict[str, WakewordFrontEnd] = {}
        self.schedulers: dict[str, BatchScheduler] = {}
        for flavour in sorted({h.flavour for h in heads.values()}):
            fe = WakewordFrontEnd(flavour, {n: h for n, h in heads.items() if h.flavour == flavour},
                                  settings.engine, settings.intra_op_threads, settings.wakeword_incremental)
            self.frontends[flavour] = fe
            run = with_test_delay(fe.run_batch, settings, f"wakeword-{flavour}")
            self.schedulers[flavour] = BatchScheduler(f"wakeword-{flavour}", run, max_batch=settings.max_batch,
                                                      max_wait_s=settings.max_wait_ms / 1000.0, metrics=metrics,
                                  timeout_s=settings.engine_timeout_s,
                                  runtime=getattr(admission, "runtime", None))
        log.info("wakeword heads loaded", extra={"heads": {n: f"{h.flavour}/N={h.n_embeddings}"
                                                           for n, h in heads.items()}})

    async def start(self) -> None:
        for flavour, sched in self.schedulers.items():
            sched.start()
            fe = self.frontends[flavour]
            acoustic, emb = fe.initial_state()
            req = StepRequest(np.zeros((1, MEL_WINDOW), np.float32), acoustic, emb, tuple(fe.heads), np.ones(1, bool))
            for n in (1, 4, 16):                           # warm the engines at a few batch sizes
                await asyncio.gather(*[sched.submit(req, deadline=time.perf_counter() + 10) for _ in range(n)])

    async def stop(self) -> None:
        for sched in self.schedulers.values():
            await sched.stop()

    def describe(self) -> dict:
        d = self.schema.describe()
        # The heads (a few thousand weights each) run on ONNX Runtime CPU whatever --engine says; the front
        # end (mel + embedding, the costly part) runs on the configured engine.
        d["models"] = {n: {"features": h.flavour, "embeddings": h.n_embeddings, "threshold": h.threshold,
                           "patience": h.patience,
                           "file": h.path.name, "engine": "onnxruntime-cpu"}
                       for n, h in self.heads.items()}
        return d

    def open(self, ctx: StreamContext, options: dict) -> "WakewordStream":
        wanted = options.get("models") or list(self.heads)      # validated against the loaded heads
        return WakewordStream(self, ctx, options, wanted)



class _FlavourState:
    def __init__(self, frontend: WakewordFrontEnd, heads: list[str]):
        self.frontend = frontend
        self.heads = tuple(heads)
        self.acoustic, self.emb_hist = frontend.initial_state()
        self.computed = 0              # steps computed so far (step s covers [STEP*(s-1), STEP*s))
        self.inflight: asyncio.Future | None = None
        self.gated_out = False         # steps were skipped by VAD gating since the last computed one
        self.next_step = 1             # the next step to decide (compute or skip)
        self.max_n = max(frontend.heads[h].n_embeddings for h in heads)
        self.backfill = 9 + self.max_n            # steps that rebuild both histories for these heads


class WakewordStream(StageStream):
    def __init__(self, stage: WakewordStage, ctx: StreamContext, options: dict, heads: list[str]):
        self.stage = stage
        self.ctx = ctx
        self.opts = dict(options)
        by_flavour: dict[str, list[str]] = {}
        for h in heads:
            by_flavour.setdefault(stage.heads[h].flavour, []).append(h)
        self.flavours = {f: _FlavourState(stage.frontends[f], hs) for f, hs in by_flavour.items()}
        self.ready = 0                                  # complete steps available in the ring
        self.arrivals: deque[tuple[int, float]] = deque()   # (step, arrival time of its last sample)
        self.segments: list[list] = []                  # VAD speech segments [start, end|None], 16 kHz
        self.final = False                              # flush/stop: decide every step with what is known
        self.speech_start = 0
        self.streak = {h: 0 for h in heads}
        self.last_fire: dict[str, int] = {}
        self.closed = False
        self.last_budget_event = 0.0
        self.steps_computed = 0
        self.steps_skipped = 0

    # -- inputs --------------------------------------------------------------------------------------
    def on_update(self, options: dict) -> None:
        self.opts.update(options)

    def on_audio(self, end: int, vad_events: list[VadEvent]) -> None:
        for ev in vad_events:
            if ev.kind == "speech_start":
                self.segments.append([ev.start, None])
                self.speech_start = ev.start
            elif self.segments:
                self.segments[-1][1] = ev.end
        ready = end // STEP
        if ready > self.ready:
            now = self.ctx.clock()
            for s in range(self.ready + 1, ready + 1):
                self.arrivals.append((s, now))
            self.ready = ready
        self._schedule()

    # -- scheduling ----------------------------------------------------------------------------------
    def _wanted(self, step: int) -> bool | None:
        """Gating decision for a step: True (compute), False (skip) or None (not known yet).

        A step is wanted when its end lies in a VAD speech segment or within ``gate_hangover_ms``
        after one. It is skipped only once the VAD has analysed far enough past it that a segment
        starting there would already be known; so the decision never depends on timing.
        """
        if not self.opts["gating"]:
            return True
        e = step * STEP
        hang = self.opts["gate_hangover_ms"] * 16
        while len(self.segments) > 1 and self.segments[0][1] is not None and self.segments[0][1] + hang < e - STEP:
            self.segments.pop(0)
        for start, end in self.segments:
            if start <= e and (end is None or e <= end + hang):
                return True
        vad = self.ctx.vad
        if vad is None:
            return True
        if self.final:                     # no more audio will come: what the VAD knows is final
            return False
        known_until = vad.position - vad.min_speech - vad.frame_len - 64
        return False if e <= known_until else None

    def _schedule(self) -> None:
        if self.closed:
            return
        for flavour, st in self.flavours.items():
            if st.inflight is not None:
                continue
            while st.next_step <= self.ready:               # decide steps in order; skip unwanted ones
                w = self._wanted(st.next_step)
                if w is None:
                    break
                if w:
                    break
                st.next_step += 1
                st.gated_out = True
                self.steps_skipped += 1
            if st.next_step > self.ready or self._wanted(st.next_step) is not True:
                continue
            first = wanted = st.next_step                   # back-filled steps before it are not late work
            fresh_from = None
            if st.gated_out:                                 # histories are stale: rebuild them first
                st.gated_out = False
                first = max(st.computed + 1, st.next_step - st.backfill + 1)
                if first > st.computed + 1:
                    fresh_from = first
            last = st.next_step
            while last < self.ready and last - first + 1 < MAX_STEPS_PER_REQUEST and self._wanted(last + 1):
                last += 1
            st.next_step = last + 1
            k = last - first + 1
            audio = np.stack([self.ctx.ring.read(s * STEP - MEL_WINDOW, s * STEP) for s in range(first, last + 1)])
            mask = np.ones(k, bool)
            if fresh_from is not None:
                mask[: min(k, 8 + st.max_n)] = False             # scores need a rebuilt history
            arrival = self._arrival(wanted)
            deadline = arrival + self.opts["budget_ms"] / 1000.0
            req = StepRequest(audio, st.acoustic, st.emb_hist, st.heads, mask)
            fut = self.stage.schedulers[flavour].submit(req, deadline=deadline, policy=RUN_LATE, weight=k,
                                                        owner=self.ctx.session_id)
            st.inflight = fut
            fut.add_done_callback(lambda f, fl=flavour, a=first, b=last, w=wanted: self._done(fl, a, b, w, f))

    def _arrival(self, step: int) -> float:
        while self.arrivals and self.arrivals[0][0] < step - MAX_BACKFILL_STEPS - MAX_STEPS_PER_REQUEST:
            self.arrivals.popleft()
        for s, t in self.arrivals:
            if s >= step:
                return t
        return self.ctx.clock()

    def _done(self, flavour: str, first: int, last: int, wanted: int, fut: asyncio.Future) -> None:
        """Results of steps ``first..last``; the budget runs from the arrival of step ``wanted`` (the first
        step asked for; earlier ones are VAD-gating back-fill, computed late on purpose)."""
        st = self.flavours[flavour]
        st.inflight = None
        if self.closed or fut.cancelled():
            return
        try:
            outcome = fut.result()
        except StageFailed as exc:
            st.computed = last               # do not retry the same audio forever
            self.ctx.emit({"type": "error", "code": "stage_failed", "message": f"wakeword: {exc}", "fatal": False,
                           "fault": "server"}, False)
            self._schedule()
            return
        res = outcome.value
        st.acoustic, st.emb_hist = res.acoustic, res.emb_hist
        st.computed = last
        k = last - first + 1
        self.steps_computed += k
        now = self.ctx.clock()
        arrival_last = self._arrival(last)
        total = now - self._arrival(wanted)
        m = self.stage.metrics
        m.stage_latency.labels("wakeword").observe(now - arrival_last)
        m.stage_queue.labels("wakeword").observe(outcome.queue_s)
        if self.stage.admission is not None and outcome.batch_size:
            self.stage.admission.cost_model("wakeword").observe(outcome.marginal_s, k * 0.08)
        for name, scores in res.scores.items():
            self._detect(name, first, scores, outcome, arrival_last, now)
        budget = self.opts["budget_ms"] / 1000.0
        if total > budget and k > 0:
            behind = self.ready - st.computed
            action = "coalesce" if behind > 1 else "late"
            self.stage.budget_missed("wakeword", action, owner=self.ctx.session_id)
            if now - self.last_budget_event > 1.0:
                self.last_budget_event = now
                self.ctx.emit({"type": "budget", "stage": "wakeword", "budget_ms": round(budget * 1000, 1),
                               "observed_ms": round(total * 1000, 1), "action": action,
                               "steps_behind": behind}, True)
        self._schedule()

    def _detect(self, name: str, first: int, scores: np.ndarray, outcome, arrival: float, now: float) -> None:
        o = {**self.opts, **self.opts["heads"].get(name, {})}          # the stream's options, then this head's
        head = self.stage.heads[name]
        if o["threshold"] is None:                                      # neither set: the head's calibrated one
            o["threshold"] = head.threshold
        if o["patience"] is None:
            o["patience"] = head.patience
        warmup = head.warmup_steps           # see "Warm-up" above
        for j, score in enumerate(scores):
            step = first + j
            if np.isnan(score) or step < warmup:
                self.streak[name] = 0
                continue
            if score >= o["threshold"]:
                self.streak[name] += 1
            else:
                self.streak[name] = 0
                continue
            if self.streak[name] < o["patience"]:
                continue
            end = step * STEP
            last = self.last_fire.get(name)
            if last is not None and end - last < o["refractory_ms"] * 16:
                continue
            self.last_fire[name] = end
            span = head.n_embeddings * STEP + 76 * 160
            start = max(end - span, self.speech_start if self.speech_start <= end else end - span, 0)
            ev = {"type": "wakeword", "stage": "wakeword", "name": name, "score": round(float(score), 4),
                  **self.ctx.position("start", start), **self.ctx.position("end", end),
                  "latency": latency(outcome.queue_s, outcome.compute_s, now - arrival)}
            ev.update(self._stream_position())
            self.ctx.emit(ev, False)

    def _stream_position(self) -> dict:
        # the newest audio received when the event is produced, as the session reports it
        pos = self.ctx.ring.end
        return {"stream_ms": round(pos / 16.0, 3), "stream_sample": int(round(pos * self.ctx.input_rate / 16000))}

    # -- ending --------------------------------------------------------------------------------------
    async def _drain(self) -> None:
        for _ in range(1000):
            pending = [st.inflight for st in self.flavours.values() if st.inflight is not None]
            if pending:
                await asyncio.wait(pending)
                await asyncio.sleep(0)
                continue
            self._schedule()
            if all(st.inflight is None for st in self.flavours.values()):
                return

    async def flush(self) -> None:
        self.final = True
        try:
            await self._drain()
        finally:
            self.final = False

    async def finish(self) -> None:
        self.final = True
        await self._drain()

    def close(self) -> None:
        self.closed = True
        for st in self.flavours.values():
            if st.inflight is not None and not st.inflight.done():
                st.inflight.cancel()
