"""Natural-voice clips and non-speech sounds for wakeword training and evaluation.

- :func:`kokoro_requests`: what the Kokoro voice says for one split, drawn from its own seeded generator
  (so the list is fixed by (phrase, seed, split, counts) and a cache warmed once serves every later run):
  the phrase (voice, blend and speed at random; a filler before it and a command after it as separate clips
  in the same voice, joined without a pause by :func:`join_positive`), confusable sentences and ordinary
  sentences. ``split="train"`` speaks with :data:`kokoro.TRAIN_VOICES` and their blends only,
  ``"eval"`` with :data:`kokoro.HELD_OUT_VOICES` and theirs, and the texts come from disjoint lists
  (``wakeword_text``), so no evaluation clip shares a voice or a sentence with training.
- :func:`tones`: what a room hears that is not speech but excites a speech model: pure and stacked tones,
  linear and logarithmic frequency sweeps, chirps, sirens, DTMF and beeps (a pure frequency sweep scored 0.96
  on an earlier head).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from . import kokoro, tts, wakeword_text

RATE = 16000


@dataclass(frozen=True)
class PositiveRequest:
    before: tts.Voice | None
    before_text: str
    phrase: tts.Voice
    after: tts.Voice | None
    after_text: str
    lead_s: float        # silence/noise before the first word (short ones: a phrase at the start of a stream)


def _kvoice(rng: random.Random, voices: list[str]) -> tts.Voice:
    return tts.Voice("kokoro", kokoro.blend(rng, voices, 0.5), round(rng.uniform(0.8, 1.25), 3), 0.0)


def positive_requests(rng: random.Random, phrase: str, n: int, voice_of, split: str,
                      start_share: float = 0.3) -> list[PositiveRequest]:
    """``n`` positives: ``voice_of(rng)`` says the phrase (with a filler before / a command after, in the same
    voice, per :func:`wakeword_text.positive_texts`); a share ``start_share`` starts 0-0.4 s into its stream."""
    out = []
    for _ in range(n):
        before, _, after = wakeword_text.positive_texts(rng, phrase, split)
        v = voice_of(rng)
        lead = rng.uniform(0.0, 0.4) if rng.random() < start_share else rng.uniform(0.5, 1.6)
        out.append(PositiveRequest(v if before else None, before, v, v if after else None, after, round(lead, 3)))
    return out


@dataclass
class KokoroRequests:
    positives: list[PositiveRequest]
    confusable: list[tuple[str, tts.Voice]]
    ordinary: list[tuple[str, tts.Voice]]

    def all_clips(self, phrase: str) -> list[tuple[str, tts.Voice]]:
        """Every (text, voice) this set synthesises (to warm the cache)."""
        clips = []
        for p in self.positives:
            clips.append((phrase, p.phrase))
            if p.before:
                clips.append((p.before_text, p.before))
            if p.after:
                clips.append((p.after_text, p.after))
        return clips + self.confusable + self.ordinary


def kokoro_requests(phrase: str, seed: int, split: str, positives: int, confusable: int,
                    ordinary: int) -> KokoroRequests:
    if split not in ("train", "eval"):
        raise ValueError("split is 'train' or 'eval'")
    voices = kokoro.TRAIN_VOICES if split == "train" else kokoro.HELD_OUT_VOICES
    rng = random.Random(f"kokoro-{split}-{seed}")
    pos = positive_requests(rng, phrase, positives, lambda r: _kvoice(r, voices), split)
    conf = [(t, _kvoice(rng, voices)) for t in wakeword_text.confusable_sentences(rng, phrase, confusable, split)]
    sents = [(tts.random_sentence(rng), _kvoice(rng, voices)) for _ in range(ordinary)]
    return KokoroRequests(pos, conf, sents)


def synth_positives(reqs: list[PositiveRequest], phrase: str, workers: int = 2):
    """Per request: (before clip or None, phrase clip, after clip or None), synthesised in one batch."""
    texts, voices, where = [], [], []
    for i, p in enumerate(reqs):
        for part, v, t in (("before", p.before, p.before_text), ("phrase", p.phrase, phrase),
                           ("after", p.after, p.after_text)):
            if v is not None:
                texts.append(t)
                voices.append(v)
                where.append((i, part))
    clips = tts.synth_many(texts, voices, workers=workers)
    out = [{"before": None, "phrase": None, "after": None} for _ in reqs]
    for (i, part), clip in zip(where, clips):
        out[i][part] = clip
    return [(o["before"], o["phrase"], o["after"]) for o in out]


def join_positive(rng: np.random.Generator, before, clip, after, max_gap_s: float = 0.06):
    """The spoken words as one clip, with gaps of 0-``max_gap_s`` (no pause: one breath), and the sample where
    the phrase ends inside it."""
    parts, end = [], 0
    if before is not None:
        parts += [kokoro.trim(before), np.zeros(int(rng.uniform(0.05, 0.25) * RATE), np.float32)]
    phrase = kokoro.trim(clip)
    parts.append(phrase)
    end = sum(len(p) for p in parts)
    if after is not None:
        parts += [np.zeros(int(rng.uniform(0.0, max_gap_s) * RATE), np.float32), kokoro.trim(after)]
    return np.concatenate(parts).astype(np.float32), end


def tones(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """``seconds`` of non-speech sounds (one kind per 1-4 s piece, unit peak, random level per piece)."""
    n_total = int(seconds * RATE)
    out = np.zeros(n_total, np.float32)
    pos = 0
    while pos < n_total:
        n = min(int(rng.uniform(1.0, 4.0) * RATE), n_total - pos)
        t = np.arange(n) / RATE
        kind = int(rng.integers(7))
        if kind == 0:                                           # pure tone, maybe with harmonics
            f = rng.uniform(100, 4000)
            y = sum(rng.uniform(0.2, 1.0) / (h + 1) * np.sin(2 * np.pi * f * (h + 1) * t) for h in range(int(rng.integers(1, 4))))
        elif kind == 1:                                         # linear sweep
            f0, f1 = rng.uniform(80, 5000, 2)
            y = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1] + 1e-9)))
        elif kind == 2:                                         # logarithmic sweep
            f0, f1 = rng.uniform(80, 5000, 2)
            k = np.log(f1 / f0) / (t[-1] + 1e-9)
            y = np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)
        elif kind == 3:                                         # repeated short chirps
            period = rng.uniform(0.1, 0.6)
            tt = np.mod(t, period)
            f0, f1 = rng.uniform(300, 5000, 2)
            y = np.sin(2 * np.pi * (f0 * tt + (f1 - f0) * tt ** 2 / (2 * period))) * (tt < period * 0.6)
        elif kind == 4:                                         # siren: frequency wobbling
            fc, depth, rate = rng.uniform(400, 1500), rng.uniform(100, 600), rng.uniform(0.3, 4)
            y = np.sin(2 * np.pi * np.cumsum(fc + depth * np.sin(2 * np.pi * rate * t)) / RATE)
        elif kind == 5:                                         # DTMF-like key presses
            lows, highs = [697, 770, 852, 941], [1209, 1336, 1477, 1633]
            y = np.zeros(n)
            for start in range(0, n, int(0.2 * RATE)):
                seg = slice(start, min(n, start + int(0.1 * RATE)))
                y[seg] = np.sin(2 * np.pi * rng.choice(lows) * t[seg]) + np.sin(2 * np.pi * rng.choice(highs) * t[seg])
        else:                                                   # beeps and alarms
            f, on = rng.uniform(500, 3500), rng.uniform(0.05, 0.4)
            y = np.sin(2 * np.pi * f * t) * (np.mod(t, on * 2) < on)
        y = np.asarray(y, np.float64)
        peak = np.max(np.abs(y)) or 1.0
        out[pos:pos + n] = (y / peak * 10 ** (rng.uniform(-30, -3) / 20)).astype(np.float32)
        pos += n
    return out


@dataclass(frozen=True)
class EvalPositive:
    """An evaluation positive spoken as one utterance (``text`` holds the phrase with its filler and command,
    synthesised together: coarticulated, unlike training's joined clips)."""

    text: str
    voice: tts.Voice
    kind: str            # "natural" (held-out Kokoro voices) or "synthetic"


def eval_kokoro_requests(phrase: str, seed: int, positives: int, confusable: int):
    """(positives, confusable sentences) in held-out Kokoro voices and blends of them, from the eval lists."""
    rng = random.Random(f"kokoro-eval-{seed}")
    voices = kokoro.HELD_OUT_VOICES
    pos = []
    for _ in range(positives):
        before, _, after = wakeword_text.positive_texts(rng, phrase, "eval")
        text = ", ".join(t for t in (before, phrase, after) if t)
        pos.append(EvalPositive(text, _kvoice(rng, voices), "natural"))
    conf = [(t, _kvoice(rng, voices)) for t in wakeword_text.confusable_sentences(rng, phrase, confusable, "eval")]
    return pos, conf
