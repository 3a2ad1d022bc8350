"""Transport benchmark: N real-time VAD streams against a real server, load from a separate process.

Reports server CPU (cores), audio frames/s, and VAD event latency: client-measured (event arrival
minus the send time of the frame whose arrival produced it, from the event's ``stream_sample``) and
server-reported (``latency.total_ms``). Usage::

    python bench/transport.py --streams 200 --seconds 30 [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import msgpack
import numpy as np
import psutil
import websockets

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import install_uvloop, percentiles, record, speech_16k, start_server  # noqa: E402

FRAME_MS = 20
FRAME = 16 * FRAME_MS          # samples at 16 kHz


async def one_stream(url: str, pcm: bytes, seconds: float, start_delay: float, out: dict) -> None:
    await asyncio.sleep(start_delay)
    n_frames = int(seconds * 1000 / FRAME_MS)
    frame_bytes = FRAME * 2
    total_frames = len(pcm) // frame_bytes
    sent_at = np.zeros(n_frames + 1)
    async with websockets.connect(url, subprotocols=["voxserve.v1.msgpack"], compression=None) as ws:
        await ws.send(msgpack.packb({"type": "start", "sample_rate": 16000, "pipelines": ["vad"]}))
        msgpack.unpackb(await ws.recv())

        async def reader():
            async for m in ws:
                ev = msgpack.unpackb(m)
                if ev.get("type") == "vad":
                    now = time.perf_counter()
                    # the frame whose arrival produced the event: the last one received at that moment
                    idx = min(max(0, (ev["stream_sample"] - 1) // FRAME), n_frames)
                    if sent_at[idx] > 0:
                        out["client_ms"].append((now - sent_at[idx]) * 1000.0)
                    out["server_ms"].append(ev["latency"]["total_ms"])
                elif ev.get("type") == "error":
                    out["errors"].append(ev["code"])

        rtask = asyncio.create_task(reader())
        t0 = time.perf_counter()
        for i in range(n_frames):
            j = i % total_frames
            target = t0 + i * FRAME_MS / 1000.0
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                out["late"] = max(out["late"], -delay)
            sent_at[i] = time.perf_counter()
            await ws.send(msgpack.packb({"type": "audio", "pcm": pcm[j * frame_bytes:(j + 1) * frame_bytes]}))
            out["frames"] += 1
        await ws.send(msgpack.packb({"type": "stop"}))
        await rtask
        out["closed"].append(ws.close_code)


async def run(url: str, streams: int, seconds: float, ramp: float) -> dict:
    x = speech_16k()
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    out = {"client_ms": [], "server_ms": [], "errors": [], "closed": [], "late": 0.0, "frames": 0}
    tasks = [one_stream(url, pcm, seconds, ramp * i / streams, out) for i in range(streams)]
    await asyncio.gather(*tasks, return_exceptions=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--ramp", type=float, default=5.0, help="seconds over which streams start")
    ap.add_argument("--workers", type=int, default=1, help="voxserve serve --workers N")
    ap.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = ap.parse_args()
    install_uvloop()
    proc, port = start_server(["--pipelines", "vad", "--max-sessions", str(args.streams + 10), "--no-admission",
                               "--workers", str(args.workers)])
    sp = psutil.Process(proc.pid)
    me = psutil.Process()

    def server_cpu():                    # the server process and its workers
        procs = [sp] + sp.children(recursive=True)
        return sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    try:
        url = f"ws://127.0.0.1:{port}/v1/stream"
        time.sleep(2.0 if args.workers > 1 else 0.0)      # every worker up
        c0, m0, t0 = server_cpu(), me.cpu_times(), time.perf_counter()
        out = asyncio.run(run(url, args.streams, args.seconds, args.ramp))
        c1, m1, t1 = server_cpu(), me.cpu_times(), time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(30)
    wall = t1 - t0
    res = {
        "streams": args.streams, "seconds": args.seconds, "wall_s": round(wall, 1),
        "workers": args.workers, "server_cpu_cores": round((c1 - c0) / wall, 3),
        "loadgen_cpu_cores": round((m1.user + m1.system - m0.user - m0.system) / wall, 3),
        "frames_per_s": round(out["frames"] / wall, 1),           # counted by the load generator
        "events": len(out["client_ms"]),
        "client_latency_ms": percentiles(out["client_ms"]),
        "server_latency_ms": percentiles(out["server_ms"]),
        "errors": len(out["errors"]), "abnormal_closes": sum(1 for c in out["closed"] if c != 1000),
        "max_send_slip_ms": round(out["late"] * 1000, 1),
    }
    print(json.dumps(res, indent=2))
    if args.record:
        cl, sl = res["client_latency_ms"], res["server_latency_ms"]
        body = (f"| workers | streams | server CPU (cores) | frames/s | events | client p50/p99/p99.9 ms | "
                f"server p50/p99/p99.9 ms | errors | abnormal closes | max send slip ms |\n"
                f"|---|---|---|---|---|---|---|---|---|---|\n"
                f"| {res['workers']} | {res['streams']} | {res['server_cpu_cores']} | {res['frames_per_s']} | {res['events']} | "
                f"{cl['p50']} / {cl['p99']} / {cl['p99.9']} | {sl['p50']} / {sl['p99']} / {sl['p99.9']} | "
                f"{res['errors']} | {res['abnormal_closes']} | {res['max_send_slip_ms']} |")
        record(f"Transport: {args.streams} real-time VAD streams, {args.seconds:g} s, {args.workers} worker(s)",
               f"python bench/transport.py --streams {args.streams} --seconds {args.seconds:g} --workers "
               f"{args.workers} --record", body)


if __name__ == "__main__":
    main()
