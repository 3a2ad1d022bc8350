"""Soak: mixed pipelines with connection churn for a long time; is the server's memory flat?

    python bench/soak.py --minutes 60 --interval-min 10 [--record]

Starts ``voxserve serve --tracemalloc`` (all default pipelines) and keeps ``--clients`` client loops
busy: each opens a stream (VAD only, wakeword, ASR, or voice conversion, in turn), streams 3-8 s of
generated speech-like audio at real-time pace, and ends it one of four ways: stop, a dropped TCP
connection left to expire, a dropped connection resumed, or a refused start. Every ``--interval-min``
it samples the server process (RSS, open files, threads), ``/v1/info`` (streams, detached, pending,
asyncio tasks) and ``/v1/debug/memory`` (tracemalloc: traced size and top growth). The verdict:
growth of RSS and traced memory from the first sample after warm-up to the last, per hour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, record, start_server, today  # noqa: E402

from tests.e2e.helpers import voiced_source  # noqa: E402
from voxserve.clients.client import VoxClient, VoxError, stream_source  # noqa: E402

PIPELINES = (["vad"], ["vad", "wakeword"], ["vad", "asr"], ["vc"])


def get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


async def client_loop(url: str, k: int, stop_at: float, counts: dict) -> None:
    rng = random.Random(k)
    n = 0
    while time.time() < stop_at:
        pipes = PIPELINES[(k + n) % len(PIPELINES)]
        source = voiced_source(rng.uniform(3, 8), seed=rng.randrange(10**6))
        how = ("stop", "drop", "resume", "refused")[n % 4]
        n += 1
        try:
            if how == "stop":
                await stream_source(url, source, pipelines=pipes, speed=1.0, frame_ms=20, resume=False)
            elif how == "refused":
                async with VoxClient.connect(url) as c:
                    try:
                        await c.start(pipelines=pipes, sample_rate=5)
                    except VoxError:
                        pass
            else:
                async with VoxClient.connect(url) as c:
                    ready = await c.start(pipelines=pipes)
                    for f in list(source.frames(20))[:100]:
                        await c.send_audio(f)
                        await asyncio.sleep(0.02)
                    c.ws.transport.abort()
                if how == "resume":
                    await asyncio.sleep(0.2)
                    async with VoxClient.connect(url) as c:
                        await c.resume(ready["session_id"], -1, ready["resume_token"])
                        await c.stop()
                        async for _ in c.events():
                            pass
            counts[how] = counts.get(how, 0) + 1
        except Exception as exc:                    # counted and reported: a soak must not stop on one failure
            counts["failed"] = counts.get("failed", 0) + 1
            counts.setdefault("failures", []).append(f"{how}: {type(exc).__name__}: {exc}"[:200])


def sample(proc: psutil.Process, port: int, t0: float) -> dict:
    info = get(port, "/v1/info")["load"]
    mem = get(port, "/v1/debug/memory")
    return {"minute": round((time.time() - t0) / 60, 1), "rss_mib": round(proc.memory_info().rss / 2**20, 1),
            "open_files": len(proc.open_files()) + len(proc.net_connections()), "threads": proc.num_threads(),
            "streams": info["streams"], "detached": info["detached"], "pending": info["pending"],
            "tasks": info["tasks"], "traced_kib": mem["traced_kib"], "top_growth": mem["top_growth"][:3]}


async def main_async(args) -> int:
    proc_handle, port = start_server(["--tracemalloc", "--no-admission", "--resume-grace-s", "5"])
    proc = psutil.Process(proc_handle.pid)
    url = f"ws://127.0.0.1:{port}/v1/stream"
    t0 = time.time()
    stop_at = t0 + args.minutes * 60
    counts: dict = {}
    samples = [sample(proc, port, t0)]
    print(json.dumps(samples[-1]), flush=True)
    loops = [asyncio.create_task(client_loop(url, k, stop_at, counts)) for k in range(args.clients)]
    try:
        while time.time() < stop_at:
            await asyncio.sleep(min(args.interval_min * 60, max(1.0, stop_at - time.time())))
            samples.append(sample(proc, port, t0))
            print(json.dumps({**samples[-1], "sessions": {k: v for k, v in counts.items() if k != "failures"}}),
                  flush=True)
        await asyncio.gather(*loops)
        await asyncio.sleep(6)                          # detached streams expire (grace 5 s)
        samples.append(sample(proc, port, t0))
    finally:
        proc_handle.terminate()
        proc_handle.wait(30)
    # Growth is judged under the same load: the first sample after warm-up against the last one taken while
    # the clients were still running; the final sample (all streams ended) shows what stays behind.
    warm = samples[1] if len(samples) > 3 else samples[0]
    last = samples[-2] if len(samples) > 2 else samples[-1]
    idle = samples[-1]
    hours = max(1e-9, (last["minute"] - warm["minute"]) / 60)
    rss_growth = (last["rss_mib"] - warm["rss_mib"]) / warm["rss_mib"] * 100 / hours
    traced_growth = (last["traced_kib"] - warm["traced_kib"]) / max(1.0, warm["traced_kib"]) * 100 / hours
    rows = "\n".join(f"| {s['minute']} | {s['rss_mib']} | {s['traced_kib']} | {s['open_files']} | {s['threads']} | "
                     f"{s['tasks']} | {s['streams']} | {s['detached']} |" for s in samples)
    top = "; ".join(f"{g['where']} {g['kib']} KiB" for g in last["top_growth"])
    body = (f"{args.clients} client loops (VAD, wakeword, ASR, VC in turn; stop / drop / drop+resume / refused in "
            f"turn), {args.minutes} min, samples every {args.interval_min} min. Sessions: "
            f"{ {k: v for k, v in counts.items() if k != 'failures'} }.\n\n"
            "| minute | RSS MiB | traced KiB | open files+sockets | threads | asyncio tasks | streams | detached |\n"
            "|---|---|---|---|---|---|---|---|\n" + rows +
            f"\n\nGrowth under load, minute {warm['minute']} to {last['minute']}: RSS {rss_growth:+.2f} %/h, traced "
            f"{traced_growth:+.2f} %/h (target < 1 %/h). Top tracemalloc growth at minute {last['minute']}: {top}. "
            f"After every stream ended: traced {idle['traced_kib']} KiB (at start {samples[0]['traced_kib']}), "
            f"{idle['tasks']} asyncio tasks (at start {samples[0]['tasks']}), {idle['detached']} detached.")
    print(body)
    if counts.get("failures"):
        print("client failures (first 5):", counts["failures"][:5])
    if args.record:
        record(f"Soak ({today()})", f"python bench/soak.py --minutes {args.minutes} --interval-min "
                                     f"{args.interval_min} --clients {args.clients}", f"{machine()}\n\n{body}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--interval-min", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
