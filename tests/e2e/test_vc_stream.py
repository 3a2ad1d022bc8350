"""Voice conversion through a real server: audio events, alignment, chunking invariance, updates."""

import asyncio

import numpy as np
import pytest

from voxserve.clients.client import VoxClient

from ..conftest import start_server
from .helpers import resampled_source, stream

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vc_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("vc"), "--pipelines", "vad,vc", "--log-format", "text",
                       "--max-frames-per-second", "2000", "--frame-burst", "10000", "--no-admission")
    yield srv
    srv.stop()


def audio_out(res):
    evs = res.of_type("audio")
    assert [e["seq"] for e in evs] == list(range(len(evs)))
    for a, b in zip(evs, evs[1:]):
        assert a["end_sample"] == b["start_sample"] or abs(a["end_ms"] - b["start_ms"]) < 1e-6
    return np.concatenate([np.frombuffer(e["pcm"], "<i2") for e in evs]), evs


def test_output_aligned_same_length_and_chunking_invariant(vc_server, jfk_path):
    src = resampled_source(jfk_path, 16000)
    ref, evs = audio_out(stream(vc_server.url, src, pipelines=["vc"], speed=0, frame_ms=100,
                                options={"vc": {"semitones": -4.0}}))
    assert len(ref) == len(src.data) // 2 and evs[-1]["end_ms"] == pytest.approx(len(ref) / 16)
    for ms in (10, 1000):
        got, _ = audio_out(stream(vc_server.url, src, pipelines=["vc"], speed=0, frame_ms=ms,
                                  options={"vc": {"semitones": -4.0}}))
        np.testing.assert_array_equal(got, ref)


def test_output_rate_and_realtime_latency(vc_server, jfk_path):
    src = resampled_source(jfk_path, 48000)
    cut = type(src)(src.data[: 48000 * 2 * 3], 48000, 1, "s16le")
    res = stream(vc_server.url, cut, pipelines=["vc"], speed=1.0, frame_ms=20, output_sample_rate=24000)
    pcm, evs = audio_out(res)
    assert all(e["sample_rate"] == 24000 and e["converted"] for e in evs)
    assert len(pcm) == 24000 * 3


def test_silence_returns_silence(vc_server):
    from voxserve.clients.audiofile import pcm_from_array
    pcm, _ = audio_out(stream(vc_server.url, pcm_from_array(np.zeros(16000), 16000), pipelines=["vc"], speed=0,
                              frame_ms=100))
    assert len(pcm) == 16000 and not pcm.any()


@pytest.fixture(scope="module")
def small_outbox_server(tmp_path_factory):
    """An outbox of 16/64 events and no message-rate limit to speak of: a client can outrun the writer."""
    srv = start_server(tmp_path_factory.mktemp("vc-small"), "--pipelines", "vad,vc", "--log-format", "text",
                       "--outbox-soft", "16", "--outbox-hard", "64", "--no-admission",
                       "--max-frames-per-second", "2000", "--frame-burst", "10000")
    yield srv
    srv.stop()


def test_client_faster_than_real_time_loses_no_converted_audio(small_outbox_server, jfk_path):
    """Lossless (the default) with 10 ms frames sent as fast as allowed: conversion falls behind the input
    and the outbox passes its soft limit; the server stops reading input instead of shedding converted
    blocks (what used to drop hundreds of blocks as stale): every sample comes back converted, in order."""
    src = resampled_source(jfk_path, 16000)
    res = stream(small_outbox_server.url, src, pipelines=["vc"], speed=0, frame_ms=10, output_sample_rate=48000,
                 options={"vc": {"semitones": 3.0}})
    assert res.close_code == 1000, res.fatal
    audio = res.of_type("audio")
    assert [e["seq"] for e in audio] == list(range(len(audio)))
    assert sum(len(e["pcm"]) // 2 for e in audio) == len(src.data) // 2 * 3          # 16 -> 48 kHz, all of it
    assert all(e["converted"] and "dropped" not in e for e in audio)
    assert res.of_type("stopped")[0]["dropped_by_type"] == {}
    metrics = small_outbox_server.get_text("/metrics")
    assert float(next(ln for ln in metrics.splitlines() if ln.startswith("voxserve_backpressure_total"))
                 .split()[-1]) > 0


def test_realtime_delivery_sheds_stale_blocks_and_says_how_many(small_outbox_server, jfk_path):
    """vc.delivery=realtime (live playback): 11 s sent at once are all late, pass through at once, and the
    stale ones are shed for the client that reads later; it is told how many, per block and in total."""
    src = resampled_source(jfk_path, 16000)

    async def go():
        async with VoxClient.connect(small_outbox_server.url) as c:
            await c.start(sample_rate=16000, pipelines=["vc"], output_sample_rate=48000,
                          options={"vc": {"delivery": "realtime"}})
            for f in src.frames(100):
                await c.send_audio(f)
            await asyncio.sleep(2.0)                 # not reading while the blocks come out
            await c.stop()
            return [e async for e in c.events()], c.close_code
    events, code = asyncio.run(go())
    assert code == 1000
    audio = [e for e in events if e["type"] == "audio"]
    seqs = [e["seq"] for e in audio]
    missing = (seqs[-1] + 1) - len(seqs)
    assert missing > 0, "the slow reader should have lost stale blocks"
    counts = [e.get("dropped", 0) for e in audio]        # the running count of shed blocks when each was queued
    assert seqs == sorted(seqs) and counts == sorted(counts) and 0 < counts[-1] <= missing
    stopped = next(e for e in events if e["type"] == "stopped")
    assert stopped["dropped_by_type"].get("audio") == missing


def test_update_mid_stream(vc_server, jfk_path):
    src = resampled_source(jfk_path, 16000)
    frames = list(src.frames(20))

    async def go(start_opts, update):
        async with VoxClient.connect(vc_server.url) as c:
            await c.start(sample_rate=16000, pipelines=["vc"], options={"vc": start_opts})
            for i, f in enumerate(frames[:150]):
                if i == 75 and update:
                    await c.update({"vc": update})
                await c.send_audio(f)
            await c.stop()
            return [e async for e in c.events()]
    def output(evs):
        assert any(e["type"] == "updated" for e in evs)
        pcm = np.concatenate([np.frombuffer(e["pcm"], "<i2") for e in evs if e["type"] == "audio"])
        assert len(pcm) == 150 * 320
        return pcm.astype(np.float32) / 32768

    x = np.frombuffer(b"".join(frames[:150]), "<i2").astype(np.float32) / 32768
    before, after = slice(int(0.2 * 16000), int(1.4 * 16000)), slice(int(1.7 * 16000), int(3.0 * 16000))
    # The update applies from where it was sent (frame 75 = 1.5 s), not from whatever block conversion was on.
    # Gain alone (0 semitones is an identity): the input's level before, 6 dB below it after.
    y = output(asyncio.run(go({"semitones": 0.0}, {"gain_db": -6.0})))
    level = [20 * np.log10(np.sqrt(np.mean(y[s] ** 2)) / np.sqrt(np.mean(x[s] ** 2))) for s in (before, after)]
    assert abs(level[0]) < 0.5 and abs(level[1] + 6.0) < 0.5, level
    # Pitch alone: unchanged before, up 7 semitones (x 1.50) after, by the median F0 of voiced 40 ms frames.
    y = output(asyncio.run(go({"semitones": 0.0}, {"semitones": 7.0})))
    ratio = [median_f0(y[s]) / median_f0(x[s]) for s in (before, after)]
    assert abs(ratio[0] - 1.0) < 0.06 and abs(ratio[1] - 2 ** (7 / 12)) < 0.1, ratio


def median_f0(x: np.ndarray, rate: int = 16000) -> float:
    """Median autocorrelation pitch (70-700 Hz) of the loud 40 ms frames of ``x``."""
    n = int(0.04 * rate)
    frames = [x[i:i + n] for i in range(0, len(x) - n, n // 2)]
    loud = max(float(np.sqrt(np.mean(f ** 2))) for f in frames) * 0.3
    f0s = []
    for f in frames:
        if np.sqrt(np.mean(f ** 2)) < loud:
            continue
        f = f - f.mean()
        ac = np.correlate(f, f, "full")[n - 1:]
        lo, hi = rate // 700, rate // 70
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            f0s.append(rate / lag)
    assert len(f0s) >= 5, "too few voiced frames to measure pitch"
    return float(np.median(f0s))
