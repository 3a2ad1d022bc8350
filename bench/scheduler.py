"""Scheduler benchmark: throughput and p99 latency versus ``max_wait_ms`` and ``max_batch``.

Many simulated streams submit one request every 16 ms (the VC block rate) to a :class:`BatchScheduler`
running the real pitch-shift engine (ONNX Runtime CPU, one thread). Per configuration: requests/s
completed, p50/p99 of submit-to-result latency, mean batch size. The event loop and the engine
thread share this 2-core machine, as in the server.

    python bench/scheduler.py [--streams 100] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import install_uvloop, percentiles, record  # noqa: E402


async def run(streams: int, max_batch: int, max_wait_ms: float, seconds: float) -> dict:
    from voxserve.engines.base import run_items
    from voxserve.engines.factory import create_engine
    from voxserve.server.scheduler import BatchScheduler
    from voxserve.server.stages.vc import model_path

    eng = create_engine(model_path(), "onnxruntime-cpu")
    rng = np.random.default_rng(0)
    item = {"frames": (rng.standard_normal((2, 512)) * 0.1).astype(np.float32), "semitones": np.array([4.0], np.float32),
            "formant": np.zeros(1, np.float32), "gain_db": np.zeros(1, np.float32),
            "prev_phase": np.zeros(257, np.float32), "synth_phase": np.zeros(257, np.float32),
            "ola": np.zeros(384, np.float32), "prev_gain": np.ones(1, np.float32)}
    sched = BatchScheduler("bench", lambda items: run_items(eng, items), max_batch=max_batch,
                           max_wait_s=max_wait_ms / 1000)
    sched.start()
    lat, done = [], 0
    t_stop = time.perf_counter() + seconds

    async def stream(i):
        nonlocal done
        await asyncio.sleep(0.016 * i / streams)
        nxt = time.perf_counter()
        while nxt < t_stop:
            t0 = time.perf_counter()
            await sched.submit(item, deadline=t0 + 0.04)
            lat.append((time.perf_counter() - t0) * 1000)
            done += 1
            nxt += 0.016
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))

    t0 = time.perf_counter()
    await asyncio.gather(*[stream(i) for i in range(streams)])
    wall = time.perf_counter() - t0
    await sched.stop()
    return {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "requests_per_s": round(done / wall, 1),
            "offered_per_s": round(streams / 0.016, 1), "latency_ms": percentiles(lat, (50, 99)),
            "mean_batch": round(sched.items / max(1, sched.batches), 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    install_uvloop()
    rows = [asyncio.run(run(args.streams, b, w, args.seconds)) for b in (1, 8, 64) for w in (0.0, 2.0, 5.0)]
    print(json.dumps(rows, indent=2))
    if args.record:
        lines = ["| max_batch | max_wait_ms | offered req/s | completed req/s | mean batch | latency p50/p99 ms |",
                 "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['max_batch']} | {r['max_wait_ms']} | {r['offered_per_s']} | {r['requests_per_s']} | "
                         f"{r['mean_batch']} | {r['latency_ms']['p50']} / {r['latency_ms']['p99']} |")
        record(f"Scheduler: {args.streams} simulated VC streams (one 16 ms block each per 16 ms)",
               f"python bench/scheduler.py --streams {args.streams} --record", "\n".join(lines))


if __name__ == "__main__":
    main()
