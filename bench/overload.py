"""Overload: offer twice the measured capacity and check that admission protects the admitted streams.

    python bench/overload.py [--pipeline asr] [--factor 2] [--seconds 20] [--record]

1. ``voxserve serve`` with admission on (the default); warm-up streams run until admission has measured
   the pipeline's cost per real-time stream; ``/v1/info`` then gives its remaining-capacity estimate C.
2. ``factor x C`` streams of real speech start at real-time pace (staggered over 3 s). Reported: how many
   were admitted and how many refused with ``server_busy`` (close 1013, before any session was
   allocated), and for the admitted ones the result latency, budget events and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import install_uvloop, percentiles, record, speech_16k, start_server  # noqa: E402
from stage_load import one  # noqa: E402


def info(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/info", timeout=10) as r:
        return json.loads(r.read())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", default="asr")
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    install_uvloop()
    pcm = (np.clip(speech_16k(), -1, 1) * 32767).astype("<i2").tobytes()
    proc, port = start_server(["--pipelines", f"vad,{args.pipeline}", "--max-sessions", "400"])
    url = f"ws://127.0.0.1:{port}/v1/stream"
    try:
        warm = {"client_ms": [], "server_ms": [], "errors": [], "budget": 0, "passthrough": 0, "refused": 0}
        t0 = time.time()
        while True:                                       # warm up until the pipeline's cost is measured
            async def warm_up():
                await asyncio.wait_for(asyncio.gather(*[one(url, args.pipeline, {}, pcm, 8.0, 0.5 * i, warm)
                                                        for i in range(2)]), 60)
            asyncio.run(warm_up())
            p = info(port)["load"]["pipelines"].get(args.pipeline, {})
            if p.get("cost_per_stream") or time.time() - t0 > 120:
                break
        time.sleep(3.0)                                   # the warm-up leaves the 2 s utilisation window
        p = info(port)["load"]["pipelines"].get(args.pipeline, {})
        cost = p.get("cost_per_stream")
        busy = info(port)["load"]["machine_busy_cores"]
        capacity = p.get("remaining_streams_estimate", 0) or 1
        offered = max(2, int(round(args.factor * capacity)))
        out = {"client_ms": [], "server_ms": [], "errors": [], "budget": 0, "passthrough": 0, "refused": 0}

        async def go():
            await asyncio.gather(*[one(url, args.pipeline, {}, pcm, args.seconds, 3.0 * i / offered, out)
                                   for i in range(offered)])
        asyncio.run(go())
    finally:
        proc.terminate()
        proc.wait(30)
    admitted = offered - out["refused"]
    lat = percentiles(out["server_ms"], (50, 95, 99))
    body = (f"Pipeline `{args.pipeline}`: measured cost {cost} engine-seconds per second of real-time audio; admission's "
            f"capacity estimate C = {capacity} more streams (machine engine load before: {busy} cores). Offered "
            f"{offered} real-time streams ({args.factor:g} x C, staggered over 3 s, {args.seconds:g} s each): "
            f"**{admitted} admitted, {out['refused']} refused** with server_busy/1013 at start (no session allocated). "
            f"Admitted streams: {len(out['server_ms'])} results, server latency p50/p95/p99 {lat['p50']} / "
            f"{lat['p95']} / {lat['p99']} ms, {out['budget']} budget events, {len(out['errors'])} errors "
            f"{sorted(set(out['errors']))}.")
    print(body)
    if args.record:
        record(f"Overload: {args.pipeline} at {args.factor:g}x measured capacity",
               f"python bench/overload.py --pipeline {args.pipeline} --factor {args.factor:g} --seconds "
               f"{args.seconds:g}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
