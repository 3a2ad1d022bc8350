"""Engine microbenchmark: latency and throughput per batch size, per engine, per model.

Models: the wakeword embedding (real, ONNX), the pitch shifter (ours, ONNX) and the Moonshine encoder
on 5 s of audio (converted .onnx). Engines: every kind available here (ONNX Runtime CPU always; the
GPU kinds are skipped, with the reason, where no GPU stack is installed). One warm-up pass per shape,
then the median of repeated calls. Single-threaded ONNX Runtime (as the server runs it).

    python bench/engines.py [--record]
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


def models():
    from voxserve.engines.ort_to_onnx import converted
    from voxserve.server.asr.moonshine import model_dir
    from voxserve.server.stages.vc import model_path
    from voxserve.server.stages.wakeword_model import frontend_paths

    rng = np.random.default_rng(0)
    _, emb = frontend_paths()
    yield "wakeword-embedding", emb, lambda b: {"input_1": rng.standard_normal((b, 76, 32, 1)).astype(np.float32)}, \
        (1, 4, 16, 64)
    yield "pitch-shift", model_path(), lambda b: {
        "frames": (rng.standard_normal((b, 2, 512)) * 0.1).astype(np.float32), "semitones": np.full((b, 1), 4, np.float32),
        "formant": np.zeros((b, 1), np.float32), "gain_db": np.zeros((b, 1), np.float32),
        "prev_phase": np.zeros((b, 257), np.float32), "synth_phase": np.zeros((b, 257), np.float32),
        "ola": np.zeros((b, 384), np.float32), "prev_gain": np.ones((b, 1), np.float32)}, (1, 4, 16, 64)
    yield "moonshine-encoder-5s", converted(model_dir() / "encoder_model.ort"), \
        lambda b: {"input_values": (rng.standard_normal((b, 80000)) * 0.05).astype(np.float32)}, (1, 2, 4)


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
    args = ap.parse_args()
    from voxserve.engines.base import EngineError
    from voxserve.engines.factory import create_engine

    results, skipped = {}, {}
    for name, path, feeds_fn, batches in models():
        for kind in args.kinds:
            try:
                eng = create_engine(path, kind, max_batch=max(batches))
            except EngineError as exc:
                skipped[kind] = str(exc)[:160]
                continue
            results.setdefault(name, {})[kind] = bench(eng, feeds_fn, batches)
    print(json.dumps({"results": results, "skipped": skipped}, indent=2))
    if args.record:
        lines = ["| model | engine | batch | ms per call (median) | items/s | x vs batch 1 (items/s) |", "|---|---|---|---|---|---|"]
        for name, by_kind in results.items():
            for kind, rows in by_kind.items():
                base = rows[min(rows)]["items_per_s"]
                for b, r in rows.items():
                    lines.append(f"| {name} | {kind} | {b} | {r['ms']} | {r['items_per_s']} | {r['items_per_s'] / base:.2f} |")
        body = "\n".join(lines) + "\n\nNot run here: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())
        record("Engine microbenchmark", "python bench/engines.py --record", body)


if __name__ == "__main__":
    main()
