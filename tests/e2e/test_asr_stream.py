"""Streaming ASR through a real server and the project's client."""

import numpy as np
import pytest

from voxserve.clients.audiofile import PcmSource, load_audio, pcm_from_array

from ..conftest import shared_or_skip, start_server
from .helpers import resampled_source, stream

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def asr_server(tmp_path_factory):
    heads = shared_or_skip("wakeword", "heads")
    srv = start_server(tmp_path_factory.mktemp("asr"), "--pipelines", "vad,wakeword,asr", "--wakeword-models",
                       str(heads), "--log-format", "text", "--max-frames-per-second", "1000", "--frame-burst", "5000",
                       "--no-admission")
    yield srv
    srv.stop()


def finals(res):
    return [e["text"] for e in res.of_type("transcript")]


def words(texts):
    return " ".join(texts).lower().replace(",", "").replace(".", "").split()


@pytest.mark.parametrize("latest", [False, True])
def test_jfk_finals_and_interims(asr_server, jfk_path, latest):
    """(``asr.interim_latest_audio``: interims read their audio when their decode starts; the same kind of
    results come back.)"""
    res = stream(asr_server.url, load_audio(jfk_path), pipelines=["asr"], speed=2.0, frame_ms=20,
                 options={"asr": {"interim_latest_audio": latest}})
    got = words(finals(res))
    assert "americans" in got and "country" in got, got
    ids = [e["id"] for e in res.of_type("transcript")]
    assert ids == list(range(len(ids)))
    for e in res.of_type("transcript"):
        assert e["end_ms"] > e["start_ms"] and set(e["latency"]) == {"queue_ms", "compute_ms", "total_ms"}
    interims = res.of_type("transcript_interim")
    assert interims and all(i["text"].startswith(i["stable_text"]) for i in interims)


def test_finals_do_not_depend_on_frame_size(asr_server, jfk_path):
    src = resampled_source(jfk_path, 16000)
    ref = finals(stream(asr_server.url, src, pipelines=["asr"], speed=0, frame_ms=100,
                        options={"asr": {"interims": False}}))
    assert ref
    for ms in (20, 1000):
        assert finals(stream(asr_server.url, src, pipelines=["asr"], speed=0, frame_ms=ms,
                             options={"asr": {"interims": False}})) == ref, ms


def test_stop_mid_utterance_delivers_the_final(asr_server, jfk_path):
    src = resampled_source(jfk_path, 16000)
    cut = PcmSource(src.data[: 16000 * 2 * 3], 16000, 1, "s16le")          # 3 s: mid-sentence
    res = stream(asr_server.url, cut, pipelines=["asr"], speed=0, frame_ms=100)
    [final] = res.of_type("transcript")
    assert final["reason"] == "stop" and "fellow" in final["text"].lower()
    assert res.close_code == 1000


def test_max_length_splits_long_speech(asr_server, jfk_path):
    res = stream(asr_server.url, resampled_source(jfk_path, 16000), pipelines=["asr"], speed=0, frame_ms=100,
                 options={"asr": {"max_segment_s": 3.0, "interims": False}, "vad": {"min_silence_ms": 2000}})
    reasons = [e["reason"] for e in res.of_type("transcript")]
    assert reasons.count("max_length") >= 2, reasons
    assert "country" in words(finals(res))


def test_noise_only_gives_no_text(asr_server):
    base = shared_or_skip("eval", "noise")
    for p in sorted(base.rglob("*")):
        if p.suffix not in (".wav", ".ogg", ".opus", ".flac"):
            continue
        res = stream(asr_server.url, load_audio(p), pipelines=["asr"], speed=0, frame_ms=100)
        assert not [t for t in finals(res) if t.strip()], (p.name, finals(res))


def test_wake_gated_transcribes_only_the_command(asr_server, jfk_path):
    heads = shared_or_skip("wakeword", "heads")
    cards = shared_or_skip("eval", "speech", "pocketsphinx-testdata", "cards", "003.wav")

    def pcm16(path):
        s = resampled_source(path, 16000)
        return np.frombuffer(s.data, "<i2").astype(np.float32) / 32768.0

    rng = np.random.default_rng(0)
    gap = lambda s: (rng.standard_normal(int(s * 16000)) * 3e-4).astype(np.float32)  # noqa: E731
    audio = np.concatenate([pcm16(jfk_path)[: 16000 * 7], gap(1.5), pcm16(heads / "positive.wav"), gap(0.4),
                            pcm16(cards), gap(1.5)])
    res = stream(asr_server.url, pcm_from_array(audio, 16000), pipelines=["wakeword", "asr"], speed=0, frame_ms=100,
                 options={"asr": {"mode": "after_wakeword"}, "wakeword": {"models": ["hey_livekit"]}})
    assert [e["name"] for e in res.of_type("wakeword")] == ["hey_livekit"]
    got = words(finals(res))
    assert "clubs" in got and "americans" not in got, got


def test_after_wakeword_needs_the_wakeword_pipeline(asr_server):
    import asyncio

    from voxserve.clients.client import VoxClient, VoxError

    async def go():
        async with VoxClient.connect(asr_server.url) as c:
            with pytest.raises(VoxError) as err:
                await c.start(pipelines=["asr"], options={"asr": {"mode": "after_wakeword"}})
            ev = err.value.event
            ready = await c.start(pipelines=["asr"])          # not fatal: a corrected start works
            return ev, ready
    ev, ready = asyncio.run(go())
    assert ev["code"] == "bad_value" and "wakeword" in ev["message"] and ready["type"] == "ready"


def test_resume_after_cut_connections_loses_and_doubles_nothing(asr_server, jfk_path):
    """Connections cut mid-utterance at three points: the transcript equals an uninterrupted run."""
    src = resampled_source(jfk_path, 16000)
    opts = {"asr": {"interims": False}}
    ref = stream(asr_server.url, src, pipelines=["asr"], speed=4.0, frame_ms=20, options=opts)
    cut = stream(asr_server.url, src, pipelines=["asr"], speed=4.0, frame_ms=20, options=opts,
                 cut_at=(70, 230, 390))
    assert cut.resumes == 3 and cut.close_code == 1000
    assert [(e["id"], e["text"]) for e in cut.of_type("transcript")] == \
        [(e["id"], e["text"]) for e in ref.of_type("transcript")]
    assert [(e["event"], e["start_ms"]) for e in cut.of_type("vad")] == \
        [(e["event"], e["start_ms"]) for e in ref.of_type("vad")]
    eids = [e["eid"] for e in cut.events if "eid" in e]
    assert len(eids) == len(set(eids))


def test_resume_of_unknown_session_is_a_typed_error(asr_server):
    import asyncio

    from voxserve.clients.client import VoxClient, VoxError

    async def go():
        async with VoxClient.connect(asr_server.url) as c:
            with pytest.raises(VoxError) as err:
                await c.resume("no-such-session", -1)
            return err.value.event
    ev = asyncio.run(go())
    assert ev["code"] == "unknown_session" and ev["fatal"] is False


def test_events_made_while_detached_are_replayed_after_resume(asr_server, jfk_path):
    """A final decoded while no connection is attached is replayed after the resume, and ``resumed``
    itself carries no event id (one newer than the replayed events made clients drop them)."""
    import asyncio

    from voxserve.clients.client import VoxClient

    frames = list(resampled_source(jfk_path, 16000).frames(20))

    async def go():
        async with VoxClient.connect(asr_server.url) as c:
            ready = await c.start(sample_rate=16000, pipelines=["asr"], options={"asr": {"interims": False}})
            for f in frames[:300]:                       # 6 s: the first sentence ends at about 4.8 s
                await c.send_audio(f)
            last = ready["eid"]
            async for ev in c.events():                  # the server has heard the sentence end ...
                last = ev.get("eid", last)
                assert ev["type"] != "transcript", "a final before its segment's speech_end"
                if ev["type"] == "vad" and ev["event"] == "speech_end":
                    break
            c.ws.transport.abort()                       # ... and is decoding its final: nobody is attached
        await asyncio.sleep(2.0)
        async with VoxClient.connect(asr_server.url) as c:
            resumed = await c.resume(ready["session_id"], last, ready["resume_token"])
            await c.stop()
            return last, resumed, [e async for e in c.events()]
    last, resumed, events = asyncio.run(go())
    assert "eid" not in resumed and resumed["replayed"] >= 1
    finals = [e for e in events if e["type"] == "transcript"]
    assert finals[0]["id"] == 0 and "americans" in finals[0]["text"].lower()
    assert finals[0]["eid"] > last                       # made while detached, delivered after the resume
