"""Wakeword front-end cost per stream per 80 ms step and always-on streams per core.

Measures, on one thread (``intra_op_threads=1``), the time of one batched front-end pass (mel +
embedding + the heads) for B streams x 1 step, B in 1..64, median of many repeats after warm-up;
cost per stream-step = time / B; streams per core = 80 ms / cost. Both embedding paths are measured
in the same run, interleaved per batch size: the incremental step graph (the server's default) and
the full 76-frame window; their ratio is the figure to compare. Then VAD gating: the fraction of
steps computed for real speech at a given speech share, measured by running the stage logic on a
synthetic day of 30 % speech (real recordings separated by silence) and counting computed steps.

    python bench/wakeword_capacity.py --record
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, record  # noqa: E402


def frontend_cost(batch_sizes=(1, 2, 4, 8, 16, 32, 64), repeats=60) -> dict:
    from voxserve.server.stages.wakeword_model import MEL_WINDOW, Head, StepRequest, WakewordFrontEnd

    heads = {}
    for p in sorted((Path(__file__).resolve().parents[1] / "models" / "wakeword").glob("*.onnx")):
        heads[p.stem] = Head.load(p)
    oww = {k: h for k, h in heads.items() if h.flavour == "oww"}
    fes = {"incremental": WakewordFrontEnd("oww", oww, "onnxruntime-cpu", 1, incremental=True),
           "window": WakewordFrontEnd("oww", oww, "onnxruntime-cpu", 1, incremental=False)}
    rng = np.random.default_rng(0)
    out: dict[str, dict] = {mode: {} for mode in fes}
    for b in batch_sizes:
        audio = [(rng.standard_normal((1, MEL_WINDOW)) * 0.1).astype(np.float32) for _ in range(b)]
        reqs = {mode: [StepRequest(a, *fe.initial_state(), tuple(fe.heads), np.ones(1, bool)) for a in audio]
                for mode, fe in fes.items()}
        times: dict[str, list[float]] = {mode: [] for mode in fes}
        for i in range(5 + max(5, repeats // max(1, b // 4))):
            for mode, fe in fes.items():                     # interleaved: both see the same machine noise
                t0 = time.perf_counter()
                fe.run_batch(reqs[mode])
                if i >= 5:
                    times[mode].append(time.perf_counter() - t0)
        for mode in fes:
            med = statistics.median(times[mode])
            out[mode][b] = {"batch_ms": round(med * 1000, 3), "per_stream_step_ms": round(med / b * 1000, 4),
                            "streams_per_core": round(0.080 / (med / b), 1)}
    return {"heads": sorted(oww), "by_mode": out}


def gating_share(speech_share: float = 0.3, minutes: float = 10.0) -> dict:
    """Fraction of 80 ms steps the gated stage computes on audio with ``speech_share`` speech."""
    import soundfile as sf
    import soxr

    from voxserve.server.vad import VadSegmenter

    import csv

    rows = [r for r in csv.DictReader(open(SHARED / "eval" / "speech" / "manifest.tsv"), delimiter="\t")
            if "alphanumeric" not in r["path"] and not r["path"].endswith(".raw")]
    files = [SHARED / "eval" / "speech" / r["path"] for r in rows]      # the 18 sentences (1-20 s each)
    clips = []
    for f in files:
        x, r = sf.read(str(f), dtype="float32", always_2d=True)
        clips.append(soxr.resample(x.mean(axis=1), r, 16000).astype(np.float32))
    rng = np.random.default_rng(0)
    parts, speech_s, total_s = [], 0.0, 0.0
    while total_s < minutes * 60:
        c = clips[rng.integers(len(clips))]
        gap = len(c) * (1 - speech_share) / speech_share * rng.uniform(0.5, 1.5)
        parts += [c, (rng.standard_normal(int(gap)) * 3e-4).astype(np.float32)]
        speech_s += len(c) / 16000
        total_s += (len(c) + int(gap)) / 16000
    audio = np.concatenate(parts)
    # Replay the stage's gating rule: wanted while in speech or within the 1 s hangover; 25-step
    # back-fill before each activation (9 + N with N = 16 for the shipped head).
    vad = VadSegmenter()
    in_speech, gate_until, computed, n_computed = False, -1, 0, 0
    step = 1280
    for i in range(0, len(audio) - step + 1, step):
        for ev in vad.process(audio[i:i + step]):
            if ev.kind == "speech_start":
                in_speech = True
            else:
                in_speech = False
                gate_until = ev.end + 16000
        ready = (i + step) // step
        if in_speech or ready * step <= gate_until:
            first = max(computed + 1, ready - 24)
            n_computed += ready - first + 1
            computed = ready
    steps = len(audio) // step
    return {"speech_share_nominal": speech_share, "audio_minutes": round(total_s / 60, 1),
            "steps": steps, "steps_computed": n_computed, "computed_share": round(n_computed / steps, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    cost = frontend_cost()
    gate = gating_share()
    res = {"cost": cost, "gating": gate}
    for mode, by_batch in cost["by_mode"].items():
        best_b, best = min(by_batch.items(), key=lambda kv: kv[1]["per_stream_step_ms"])
        res[mode] = {"best_batch": best_b, "ungated_streams_per_core": best["streams_per_core"],
                     "gated_streams_per_core_at_30pct_speech": round(best["streams_per_core"] / gate["computed_share"], 1)}
    inc, win = cost["by_mode"]["incremental"], cost["by_mode"]["window"]
    ratio = {b: round(win[b]["per_stream_step_ms"] / inc[b]["per_stream_step_ms"], 2) for b in inc}
    res["speedup_incremental_vs_window"] = ratio
    print(json.dumps(res, indent=2))
    if args.record:
        rows = "\n".join(f"| {b} | {inc[b]['per_stream_step_ms']} | {inc[b]['streams_per_core']} | "
                         f"{win[b]['per_stream_step_ms']} | {win[b]['streams_per_core']} | x{ratio[b]} |" for b in inc)
        lines = []
        for mode in ("incremental", "window"):
            r = res[mode]
            lines.append(f"- {mode}: **{r['ungated_streams_per_core']} streams per core ungated** (best batch "
                         f"{r['best_batch']}), **{r['gated_streams_per_core_at_30pct_speech']} gated at 30 % speech**")
        body = (f"Front end (mel + embedding + heads {cost['heads']}), ONNX Runtime CPU, 1 thread, median of "
                f"interleaved repeats; incremental = the server's default step graph, window = full 76-frame "
                f"window per step:\n\n"
                f"| streams per batch | incremental ms per stream-step | incremental streams per core | "
                f"window ms per stream-step | window streams per core | incremental speed-up |\n"
                f"|---|---|---|---|---|---|\n{rows}\n\n"
                f"- VAD gating on {gate['audio_minutes']} min of real speech at {int(gate['speech_share_nominal'] * 100)} % "
                f"speech: {gate['computed_share'] * 100:.1f} % of steps computed (speech, 1 s hangover, 2.0 s back-fill)\n"
                + "\n".join(lines))
        record("Wakeword capacity", "python bench/wakeword_capacity.py --record", body)


if __name__ == "__main__":
    main()
