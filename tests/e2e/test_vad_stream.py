"""Real server (``voxserve serve``) + the project's client: VAD events on real recordings."""

import numpy as np
import pytest

from voxserve.clients.audiofile import load_audio
from voxserve.server.audio import StreamResampler
from voxserve.server.vad import VadSegmenter

from ..conftest import shared_or_skip
from .helpers import resampled_source, stream, vad_events

pytestmark = pytest.mark.slow


def test_jfk_vad_positions(vad_server, jfk_path, speech16k):
    res = stream(vad_server.url, load_audio(jfk_path), speed=0, frame_ms=100)
    assert res.close_code == 1000 and res.ready["config"]["sample_rate"] == 44100
    evs = res.of_type("vad")
    assert [e["event"] for e in evs][:1] == ["speech_start"] and evs[-1]["event"] == "speech_end"
    # Reference: the same samples (int16 stereo, averaged, resampled) through the segmenter offline.
    src = load_audio(jfk_path)
    x = np.frombuffer(src.data, "<i2").reshape(-1, 2).astype(np.float32).mean(axis=1) / 32768.0
    rs = StreamResampler(44100)
    seg = VadSegmenter()
    ref = [(e.kind, e.start / 16, e.end / 16 if e.end is not None else None)
           for e in seg.process(np.concatenate([rs.process(x), rs.finish()])) + seg.finish()]
    assert vad_events(res) == ref
    # Input-rate sample positions agree with the ms positions.
    for e in evs:
        assert abs(e["start_sample"] - e["start_ms"] * 44.1) <= 1
        assert e["latency"]["total_ms"] >= e["latency"]["compute_ms"] >= 0
    # Independent check: speech segments are much louder than the gaps.
    mask = np.zeros(len(speech16k), bool)
    for e in evs:
        if e["event"] == "speech_end":
            mask[int(e["start_ms"] * 16):int(e["end_ms"] * 16)] = True
    assert np.sqrt(np.mean(speech16k[mask] ** 2)) > 4 * np.sqrt(np.mean(speech16k[~mask] ** 2))


def test_vad_events_do_not_depend_on_frame_size(vad_server, jfk_path):
    src = resampled_source(jfk_path, 16000)
    results = {ms: vad_events(stream(vad_server.url, src, speed=0, frame_ms=ms)) for ms in (10, 20, 100, 1000)}
    assert len(results[20]) >= 2
    for ms, evs in results.items():
        assert evs == results[20], f"{ms} ms frames changed the VAD events"


def speech_mask(events, n_ms: int) -> np.ndarray:
    mask = np.zeros(n_ms, bool)
    for kind, start, end in events:
        if kind == "speech_end":
            mask[int(start):int(end)] = True
    return mask


def test_vad_events_stable_across_sample_rates(vad_server, jfk_path):
    """8/16/44.1/48 kHz versions of the same audio give the same speech segments.

    VAD runs on a common soxr-made 8 kHz band, so the rate itself does not matter; but each version
    is quantised to int16 at its own rate by the client, and webrtcvad's adaptive noise model can flip
    a frame that sits on the edge (JFK's 330 ms pause at 4.7 s is one frame longer than the 300 ms
    hangover, and can merge two segments). So: first start and last end within one VAD frame (30 ms)
    of the 16 kHz run's, and the speech/non-speech labelling of at least 95 % of the time identical.
    """
    ref = vad_events(stream(vad_server.url, resampled_source(jfk_path, 16000), speed=0, frame_ms=100))
    assert len(ref) >= 4
    ref_mask = speech_mask(ref, 11100)
    for rate in (8000, 44100, 48000):
        got = vad_events(stream(vad_server.url, resampled_source(jfk_path, rate), speed=0, frame_ms=100))
        assert abs(got[0][1] - ref[0][1]) <= 30 and abs(got[-1][2] - ref[-1][2]) <= 30, (rate, got, ref)
        agreement = np.mean(speech_mask(got, 11100) == ref_mask)
        assert agreement >= 0.95, (rate, agreement, got, ref)


def test_all_speech_files_give_speech_segments(vad_server, speech_manifest):
    rows = [r for r in speech_manifest if "alphanumeric" not in r["path"]]
    assert len(rows) >= 18
    for row in rows:
        path = shared_or_skip("eval", "speech", row["path"])
        src = load_audio(path, raw_rate=16000)
        res = stream(vad_server.url, src, speed=0, frame_ms=100)
        assert res.close_code == 1000, row["path"]
        kinds = [e["event"] for e in res.of_type("vad")]
        assert kinds and kinds[0] == "speech_start" and kinds[-1] == "speech_end", (row["path"], kinds)
        assert kinds.count("speech_start") == kinds.count("speech_end")


def test_json_subprotocol_with_raw_pcm_frames(vad_server, jfk_path):
    src = resampled_source(jfk_path, 16000)
    a = vad_events(stream(vad_server.url, src, speed=0, frame_ms=100, subprotocol="json", raw_frames=True))
    b = vad_events(stream(vad_server.url, src, speed=0, frame_ms=100))
    assert a == b and a
