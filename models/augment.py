"""Deterministic audio augmentation for training data: noise at an SNR, gain, synthetic reverberation.

Besides stationary coloured noise, :func:`background_bank` makes the kinds of non-stationary background
that real devices hear (and that the evaluation's recorded noise contains): speech babble from several
synthetic talkers, plucked-string music, and taps/knocks. All are synthesised here from a seed; no
recorded noise is used for training (the recordings in ``../shared/eval`` are kept for evaluation).
"""

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


def plucked_music(rng: np.random.Generator, n: int, rate: int = 16000) -> np.ndarray:
    """Random plucked-string notes (decaying harmonics, guitar-like), overlapping, unit RMS."""
    y = np.zeros(n, np.float64)
    t_note = np.arange(int(1.5 * rate)) / rate
    pos = 0
    while pos < n:
        f0 = 82.4 * 2 ** (rng.integers(0, 36) / 12)                     # E2 .. E5
        decay = rng.uniform(1.5, 6.0)
        note = sum((rng.uniform(0.2, 1.0) / h) * np.sin(2 * np.pi * f0 * h * t_note + rng.uniform(0, 6.28))
                   * np.exp(-decay * h ** 0.5 * t_note) for h in range(1, 9) if f0 * h < rate / 2)
        end = min(n, pos + len(t_note))
        y[pos:end] += note[: end - pos] * rng.uniform(0.3, 1.0)
        pos += int(rng.uniform(0.12, 0.6) * rate)
    return (y / (np.sqrt(np.mean(y ** 2)) + 1e-12)).astype(np.float32)


def taps(rng: np.random.Generator, n: int, rate: int = 16000) -> np.ndarray:
    """Knocks, taps and clicks: short resonant decaying bursts at random times, unit RMS."""
    y = np.zeros(n, np.float64)
    for _ in range(max(1, int(n / rate * rng.uniform(1, 6)))):
        length = int(rng.uniform(0.01, 0.15) * rate)
        t = np.arange(length) / rate
        burst = rng.standard_normal(length) * np.exp(-t / rng.uniform(0.005, 0.04))
        burst += np.sin(2 * np.pi * rng.uniform(150, 3000) * t) * np.exp(-t / rng.uniform(0.01, 0.05))
        at = int(rng.integers(0, max(1, n - length)))
        y[at:at + length] += burst * rng.uniform(0.2, 1.0)
    return (y / (np.sqrt(np.mean(y ** 2)) + 1e-12)).astype(np.float32)


def _unit(y: np.ndarray) -> np.ndarray:
    return (y / (np.sqrt(np.mean(y ** 2)) + 1e-12)).astype(np.float32)


def _smooth_envelope(rng: np.random.Generator, n: int, rate_hz: float, rate: int = 16000) -> np.ndarray:
    """A random positive envelope that changes about ``rate_hz`` times a second (linear interpolation)."""
    knots = max(2, int(n / rate * rate_hz) + 2)
    return np.interp(np.arange(n), np.linspace(0, n, knots), rng.uniform(0.0, 1.0, knots) ** 2)


def _band(x: np.ndarray, lo: float, hi: float, rate: int = 16000) -> np.ndarray:
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / rate)
    spec[(f < lo) | (f > hi)] = 0
    return np.fft.irfft(spec, len(x))


def rub(rng: np.random.Generator, n: int, rate: int = 16000) -> np.ndarray:
    """Handling noise (a finger or cloth rubbing the microphone): band-limited noise under a fast,
    irregular envelope, unit RMS."""
    lo = rng.uniform(50, 800)
    y = _band(rng.standard_normal(n), lo, lo * rng.uniform(3, 12), rate) * _smooth_envelope(rng, n, rng.uniform(3, 15))
    return _unit(y)


def rumble(rng: np.random.Generator, n: int, rate: int = 16000) -> np.ndarray:
    """Vehicle / street ambience: low-passed brown noise with a slowly wandering engine tone and its
    harmonics, unit RMS."""
    t = np.arange(n) / rate
    f0 = rng.uniform(25, 90) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.05, 0.4) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    engine = sum(rng.uniform(0.2, 1.0) / h * np.sin(h * phase) for h in range(1, 6))
    y = _unit(_band(colored_noise(rng, n, "brown"), 20, rng.uniform(400, 2000), rate)) + 0.5 * _unit(engine)
    return _unit(y * (0.6 + 0.4 * _smooth_envelope(rng, n, 0.5)))


def calls(rng: np.random.Generator, n: int, rate: int = 16000) -> np.ndarray:
    """Animal-like calls (clucks, bleats, chirps): harmonic bursts with fast pitch glides and vibrato
    at random times, unit RMS."""
    y = np.zeros(n, np.float64)
    for _ in range(max(1, int(n / rate * rng.uniform(0.5, 4)))):
        length = int(rng.uniform(0.05, 0.8) * rate)
        t = np.arange(length) / rate
        f = np.geomspace(rng.uniform(200, 1500), rng.uniform(200, 3000), length)
        f = f * (1 + rng.uniform(0, 0.08) * np.sin(2 * np.pi * rng.uniform(4, 30) * t))
        phase = 2 * np.pi * np.cumsum(f) / rate
        env = np.clip(np.sin(np.pi * t / t[-1]), 0.0, None) ** rng.uniform(0.5, 2)
        burst = sum(rng.uniform(0.1, 1.0) / h * np.sin(h * phase) for h in range(1, 5)) * env
        at = int(rng.integers(0, max(1, n - length)))
        y[at:at + length] += burst[: n - at] * rng.uniform(0.3, 1.0)
    return _unit(y)


def babble(rng: np.random.Generator, n: int, talkers: list[np.ndarray]) -> np.ndarray:
    """2-5 overlapping talkers from ``talkers`` (16 kHz clips), each looped from a random offset, unit RMS."""
    y = np.zeros(n, np.float64)
    for _ in range(int(rng.integers(2, 6))):
        src = talkers[int(rng.integers(len(talkers)))]
        start = int(rng.integers(len(src)))
        y += np.resize(np.roll(src, -start), n) * rng.uniform(0.5, 1.0)
    return (y / (np.sqrt(np.mean(y ** 2)) + 1e-12)).astype(np.float32)


BACKGROUND_KINDS = ("babble", "music", "taps", "rub", "rumble", "calls")


def background_bank(rng: np.random.Generator, talkers: list[np.ndarray], per_kind: int = 40,
                    seconds: float = 6.0, kinds: tuple[str, ...] = ("babble", "music", "taps")) -> list[np.ndarray]:
    """``per_kind`` unit-RMS clips of each of ``kinds`` (see ``BACKGROUND_KINDS``), for :func:`augment`'s
    ``noises``; ``talkers`` (16 kHz speech clips) are needed only for babble."""
    n = int(seconds * 16000)
    makers = {"babble": lambda: babble(rng, n, talkers), "music": lambda: plucked_music(rng, n),
              "taps": lambda: taps(rng, n), "rub": lambda: rub(rng, n), "rumble": lambda: rumble(rng, n),
              "calls": lambda: calls(rng, n)}
    unknown = set(kinds) - set(makers)
    if unknown:
        raise ValueError(f"unknown background kinds {sorted(unknown)}; known: {', '.join(BACKGROUND_KINDS)}")
    return [makers[k]() for k in kinds for _ in range(per_kind)]


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


def augment(rng: np.random.Generator, x: np.ndarray, noises: list[np.ndarray] | None = None,
            speech: tuple[int, int] | None = None) -> np.ndarray:
    """Random reverberation (40 %), additive noise at 5-30 dB SNR (80 %), gain -18..+3 dB.

    The noise covers all of ``x``; its level is set against the power of ``x[speech[0]:speech[1]]``
    (samples) when given, else of all of ``x`` (a stream with a quiet lead-in then hears the same SNR
    during the speech as a bare clip would)."""
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
        ref = y if speech is None else y[speech[0]:speech[1]]
        ps = np.mean(ref ** 2) + 1e-12
        pn = np.mean(noise ** 2) + 1e-12
        y = y + noise * np.sqrt(ps / (pn * 10 ** (rng.uniform(5, 30) / 10)))
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
