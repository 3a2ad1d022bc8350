"""Score several wakeword heads on one evaluation set (built once, as ``voxserve-wakeword eval`` builds it).

    python bench/wakeword_compare.py OLD.onnx NEW.onnx --phrase "hey jarvis" --out /tmp/ww/compare

``--patience 1 2 3`` scores each head with each patience (consecutive 80 ms steps to fire, the server's
option; the head's .json may name its own). Each head is scored from its own ``warmup_steps`` (the set is built from the earliest), so a head that waits
2 s is not credited with detections the server would never make. Writes ``<out>/<head stem>-<n>/`` reports
(the eval CLI's files) and prints one comparison table (markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("heads", nargs="+", type=Path)
    p.add_argument("--phrase", required=True)
    p.add_argument("--shared", type=Path, default=Path(os.environ.get("VOXSERVE_SHARED", "../shared")))
    p.add_argument("--out", type=Path, default=Path("/tmp/ww/compare"))
    p.add_argument("--positives", type=int, default=600)
    p.add_argument("--synthetic-minutes", type=float, default=540.0)
    p.add_argument("--natural-positives", type=int, default=200)
    p.add_argument("--confusable", type=int, default=600)
    p.add_argument("--natural-confusable", type=int, default=200)
    p.add_argument("--tone-minutes", type=float, default=30.0)
    p.add_argument("--max-fa-per-hour", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--patience", type=int, nargs="+", default=[1],
                   help="score every head with each of these patience values (consecutive steps to fire)")
    p.add_argument("--write-threshold", action="store_true",
                   help="store the last head's operating point in its .json, as voxserve-wakeword eval --write-threshold")
    p.add_argument("--report", type=Path, default=None,
                   help="also write the last head's report (wakeword-eval.md/.json, DET png) into this folder")
    args = p.parse_args()

    from voxserve.models.wakeword_eval import build_eval_set, plot_det, report_markdown, score_eval_set
    from voxserve.server.stages.wakeword_model import Head

    heads = [Head.load(h) for h in args.heads]
    if len({h.n_embeddings for h in heads}) != 1:
        raise SystemExit("all heads must take the same number of embeddings")
    t0 = time.time()
    es = build_eval_set(args.phrase, args.shared, heads[0].n_embeddings, positives=args.positives,
                        synthetic_minutes=args.synthetic_minutes, threads=args.threads,
                        first_step=min(h.warmup_steps for h in heads), natural_positives=args.natural_positives,
                        confusable=args.confusable, natural_confusable=args.natural_confusable,
                        tone_minutes=args.tone_minutes)
    built = time.time() - t0
    rows = []
    for i, (path, head), pat in ((i, ph, pat) for i, ph in enumerate(zip(args.heads, heads)) for pat in args.patience):
        r = {"model": str(path), **score_eval_set(head.score, es, args.max_fa_per_hour, head.warmup_steps, pat)}
        out = args.out / f"{path.stem}-{i}-p{pat}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "wakeword-eval.json").write_text(json.dumps(r, indent=2) + "\n")
        (out / "wakeword-eval.md").write_text(report_markdown(r))
        plot_det(r["det"], out / "wakeword-det.png", path.stem)
        rows.append((path, head, r))
    path, head, r = rows[-1]
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "wakeword-eval.json").write_text(json.dumps(r, indent=2) + "\n")
        (args.report / "wakeword-eval.md").write_text(report_markdown(r))
        plot_det(r["det"], args.report / "wakeword-det.png", path.stem)
    op = r["operating_point"]
    if args.write_threshold:
        if op is None:
            print(f"no threshold keeps false accepts at or under {args.max_fa_per_hour}/h: "
                  f"{path.with_suffix('.json')} left as it was")
    if args.write_threshold and op is not None:
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        meta["threshold"] = op["threshold"]
        meta["patience"] = r["patience_used"]
        meta["calibration"] = {"max_fa_per_hour": args.max_fa_per_hour, "frr": round(op["frr"], 4),
                               "fa_per_hour": round(op["fa_per_hour"], 3), "positives": r["positives"],
                               "negative_hours": r["negative_hours"], "by": "bench/wakeword_compare.py"}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"evaluation set: {es.negative_hours:.2f} h of negatives, {len(es.positives)} positives, built in "
          f"{built:.0f} s\n")
    cats = sorted({k for _, _, r in rows for k in (r.get("by_category_at_operating_point") or r["by_category_at_0.5"])})
    head_cols = " | ".join(c.replace("positives: ", "miss ").replace("negatives: ", "FA/h ") for c in cats)
    print(f"| head | warm-up | patience | threshold | FRR | FA/h | {head_cols} | confusable fired |")
    print("|---" * (7 + len(cats)) + "|")
    for path, head, r in rows:
        op = r["operating_point"]
        cat = r.get("by_category_at_operating_point") or r["by_category_at_0.5"]
        thr = op["threshold"] if op else 0.5
        frr = op["frr"] if op else r["at_threshold_0.5"]["frr"]
        fa = op["fa_per_hour"] if op else r["at_threshold_0.5"]["fa_per_hour"]
        cells = []
        for c in cats:
            row = cat.get(c, {})
            cells.append(f"{row['miss_rate'] * 100:.1f} %" if "miss_rate" in row else
                         f"{row.get('fa_per_hour') or 0:.2f}")
        fired = cat.get("negatives: confusable", {}).get("share_fired")
        print(f"| {path} | {head.warmup_steps * 80} ms | {r['patience_used']} | {thr:.2f}{'' if op else ' (no point at target)'} | "
              f"{frr * 100:.1f} % | {fa:.2f} | {' | '.join(cells)} | "
              f"{'' if fired is None else f'{fired * 100:.1f} %'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
