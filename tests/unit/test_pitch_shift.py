"""The pitch-shift model: torch reference vs the shipped ONNX graph, and its signal properties."""

import numpy as np
import pytest

from voxserve.engines.factory import create_engine
from voxserve.server.stages.vc import model_path

torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install 'voxserve[export]')")
from voxserve.models.pitch_shift import HOP, N_FFT, PitchShifter  # noqa: E402

NAMES = ["frames", "semitones", "formant", "gain_db", "prev_phase", "synth_phase", "ola", "prev_gain"]


def run(step, x, semitones, formant=0.0, gain_db=0.0, k=2):
    """Stream ``x`` (16 kHz) through ``step(feeds) -> outputs`` block by block; returns the output."""
    st = {k_: v.numpy() for k_, v in PitchShifter.initial_state(1).items()}
    buf = np.concatenate([np.zeros(N_FFT - HOP, np.float32), x])
    out = []
    for s in range(0, (len(x) // (HOP * k)) * HOP * k, HOP * k):
        frames = np.stack([buf[s + i * HOP: s + i * HOP + N_FFT] for i in range(k)])[None]
        feeds = {"frames": frames.astype(np.float32), "semitones": np.array([[semitones]], np.float32),
                 "formant": np.array([[formant]], np.float32), "gain_db": np.array([[gain_db]], np.float32), **st}
        o = step(feeds)
        st = {"prev_phase": o["next_prev_phase"], "synth_phase": o["next_synth_phase"], "ola": o["next_ola"],
              "prev_gain": o["next_prev_gain"]}
        out.append(o["audio"][0])
    return np.concatenate(out)


@pytest.fixture(scope="module")
def onnx_step():
    eng = create_engine(model_path(), "onnxruntime-cpu")
    return eng.infer


@pytest.fixture(scope="module")
def torch_step():
    m = PitchShifter().eval()

    def step(feeds):
        with torch.no_grad():
            outs = m(*[torch.from_numpy(feeds[n]) for n in NAMES])
        return dict(zip(["audio", "next_prev_phase", "next_synth_phase", "next_ola", "next_prev_gain"],
                        [o.numpy() for o in outs]))
    return step


def tone(freq, seconds=1.0, amp=0.3):
    t = np.arange(int(16000 * seconds)) / 16000
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_onnx_matches_torch_reference(onnx_step, torch_step, speech16k):
    """Per call the two agree to ~1e-6; over 2 s of streaming, float rounding in the accumulated
    synthesis phase grows to at most ~1e-3 (the difference stays > 45 dB below the signal)."""
    x = speech16k[: 16000 * 2]
    a, b = run(onnx_step, x, 4.0, 2.0, -3.0), run(torch_step, x, 4.0, 2.0, -3.0)
    np.testing.assert_allclose(a, b, atol=2e-3)
    assert 10 * np.log10(np.sum(b ** 2) / np.sum((a - b) ** 2)) > 45


def test_identity_reconstructs_the_input_delayed(onnx_step, speech16k):
    x = speech16k[: 16000 * 2]
    y = run(onnx_step, x, 0.0)
    d = N_FFT - HOP
    err = y[d:] - x[: len(y) - d]
    assert 10 * np.log10(np.sum(x[: len(y) - d] ** 2) / np.sum(err ** 2)) > 60     # dB


@pytest.mark.parametrize("semitones", [-7, -4, 4, 7, 12, -12])
def test_tone_frequency_moves_by_the_ratio(onnx_step, semitones):
    """A pure tone has no formants, so the envelope moves with it here (formant = semitones)."""
    f0 = 220.0
    y = run(onnx_step, tone(f0, 1.5), float(semitones), float(semitones))[4000:]
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak = np.argmax(spec) * 16000 / len(y)
    assert abs(1200 * np.log2(peak / (f0 * 2 ** (semitones / 12)))) < 15          # cents


def test_silence_in_silence_out_and_clipping_level_input_stays_finite(onnx_step):
    assert np.abs(run(onnx_step, np.zeros(8000, np.float32), 7.0)).max() < 1e-6    # below s16le's LSB
    loud = np.sign(tone(300, 1.0, 1.0)).astype(np.float32)                     # full-scale square wave
    y = run(onnx_step, loud, 12.0, -12.0, 20.0)
    assert np.isfinite(y).all() and np.abs(y).max() < 100


def test_batch_of_streams_equals_each_alone(onnx_step, speech16k):
    rng = np.random.default_rng(0)
    feeds = {"frames": (rng.standard_normal((3, 2, N_FFT)) * 0.1).astype(np.float32),
             "semitones": np.array([[4.0], [-7.0], [0.5]], np.float32), "formant": np.zeros((3, 1), np.float32),
             "gain_db": np.zeros((3, 1), np.float32),
             **{k: np.repeat(v.numpy(), 3, axis=0) for k, v in PitchShifter.initial_state(1).items()}}
    batched = onnx_step(feeds)["audio"]
    for i in range(3):
        single = onnx_step({k: v[i:i + 1] for k, v in feeds.items()})["audio"]
        np.testing.assert_allclose(batched[i:i + 1], single, atol=1e-5)


def test_mid_stream_parameter_change_has_no_click(onnx_step):
    """Change pitch and gain between blocks: no sample-to-sample jump beyond what the signal has."""
    x = tone(200, 2.0)
    st = {k: v.numpy() for k, v in PitchShifter.initial_state(1).items()}
    buf = np.concatenate([np.zeros(N_FFT - HOP, np.float32), x])
    out = []
    for i, s in enumerate(range(0, len(x) - 2 * HOP, 2 * HOP)):
        semi, gain = (0.0, 0.0) if i < 60 else (5.0, -6.0)
        frames = np.stack([buf[s + j * HOP: s + j * HOP + N_FFT] for j in range(2)])[None].astype(np.float32)
        o = onnx_step({"frames": frames, "semitones": np.array([[semi]], np.float32),
                       "formant": np.zeros((1, 1), np.float32), "gain_db": np.array([[gain]], np.float32), **st})
        st = {"prev_phase": o["next_prev_phase"], "synth_phase": o["next_synth_phase"], "ola": o["next_ola"],
              "prev_gain": o["next_prev_gain"]}
        out.append(o["audio"][0])
    y = np.concatenate(out)[1000:]
    jumps = np.abs(np.diff(y))
    max_slope = 2 * np.pi * 200 * 2 ** (5 / 12) / 16000 * 0.3 * 1.5                 # steepest legit step, +50 %
    assert jumps.max() < max_slope, jumps.max()
