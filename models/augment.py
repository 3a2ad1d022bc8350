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
