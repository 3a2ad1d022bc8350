"""Streaming ASR stage: interim and final transcripts from a non-streaming recognizer (Moonshine).

Data path per stream: VAD ``speech_start`` opens a segment (with ``pre_roll_ms`` of audio before it)
-> while it is open, every ``interim_interval_ms`` of new audio the whole segment so far is decoded
(interim; budget policy **skip**: a stale interim is dropped, and one with the newer audio takes its place
at once; with ``interim_latest_audio`` each interim reads its audio when its decode starts instead) -> VAD
``speech_end``,
``flush``, ``stop`` or ``max_segment_s`` closes it -> the segment is decoded once more (final; policy
**run late**: finals are never dropped) -> ``transcript`` with a stable id.

Speculative finals: when the VAD has heard ``speculate_after_ms`` of silence inside a segment, the
final decode of the segment up to that point starts at once; if the VAD then closes the segment at
the same place, that result is the final, so the final arrives about one hangover earlier. If speech
goes on instead (a short pause inside running speech), that decode is shown as an interim of the
segment up to the pause, not dropped.

Interims after a pause: once a pause's decode has become an interim (speech went on), later interims of
the segment decode only the audio since that pause and are shown after its words (``interim_from_pause``).
An interim then costs what the audio since the segment's last pause costs, not the whole segment (the
encoder sees its whole input: most of an interim's time on a CPU). Finals always decode the whole
segment, so they are unchanged; measured in bench/RESULTS.md, "ASR: interims from the last pause".
With ``interim_anchor_s`` > 0 (off by default), speech that runs on without a pause gets such a point
about every ``interim_anchor_s`` of audio: that interim decodes the whole segment up to a quiet 100 ms in
the audio it adds (most likely between two words). Measured at 3 s on 12 streams of a 2-core VM: about
10 points fewer interims later than 600 ms, but final p95 about 50 ms later and the last interim's WER
about 4 points worse (seams), so it is not the default (RESULTS, "ASR: quiet-point anchors").

Stability: an interim's words that agreed with the previous interim become *stable* and are never
retracted by later interims (``stable_text``); the rest is ``unstable_text``. The final is the
recognizer's best full decode of the segment and may differ from the interims.

Long speech: once a segment holds ``split_at_pause_after_s`` (8 s), its next pause of 150 ms (shorter than
the VAD's hangover) ends it, with the decode started in that pause as its final (reason ``endpoint``), and
the speech after it is a new segment: users of dictation and captions get a final per phrase instead of
one per 20 s, and a final's decode stays short. Long speech without pauses is split at the quietest
100 ms of the segment's last 40 % once it reaches ``max_segment_s``. Measured (bench/RESULTS.md):
continuous speech decodes with 2-3 % WER up to 44 s; the empty transcript on a 19.8 s clip came from a second of digital silence inside it,
which VAD segmentation never keeps inside a segment.

Wake-gated mode (``mode = after_wakeword``): segments are ignored until a ``wakeword`` event; the
utterance after it (the rest of the segment the wake word ended in, or the next segment starting
within ``wake_timeout_s`` of audio) is transcribed, then the stream goes back to listening. Positions,
not wall-clock time, decide this, so the result does not depend on how fast the client sends.

A segment in which nothing is recognised (noise, music) yields no final at all; final ids count the
finals delivered on the stream (0, 1, 2, ...).

Word timings: not reported. Moonshine gives no alignment, and timings guessed from token counts
would not be honest; each final carries the segment's start and end instead.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from ..asr.moonshine import padded_length
from ..protocol.options import Option, PipelineSchema
from ..scheduler import RUN_LATE, SKIP, BatchScheduler, StageFailed
from ..session import latency
from ..vad import VadEvent
from .base import Stage, StageStream, StreamContext, with_test_delay

log = logging.getLogger("voxserve.asr")

TAIL = 1280          # 80 ms of audio after the last speech frame go into a final
LONG_PAUSE = 150     # ms of silence at which speech longer than split_at_pause_after_s ends
BUCKET = 4000        # CPU: decode lengths are padded with silence to multiples of 0.25 s
GPU_BUCKET = 16000   # GPU: 1 s (a batch of 16 costs about what one does there, so fewer, fuller batches pay)

ASR_SCHEMA = PipelineSchema(
    "asr",
    (
        Option("mode", str, "always", "always, or after_wakeword (needs the wakeword pipeline)",
               choices=("always", "after_wakeword")),
        Option("interims", bool, True, "send interim transcripts while speaking"),
        Option("interim_interval_ms", int, 300, "new audio between interim decodes (at least; under load "
                                                   "interims wait for twice the recent interim latency, up to "
                                                   "interim_max_interval_ms)",
               min=100, max=5000),
        Option("interim_max_interval_ms", int, 500, "the longest the stage aims to let users wait between "
                                                    "updates: the next decode starts early enough (by the "
                                                    "measured latency) to be shown within it; an interim that "
                                                    "cannot make budget_partial_ms is skipped",
               min=100, max=10000),
        Option("interim_latest_audio", bool, False, "an interim decodes the audio heard when its decode starts, "
                                                    "not when it was queued: under load the newest words show "
                                                    "sooner (measured at 12 streams on 2 cores: interim age "
                                                    "p50 about 200 -> 120 ms), but each interim then covers more "
                                                    "audio, so they come less often (RESULTS)"),
        Option("interim_from_pause", bool, True, "after a pause inside speech, interims decode only the audio "
                                                 "since it and show it after the pause's decode (finals "
                                                 "always decode the whole segment)"),
        Option("interim_anchor_s", float, 0.0, "interim_from_pause in speech without pauses: after this much "
                                               "audio since the last anchor, an interim decodes the segment up "
                                               "to a quiet 100 ms in the audio it adds, and later ones start "
                                               "there (0, the default: only real pauses; 3 measured: more "
                                               "interims shown under load, later finals, RESULTS)",
               min=0.0, max=40.0),
        Option("pre_roll_ms", int, 200, "audio before the VAD start included in a segment", min=0, max=1000,
               updatable=False),
        Option("max_segment_s", float, 20.0, "split longer speech at its quietest point (with pre_roll_ms, "
                                             "at most the server's ring_seconds - 1)", min=2.0, max=40.0,
               updatable=False),
        Option("split_at_pause_after_s", float, 8.0, f"speech longer than this ends (a final, reason endpoint) at "
                                                     f"its next pause of {LONG_PAUSE} ms, shorter than the VAD's "
                                                     f"hangover (0: only at the hangover or max_segment_s)",
               min=0.0, max=40.0, updatable=False),
        Option("speculate_after_ms", int, 90, "silence inside a segment after which the final decode starts",
               min=90, max=5000),
        Option("wake_timeout_s", float, 5.0, "after_wakeword: how long to wait for the command", min=0.5, max=30.0),
        Option("budget_partial_ms", float, 500.0, "interim budget (older interims are skipped)", min=50, max=10000),
        Option("budget_final_ms", float, 1000.0, "final budget (late finals are still delivered)", min=50, max=30000),
    ),
    doc="streaming speech recognition (Moonshine base, English): interim and final transcripts",
    requires=("vad",),
)


def asr_int8(settings) -> bool:
    """``asr_precision``: int8 asked for, or ``auto`` on a CPU engine (``auto`` where ONNX Runtime has no
    CUDA provider): the int8 graphs gave the same transcripts on ../shared in 0.56x the time (RESULTS,
    "ASR: int8"); on a GPU the fp32/TF32 graphs run."""
    if settings.asr_precision != "auto":
        return settings.asr_precision == "int8"
    if settings.engine == "onnxruntime-cpu":
        return True
    if settings.engine != "auto":
        return False
    import onnxruntime as ort
    return "CUDAExecutionProvider" not in ort.get_available_providers()


# scheduler priorities: finals, then the interim replacing one that was skipped (its stream has waited
# longest for an update), then the other interims
FINAL, OVERDUE_INTERIM, INTERIM = 0, 1, 2


class AsrStage(Stage):
    name = "asr"
    schema = ASR_SCHEMA

    def __init__(self, settings, metrics, admission=None, model=None):
        from ..asr.moonshine import MoonshineModel

        self.settings = settings
        self.metrics = metrics
        self.admission = admission
        self.model = model or MoonshineModel(settings.engine, settings.intra_op_threads,
                                             int8=asr_int8(settings))
        run = with_test_delay(self._run, settings, "asr")
        self.interim_latency_s = 0.0     # EWMA over every stream's shown interims: queue + compute (seconds)
        # Batches in flight (ONNX Runtime sessions may run concurrently): on a CPU two, so a final never
        # waits behind a long interim decode that is already running; on a GPU four, with 1 s length
        # buckets (not load-measured: no GPU was lent to the session that set them).
        on_gpu = getattr(getattr(self.model, "encoder", None), "kind", "onnxruntime-cpu") != "onnxruntime-cpu"
        self.bucket = GPU_BUCKET if on_gpu else BUCKET
        # A batch holds only segments of one padded length (they share every engine call); finals
        # (priority 0) go before interims (1), so a final waits for at most the calls already running.
        # Its threads run at a lower OS priority (asr_nice): on a shared CPU a decode of 100-300 ms would
        # otherwise hold a core while 16 ms VC blocks wait (measured: RESULTS, "Mixed load: ASR priority").
        # int8 graphs run every input alone (MoonshineModel.rows_alone), so a batch would only queue one
        # stream behind another on one thread while the other slot idles
        max_batch = 1 if getattr(self.model, "rows_alone", False) else settings.max_batch
        self.schedulers = {"asr": BatchScheduler("asr", run, max_batch=max_batch,
                                                 max_inflight=4 if on_gpu else 2,
                                                 max_wait_s=settings.max_wait_ms / 1000.0, metrics=metrics,
                                                 timeout_s=settings.engine_timeout_s,
                                                 runtime=getattr(admission, "runtime", None),
                                                 batch_key=self._batch_key,
                                                 nice=int(getattr(settings, "asr_nice", 0)))}

    def observe_interim_latency(self, seconds: float) -> None:
        """A shown interim's queue + compute time: the stage's recent interim latency (EWMA, seconds),
        which spaces and times every stream's next interim (a stream's own last one may have been lucky)."""
        self.interim_latency_s += 0.2 * (seconds - self.interim_latency_s)

    def _run(self, items: list):
        """Items: 16 kHz audio, or (audio, hint tokens) where the hint is the segment's previous hypothesis
        (re-scored in one teacher-forced decoder call instead of one call per token; same result)."""
        audios = [it[0] if isinstance(it, tuple) else it for it in items]
        hints = [it[1] if isinstance(it, tuple) else None for it in items]
        # 0.25 s buckets: streams whose segments are within 0.25 s of each other share encoder and
        # decoder calls (measured on CPU: 4 utterances together cost 79 ms each instead of 110 ms)
        return self.model.transcribe(audios, bucket_samples=self.bucket, hints=hints if any(hints) else None)

    def _batch_key(self, item) -> int:
        return padded_length(len(item[0] if isinstance(item, tuple) else item), self.bucket)

    async def start(self) -> None:
        sched = self.schedulers["asr"]
        sched.start()
        rng = np.random.default_rng(0)
        await sched.submit((rng.standard_normal(16000) * 0.01).astype(np.float32), deadline=time.perf_counter() + 30)

    async def stop(self) -> None:
        await self.schedulers["asr"].stop()

    def describe(self) -> dict:
        d = self.schema.describe()
        enc = self.model.encoder.describe()
        d["models"] = {self.model.name: {"encoder": enc["detail"], "decoder": self.model.decoder.describe()["detail"],
                                         "precision": enc["precision"]}}
        return d

    def open(self, ctx: StreamContext, options: dict) -> "AsrStream":
        if options["mode"] == "after_wakeword" and "wakeword" not in ctx.pipelines:
            from ..protocol.errors import ErrorCode, ProtocolError
            raise ProtocolError(ErrorCode.BAD_VALUE, "asr.mode=after_wakeword needs the wakeword pipeline too")
        # A segment is read back from the stream's ring: it must fit, with its pre-roll and a second of margin
        # for the end-of-speech tail and the split search.
        ring_s = ctx.ring.capacity / 16000
        need_s = options["max_segment_s"] + options["pre_roll_ms"] / 1000 + 1.0
        if need_s > ring_s:
            from ..protocol.errors import ErrorCode, ProtocolError
            raise ProtocolError(ErrorCode.BAD_VALUE,
                                f"asr.max_segment_s={options['max_segment_s']:g} with pre_roll_ms="
                                f"{options['pre_roll_ms']} needs {need_s:g} s of audio history; this server keeps "
                                f"{ring_s:g} s (--ring-seconds): use max_segment_s <= "
                                f"{ring_s - 1.0 - options['pre_roll_ms'] / 1000:g}")
        return AsrStream(self, ctx, options)


def _norm(word: str) -> str:
    """A word compared for stability: case and punctuation do not count."""
    return "".join(ch for ch in word.lower() if ch.isalnum() or ch == "'")


class _Segment:
    def __init__(self, start: int, opened_at: float):
        self.start = start
        self.end: int | None = None
        self.last_interim_end = start
        self.shown_end = start                  # end of the latest interim shown (an older one is not shown)
        self.interim: asyncio.Future | None = None
        self.prev_words: list[str] = []
        self.stable: list[str] = []
        self.speculative: tuple[int, asyncio.Future, float] | None = None
        self.opened_at = opened_at
        self.command = False            # after_wakeword: this segment is the command to transcribe
        self.tokens: list[int] | None = None   # the latest hypothesis: the next decode's teacher-forced hint
        self.shown_at = opened_at               # clock time the user last saw an update (segment open, interim)
        self.latency_s = 0.0                    # the last interim's queue + compute time (seconds)
        self.work_s = 0.0                       # engine time of this segment's interims (for admission's cost)
        # interim_from_pause: the latest pause whose decode came back (16 kHz position inside the segment),
        # that decode's words and tokens, and the hint for the next decode of the audio after it
        self.anchor_end: int | None = None
        self.anchor_words: list[str] = []
        self.anchor_tokens: list[int] = []
        self.sub_tokens: list[int] | None = None


class AsrStream(StageStream):
    def __init__(self, stage: AsrStage, ctx: StreamContext, options: dict):
        self.stage = stage
        self.ctx = ctx
        self.opts = dict(options)
        self.seg: _Segment | None = None
        self.final_seq = 0
        self.final_tail: asyncio.Future | None = None     # finals are emitted in order
        self.pending: set[asyncio.Future] = set()
        self.closed = False
        self.armed_from: int | None = None                # after_wakeword: transcribe from here (16 kHz)
        self.recent: list[tuple[int, int]] = []           # after_wakeword: closed segments not yet judged
        self.vad_in_speech = False
        self.vad_last_speech_end = 0

    @property
    def sched(self) -> BatchScheduler:
        return self.stage.schedulers["asr"]

    # -- events from other stages --------------------------------------------------------------------
    def on_event(self, event: dict) -> None:
        """A wake word arms the stream. Wakeword scores may arrive after the VAD has already moved
        on (a client sending faster than real time), so segments that closed after the wake word's
        end are judged now, and an open one becomes the command."""
        if event.get("type") != "wakeword" or self.opts["mode"] != "after_wakeword":
            return
        wake_end = int(round(event["end_ms"] * 16))
        self.armed_from = wake_end
        for start, end in self.recent:
            if end - max(start, wake_end) >= 1600 and self._armed_at(start):
                seg = _Segment(max(start, wake_end), self.ctx.clock())
                seg.command = True
                saved, self.seg = self.seg, seg
                self._close(end, "endpoint")
                self.seg = saved
        self.recent = [r for r in self.recent if r[1] <= wake_end]
        seg = self.seg
        if seg is not None and seg.end is None and self._armed_at(seg.start):
            seg.start = max(seg.start, wake_end)
            seg.last_interim_end = seg.start
            seg.command = True

    def on_update(self, options: dict) -> None:
        self.opts.update(options)

    # -- audio ---------------------------------------------------------------------------------------
    def _armed_at(self, start: int) -> bool:
        """after_wakeword: a segment starting at ``start`` (16 kHz) is the command of the last wake word
        (it began no later than ``wake_timeout_s`` of audio after the wake word ended)."""
        return (self.armed_from is not None
                and start <= self.armed_from + int(self.opts["wake_timeout_s"] * 16000))

    def on_audio(self, end: int, vad_events: list[VadEvent]) -> None:
        for ev in vad_events:
            if ev.kind == "speech_start":
                self.vad_in_speech = True
                if self.seg is None:
                    start = max(0, ev.start - self.opts["pre_roll_ms"] * 16, self.ctx.ring.start)
                    self.seg = _Segment(start, self.ctx.clock())
                    if self.opts["mode"] == "always":
                        self.seg.command = True
                    elif self._armed_at(start):
                        self.seg.start = max(start, self.armed_from or 0)
                        self.seg.command = True
            else:
                self.vad_in_speech = False
                self.vad_last_speech_end = ev.end or 0
                if self.seg is not None:
                    self._close(min(end, (ev.end or end) + TAIL), self.ctx.ending or "endpoint")
        seg = self.seg
        if seg is None or self.closed or not seg.command:
            return
        if end - seg.start >= self.opts["max_segment_s"] * 16000:
            self._split(end)
            return
        if self._maybe_speculate(end):
            return                  # silence has begun: the final decode is under way, no interim competes
        # Cadence, two rules. Spacing: at least interim_interval_ms of new audio, and twice the interim
        # latency (this stream's last or the stage's recent average, whichever is longer; at most
        # interim_max_interval_ms of audio), so a loaded server spaces interims out instead of queueing
        # eager ones it must then skip or show late. What users see: an interim is also due once the time
        # since their last update plus that latency reaches interim_max_interval_ms, so under load the
        # next decode starts early enough to be shown within that interval, not one interval after the
        # previous decode started (the latency is then spent on top of it).
        if not self.opts["interims"] or seg.interim is not None:
            return
        new = end - seg.last_interim_end
        least = self.opts["interim_interval_ms"] * 16
        most_s = self.opts["interim_max_interval_ms"] / 1000.0
        latency_s = max(seg.latency_s, self.stage.interim_latency_s)
        spaced = new >= max(least, min(int(2 * latency_s * 16000), int(most_s * 16000)))
        due = new >= least and self.ctx.clock() + latency_s >= seg.shown_at + most_s
        if spaced or due:
            self._interim(end)

    def _maybe_speculate(self, end: int) -> bool:
        """Start the final decode early once the VAD hears silence in the segment; True while silent."""
        seg = self.seg
        vad = getattr(self.ctx, "vad", None)
        if seg is None or vad is None or not vad.in_speech:
            return False
        silence = vad.position - vad.last_speech_end
        if silence < self.opts["speculate_after_ms"] * 16:
            if seg.speculative is not None:
                self._promote_speculative()
            return False
        spec_end = min(end, vad.last_speech_end + TAIL)
        if spec_end - seg.start < 1600:           # e.g. a split segment that holds no speech yet: nothing to
            return True                           # decode in its silence
        if seg.speculative is None or seg.speculative[0] != spec_end:
            if seg.speculative is not None:
                seg.speculative[1].cancel()      # superseded (speech went on): drop it if still queued
            if seg.interim is not None:
                # a queued interim would only delay the final; one already running is shown when it is done
                self.sched.withdraw(seg.interim)
            audio = self.ctx.ring.read(seg.start, spec_end)
            fut = self.sched.submit((audio, seg.tokens),
                                    deadline=self.ctx.clock() + self.opts["budget_final_ms"] / 1000.0,
                                    policy=RUN_LATE, weight=len(audio) / 16000, priority=FINAL,
                                    owner=self.ctx.session_id)
            seg.speculative = (spec_end, fut, self.ctx.clock())
        split_s = self.opts["split_at_pause_after_s"]
        if split_s > 0 and silence >= LONG_PAUSE * 16 and spec_end - seg.start >= split_s * 16000:
            # long speech: this pause ends the utterance (the decode under way is its final); what follows
            # is a new segment, as after a max_segment_s split
            self._split_at(spec_end, "endpoint")
        return True

    def _required_share(self, seg: _Segment, end: int, since: int | None = None) -> float:
        """The part of an interim ending at ``end`` that the stage could not shed: under load the cadence
        stretches to one interim per ``interim_max_interval_ms``, so an interim counts for the new audio it
        covers over that interval (at most 1), after ``since`` (default: the segment's last interim)."""
        since = seg.last_interim_end if since is None else since
        return min(1.0, max(0, end - since) / (self.opts["interim_max_interval_ms"] * 16))

    def _promote_speculative(self) -> None:
        """Speech went on after a pause: the final decode started in the pause is now an interim (it is
        one: the segment up to the pause). Showing it instead of dropping it keeps interims coming through
        the short pauses of running speech, where the cadence is suspended and queued interims cancelled."""
        seg = self.seg
        assert seg is not None and seg.speculative is not None
        spec_end, fut, t0 = seg.speculative
        seg.speculative = None
        required = self._required_share(seg, spec_end)      # for admission, the interim it now is
        seg.last_interim_end = max(seg.last_interim_end, spec_end)
        fut.add_done_callback(lambda f, s=seg, e=spec_end, t=t0, r=required:
                              self._interim_done(s, e, t, f, r, anchors=True))

    def _anchor_point(self, seg: _Segment, end: int) -> int | None:
        """interim_anchor_s: where an interim ending at ``end`` should stop instead, so that it anchors the
        interims after it, or None. Once ``interim_anchor_s`` of audio has passed since the segment's start
        or last anchor: the quietest 100 ms of the audio this interim adds (after the last one shown, so it
        is shown too), if it is under a quarter of the median power since the anchor (most likely a gap
        between words); after twice that much audio, the quietest there is."""
        if not self.opts["interim_from_pause"] or self.opts["interim_anchor_s"] <= 0:
            return None
        base = seg.start if seg.anchor_end is None else seg.anchor_end
        span = self.opts["interim_anchor_s"] * 16000
        lo = max(seg.shown_end, base + 16000)
        if end - base < span or end - lo < 2400:
            return None
        at, power = self._quietest(lo, end)
        if end - base < 2 * span and power > 0.25 * float(np.median(self._energies(base, end))):
            return None
        return at

    def _interim(self, end: int, priority: int = INTERIM) -> None:
        """Queue an interim of the open segment up to ``end``. One that waits in the queue too long to be
        shown within ``budget_partial_ms`` is skipped and replaced (:meth:`_interim_done`). With
        ``interim_latest_audio`` its payload is bound when the scheduler takes it instead: the segment up to
        the newest audio then (never stale, so never skipped)."""
        seg = self.seg
        assert seg is not None
        base = seg.last_interim_end           # the required share counts the audio since the last interim
        job: dict = {}

        def take(upto: int):
            job.update(self._plan(seg, upto), required=self._required_share(seg, upto, base))
            seg.last_interim_end = upto
            return job["payload"], len(job["payload"][0]) / 16000, job["required"]

        def bind():
            if self.closed or seg is not self.seg or seg.end is not None or seg.speculative is not None:
                return None                   # the segment closed, or its final decode is under way
            return take(max(end, self.ctx.ring.end))

        payload, weight, required = take(end)
        t = self.ctx.clock()
        # among interims, the stream whose user has waited longest for an update goes first
        fut = self.sched.submit(payload, deadline=t + self.opts["budget_partial_ms"] / 1000.0, policy=SKIP,
                                weight=weight, priority=priority, required=required,
                                rank=seg.shown_at + self.opts["interim_max_interval_ms"] / 1000.0,
                                owner=self.ctx.session_id, bind=bind if self.opts["interim_latest_audio"] else None)
        seg.interim = fut
        fut.add_done_callback(lambda f, s=seg, j=job, t0=t: self._interim_done(
            s, j["end"], t0, f, j["required"], anchor=j["anchor"], anchors=j["quiet"]))

    def _plan(self, seg: _Segment, end: int) -> dict:
        """What an interim of ``seg`` up to ``end`` decodes: the whole segment up to a new anchor point; else
        the audio since the last pause whose decode is known (at least 0.3 s after it), shown after that
        pause's words; else the whole segment. ``payload`` is (audio, hint tokens)."""
        quiet = self._anchor_point(seg, end)
        anchor = None
        if quiet is not None:
            end = quiet
        elif self.opts["interim_from_pause"] and seg.anchor_end is not None and end - seg.anchor_end >= 4800:
            anchor = (seg.anchor_end, seg.anchor_words, seg.anchor_tokens)
        audio = self.ctx.ring.read(seg.start if anchor is None else anchor[0], end)
        hint = seg.tokens if anchor is None else seg.sub_tokens
        return {"end": end, "payload": (audio, hint), "anchor": anchor, "quiet": quiet is not None}

    def _interim_done(self, seg: _Segment, end: int, t0: float, fut: asyncio.Future, required: float = 1.0,
                      anchor: tuple[int, list[str], list[int]] | None = None, anchors: bool = False) -> None:
        """A decode of the segment up to ``end`` came back: of all of it, or of the audio after a pause
        only (``anchor``: that pause's position, words and tokens when the decode was asked for);
        ``anchors``: a whole-segment decode up to a pause (or a quiet point), which anchors later ones."""
        if seg.interim is fut:
            seg.interim = None
        if self.closed or fut.cancelled() or seg is not self.seg or seg.end is not None:
            return
        try:
            out = fut.result()
        except StageFailed:
            return
        if anchors and not out.skipped and (seg.anchor_end is None or end > seg.anchor_end):
            # later interims start here, whether or not this one is still the newest to show
            seg.anchor_end, seg.sub_tokens = end, None
            seg.anchor_words, seg.anchor_tokens = out.value.text.split(), list(out.value.tokens)
        if end <= seg.shown_end:
            return                  # a later interim of this segment is already shown: never step back
        now = self.ctx.clock()
        m = self.stage.metrics
        if out.skipped:
            # back off harder: space this segment's interims at least as if they took half the budget
            seg.latency_s = max(2.0 * seg.latency_s, self.opts["budget_partial_ms"] / 2000.0)
            self.stage.budget_missed("asr_partial", "skip", holds_admission=False)   # shedding by design
            self.ctx.emit({"type": "budget", "stage": "asr_partial", "budget_ms": self.opts["budget_partial_ms"],
                           "observed_ms": round((now - t0) * 1000, 1), "action": "skip"}, True)
            # the skipped one was stale; one with the audio heard since takes its place at once, with a fresh
            # deadline and ahead of other streams' interims (this stream has waited longest for an update)
            end_now = self.ctx.ring.end
            if seg.speculative is None and end_now - end >= 1600:
                self._interim(end_now, priority=OVERDUE_INTERIM)
            return
        m.stage_latency.labels("asr_partial").observe(now - t0)
        seg.shown_end = end
        seg.shown_at = now
        words = out.value.text.split()
        if anchor is None:
            seg.tokens = list(out.value.tokens)
        else:
            # the whole segment's hypothesis (the next full decode's hint) is the pause's and this one's
            at, anchor_words, anchor_tokens = anchor
            if at == seg.anchor_end:             # (a later pause may have come back meanwhile)
                seg.sub_tokens = list(out.value.tokens)
            seg.tokens = anchor_tokens + list(out.value.tokens)
            words = anchor_words + words
        seg.latency_s = now - t0
        self.stage.observe_interim_latency(seg.latency_s)
        # admission's cost is what this stream takes at the sparsest cadence (finals count in full)
        seg.work_s += out.marginal_s * required
        norm = [_norm(w) for w in words]
        common = 0
        for a, b in zip(seg.prev_words, norm):
            if a != b:
                break
            common += 1
        n_stable = len(seg.stable)
        agrees = norm[:n_stable] == [_norm(w) for w in seg.stable]
        if agrees:
            seg.stable = words[:max(n_stable, common)]          # stable words keep growing, never shrink
        seg.prev_words = norm
        shown = seg.stable + words[len(seg.stable):]
        unstable = shown[len(seg.stable):]
        self.ctx.emit({"type": "transcript_interim", "stage": "asr",
                       "text": " ".join(shown), "stable_text": " ".join(seg.stable),
                       "unstable_text": " ".join(unstable),
                       "stability": round(len(seg.stable) / len(shown), 3) if shown else 1.0,
                       **self.ctx.position("start", seg.start), **self.ctx.position("end", end),
                       "latency": latency(out.queue_s, out.compute_s, now - t0), **self._stream_pos()}, True)

    # -- finals --------------------------------------------------------------------------------------
    def _energies(self, lo: int, hi: int) -> list[float]:
        """Mean power of each 100 ms of the audio between positions ``lo`` and ``hi`` (16 kHz), 50 ms apart."""
        x = self.ctx.ring.read(lo, hi)
        return [float(np.mean(x[i:i + 1600] ** 2)) for i in range(0, len(x) - 1600 + 1, 800)]

    def _quietest(self, lo: int, hi: int) -> tuple[int, float]:
        """The middle of the quietest 100 ms between positions ``lo`` and ``hi`` (16 kHz, 50 ms steps), and
        its power: where speech without a pause most likely falls between two words."""
        energies = self._energies(lo, hi)
        if not energies:
            return (lo + hi) // 2, 0.0
        k = int(np.argmin(energies))
        return lo + k * 800 + 800, energies[k]

    def _split(self, end: int) -> None:
        seg = self.seg
        assert seg is not None
        cut, _ = self._quietest(seg.start + int((end - seg.start) * 0.6), end)
        self._split_at(cut, "max_length")

    def _split_at(self, cut: int, reason: str) -> None:
        """Close the open segment at ``cut`` (its final, for ``reason``) and open the next one there, while the
        VAD still hears the same speech."""
        assert self.seg is not None
        command = self.seg.command
        self._close(cut, reason)
        self.seg = _Segment(cut, self.ctx.clock())
        self.seg.command = command

    def _close(self, end: int, reason: str) -> None:
        seg = self.seg
        if seg is None:
            return
        self.seg = None
        end = max(end, seg.start)
        seg.end = end
        if seg.interim is not None:
            seg.interim.cancel()
        if not seg.command:
            if self.opts["mode"] == "after_wakeword":       # may still turn out to follow a wake word
                self.recent = (self.recent + [(seg.start, end)])[-4:]
            return
        if end - seg.start < 1600:                          # under 100 ms: nothing to say
            return
        t0 = self.ctx.clock()
        if seg.speculative is not None and seg.speculative[0] == end:
            fut, t0 = seg.speculative[1], t0
            spec = True
        else:
            audio = self.ctx.ring.read(seg.start, end)
            fut = self.sched.submit((audio, seg.tokens), deadline=t0 + self.opts["budget_final_ms"] / 1000.0, policy=RUN_LATE,
                                    weight=len(audio) / 16000, priority=FINAL, owner=self.ctx.session_id)
            spec = False
        prev = self.final_tail
        task = asyncio.ensure_future(self._deliver(seg, end, reason, fut, prev, t0, spec))
        self.final_tail = task
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _deliver(self, seg, end, reason, fut, prev, t0, speculative) -> None:
        try:
            out = await fut
        except (StageFailed, asyncio.CancelledError) as exc:
            out = None
            err = exc
        if prev is not None:
            await asyncio.shield(prev)
        if self.closed:
            return
        now = self.ctx.clock()
        if out is None:
            self.ctx.emit({"type": "error", "code": "stage_failed", "message": f"asr final: {err!r}",
                           "fatal": False, "fault": "server"}, False)
            return
        m = self.stage.metrics
        m.stage_latency.labels("asr_final").observe(now - t0)
        if self.stage.admission is not None:
            # a stream's cost is its interims' and its final's engine time per second of its speech
            self.stage.admission.cost_model("asr").observe(seg.work_s + out.marginal_s,
                                                           max(0.1, (end - seg.start) / 16000))
        budget = self.opts["budget_final_ms"] / 1000.0
        if now - t0 > budget:
            self.stage.budget_missed("asr_final", "late", owner=self.ctx.session_id)
            self.ctx.emit({"type": "budget", "stage": "asr_final", "budget_ms": self.opts["budget_final_ms"],
                           "observed_ms": round((now - t0) * 1000, 1), "action": "late"}, True)
        if not out.value.text:
            return                                          # nothing recognised (noise): no final
        if self.opts["mode"] == "after_wakeword":
            self.armed_from = None                          # command heard: back to listening
        final_id = self.final_seq                           # ids count delivered finals: 0, 1, 2, ...
        self.final_seq += 1
        self.ctx.emit({"type": "transcript", "stage": "asr", "final": True, "id": final_id,
                       "text": out.value.text, "reason": reason, "speculative": speculative,
                       **self.ctx.position("start", seg.start), **self.ctx.position("end", end),
                       "latency": latency(out.queue_s, out.compute_s, now - t0), **self._stream_pos()}, False)

    def _stream_pos(self) -> dict:
        pos = self.ctx.ring.end
        return {"stream_ms": round(pos / 16.0, 3), "stream_sample": int(round(pos * self.ctx.input_rate / 16000))}

    async def _drain(self) -> None:
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)

    def close_utterance(self) -> None:
        if self.seg is not None:
            self._close(self.ctx.ring.end, "flush")

    async def flush(self) -> None:
        self.close_utterance()
        await self._drain()

    async def finish(self) -> None:
        if self.seg is not None:
            self._close(self.ctx.ring.end, "stop")
        await self._drain()

    def close(self) -> None:
        self.closed = True
        for t in list(self.pending):
            t.cancel()
