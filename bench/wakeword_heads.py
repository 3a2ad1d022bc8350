"""Wakeword head architectures compared on one member's training data and the 10.8 h evaluation.

Training a head is cheap next to building its data (synthesis and the front end), so the data are built
once and saved, then each variant trains on the same arrays and is scored on the same evaluation set::

    python bench/wakeword_heads.py evalset /tmp/ww/evalset.pkl            # the evaluation, as `voxserve-wakeword eval`
    python bench/wakeword_heads.py member 0 /tmp/ww                        # member 0's windows and mining pool
    python bench/wakeword_heads.py compare /tmp/ww /tmp/ww/evalset.pkl mlp conv mlp+verifier

A variant is ``KIND[+verifier]``:

- ``mlp`` (the shipped head), ``wide`` or ``conv`` (``make_head``'s kinds), trained and fine-tuned on the
  mined negatives as ``train`` does (``fit_member``);
- ``+verifier``: cascaded with a second head of the same kind (``train_verifier``), as ``--verifier``; its
  first head is what the plain variant trains, so it is scored as that variant too (its train_seconds
  are the cascade's);
- a path ending in ``.onnx``: an exported head (the shipped one, say), scored as the server loads it.

Scores go through the evaluation's own functions (``score_eval_set``), at patience 2 (the shipped head's) and 3.
One member only (the shipped head averages two): compare variants with each other, not with the shipped head.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import pickle
import sys
import time
from pathlib import Path

import numpy as np

PHRASE = "hey jarvis"


def cmd_evalset(args) -> None:
    from voxserve.models.wakeword_eval import build_eval_set
    from voxserve.models.wakeword_train import N_EMB, TrainConfig

    t0 = time.time()
    es = build_eval_set(PHRASE, args.shared, N_EMB, threads=args.threads, first_step=TrainConfig(PHRASE).first_step)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(pickle.dumps(es))
    print(f"evaluation set: {len(es.positives)} positives, {es.negative_hours:.2f} h negatives, "
          f"{time.time() - t0:.0f} s", flush=True)


def cmd_member(args) -> None:
    import dataclasses

    from voxserve.models.wakeword_train import FeatureExtractor, TrainConfig, build_dataset, member_config, mining_pool

    cfg = member_config(dataclasses.replace(TrainConfig(PHRASE), threads=args.threads), args.k)
    fx = FeatureExtractor(args.threads)
    t0 = time.time()
    X, y = build_dataset(cfg, fx)
    W = mining_pool(cfg, fx)
    args.dir.mkdir(parents=True, exist_ok=True)
    for name, a in (("X", X), ("y", y), ("W", W)):
        np.save(args.dir / f"{name}{args.k}.npy", a)
    print(f"member {args.k}: {len(X)} windows ({int(y.sum())} positive), pool {len(W)}, "
          f"{time.time() - t0:.0f} s", flush=True)


def memoised(score):
    """``score`` remembering its answer per window block (the evaluation's arrays are scored once, however
    many operating points are read from them). A block is known by its data address and shape; every block
    seen is kept alive, so no other array can come to have its address."""
    seen: dict = {}

    def once(w: np.ndarray) -> np.ndarray:
        key = (w.__array_interface__["data"][0], w.shape, w.strides)
        if key not in seen:
            seen[key] = (w, score(w))
        return seen[key][1]
    return once


def summary(score, es, targets=(6.0, 2.0, 1.0, 0.1), patiences=(2, 3)) -> list[dict]:
    from voxserve.models.wakeword_eval import score_eval_set

    rows = []
    score = memoised(score)
    for p in patiences:
        for t in targets:
            r = score_eval_set(score, es, max_fa_per_hour=t, warmup_steps=es.first_step, patience=p)
            rows.append(row_of(r, t, p))
    return rows


def row_of(r: dict, t: float, p: int) -> dict:
    op, cats = r["operating_point"], r["by_category_at_operating_point"] or {}
    row = {"target_fa_per_hour": t, "patience": p, "threshold": op and op["threshold"],
           "frr": op and round(op["frr"], 4), "fa_per_hour": op and round(op["fa_per_hour"], 3)}
    for k, v in cats.items():         # positives: miss rate; confusable: share fired; others: FA/h
        row[k] = v.get("miss_rate", v.get("share_fired", v.get("fa_per_hour")))
    return row


def cmd_compare(args) -> None:
    import dataclasses

    import torch

    from voxserve.models.wakeword_train import TrainConfig, fit_member, member_config, scores_of

    es = pickle.loads(args.evalset.read_bytes())
    cfg = member_config(dataclasses.replace(TrainConfig(PHRASE), threads=args.threads), args.k)
    if args.epochs is not None:                     # a shorter schedule, to fit a slow head in the time at hand
        cfg = dataclasses.replace(cfg, epochs=args.epochs, mine_epochs=min(cfg.mine_epochs, args.epochs))
    @functools.cache
    def member_data():                              # member k's arrays, loaded when a variant first trains
        return tuple(np.load(args.dir / f"{n}{args.k}.npy") for n in ("X", "y", "W"))
    torch.set_num_threads(args.threads)
    out = {}
    for spec in args.variants:
        if spec.endswith(".onnx"):                  # an exported head, scored as the server loads it
            from voxserve.server.stages.wakeword_model import Head

            head = Head.load(Path(spec))
            out[spec] = {"rows": summary(head.score, es)}
            print(json.dumps({spec: out[spec]}), flush=True)
            continue
        kind, _, extra = spec.partition("+")
        if extra not in ("", "verifier"):
            raise SystemExit(f"unknown variant suffix {extra!r}: verifier")
        t0 = time.time()
        member, _ = fit_member(*member_data(), dataclasses.replace(cfg, head=kind, verifier=extra == "verifier"))
        seconds = round(time.time() - t0, 1)
        parts = [(spec, member)]
        if extra and kind not in out:               # the cascade's first head is the plain variant: score it too
            parts.append((kind, member.head))
        for name, m in parts:
            out[name] = {"train_seconds": seconds, "epochs": cfg.epochs, "mine_epochs": cfg.mine_epochs,
                         "parameters": sum(p.numel() for p in m.parameters()),
                         "rows": summary(lambda w, m=m: scores_of(m, w), es)}
            print(json.dumps({name: out[name]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    cols = ["threshold", "frr", "fa_per_hour", "negatives: confusable", "positives: stream_start",
            "positives: natural", "negatives: speech", "negatives: tones", "negatives: real"]
    print("| variant | patience | FA/h target | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 3) + "|")
    for spec, r in out.items():
        for row in r["rows"]:
            print(f"| {spec} | {row['patience']} | {row['target_fa_per_hour']} | "
                  + " | ".join(str(row.get(c)) for c in cols) + " |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("evalset")
    e.add_argument("out", type=Path)
    e.add_argument("--shared", type=Path, default=Path("../shared"))
    e.add_argument("--threads", type=int, default=1)
    m = sub.add_parser("member")
    m.add_argument("k", type=int)
    m.add_argument("dir", type=Path)
    m.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("compare")
    c.add_argument("dir", type=Path)
    c.add_argument("evalset", type=Path)
    c.add_argument("variants", nargs="+")
    c.add_argument("--k", type=int, default=0)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--json", type=Path)
    c.add_argument("--epochs", type=int, help="training epochs (default: the recipe's); the fine-tuning on mined "
                   "negatives runs at most as many")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    {"evalset": cmd_evalset, "member": cmd_member, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
