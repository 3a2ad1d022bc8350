"""Evaluate a wakeword head: false rejections on held-out voices, false accepts per hour on negatives.

Positives: the phrase spoken by voices the trainer never used (``HELD_OUT_VARIANTS`` of espeak-ng and
flite's ``slt``), reverberated and mixed with the real recorded noise of ``../shared/eval/noise`` at
5-20 dB SNR, each in its own 4 s stream. A positive counts as detected if the head fires (score >=
threshold, the server's patience 1) at any step from the phrase start to 1 s after its end.
Negatives: every recording in ``../shared/eval`` (real speech and noise; none contains the phrase)
plus long synthetic speech (random sentences, a seed the trainer does not use), streamed as the
server streams them; false accepts are counted with the server's 2 s refractory time. Defaults: 600
positives and 2 h of synthetic speech, so that 0.5 false accepts/hour is one event, not zero.
The scoring path is the server's front end and head, step by step from the start of each stream.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import tts
from .augment import augment, mix_at_snr, synthetic_rir
from .wakeword_train import HELD_OUT_FLITE, HELD_OUT_VARIANTS, N_EMB, FeatureExtractor, sliding_windows

REFRACTORY_STEPS = 25          # 2 s of 80 ms steps
EVAL_SEED = 987654


def load_eval_audio(shared: Path, names: list[str] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(speech recordings, noise recordings) from ../shared/eval as 16 kHz float32; the noise files' names
    are appended to ``names`` when given."""
    import soundfile as sf
    import soxr

    speech, noise = [], []
    for folder, out in ((shared / "eval" / "speech", speech), (shared / "eval" / "noise", noise)):
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() not in (".wav", ".flac", ".ogg", ".opus"):
                continue
            try:
                x, rate = sf.read(str(p), dtype="float32", always_2d=True)
            except Exception:
                continue
            x = x.mean(axis=1)
            out.append(soxr.resample(x, rate, 16000).astype(np.float32) if rate != 16000 else x)
            if out is noise and names is not None:
                names.append(p.stem)
    return speech, noise


def count_events(scores: np.ndarray, threshold: float, patience: int = 1) -> int:
    """Detections the server would make in one stream: ``patience`` consecutive steps at or above
    ``threshold``, then quiet for the 2 s refractory time (as ``WakewordStream._detect``)."""
    above = scores >= threshold
    if patience > 1:
        above = streak_ok(scores, threshold, patience)
    events, last = 0, -10 ** 9
    for i in np.flatnonzero(above):
        if i - last >= REFRACTORY_STEPS:
            events += 1
            last = i
    return events


def streak_ok(scores: np.ndarray, threshold: float, patience: int) -> np.ndarray:
    """Per step: whether it ends a run of ``patience`` consecutive steps at or above ``threshold``."""
    above = (scores >= threshold).astype(np.int64)
    if patience <= 1 or len(above) < patience:
        return above.astype(bool) if patience <= 1 else np.zeros(len(above), bool)
    run = np.convolve(above, np.ones(patience, np.int64), mode="full")[: len(above)]
    return run >= patience


def rolling_min(scores: np.ndarray, patience: int) -> np.ndarray:
    """The lowest score of each run of ``patience`` consecutive steps (a run fires iff it is >= threshold)."""
    if patience <= 1 or len(scores) < patience:
        return scores if patience <= 1 else np.zeros(0, scores.dtype)
    return np.lib.stride_tricks.sliding_window_view(scores, patience).min(axis=1)


@dataclass
class EvalSet:
    """Head inputs of the evaluation audio, computed once and scoreable by any head with ``n`` embeddings.

    ``positives``: per positive stream, its head windows restricted to the steps that count (from the
    phrase start to 1 s after its end); ``negatives``: every head window of each negative stream, in order.
    """

    phrase: str
    n: int
    voices: list[str]
    positives: list[np.ndarray]
    negatives: list[np.ndarray]
    negative_hours: float
    real_minutes: float
    synthetic_minutes: float
    conditions: list[dict] = field(default_factory=list)   # per positive: noise file, snr_db, reverb, category
    positive_categories: list[str] = field(default_factory=list)
    negative_categories: list[str] = field(default_factory=list)
    negative_seconds: list[float] = field(default_factory=list)
    first_step: int = 25
    positive_steps: list[np.ndarray] = field(default_factory=list)   # the step (1-based) of each positive window


def _stream(rng, clip: np.ndarray, lead_s: float, tail_s: float, noise: list[np.ndarray], names: list[str],
            snr_range=(5.0, 20.0)) -> tuple[np.ndarray, tuple[int, int], dict]:
    """``clip`` in a stream ``lead_s`` after it opens, in a recorded noise (or white noise), maybe reverberant."""
    reverb = bool(rng.random() < 0.5)
    if reverb:
        clip = np.convolve(clip, synthetic_rir(rng, rng.uniform(0.2, 0.6)))[: len(clip)]
    lead, tail = int(lead_s * 16000), int(tail_s * 16000)
    x = np.zeros(lead + len(clip) + tail, np.float32)
    x[lead:lead + len(clip)] = clip
    k = int(rng.integers(len(noise))) if noise else -1
    bg = np.resize(noise[k], len(x)) if k >= 0 else rng.standard_normal(len(x)).astype(np.float32)
    snr = float(rng.uniform(*snr_range))       # over the whole stream, so higher during the speech
    x = mix_at_snr(x, bg, snr) * 10 ** (rng.uniform(-12, 0) / 20)
    return x.astype(np.float32), (lead, lead + len(clip)), {"noise": names[k] if k >= 0 else "white",
                                                            "snr_db": snr, "reverb": reverb}


def _span_windows(embs: np.ndarray, n: int, span: tuple[int, int], pad: np.ndarray,
                  first_step: int) -> tuple[np.ndarray, np.ndarray]:
    """The head windows of the steps that end from the span's start to 1 s after its end, and those steps."""
    w = sliding_windows(embs, n, start=first_step, pad=pad)
    steps = np.arange(len(w)) + first_step
    keep = (steps * 1280 >= span[0]) & (steps * 1280 <= span[1] + 16000)     # end sample of each step
    return w[keep], steps[keep]


def build_eval_set(phrase: str, shared: Path, n: int, *, positives: int = 600, synthetic_minutes: float = 540.0,
                   threads: int = 2, first_step: int = N_EMB + 9, natural_positives: int = 200,
                   confusable: int = 600, natural_confusable: int = 200, tone_minutes: float = 30.0) -> EvalSet:
    """The evaluation audio as the server streams it (front end from the start of each stream, windows
    from ``first_step``: the head's ``warmup_steps``). Categories (``EvalSet.categories``):

    positives -- ``synthetic`` (held-out espeak-ng variants and flite ``slt``, 1.5 s into a stream),
    ``natural`` (held-out Kokoro voices and blends of them, the phrase inside an utterance with the eval lists'
    fillers and commands, synthesised as one utterance), ``stream_start`` (both kinds, the phrase 0.3 s after
    the stream opens); negatives -- ``real`` (every recording in ../shared/eval), ``confusable`` (one stream
    per sentence with a confusable word inside, eval templates, synthetic and natural held-out voices: the share
    that fires at least once), ``tones`` (tones, sweeps, chirps, sirens, DTMF, beeps, plucked music),
    ``speech`` (``synthetic_minutes`` of random sentences in 60 s streams). Every draw comes from ``EVAL_SEED``;
    the voices and text lists are disjoint from training's by construction."""
    from .augment import plucked_music
    from .wakeword_data import eval_kokoro_requests, tones
    from .wakeword_text import confusable_sentences

    tts.require_espeak()
    fx = FeatureExtractor(threads)
    pad = fx.fe.silent_emb
    rnd = random.Random(EVAL_SEED)
    rng = np.random.default_rng(EVAL_SEED)
    noise_names: list[str] = []
    speech, noise = load_eval_audio(shared, noise_names)
    if not speech:
        raise RuntimeError(f"no evaluation audio under {shared}/eval")
    flite = HELD_OUT_FLITE if tts.have_flite() else []

    def held_out(k: int) -> list:
        return tts.voice_pool(rnd, k, variants=HELD_OUT_VARIANTS, flite_voices=flite, flite_share=0.2)

    items: list[tuple[str, str, tts.Voice, float]] = []       # (category, text, voice, lead_s)
    for v in held_out(positives):
        items.append(("synthetic", phrase, v, 1.5))
    nat_conf: list = []
    if natural_positives or natural_confusable:
        from . import kokoro

        if kokoro.available():
            nat_pos, nat_conf = eval_kokoro_requests(phrase, EVAL_SEED, natural_positives, natural_confusable)
            items += [("natural", p.text, p.voice, 1.5) for p in nat_pos]
            items += [("stream_start", p.text, p.voice, 0.3) for p in nat_pos[: len(nat_pos) // 2]]
    for v in held_out(max(1, positives // 4)):
        items.append(("stream_start", phrase, v, 0.3))
    clips = tts.synth_many([t for _, t, _, _ in items], [v for _, _, v, _ in items], workers=threads)
    pos_streams, spans, conditions, pos_cats, voice_names = [], [], [], [], []
    for (cat, _, v, lead), clip in zip(items, clips):
        x, span, cond = _stream(rng, clip, lead, 1.0, noise, noise_names)
        pos_streams.append(x)
        spans.append(span)
        conditions.append({**cond, "category": cat})
        pos_cats.append(cat)
        voice_names.append(v.name if v.engine == "kokoro" else v.key().split("+")[-1])
    pos = [_span_windows(e, n, sp, pad, first_step) for sp, e in zip(spans, fx.stream_embeddings(pos_streams))]
    pos_windows, pos_steps = [w for w, _ in pos], [st for _, st in pos]

    neg_streams: list[np.ndarray] = []
    neg_cats: list[str] = []

    def add(x: np.ndarray, cat: str) -> None:
        neg_streams.append(x.astype(np.float32))
        neg_cats.append(cat)

    for x in list(speech) + list(noise):
        add(x, "real")
    real_s = sum(len(x) for x in neg_streams) / 16000
    conf_texts = confusable_sentences(rnd, phrase, confusable, "eval")
    conf_voices = held_out(len(conf_texts))
    conf_items = list(zip(conf_texts, conf_voices)) + list(nat_conf)
    for clip in tts.synth_many([t for t, _ in conf_items], [v for _, v in conf_items], workers=threads):
        x, _, _ = _stream(rng, clip, 1.5, 1.0, noise, noise_names, snr_range=(10.0, 30.0))
        add(x, "confusable")
    tone_s = 0.0
    while tone_s < tone_minutes * 60:
        x = tones(rng, 60.0) if len(neg_cats) % 3 else plucked_music(rng, 60 * 16000).astype(np.float32) * 0.3
        add(x + rng.standard_normal(len(x)).astype(np.float32) * 10 ** (rng.uniform(-80, -50) / 20), "tones")
        tone_s += len(x) / 16000
    sent_voices = tts.voice_pool(rnd, 4000)
    synth_s, chunk = 0.0, []
    while synth_s < synthetic_minutes * 60:
        texts = [tts.random_sentence(rnd, 6, 20) for _ in range(int(min(400, max(10, (synthetic_minutes * 60 - synth_s) / 4))))]
        vs = [sent_voices[(len(chunk) + i) % len(sent_voices)] for i in range(len(texts))]
        for y in tts.synth_many(texts, vs, workers=threads):
            y = augment(rng, y, noise)
            gap = np.zeros(int(rng.uniform(0.2, 1.0) * 16000), np.float32)
            chunk += [y, gap]
            synth_s += (len(y) + len(gap)) / 16000
            if sum(len(c) for c in chunk) > 60 * 16000:   # 60 s streams, as long-running device streams would be
                add(np.concatenate(chunk), "speech")
                chunk = []
    if chunk:
        add(np.concatenate(chunk), "speech")
    neg_windows = [sliding_windows(e, n, start=first_step, pad=pad) for e in fx.stream_embeddings(neg_streams)]
    hours = sum(len(x) for x in neg_streams) / 16000 / 3600
    es = EvalSet(phrase, n, voice_names, pos_windows, neg_windows, hours, real_s / 60, synth_s / 60, conditions)
    es.positive_categories = pos_cats
    es.negative_categories = neg_cats
    es.negative_seconds = [len(x) / 16000 for x in neg_streams]
    es.first_step = first_step
    es.positive_steps = pos_steps
    return es


def operating_point(pos_max: np.ndarray, neg_scores: list[np.ndarray], hours: float,
                    max_fa_per_hour: float, patience: int = 1) -> dict | None:
    """The threshold with the fewest misses whose false accepts stay at or under ``max_fa_per_hour``
    (the higher threshold on ties), or None if no threshold up to 0.999 gets there. The grid is 0.01 up to
    0.99, then 0.001: a sigmoid head's false peaks crowd just under 1, where rates of 0.1 per hour are won."""
    best = None
    grid = np.unique(np.concatenate([np.round(np.arange(0.05, 0.99, 0.01), 2),
                                     np.round(np.arange(0.990, 0.9995, 0.001), 3)]))
    for thr in grid:
        fa = sum(count_events(s, thr, patience) for s in neg_scores)
        if fa / hours > max_fa_per_hour:
            continue
        frr = float((pos_max < thr).mean())
        if best is None or frr <= best["frr"]:
            best = {"threshold": float(thr), "frr": frr, "false_accepts": fa, "fa_per_hour": fa / hours,
                    "max_fa_per_hour": max_fa_per_hour}
        if best is not None and frr > best["frr"]:
            break                                    # FRR only grows with the threshold
    return best


def score_eval_set(score, es: EvalSet, max_fa_per_hour: float = 0.5, warmup_steps: int | None = None,
                   patience: int = 1) -> dict:
    """FRR / false accepts per hour over a threshold sweep, for ``score`` (windows -> scores), and the
    operating point: the fewest misses at or under ``max_fa_per_hour``. With ``warmup_steps`` (a head's),
    windows of earlier steps are not scored, as the server would not score them (a set built from an
    earlier ``first_step`` serves heads with later warm-ups). ``patience``: consecutive steps at or above
    the threshold before a detection, as the server's option (a positive is found if a run of that many
    of its counted steps clears the threshold)."""
    def run(w):
        return np.concatenate([score(w[i:i + 512]) for i in range(0, len(w), 512)]) if len(w) else np.zeros(0)

    first = getattr(es, "first_step", 25)
    skip = max(0, (warmup_steps or first) - first)
    steps = getattr(es, "positive_steps", []) or [None] * len(es.positives)
    neg_scores = [run(w[skip:]) for w in es.negatives]
    pos_scores = [run(w if st is None else w[st >= first + skip]) for w, st in zip(es.positives, steps)]

    def best_run(sc: np.ndarray, p: int) -> float:
        return float(rolling_min(sc, p).max()) if len(sc) >= p else 0.0
    pos_arr = np.array([best_run(sc, patience) for sc in pos_scores])

    def patience_rows(p: int) -> list[dict]:
        """FRR / false accepts per hour with the server's ``patience`` = p (1 is the default sweep)."""
        best = np.array([best_run(sc, p) for sc in pos_scores])
        out = []
        for thr in (0.3, 0.5, 0.7, 0.85, 0.9, 0.95):
            fa = sum(count_events(sc, thr, p) for sc in neg_scores)
            out.append({"threshold": thr, "frr": round(float((best < thr).mean()), 4), "false_accepts": fa,
                        "fa_per_hour": round(fa / es.negative_hours, 3)})
        return out
    rows = []
    for thr in np.round(np.linspace(0.05, 0.95, 19), 2):
        fa = sum(count_events(s, thr, patience) for s in neg_scores)
        rows.append({"threshold": float(thr), "frr": float((pos_arr < thr).mean()), "false_accepts": fa,
                     "fa_per_hour": fa / es.negative_hours})
    by_voice: dict[str, list[float]] = {}
    for v, sc in zip(es.voices, pos_arr):
        by_voice.setdefault(v, []).append(float(sc))
    def by_condition(key) -> dict:
        groups: dict[str, list[float]] = {}
        for c, sc in zip(getattr(es, "conditions", []) or [], pos_arr):
            groups.setdefault(str(key(c)), []).append(float(sc))
        return {k: {"positives": len(v), "miss_rate": round(float(np.mean(np.array(v) < 0.5)), 3)}
                for k, v in sorted(groups.items())}

    def categories(thr: float) -> dict:
        """Per category at ``thr``: positives missed, negatives' false accepts per hour, and for confusable
        sentences the share of sentences that fire at least once."""
        out: dict = {}
        pcats = getattr(es, "positive_categories", []) or ["synthetic"] * len(pos_arr)
        for cat in sorted(set(pcats)):
            sel = pos_arr[np.array([c == cat for c in pcats])]
            out[f"positives: {cat}"] = {"count": int(len(sel)), "miss_rate": round(float((sel < thr).mean()), 4)}
        ncats = getattr(es, "negative_categories", []) or ["all"] * len(neg_scores)
        secs = getattr(es, "negative_seconds", []) or [es.negative_hours * 3600 / max(1, len(neg_scores))] * len(neg_scores)
        for cat in sorted(set(ncats)):
            idx = [i for i, c in enumerate(ncats) if c == cat]
            events = sum(count_events(neg_scores[i], thr, patience) for i in idx)
            hours = sum(secs[i] for i in idx) / 3600
            row = {"streams": len(idx), "hours": round(hours, 3), "false_accepts": events,
                   "fa_per_hour": round(events / hours, 3) if hours else None}
            if cat == "confusable":
                fired = sum(1 for i in idx if best_run(neg_scores[i], patience) >= thr)
                row["share_fired"] = round(fired / max(1, len(idx)), 4)
            out[f"negatives: {cat}"] = row
        return out

    snr_band = lambda c: f"{int(c['snr_db'] // 5) * 5:>2}-{int(c['snr_db'] // 5) * 5 + 5} dB"   # noqa: E731
    conditions = {"noise": by_condition(lambda c: c["noise"]), "snr": by_condition(snr_band),
                  "reverb": by_condition(lambda c: "reverberant" if c["reverb"] else "dry")}
    op = operating_point(pos_arr, neg_scores, es.negative_hours, max_fa_per_hour, patience)
    return {"phrase": es.phrase, "patience_used": patience, "positives": len(pos_arr), "negative_hours": round(es.negative_hours, 3),
            "first_step": max(getattr(es, "first_step", 25), warmup_steps or 0),
            "by_category_at_operating_point": categories(op["threshold"]) if op else None,
            "by_category_at_0.5": categories(0.5),
            "negative_real_minutes": round(es.real_minutes, 2),
            "negative_synthetic_minutes": round(es.synthetic_minutes, 2),
            "at_threshold_0.5": next(r for r in rows if abs(r["threshold"] - 0.5) < 1e-9), "det": rows,
            "operating_point": op,
            "patience": {str(p): patience_rows(p) for p in (1, 2, 3)},
            "miss_rate_by_voice_at_0.5": {k: round(float(np.mean(np.array(v) < 0.5)), 3)
                                          for k, v in sorted(by_voice.items())},
            "positives_by_voice": {k: len(v) for k, v in sorted(by_voice.items())},
            "misses_by_condition_at_0.5": conditions}


def evaluate(model: Path, phrase: str, shared: Path, out_dir: Path, *, positives: int = 600,
             synthetic_minutes: float = 540.0, threads: int = 2, max_fa_per_hour: float = 0.1,
             write_threshold: bool = False, **sizes) -> dict:
    """Evaluate ``model``, write the report; with ``write_threshold``, store the operating point's threshold
    in the head's .json (``threshold``: the server's default for that head)."""
    from voxserve.server.stages.wakeword_model import Head

    t0 = time.time()
    head = Head.load(model)
    es = build_eval_set(phrase, shared, head.n_embeddings, positives=positives,
                        synthetic_minutes=synthetic_minutes, threads=threads, first_step=head.warmup_steps, **sizes)
    result = {"model": str(model), **score_eval_set(head.score, es, max_fa_per_hour),
              "seconds": round(time.time() - t0, 1)}
    op = result["operating_point"]
    if write_threshold:
        if op is None:
            raise RuntimeError(f"no threshold keeps false accepts at or under {max_fa_per_hour}/h: "
                               f"{model.with_suffix('.json')} left as it was")
        meta_path = model.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        meta["threshold"] = op["threshold"]
        meta["calibration"] = {"max_fa_per_hour": max_fa_per_hour, "frr": round(op["frr"], 4),
                               "fa_per_hour": round(op["fa_per_hour"], 3), "positives": result["positives"],
                               "negative_hours": result["negative_hours"], "by": "voxserve-wakeword eval"}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "wakeword-eval.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "wakeword-eval.md").write_text(report_markdown(result))
    plot_det(result["det"], out_dir / "wakeword-det.png", model.stem)
    return result


def report_markdown(r: dict) -> str:
    at = r["at_threshold_0.5"]
    lines = [f"# Wakeword evaluation: {Path(r['model']).name} ({r['phrase']!r})", "",
             f"- positives: {r['positives']} in voices training never used (held-out espeak-ng variants, flite slt, "
             f"held-out Kokoro voices and their blends) with real recorded noise (5-20 dB SNR over the stream)",
             f"- negatives: {r['negative_hours']:.3f} h ({r['negative_real_minutes']} min real recordings from "
             f"../shared/eval, {r['negative_synthetic_minutes']} min synthetic speech, confusable sentences, tones "
             f"and music)",
             f"- at threshold 0.5: **FRR {at['frr'] * 100:.1f} %**, **{at['fa_per_hour']:.2f} false accepts/hour** "
             f"({at['false_accepts']} events)", operating_line(r.get("operating_point")),
             f"- scored from step {r.get('first_step', 25)} of each stream ({r.get('first_step', 25) * 80} ms)", "",
             *category_lines(r), "",
             "| threshold | FRR % | false accepts | FA/hour |", "|---|---|---|---|"]
    for row in r["det"]:
        lines.append(f"| {row['threshold']:.2f} | {row['frr'] * 100:.1f} | {row['false_accepts']} | "
                     f"{row['fa_per_hour']:.2f} |")
    cond = r.get("misses_by_condition_at_0.5") or {}
    voices = r.get("miss_rate_by_voice_at_0.5") or {}
    if any(cond.values()) or voices:
        lines += ["", "Misses at threshold 0.5 by condition of the positive (noise recording, SNR over the 4 s "
                  "stream, synthetic reverberation) and by held-out voice:", "",
                  "| condition | positives | missed % |", "|---|---|---|"]
        for kind, groups in cond.items():
            for name, g in groups.items():
                lines.append(f"| {kind}: {name} | {g['positives']} | {g['miss_rate'] * 100:.1f} |")
        counts = r.get("positives_by_voice") or {}
        for voice, rate in voices.items():
            lines.append(f"| voice: {voice} | {counts.get(voice, '')} | {rate * 100:.1f} |")
    return "\n".join(lines) + "\n"


def category_lines(r: dict) -> list[str]:
    op = r.get("operating_point")
    cats = r.get("by_category_at_operating_point") if op else r.get("by_category_at_0.5")
    if not cats:
        return []
    thr = op["threshold"] if op else 0.5
    lines = [f"By category at threshold {thr:.2f}:", "", "| category | count | missed % | FA/hour | fired % |",
             "|---|---|---|---|---|"]
    for name, row in cats.items():
        count = row.get("count", row.get("streams"))
        miss = f"{row['miss_rate'] * 100:.1f}" if "miss_rate" in row else ""
        fa = "" if row.get("fa_per_hour") is None else f"{row['fa_per_hour']:.2f} ({row['false_accepts']} in {row['hours']} h)"
        fired = f"{row['share_fired'] * 100:.1f}" if "share_fired" in row else ""
        lines.append(f"| {name} | {count} | {miss} | {fa} | {fired} |")
    return lines


def operating_line(op: dict | None) -> str:
    if op is None:
        return "- operating point: no threshold keeps false accepts at or under the target"
    return (f"- operating point (fewest misses at <= {op['max_fa_per_hour']} false accepts/hour, 0.01 grid): "
            f"threshold {op['threshold']:.2f}: **FRR {op['frr'] * 100:.1f} %** at {op['fa_per_hour']:.2f} "
            f"false accepts/hour ({op['false_accepts']} events)")


def plot_det(rows: list[dict], path: Path, name: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([r["fa_per_hour"] for r in rows], [r["frr"] * 100 for r in rows], marker="o")
    for r in rows[::3]:
        ax.annotate(f"{r['threshold']:.2f}", (r["fa_per_hour"], r["frr"] * 100), fontsize=7)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("false accepts per hour")
    ax.set_ylabel("false rejection rate (%)")
    ax.set_title(f"DET: {name}")
    ax.axhline(5, color="grey", ls=":")
    ax.axvline(0.1, color="grey", ls=":")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
