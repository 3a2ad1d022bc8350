"""Deterministic audio augmentation for training data: noise at an SNR, gain, synthetic reverberation."""

from __future__ import annotations

import numpy as np


def colored_noise(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """White, pink (1/f) or brown (1/f^2) noise with unit RMS."""
    white = rng.standard_normal(n)
    if kind == "white":
        x = white
    else:
        spec = np.fft.rfft(white)
        f = np.arange(spec.size, dtype=np.float64)
        f[0] = 1.0
        spec /= np.sqrt(f) if kind == "pink" else f
        x = np.fft.irfft(spec, n)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def synthetic_rir(rng: np.random.Generator, rt60: float, rate: int = 16000) -> np.ndarray:
    """Exponentially decaying noise tail after a unit direct path (a crude but honest room)."""
    n = int(rt60 * rate)
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 0.3
    tail[: int(0.003 * rate)] = 0.0
    tail[0] = 1.0
    return (tail / np.sqrt(np.sum(tail ** 2))).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    ps = np.mean(speech ** 2) + 1e-12
    pn = np.mean(noise ** 2) + 1e-12
    return speech + noise * np.sqrt(ps / (pn * 10 ** (snr_db / 10)))


def augment(rng: np.random.Generator, x: np.ndarray, noises: list[np.ndarray] | None = None) -> np.ndarray:
    """Random reverberation (40 %), additive noise at 5-30 dB SNR (80 %), gain -18..+3 dB."""
    y = x.astype(np.float32)
    if rng.random() < 0.4:
        y = np.convolve(y, synthetic_rir(rng, rng.uniform(0.15, 0.7)))[: len(y)]
    if rng.random() < 0.8:
        if noises and rng.random() < 0.5:
            src = noises[rng.integers(len(noises))]
            start = rng.integers(0, max(1, len(src) - len(y)))
            noise = np.resize(src[start:start + len(y)], len(y))
        else:
            noise = colored_noise(rng, len(y), rng.choice(["white", "pink", "brown"]))
        y = mix_at_snr(y, noise, rng.uniform(5, 30))
    y = y * 10 ** (rng.uniform(-18, 3) / 20)
    peak = np.max(np.abs(y)) if y.size else 0
    return (y / peak * 0.99 if peak > 0.99 else y).astype(np.float32)


class VoiceShifter:
    """Offline pitch/formant shifting with the project's own shifter (the shipped ONNX graph), for
    speaker diversity in training data. Output is aligned with and as long as the input."""

    def __init__(self) -> None:
        from voxserve.engines.factory import create_engine
        from voxserve.server.stages.vc import model_path

        self.engine = create_engine(model_path(), "onnxruntime-cpu")

    def __call__(self, x: np.ndarray, semitones: float, formant: float) -> np.ndarray:
        n_fft, hop, k = 512, 128, 2
        delay = n_fft - hop
        n = len(x) + delay
        blocks = -(-n // (hop * k))
        buf = np.concatenate([np.zeros(n_fft - hop, np.float32), x.astype(np.float32),
                              np.zeros(blocks * hop * k - len(x) + hop, np.float32)])
        state = {"prev_phase": np.zeros((1, 257), np.float32), "synth_phase": np.zeros((1, 257), np.float32),
                 "ola": np.zeros((1, delay), np.float32), "prev_gain": np.ones((1, 1), np.float32)}
        out = []
        for b in range(blocks):
            s = b * hop * k
            frames = np.stack([buf[s + i * hop: s + i * hop + n_fft] for i in range(k)])[None]
            o = self.engine.infer({"frames": frames, "semitones": np.array([[semitones]], np.float32),
                                   "formant": np.array([[formant]], np.float32),
                                   "gain_db": np.zeros((1, 1), np.float32), **state})
            state = {"prev_phase": o["next_prev_phase"], "synth_phase": o["next_synth_phase"],
                     "ola": o["next_ola"], "prev_gain": o["next_prev_gain"]}
            out.append(o["audio"][0])
        return np.concatenate(out)[delay:delay + len(x)]
