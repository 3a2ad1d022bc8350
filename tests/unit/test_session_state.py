"""Per-stream state without sockets: the Session (event ids, retention, ack, resume, overflow, flush, close)
and the ASR stream's state machine (speculative finals, stable prefix, flush, order of finals), on the
real Session, VAD and BatchScheduler with a deterministic fake model in place of Moonshine."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from voxserve.server.asr.moonshine import Hypothesis
from voxserve.server.metrics import Metrics
from voxserve.server.protocol import Codec, SUBPROTOCOL_MSGPACK, ServerConnection
from voxserve.server.session import Session
from voxserve.server.stages.asr import ASR_SCHEMA, AsrStage
from voxserve.server.vad import VAD_SCHEMA

from ..e2e.helpers import voiced_signal


def config(pipelines=("vad",), options=None, schemas=None):
    schemas = schemas or {"vad": VAD_SCHEMA, "asr": ASR_SCHEMA}
    conn = ServerConnection(Codec(SUBPROTOCOL_MSGPACK), schemas)
    conn.receive(Codec(SUBPROTOCOL_MSGPACK).encode({"type": "start", "pipelines": list(pipelines),
                                                    "options": options or {}}), 0.0)
    return conn.config


def session(stages=None, **kw):
    args = dict(ring_seconds=30, outbox_soft=8, outbox_hard=32)
    args.update(kw)
    return Session(config(tuple(stages or ()) or ("vad",)), stages or {}, Metrics(), **args)


def test_events_get_ids_finals_are_retained_until_acked_and_replayed_on_resume():
    s = session()
    for i in range(3):
        s.emit({"type": "vad", "n": i})
    s.emit({"type": "transcript_interim", "n": 99})                 # droppable: never retained
    assert [ev["eid"] for _, ev in s.retained] == [0, 1, 2]
    s.ack(1)
    assert [eid for eid, _ in s.retained] == [2]
    s.detach(now=5.0)
    s.emit({"type": "vad", "n": 3})                                  # produced while detached
    replay = s.attach(lambda: None, lambda: None, last_eid=1)
    assert [ev["n"] for ev in replay] == [2, 3] and s.detached_at is None


def test_overflow_is_reported_once_and_nothing_more_is_queued():
    calls = []
    s = session(outbox_soft=2, outbox_hard=4)
    s._on_overflow = lambda: calls.append(1)
    for i in range(10):
        s.emit({"type": "vad", "n": i})
    assert s.overflowed and calls == [1] and len(s.outbox) == 4


def test_begin_flush_closes_the_utterance_at_once():
    s = session()
    x = voiced_signal(2.0, seed=1)
    s.on_audio(SimpleNamespace(samples=x[:12000], start=0, received_at=0.0))    # mid-burst: speech open
    assert s.vad.in_speech
    drain = s.begin_flush()
    ends = [ev for ev in (s.outbox.pop() for _ in range(len(s.outbox))) if ev["event"] == "speech_end"]
    assert len(ends) == 1 and not s.vad.in_speech                   # closed before the drain is awaited
    asyncio.run(drain)


def test_close_releases_the_ring_and_is_idempotent():
    s = session()
    s.on_audio(SimpleNamespace(samples=np.zeros(1600, np.float32), start=0, received_at=0.0))
    s.close()
    s.close()
    assert s.ring.capacity == 0 and not s.retained
    s.ring.append(np.ones(10, np.float32))                           # ignored after release
    with pytest.raises(IndexError):
        s.ring.read(0, 10)


class FakeModel:
    """Deterministic 'transcripts': one word per 0.25 s of audio, named by position, so a longer decode
    of the same segment extends a shorter one (like a real model on growing audio)."""

    name = "fake"

    def __init__(self):
        self.calls = []

    def transcribe(self, items, bucket_samples=0, hints=None):
        self.calls.append([len(x) for x in items])
        self.hints = hints
        return [Hypothesis(list(range(len(x) // 4000)), " ".join(f"w{i}" for i in range(len(x) // 4000)))
                for x in items]


def asr_session(**opts):
    settings = SimpleNamespace(engine="onnxruntime-cpu", intra_op_threads=1, max_batch=8, max_wait_ms=1.0,
                               engine_delay_s=0.0, inject_faults="", engine_timeout_s=10.0)
    stage = AsrStage(settings, Metrics(), model=FakeModel())
    from voxserve.server.stages.wakeword import WAKEWORD_SCHEMA

    gated = opts.get("mode") == "after_wakeword"          # the wake words come from the test, not a stage
    cfg = config(("wakeword", "asr") if gated else ("asr",), {"asr": opts},
                 {"vad": VAD_SCHEMA, "asr": ASR_SCHEMA, "wakeword": WAKEWORD_SCHEMA})
    return Session(cfg, {"asr": stage}, Metrics(), ring_seconds=30, outbox_soft=256, outbox_hard=1024), stage


async def feed(s, x, frame=320, pause=0.0):
    for i in range(0, len(x), frame):
        s.on_audio(SimpleNamespace(samples=x[i:i + frame], start=i, received_at=0.0))
        await asyncio.sleep(pause)


def drain(s):
    return [s.outbox.pop() for _ in range(len(s.outbox))]


def asr_events(x: np.ndarray, **opts) -> list[dict]:
    """Every event of one ASR stream fed ``x`` (16 kHz) frame by frame, 4 ms apart, then finished."""
    async def go():
        s, stage = asr_session(**opts)
        stage.schedulers["asr"].start()
        await feed(s, x, pause=0.004)
        await s.finish()
        await stage.stop()
        return drain(s)
    return asyncio.run(go())


def test_asr_speculative_final_stable_prefix_and_order():
    async def go():
        s, stage = asr_session(interim_interval_ms=200)
        stage.schedulers["asr"].start()
        x = np.concatenate([voiced_signal(6.0, seed=2), np.zeros(16000, np.float32)])
        await feed(s, x, pause=0.002)
        await s.finish()
        await stage.stop()
        return drain(s)
    events = asyncio.run(go())
    finals = [e for e in events if e["type"] == "transcript"]
    interims = [e for e in events if e["type"] == "transcript_interim"]
    assert finals and [f["id"] for f in finals] == list(range(len(finals)))          # in order, numbered
    assert any(f["speculative"] for f in finals)                                     # decoded during the silence
    assert all(f["reason"] in ("endpoint", "stop") for f in finals)
    for a, b in zip(interims, interims[1:]):
        if a["start_ms"] == b["start_ms"]:                                           # the same segment
            assert b["stable_text"].startswith(a["stable_text"])                     # stable words never retract
            assert b["text"].startswith(b["stable_text"])
    for f in finals:                                                                 # a final extends its interims
        same = [i for i in interims if i["start_ms"] == f["start_ms"]]
        assert all(f["text"].startswith(i["stable_text"]) for i in same)


def test_asr_flush_closes_the_segment_and_later_audio_starts_the_next():
    async def go():
        s, stage = asr_session(interims=False)
        stage.schedulers["asr"].start()
        x = voiced_signal(3.0, seed=3)
        await feed(s, x[:int(1.0 * 16000)])
        drain_flush = s.begin_flush()
        await feed(s, x[int(1.0 * 16000):])
        await drain_flush
        await s.finish()
        await stage.stop()
        return drain(s)
    finals = [e for e in asyncio.run(go()) if e["type"] == "transcript"]
    assert finals[0]["reason"] == "flush" and finals[0]["end_ms"] <= 1000 + 1
    assert all(f["start_ms"] >= 800 for f in finals[1:])           # after the flush: a new utterance


def test_asr_after_wakeword_transcribes_only_the_command():
    """asr.mode=after_wakeword: speech before the wake word gives no final; a wake word arms the stream,
    and the next segment (the command) is transcribed from the wake word's end; a wake word that arrives
    late (a client faster than real time) still arms the segment that had already closed after it."""
    async def go(late: bool):
        s, stage = asr_session(mode="after_wakeword", interims=False)
        stage.schedulers["asr"].start()
        x = voiced_signal(6.0, seed=4)                     # bursts with pauses: several VAD segments
        half = 3 * 16000
        await feed(s, x[:half])
        wake = {"type": "wakeword", "stage": "wakeword", "name": "hey_jarvis", "end_ms": 2500.0}
        if not late:
            s.streams["asr"].on_event(wake)
        await feed(s, x[half:])
        if late:
            s.streams["asr"].on_event(wake)
        await s.finish()
        await stage.stop()
        return [e for e in drain(s) if e["type"] == "transcript"]
    for late in (False, True):
        finals = asyncio.run(go(late))
        assert finals, late
        assert all(f["start_ms"] >= 2500 for f in finals), (late, [f["start_ms"] for f in finals])


def test_asr_after_wakeword_without_a_wake_word_says_nothing():
    async def go():
        s, stage = asr_session(mode="after_wakeword", interims=False)
        stage.schedulers["asr"].start()
        await feed(s, voiced_signal(5.0, seed=5))
        await s.finish()
        await stage.stop()
        return [e for e in drain(s) if e["type"] == "transcript"]
    assert asyncio.run(go()) == []


def sustained_voice(seconds: float) -> np.ndarray:
    """One continuous voiced sound (140 Hz harmonics, slight vibrato) that the VAD hears as speech
    throughout: no pauses of its own, unlike ``voiced_signal``."""
    t = np.arange(int(seconds * 16000)) / 16000
    phase = 2 * np.pi * np.cumsum(140 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / 16000
    v = sum(np.sin(k * phase) / k for k in range(1, 20))
    return (0.3 * v / np.abs(v).max()).astype(np.float32)


class SlowModel(FakeModel):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def transcribe(self, items, bucket_samples=0, hints=None):
        import time
        time.sleep(self.seconds)
        return super().transcribe(items, bucket_samples, hints)


def test_interims_space_out_when_decodes_are_slow():
    """Real-time audio; interims every 300 ms of audio when decodes are quick, but no closer than twice the
    time the last one took when they are slow (a loaded server), instead of being computed and skipped;
    about interim_max_interval_ms apart (500 by default) when that is the binding rule: the next decode then
    starts a frame or two early, by the measured latency, so it is shown within that interval."""
    async def gaps(model, **opts):
        # (the spacing is read from the interims' ends; an anchoring interim ends at a quiet point behind
        # the cadence, so anchors are off here: test_speech_without_pauses_is_anchored_at_its_quiet_points)
        s, stage = asr_session(interim_interval_ms=300, budget_partial_ms=5000, interim_anchor_s=0.0, **opts)
        stage.model = model
        stage.schedulers["asr"].start()
        x = np.concatenate([sustained_voice(4.0), np.zeros(16000, np.float32)])    # one 4 s sound, then silence
        await feed(s, x, pause=0.02)                    # real-time pace: 20 ms per 20 ms frame
        await s.finish()
        await stage.stop()
        ends = [e["end_ms"] for e in drain(s) if e["type"] == "transcript_interim"]
        return [b - a for a, b in zip(ends, ends[1:])]
    quick = asyncio.run(gaps(FakeModel()))
    capped = asyncio.run(gaps(SlowModel(0.35)))
    slow = asyncio.run(gaps(SlowModel(0.35), interim_max_interval_ms=2000))
    assert quick and min(quick) >= 290 and np.median(quick) < 450, quick
    assert capped and min(capped) >= 440 and np.median(capped) < 560, capped   # 2 x 0.35 s, capped at 500
    assert slow and min(slow) >= 600, slow                # 2 x 0.35 s, less scheduling slack


def test_admission_cost_is_taken_at_the_sparsest_interim_cadence():
    """Admission's per-stream cost must not depend on how eagerly a lightly loaded server sends interims:
    under load the cadence stretches to interim_max_interval_ms, so interims spaced closer count for their
    share. With compute proportional to the audio decoded (no fixed cost per call, so the scheduler's
    fitted marginal cost equals each request's share whether or not it has a fit yet), interims every
    250 ms and every 500 ms (the cap) must give about the same cost per second of speech, and both must
    exceed the final alone."""
    from voxserve.server.admission import Admission

    class ProportionalModel(FakeModel):
        def transcribe(self, items, bucket_samples=0, hints=None):
            import time
            time.sleep(0.006 * sum(len(x) for x in items) / 16000)
            return super().transcribe(items, bucket_samples, hints)

    def cost(**opts):
        async def go():
            s, stage = asr_session(budget_partial_ms=5000, **opts)
            stage.model = ProportionalModel()
            adm = Admission(SimpleNamespace(admission=True, engine_workers=-1), Metrics(), cores=2)
            stage.admission = adm
            stage.schedulers["asr"].start()
            for seed in range(2):                      # 4x real time: the cadence counts audio, not wall time
                await feed(s, np.concatenate([voiced_signal(4.0, seed=seed), np.zeros(16000, np.float32)]),
                           pause=0.005)
            await s.finish()
            await stage.stop()
            return adm.costs["asr"]
        return asyncio.run(go())

    eager = cost(interim_interval_ms=250, interim_max_interval_ms=500)
    capped = cost(interim_interval_ms=500, interim_max_interval_ms=500)
    finals_only = cost(interims=False)
    assert eager.samples == capped.samples == finals_only.samples > 0      # the same segments (same VAD)
    assert finals_only.value < 0.6 * capped.value                  # interims are most of a stream's cost
    assert 0.75 < eager.value / capped.value < 1.33, (eager.value, capped.value)


def test_a_pause_inside_speech_shows_the_speculative_decode_as_an_interim():
    """A 250 ms pause inside an utterance (longer than speculate_after_ms, shorter than the VAD's hangover):
    the final decode started in the pause is shown as an interim of the segment up to the pause when speech
    goes on, instead of being dropped (interims are suspended during the pause). Regular interims are set
    too far apart (3 s) to produce one before the pause ends."""
    x = np.concatenate([sustained_voice(1.5), np.zeros(4000, np.float32), sustained_voice(1.5),
                        np.zeros(16000, np.float32)])
    events = asr_events(x, interim_interval_ms=3000, interim_max_interval_ms=3000)
    interims = [e for e in events if e["type"] == "transcript_interim"]
    finals = [e for e in events if e["type"] == "transcript"]
    assert len(finals) == 1 and finals[0]["end_ms"] > 3000           # one segment across the pause
    early = [i for i in interims if i["end_ms"] < 2000]
    assert early and all(1400 <= i["end_ms"] <= 1800 for i in early), [i["end_ms"] for i in interims]
    ends = [i["end_ms"] for i in interims]
    assert ends == sorted(ends)                                      # never an older interim after a newer


@pytest.mark.parametrize("from_pause", [True, False])
def test_interims_after_a_pause_decode_only_the_audio_since_it(from_pause):
    """interim_from_pause: once the decode made in a pause has come back, later interims of the segment
    decode the audio from that pause on, shown after the pause's words (the fake names words by their
    0.25 s block in what it is given, so the words tell what each decode was given); the final still
    decodes the whole segment. Off, every interim decodes the whole segment."""
    x = np.concatenate([sustained_voice(1.5), np.zeros(4000, np.float32), sustained_voice(2.5),
                        np.zeros(16000, np.float32)])
    events = asr_events(x, interim_interval_ms=300, interim_max_interval_ms=500, interim_from_pause=from_pause)
    interims = [e for e in events if e["type"] == "transcript_interim"]
    finals = [e for e in events if e["type"] == "transcript"]
    assert len(finals) == 1
    start = finals[0]["start_ms"]
    full_words = int((finals[0]["end_ms"] - start) * 16) // 4000
    assert len(finals[0]["text"].split()) == full_words                # the final: the whole segment
    paused = [i for i in interims if 1580 <= i["end_ms"] <= 1800]           # the pause's: speech end + 80 ms
    assert len(paused) == 1, [i["end_ms"] for i in interims]
    pause_end, pause_words = paused[0]["end_ms"], paused[0]["text"].split()
    later = [i for i in interims if i["end_ms"] > pause_end + 300]
    assert later
    for i in later:
        words = i["text"].split()
        if from_pause:
            assert words[:len(pause_words)] == pause_words
            assert len(words) - len(pause_words) == int(round((i["end_ms"] - pause_end) * 16)) // 4000
        else:
            assert len(words) == int(round((i["end_ms"] - start) * 16)) // 4000


def test_speech_without_pauses_is_anchored_at_its_quiet_points():
    """interim_anchor_s: speech with no pause the VAD hears (here one sound with three 100 ms dips to a tenth
    of its level) still gets anchors: once interim_anchor_s of audio has passed since the last one, the
    interim whose new audio holds a dip decodes the whole segment up to it, and the interims after it decode
    from there on, shown after its words. A dip sooner than that (1.0 s) anchors nothing."""
    voice = sustained_voice(5.5)
    for a, b in ((1.0, 1.1), (2.2, 2.3), (4.4, 4.5)):
        voice[int(a * 16000):int(b * 16000)] *= 0.1
    events = asr_events(np.concatenate([voice, np.zeros(16000, np.float32)]),
                        interim_interval_ms=300, interim_max_interval_ms=500, interim_anchor_s=2.0)
    interims = [e for e in events if e["type"] == "transcript_interim"]
    finals = [e for e in events if e["type"] == "transcript"]
    assert len(finals) == 1 and finals[0]["start_ms"] == 0
    ends = [i["end_ms"] for i in interims]
    dips = [[i for i in interims if abs(i["end_ms"] - centre) <= 50] for centre in (2250, 4450)]
    assert not [i for i in interims if 1000 < i["end_ms"] < 1100]
    assert all(len(d) == 1 for d in dips), ends
    first, second = dips[0][0], dips[1][0]
    assert len(first["text"].split()) == int(round(first["end_ms"] * 16)) // 4000      # the whole segment
    for i in interims:
        n, words = i["end_ms"], i["text"].split()
        if first["end_ms"] + 300 <= n < second["end_ms"]:
            base, at = first["text"].split(), first["end_ms"]
        elif n >= second["end_ms"] + 300:
            base = second["text"].split()
            at = second["end_ms"]
        else:
            continue
        assert words[:len(base)] == base
        assert len(words) - len(base) == int(round((n - at) * 16)) // 4000, (n, words)
    # the second anchor is itself a whole-segment decode (up to its dip): no seam inside it
    assert len(second["text"].split()) == int(round(second["end_ms"] * 16)) // 4000
    assert len(finals[0]["text"].split()) == int(round(finals[0]["end_ms"] * 16)) // 4000


@pytest.mark.parametrize("split_s", [8.0, 0.0])
def test_long_speech_ends_at_its_next_pause(split_s):
    """split_at_pause_after_s: pauses of 300 ms of digital silence at 3 s and 9.1 s, which the VAD hears as
    180 ms (its own smoothing keeps the first frames), longer than 150 ms and shorter than its 300 ms
    hangover. The first comes before 8 s of speech and ends nothing; the second ends the utterance there (a
    final with reason endpoint, the decode made in the pause) and the speech after it is the next final.
    Off, the VAD's hangover alone ends speech: one final."""
    gap = np.zeros(4800, np.float32)
    x = np.concatenate([sustained_voice(3.0), gap, sustained_voice(5.8), gap, sustained_voice(1.5),
                        np.zeros(16000, np.float32)])
    finals = [e for e in asr_events(x, interims=False, split_at_pause_after_s=split_s) if e["type"] == "transcript"]
    if split_s:
        assert [f["reason"] for f in finals] == ["endpoint", "endpoint"], finals
        assert 9100 <= finals[0]["end_ms"] <= 9400 and finals[0]["speculative"]
        assert finals[1]["start_ms"] == finals[0]["end_ms"] and finals[1]["end_ms"] > 10700
        assert [f["id"] for f in finals] == [0, 1]
    else:
        assert len(finals) == 1 and finals[0]["end_ms"] > 10700


def test_the_interim_replacing_a_skipped_one_goes_before_other_interims():
    """An interim skipped as stale (it waited past its budget in the queue) is replaced at once by one with the
    audio heard since, submitted at the overdue-interim priority: after finals, before every other interim,
    so the stream that waited is served next. (The skip is handed to the stream directly: queueing long
    enough for a real skip needs many streams.)"""
    from voxserve.server.scheduler import Outcome
    from voxserve.server.stages.asr import FINAL, INTERIM, OVERDUE_INTERIM

    async def go():
        s, stage = asr_session(interim_interval_ms=5000, interim_max_interval_ms=5000)   # none of its own
        sched = stage.schedulers["asr"]
        seen, submit = [], sched.submit

        def spy(payload, **kw):
            seen.append(kw["priority"])
            return submit(payload, **kw)
        sched.submit = spy
        sched.start()
        await feed(s, sustained_voice(1.5), pause=0.0)
        asr = s.streams["asr"]
        seg = asr.seg
        assert seg is not None and seen == []
        skipped = asyncio.get_running_loop().create_future()
        skipped.set_result(Outcome(None, 0.5, 0.0, 0, late=True, skipped=True))
        asr._interim_done(seg, seg.start + 8000, asr.ctx.clock(), skipped)   # covered 0.5 s; 1.5 s heard
        overdue = list(seen)
        await s.finish()
        await stage.stop()
        return overdue, drain(s)
    overdue, events = asyncio.run(go())
    assert overdue == [OVERDUE_INTERIM]
    assert any(e["type"] == "budget" and e["action"] == "skip" for e in events)
    assert FINAL < OVERDUE_INTERIM < INTERIM


@pytest.mark.parametrize("budget_ms,latest", [(200, True), (5000, True), (5000, False)])
def test_with_latest_audio_an_interim_that_waits_decodes_the_audio_heard_until_it_starts(budget_ms, latest):
    """asr.interim_latest_audio: an interim's audio is read when the scheduler takes it. Here both engine
    slots are held by other work while an interim waits 0.35 s; when it runs, it decodes the segment up to
    the newest audio (1.5 s heard), not the 0.3 s there was when it was queued, and only once; past its
    budget (200 ms) it is not skipped, since it is not stale. Without the option, the interim decodes what it
    was queued with (past its budget it would be skipped and replaced: the test above)."""
    import threading

    from voxserve.server.stages.asr import FINAL

    class GateModel(FakeModel):
        def __init__(self):
            super().__init__()
            self.gate = threading.Event()

        def transcribe(self, items, bucket_samples=0, hints=None):
            if len(items[0]) < 200:                   # the two blockers wait for the gate
                self.gate.wait(10)
            return super().transcribe(items, bucket_samples, hints)

    async def go():
        s, stage = asr_session(interim_interval_ms=300, interim_max_interval_ms=300, budget_partial_ms=budget_ms,
                               interim_latest_audio=latest)
        model = stage.model = GateModel()
        sched = stage.schedulers["asr"]
        sched.start()
        t = asyncio.get_running_loop().time() + 30
        blockers = [sched.submit(np.zeros(n, np.float32), deadline=t, priority=FINAL) for n in (123, 124)]
        await asyncio.sleep(0.05)                     # both slots busy
        submitted = []
        submit = sched.submit

        def spy(payload, **kw):
            if kw["priority"] != FINAL:
                submitted.append(len(payload[0]))
            return submit(payload, **kw)
        sched.submit = spy
        await feed(s, sustained_voice(1.5), pause=0.004)
        seg = s.streams["asr"].seg
        await asyncio.sleep(0.3)                      # past the interim's 200 ms budget
        model.gate.set()
        await asyncio.gather(*blockers)
        await asyncio.sleep(0.1)
        events, calls = drain(s), list(model.calls)
        await s.finish()
        await stage.stop()
        return submitted, calls, events, seg.start
    submitted, calls, events, start = asyncio.run(go())
    assert submitted and submitted[0] < 0.8 * 16000, submitted                    # queued early in the sound
    assert len(submitted) == 1, submitted
    newest = latest
    ran = [c[0] for c in calls if c[0] >= 200]
    assert ran == [24000 - start if newest else submitted[0]], (ran, start)   # decoded once
    interims = [e for e in events if e["type"] == "transcript_interim"]
    assert len(interims) == 1 and interims[0]["end_ms"] == (1500 if newest else (start + submitted[0]) / 16), interims
    assert not [e for e in events if e["type"] == "budget"]


def test_interims_are_ranked_by_the_users_wait_and_start_early_by_the_stages_latency():
    """Two rules shape what users see under load. (1) Among queued interims, the one whose stream last showed
    an update earliest goes first: its rank is that time + interim_max_interval_ms. (2) When the stage's
    recent interims took long (here 0.3 s, as other streams' decodes on a busy server), a stream's next decode
    is spaced at twice that latency, not at its own quick last one, and it is due early enough to be shown
    within interim_max_interval_ms of the last update: started at most 500 - 300 ms after it."""
    from voxserve.server.stages.asr import FINAL

    async def go():
        s, stage = asr_session(interim_interval_ms=100, interim_max_interval_ms=500, budget_partial_ms=5000)
        sched = stage.schedulers["asr"]
        seen, submit = [], sched.submit

        def spy(payload, **kw):
            asr = s.streams["asr"]
            if kw["priority"] != FINAL:
                seen.append((asr.ctx.clock(), asr.seg.shown_at, kw["rank"], len(payload[0])))
            return submit(payload, **kw)
        sched.submit = spy
        sched.start()
        stage.interim_latency_s = 0.3
        stage.observe_interim_latency = lambda seconds: None    # as if other streams' interims kept it there
        await feed(s, sustained_voice(3.0), pause=0.02)
        await s.finish()
        await stage.stop()
        return seen
    interims = asyncio.run(go())
    assert len(interims) >= 4
    for clock, shown_at, rank, _ in interims:
        assert rank == pytest.approx(shown_at + 0.5)
    waits = [b[0] - b[1] for b in interims[1:]]                 # from the last update to the next decode
    # due 500 ms less the stage's 300 ms after the last update (one 20 ms frame late at most, some slack
    # for a busy test machine), and not sooner: not at the stream's own quick cadence (100 ms)
    assert all(0.2 - 0.005 <= w <= 0.2 + 0.08 for w in waits), waits
