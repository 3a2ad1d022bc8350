"""Engine microbenchmark: latency and throughput per batch size, per engine, per model.

Models: the wakeword embedding (real, ONNX), the pitch shifter (ours, ONNX) and the Moonshine encoder
on 5 s of audio (converted .onnx). Engines: every kind available here (ONNX Runtime CPU always; the
GPU kinds are skipped, with the reason, where no GPU stack is installed). One warm-up pass per shape,
then the median of repeated calls. Single-threaded ONNX Runtime (as the server runs it).

    python bench/engines.py [--record] [--kinds K ...] [--batches 1,16,64,256] [--encoder-batches 1,4,16]
                            [--moonshine-encoder converted.onnx]

A model whose files are not installed here (e.g. ``moonshine-cpp`` on a GPU machine that has only the
converted encoder) is skipped with the reason, or read from the path given.
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
from common import record  # noqa: E402


def moonshine_encoder(path: str | None) -> Path:
    if path:
        return Path(path)
    from voxserve.engines.ort_to_onnx import converted
    from voxserve.server.asr.moonshine import model_dir

    return converted(model_dir() / "encoder_model.ort")


def models(batches=(1, 4, 16, 64), encoder_batches=(1, 2, 4), encoder_path: str | None = None, skipped=None):
    """(name, onnx path, feeds for batch b, batch sizes) for each model whose files are here."""
    from voxserve.server.stages.vc import model_path
    from voxserve.server.stages.wakeword_model import frontend_paths

    rng = np.random.default_rng(0)
    _, emb = frontend_paths()
    yield "wakeword-embedding", emb, lambda b: {"input_1": rng.standard_normal((b, 76, 32, 1)).astype(np.float32)}, \
        batches
    yield "pitch-shift", model_path(), lambda b: {
        "frames": (rng.standard_normal((b, 2, 512)) * 0.1).astype(np.float32), "semitones": np.full((b, 1), 4, np.float32),
        "formant": np.zeros((b, 1), np.float32), "gain_db": np.zeros((b, 1), np.float32),
        "prev_phase": np.zeros((b, 257), np.float32), "synth_phase": np.zeros((b, 257), np.float32),
        "ola": np.zeros((b, 384), np.float32), "prev_gain": np.ones((b, 1), np.float32)}, batches
    try:
        enc = moonshine_encoder(encoder_path)
    except Exception as exc:                       # moonshine-cpp not installed and no --moonshine-encoder
        if skipped is not None:
            skipped["moonshine-encoder-5s"] = f"model files not found: {exc}"[:160]
        return
    yield "moonshine-encoder-5s", enc, \
        lambda b: {"input_values": (rng.standard_normal((b, 80000)) * 0.05).astype(np.float32)}, encoder_batches


def bench(engine, feeds_fn, batches, min_time=1.0):
    rows = {}
    for b in batches:
        feeds = feeds_fn(b)
        engine.infer(feeds)
        times = []
        t_end = time.perf_counter() + min_time
        while time.perf_counter() < t_end or len(times) < 5:
            t0 = time.perf_counter()
            engine.infer(feeds)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows[b] = {"ms": round(med * 1000, 3), "items_per_s": round(b / med, 1)}
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--kinds", nargs="+", default=["onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-trt",
                                                  "tensorrt"])
    ap.add_argument("--batches", default="1,4,16,64", help="batch sizes for the wakeword and pitch models")
    ap.add_argument("--encoder-batches", default="1,2,4", help="batch sizes for the Moonshine encoder")
    ap.add_argument("--moonshine-encoder", help="a converted encoder .onnx (default: from moonshine-cpp)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    sizes = tuple(int(b) for b in args.batches.split(","))
    enc_sizes = tuple(int(b) for b in args.encoder_batches.split(","))
    from voxserve.engines.base import EngineError
    from voxserve.engines.factory import create_engine

    results, skipped = {}, {}
    for name, path, feeds_fn, batches in models(sizes, enc_sizes, args.moonshine_encoder, skipped):
        for kind in args.kinds:
            try:
                eng = create_engine(path, kind, max_batch=max(batches))
            except EngineError as exc:
                skipped[kind] = str(exc)[:160]
                continue
            results.setdefault(name, {})[kind] = bench(eng, feeds_fn, batches)
    print(json.dumps({"results": results, "skipped": skipped}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "skipped": skipped}, indent=2))
    if args.record:
        lines = ["| model | engine | batch | ms per call (median) | items/s | x vs batch 1 (items/s) |", "|---|---|---|---|---|---|"]
        for name, by_kind in results.items():
            for kind, rows in by_kind.items():
                base = rows[min(rows)]["items_per_s"]
                for b, r in rows.items():
                    lines.append(f"| {name} | {kind} | {b} | {r['ms']} | {r['items_per_s']} | {r['items_per_s'] / base:.2f} |")
        body = "\n".join(lines) + "\n\nNot run here: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())
        cmd = "python bench/engines.py --record" + "".join(f" {a}" for a in sys.argv[1:] if a != "--record")
        record("Engine microbenchmark", cmd, body)


if __name__ == "__main__":
    main()
