"""Ring buffer, resampler, VAD segmenter and outbox as pure units."""

import numpy as np
import pytest

from voxserve.server.audio import RingBuffer, StreamResampler
from voxserve.server.outbox import Outbox, SlowConsumer
from voxserve.server.vad import VadSegmenter


def test_ring_absolute_indices_and_wraparound():
    r = RingBuffer(10)
    r.append(np.arange(7, dtype=np.float32))
    r.append(np.arange(7, 14, dtype=np.float32))
    assert r.end == 14 and r.start == 4
    np.testing.assert_array_equal(r.read(4, 14), np.arange(4, 14))
    np.testing.assert_array_equal(r.read(10, 12), [10, 11])
    with pytest.raises(IndexError):
        r.read(3, 5)                    # overwritten
    with pytest.raises(IndexError):
        r.read(12, 15)                  # not yet written


def test_ring_zero_pads_before_stream_start_and_handles_oversized_append():
    r = RingBuffer(4)
    r.append(np.array([1, 2], np.float32))
    np.testing.assert_array_equal(r.read(-2, 2), [0, 0, 1, 2])
    r.append(np.arange(10, dtype=np.float32))
    assert r.end == 12
    np.testing.assert_array_equal(r.read(8, 12), [6, 7, 8, 9])


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampler_output_is_independent_of_chunking(rate):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(rate * 2) * 0.1).astype(np.float32)

    def run(chunk):
        rs = StreamResampler(rate)
        parts = [rs.process(x[i:i + chunk]) for i in range(0, len(x), chunk)]
        return np.concatenate(parts + [rs.finish()])

    a, b = run(rate // 100), run(rate)
    assert len(a) == 32000
    np.testing.assert_array_equal(a, b)


def test_resampler_anti_aliases_out_of_band_tone():
    rate = 48000
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 12000 * t)).astype(np.float32)   # above the 8 kHz Nyquist of 16 kHz
    rs = StreamResampler(rate)
    y = np.concatenate([rs.process(tone), rs.finish()])
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) < 1e-3                # index picking would alias to 4 kHz


def test_resampler_keeps_positions():
    rate = 44100
    x = np.zeros(rate, np.float32)
    x[22050] = 1.0                                                     # impulse at 0.5 s
    rs = StreamResampler(rate)
    y = np.concatenate([rs.process(x[i:i + 441]) for i in range(0, rate, 441)] + [rs.finish()])
    assert abs(int(np.argmax(np.abs(y))) - 8000) <= 1


def test_vad_segmenter_hysteresis_on_synthetic_decisions():
    seg = VadSegmenter(frame_ms=30, min_speech_ms=90, min_silence_ms=300)
    decisions = [False] * 5 + [True] * 2 + [False] * 3 + [True] * 20 + [False] * 9 + [False] * 5
    events = [seg._step(d) for d in decisions]
    events = [e for e in events if e]
    fl = 480
    assert [e.kind for e in events] == ["speech_start", "speech_end"]
    assert events[0].start == 10 * fl and events[0].decided_at == 13 * fl      # 3 frames = 90 ms of speech
    assert events[1].end == 30 * fl and events[1].decided_at == 40 * fl       # 10 frames = 300 ms hangover


def test_vad_on_real_speech_is_chunking_invariant(speech16k):
    def run(chunk):
        seg = VadSegmenter()
        evs = []
        for i in range(0, len(speech16k), chunk):
            evs += seg.process(speech16k[i:i + chunk])
        return evs + seg.flush()

    ref = run(160)
    assert len(ref) >= 2 and ref[0].kind == "speech_start"
    for chunk in (320, 1600, 16000, 7):
        assert run(chunk) == ref


def test_vad_segments_are_louder_than_gaps(speech16k):
    seg = VadSegmenter()
    evs = seg.process(speech16k) + seg.flush()
    mask = np.zeros(len(speech16k), bool)
    for e in evs:
        if e.kind == "speech_end":
            mask[e.start:e.end] = True
    rms_in = np.sqrt(np.mean(speech16k[mask] ** 2))
    rms_out = np.sqrt(np.mean(speech16k[~mask] ** 2))
    assert mask.mean() > 0.5 and rms_in > 4 * rms_out


def test_outbox_drops_stale_droppables_never_finals():
    ob = Outbox(soft=3, hard=5)
    ob.put({"n": 1}, droppable=True)
    ob.put({"n": 2}, droppable=False)
    ob.put({"n": 3}, droppable=True)
    assert ob.put({"n": 4}, droppable=False) == {"n": 1}     # n=1 dropped
    assert ob.put({"n": 5}, droppable=False) == {"n": 3}     # n=3 dropped
    ob.put({"n": 6}, droppable=False)                    # nothing droppable left: grows up to hard
    ob.put({"n": 7}, droppable=False)
    assert len(ob) == 5
    with pytest.raises(SlowConsumer):
        ob.put({"n": 8}, droppable=False)
    assert [ob.pop()["n"] for _ in range(len(ob))] == [2, 4, 5, 6, 7]
    assert ob.dropped == 2


def test_halfband_decimator_exact_under_chunking_aligned_and_anti_aliased():
    from voxserve.server.vad import HalfbandDecimator

    rng = np.random.default_rng(0)
    x = rng.standard_normal(32000).astype(np.float32)

    def run(sig, chunk):
        d = HalfbandDecimator()
        return np.concatenate([d.process(sig[i:i + chunk]) for i in range(0, len(sig), chunk)] + [d.finish()])

    np.testing.assert_array_equal(run(x, 320), run(x, 7))
    imp = np.zeros(4000, np.float32)
    imp[1000] = 1.0
    assert int(np.argmax(run(imp, 160))) == 500                  # output m is aligned with input 2m
    t = np.arange(16000) / 16000
    assert np.sqrt(np.mean(run(np.sin(2 * np.pi * 5000 * t).astype(np.float32), 320)[200:-200] ** 2)) < 1e-3
    assert np.sqrt(np.mean(run(np.sin(2 * np.pi * 1000 * t).astype(np.float32), 320)[200:-200] ** 2)) > 0.7
