"""Wakeword head architectures compared on one member's training data and the 10.8 h evaluation.

Training a head is cheap next to building its data (synthesis and the front end), so the data are built
once and saved, then each variant trains on the same arrays and is scored on the same evaluation set::

    python bench/wakeword_heads.py evalset /tmp/ww/evalset.pkl            # the evaluation, as `voxserve-wakeword eval`
    python bench/wakeword_heads.py member 0 /tmp/ww                        # member 0's windows and mining pool
    python bench/wakeword_heads.py compare /tmp/ww /tmp/ww/evalset.pkl mlp conv mlp+verifier

A variant is ``KIND[+verifier]``:

- ``mlp``: the shipped head (``make_head``), trained and fine-tuned on mined negatives as ``train`` does;
- ``wide``: the same with 128 hidden units;
- ``conv``: a temporal head, dilated 1-D convolutions over the 16 embeddings (kernel 3, dilations 1, 2, 4);
- ``+verifier``: a second head of the same kind trained on the positives and on the negatives the first
  scores 0.1 or more (training windows and mining pool); the score is ``sqrt(first * second)``.

Scores go through the evaluation's own functions (``score_eval_set``, patience 2 as the server's default).
One member only (the shipped head averages two): compare variants with each other, not with the shipped head.
"""

from __future__ import annotations

import argparse
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


def make_variant(kind: str, dropout: float):
    import torch

    from voxserve.models.wakeword_train import N_EMB, make_head

    if kind == "mlp":
        return make_head(dropout=dropout)
    drop = [torch.nn.Dropout(dropout)] if dropout > 0 else []
    if kind == "wide":
        return torch.nn.Sequential(
            torch.nn.Flatten(), *drop, torch.nn.Linear(N_EMB * 96, 128), torch.nn.LayerNorm(128), torch.nn.ReLU(),
            *drop, torch.nn.Linear(128, 128), torch.nn.LayerNorm(128), torch.nn.ReLU(), torch.nn.Linear(128, 1),
            torch.nn.Sigmoid())
    if kind == "conv":
        class Temporal(torch.nn.Module):
            """[B, 16, 96] -> dilated convolutions over time (16 -> 14 -> 10 -> 2 steps) -> score."""

            def __init__(self):
                super().__init__()
                self.drop = torch.nn.Dropout(dropout)
                self.convs = torch.nn.ModuleList(
                    [torch.nn.Conv1d(96, 64, 3), torch.nn.Conv1d(64, 64, 3, dilation=2),
                     torch.nn.Conv1d(64, 64, 3, dilation=4)])
                self.norms = torch.nn.ModuleList([torch.nn.GroupNorm(1, 64) for _ in self.convs])
                self.out = torch.nn.Linear(64 * 2, 1)

            def forward(self, x):
                h = self.drop(x.transpose(1, 2))
                for conv, norm in zip(self.convs, self.norms):
                    h = torch.relu(norm(conv(h)))
                return torch.sigmoid(self.out(self.drop(h.flatten(1))))
        return Temporal()
    raise SystemExit(f"unknown head kind {kind!r}: mlp, wide or conv")


def train_variant(kind: str, X, y, W, cfg):
    """The recipe of ``train`` for one member with the head ``kind``: train, mine ``W``, fine-tune."""
    from voxserve.models.wakeword_train import hardest, train_head

    head = train_head(X, y, cfg, model=make_variant(kind, cfg.dropout))
    hard = hardest(head, W)
    X2 = np.concatenate([X, hard])
    y2 = np.concatenate([y, np.zeros(len(hard), np.float32)])
    return train_head(X2, y2, cfg, model=head, epochs=cfg.mine_epochs, lr=3e-4), X2, y2


def scorer(*models):
    import torch

    def score(w: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            s = np.ones(len(w), np.float64)
            for m in models:
                s *= m(x).squeeze(1).double().numpy()
        return (s ** (1.0 / len(models))).astype(np.float32)
    return score


def summary(score, es, targets=(6.0, 2.0, 1.0, 0.1)) -> list[dict]:
    from voxserve.models.wakeword_eval import score_eval_set

    rows = []
    for t in targets:
        r = score_eval_set(score, es, max_fa_per_hour=t, warmup_steps=es.first_step, patience=2)
        op, cats = r["operating_point"], r["by_category_at_operating_point"] or {}
        row = {"target_fa_per_hour": t, "threshold": op and op["threshold"], "frr": op and round(op["frr"], 4),
               "fa_per_hour": op and round(op["fa_per_hour"], 3)}
        for k, v in cats.items():
            row[k] = v.get("miss_rate", v.get("share_fired", v.get("fa_per_hour")))
            if k == "negatives: confusable":
                row[k] = v["share_fired"]
        rows.append(row)
    return rows


def cmd_compare(args) -> None:
    import dataclasses

    import torch

    from voxserve.models.wakeword_train import TrainConfig, member_config, train_head

    es = pickle.loads(args.evalset.read_bytes())
    cfg = member_config(dataclasses.replace(TrainConfig(PHRASE), threads=args.threads), args.k)
    X, y, W = (np.load(args.dir / f"{n}{args.k}.npy") for n in ("X", "y", "W"))
    torch.set_num_threads(args.threads)
    out = {}
    for spec in args.variants:
        kind, _, extra = spec.partition("+")
        t0 = time.time()
        head, X2, y2 = train_variant(kind, X, y, W, cfg)
        models = [head]
        if extra == "verifier":
            first = scorer(head)
            keep_neg = np.concatenate([first(X2[y2 < 0.5]), first(W)]) >= 0.1
            negs = np.concatenate([X2[y2 < 0.5], W])[keep_neg]
            Xv = np.concatenate([X2[y2 > 0.5], negs])
            yv = np.concatenate([np.ones(int((y2 > 0.5).sum()), np.float32), np.zeros(len(negs), np.float32)])
            models.append(train_head(Xv, yv, dataclasses.replace(cfg, seed=cfg.seed + 100),
                                     model=make_variant(kind, cfg.dropout)))
        elif extra:
            raise SystemExit(f"unknown variant suffix {extra!r}: verifier")
        rows = summary(scorer(*models), es)
        out[spec] = {"train_seconds": round(time.time() - t0, 1),
                     "parameters": sum(p.numel() for m in models for p in m.parameters()), "rows": rows}
        print(json.dumps({spec: out[spec]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    cols = ["threshold", "frr", "fa_per_hour", "negatives: confusable", "positives: stream_start",
            "positives: natural", "negatives: speech", "negatives: tones"]
    print("| variant | FA/h target | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for spec, r in out.items():
        for row in r["rows"]:
            print(f"| {spec} | {row['target_fa_per_hour']} | " + " | ".join(str(row.get(c)) for c in cols) + " |")


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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    {"evalset": cmd_evalset, "member": cmd_member, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
