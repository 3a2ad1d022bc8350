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
from .wakeword_train import HELD_OUT_FLITE, HELD_OUT_VARIANTS, FeatureExtractor, sliding_windows

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


def count_events(scores: np.ndarray, threshold: float) -> int:
    events, last = 0, -10 ** 9
    for i in np.flatnonzero(scores >= threshold):
        if i - last >= REFRACTORY_STEPS:
            events += 1
            last = i
    return events


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
    conditions: list[dict] = field(default_factory=list)   # per positive: noise file, snr_db, reverb


def build_eval_set(phrase: str, shared: Path, n: int, *, positives: int = 600, synthetic_minutes: float = 120.0,
                   threads: int = 2) -> EvalSet:
    tts.require_espeak()
    fx = FeatureExtractor(threads)
    rnd = random.Random(EVAL_SEED)
    rng = np.random.default_rng(EVAL_SEED)
    noise_names: list[str] = []
    speech, noise = load_eval_audio(shared, noise_names)
    if not speech:
        raise RuntimeError(f"no evaluation audio under {shared}/eval")
    flite = HELD_OUT_FLITE if tts.have_flite() else []
    voices = tts.voice_pool(rnd, positives, variants=HELD_OUT_VARIANTS, flite_voices=flite, flite_share=0.2)
    pos_streams, spans, conditions = [], [], []
    for v in voices:
        clip = tts.synth(phrase, v)
        reverb = bool(rng.random() < 0.5)
        if reverb:
            clip = np.convolve(clip, synthetic_rir(rng, rng.uniform(0.2, 0.6)))[: len(clip)]
        lead, tail = int(1.5 * 16000), int(1.0 * 16000)
        x = np.zeros(lead + len(clip) + tail, np.float32)
        x[lead:lead + len(clip)] = clip
        k = int(rng.integers(len(noise))) if noise else -1
        bg = np.resize(noise[k], len(x)) if k >= 0 else rng.standard_normal(len(x)).astype(np.float32)
        snr = float(rng.uniform(5, 20))           # over the whole 4 s stream, so higher during the phrase
        x = mix_at_snr(x, bg, snr) * 10 ** (rng.uniform(-12, 0) / 20)
        conditions.append({"noise": noise_names[k] if k >= 0 else "white", "snr_db": snr, "reverb": reverb})
        pos_streams.append(x.astype(np.float32))
        spans.append((lead, lead + len(clip)))
    pos_windows = []
    for (a, b), embs in zip(spans, fx.stream_embeddings(pos_streams)):
        w = sliding_windows(embs, n)
        ends = (np.arange(len(w)) + n + 9) * 1280          # end sample of each scored step (1-based steps)
        pos_windows.append(w[(ends >= a) & (ends <= b + 16000)])
    # Negatives: real recordings (each its own stream) and long synthetic speech.
    neg_streams = list(speech) + list(noise)
    real_s = sum(len(x) for x in neg_streams) / 16000
    synth_parts, synth_s = [], 0.0
    sent_voices = tts.voice_pool(rnd, 4000)
    i = 0
    while synth_s < synthetic_minutes * 60:
        y = augment(rng, tts.synth(tts.random_sentence(rnd, 6, 20), sent_voices[i % len(sent_voices)]), noise)
        synth_parts.append(y)
        synth_parts.append(np.zeros(int(rng.uniform(0.2, 1.0) * 16000), np.float32))
        synth_s += (len(y) + len(synth_parts[-1])) / 16000
        i += 1
    chunk = []
    for part in synth_parts:                 # 60 s streams, as long-running device streams would be
        chunk.append(part)
        if sum(len(c) for c in chunk) > 60 * 16000:
            neg_streams.append(np.concatenate(chunk))
            chunk = []
    if chunk:
        neg_streams.append(np.concatenate(chunk))
    neg_windows = [sliding_windows(e, n) for e in fx.stream_embeddings(neg_streams)]
    hours = sum(len(x) for x in neg_streams) / 16000 / 3600
    return EvalSet(phrase, n, [v.key().split("+")[-1] for v in voices], pos_windows, neg_windows, hours,
                   real_s / 60, synth_s / 60, conditions)


def operating_point(pos_max: np.ndarray, neg_scores: list[np.ndarray], hours: float,
                    max_fa_per_hour: float) -> dict | None:
    """The threshold (0.01 grid) with the fewest misses whose false accepts stay at or under
    ``max_fa_per_hour`` (the higher threshold on ties), or None if no threshold up to 0.99 gets there."""
    best = None
    for thr in np.round(np.arange(0.05, 1.0, 0.01), 2):
        fa = sum(count_events(s, thr) for s in neg_scores)
        if fa / hours > max_fa_per_hour:
            continue
        frr = float((pos_max < thr).mean())
        if best is None or frr <= best["frr"]:
            best = {"threshold": float(thr), "frr": frr, "false_accepts": fa, "fa_per_hour": fa / hours,
                    "max_fa_per_hour": max_fa_per_hour}
        if best is not None and frr > best["frr"]:
            break                                    # FRR only grows with the threshold
    return best


def score_eval_set(score, es: EvalSet, max_fa_per_hour: float = 0.5) -> dict:
    """FRR / false accepts per hour over a threshold sweep, for ``score`` (windows -> scores), and the
    operating point: the fewest misses at or under ``max_fa_per_hour``."""
    def run(w):
        return np.concatenate([score(w[i:i + 512]) for i in range(0, len(w), 512)]) if len(w) else np.zeros(0)

    pos_arr = np.array([float(run(w).max()) if len(w) else 0.0 for w in es.positives])
    neg_scores = [run(w) for w in es.negatives]
    rows = []
    for thr in np.round(np.linspace(0.05, 0.95, 19), 2):
        fa = sum(count_events(s, thr) for s in neg_scores)
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

    snr_band = lambda c: f"{int(c['snr_db'] // 5) * 5:>2}-{int(c['snr_db'] // 5) * 5 + 5} dB"   # noqa: E731
    conditions = {"noise": by_condition(lambda c: c["noise"]), "snr": by_condition(snr_band),
                  "reverb": by_condition(lambda c: "reverberant" if c["reverb"] else "dry")}
    return {"phrase": es.phrase, "positives": len(pos_arr), "negative_hours": round(es.negative_hours, 3),
            "negative_real_minutes": round(es.real_minutes, 2),
            "negative_synthetic_minutes": round(es.synthetic_minutes, 2),
            "at_threshold_0.5": next(r for r in rows if abs(r["threshold"] - 0.5) < 1e-9), "det": rows,
            "operating_point": operating_point(pos_arr, neg_scores, es.negative_hours, max_fa_per_hour),
            "miss_rate_by_voice_at_0.5": {k: round(float(np.mean(np.array(v) < 0.5)), 3)
                                          for k, v in sorted(by_voice.items())},
            "positives_by_voice": {k: len(v) for k, v in sorted(by_voice.items())},
            "misses_by_condition_at_0.5": conditions}


def evaluate(model: Path, phrase: str, shared: Path, out_dir: Path, *, positives: int = 600,
             synthetic_minutes: float = 120.0, threads: int = 2, max_fa_per_hour: float = 0.5,
             write_threshold: bool = False) -> dict:
    """Evaluate ``model``, write the report; with ``write_threshold``, store the operating point's threshold
    in the head's .json (``threshold``: the server's default for that head)."""
    from voxserve.server.stages.wakeword_model import Head

    t0 = time.time()
    head = Head.load(model)
    es = build_eval_set(phrase, shared, head.n_embeddings, positives=positives,
                        synthetic_minutes=synthetic_minutes, threads=threads)
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
             f"- positives: {r['positives']} held-out synthetic voices with real recorded noise (5-20 dB SNR)",
             f"- negatives: {r['negative_hours']:.3f} h ({r['negative_real_minutes']} min real recordings from "
             f"../shared/eval, {r['negative_synthetic_minutes']} min synthetic speech)",
             f"- at threshold 0.5: **FRR {at['frr'] * 100:.1f} %**, **{at['fa_per_hour']:.2f} false accepts/hour** "
             f"({at['false_accepts']} events)", operating_line(r.get("operating_point")), "",
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
    ax.axvline(0.5, color="grey", ls=":")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
