"""Real-time load on one pipeline: N streams of real speech at real-time pace against a real server.

Reports, per stream count: server CPU (cores), the stage's server-reported result latency
(``latency.total_ms``: from the arrival of the audio that completed the work to the event) p50/p99,
client-measured latency (event arrival minus the send time of the frame whose arrival produced it; for
VC audio the frame holding the end of the input it converts, so the figure includes the model's lookahead),
budget events and errors. Load comes from this process; the server is a separate ``voxserve serve``.

    python bench/stage_load.py --pipeline vc --streams 20 50 --seconds 20 [--record]
    python bench/stage_load.py --mix wakeword=10,asr=3,vc=4,vad=20 --seconds 30 [--server-arg=--engine-workers=-1]

``--mix`` runs streams of several pipelines at once against one server (every stage's models loaded) and
reports each pipeline's row: the mixed-load check that every stage keeps its budget at the admitted count.
With ``--admission`` the server runs as users run it (admission on; otherwise it is off to measure the
stages alone), warmed up until every pipeline's cost is measured: offer more than fits, and the rows say
how many streams of each pipeline admission let in and whether those kept their budgets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import psutil
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import install_uvloop, percentiles, record, speech_16k, start_server  # noqa: E402

FRAME_MS = 20
FRAME = 16 * FRAME_MS
RESULT_TYPES = {"vc": "audio", "wakeword": "wakeword", "asr": "transcript", "vad": "vad"}


async def one(url, pipeline, options, pcm, seconds, delay, out):
    await asyncio.sleep(delay)
    n = int(seconds * 1000 / FRAME_MS)
    fb = FRAME * 2
    total = len(pcm) // fb
    sent = np.zeros(n + 1)
    want = RESULT_TYPES[pipeline]
    async with websockets.connect(url, subprotocols=["voxserve.v1.msgpack"], compression=None, max_size=None) as ws:
        await ws.send(msgpack.packb({"type": "start", "sample_rate": 16000, "pipelines": [pipeline],
                                     "options": {pipeline: options} if options else {}}))
        ready = msgpack.unpackb(await ws.recv())
        if ready.get("type") != "ready":
            out["refused"] += 1
            return

        async def reader():
            async for m in ws:
                ev = msgpack.unpackb(m)
                t = ev.get("type")
                if t == want:
                    out["server_ms"].append(ev["latency"]["total_ms"])
                    # the frame whose arrival produced it: for converted audio, the frame holding the end
                    # of the audio it converts (so the figure includes VC's lookahead and any lag); for
                    # other events, the newest frame the server had (``stream_sample``)
                    pos = ev["end_sample"] if t == "audio" else ev["stream_sample"]
                    idx = min(max(0, (pos - 1) // FRAME), n)
                    if sent[idx]:
                        out["client_ms"].append((time.perf_counter() - sent[idx]) * 1000)
                    if t == "audio" and not ev.get("converted", True):
                        out["passthrough"] += 1
                elif t == "budget":
                    out["budget"] += 1
                elif t == "error":
                    out["errors"].append(ev["code"])

        rt = asyncio.create_task(reader())
        t0 = time.perf_counter()
        for i in range(n):
            d = t0 + i * FRAME_MS / 1000 - time.perf_counter()
            if d > 0:
                await asyncio.sleep(d)
            sent[i] = time.perf_counter()
            j = i % total
            await ws.send(msgpack.packb({"type": "audio", "pcm": pcm[j * fb:(j + 1) * fb]}))
        await ws.send(msgpack.packb({"type": "stop"}))
        await rt


def run_level(pipeline, options, streams, seconds, extra_args):
    x = speech_16k()
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    proc, port = start_server(["--pipelines", f"vad,{pipeline}" if pipeline != "vad" else "vad",
                               "--max-sessions", str(streams + 10), "--no-admission", *extra_args])
    sp = psutil.Process(proc.pid)
    out = {"client_ms": [], "server_ms": [], "errors": [], "budget": 0, "passthrough": 0, "refused": 0}
    try:
        url = f"ws://127.0.0.1:{port}/v1/stream"
        c0, t0 = sp.cpu_times(), time.perf_counter()

        async def go():
            await asyncio.gather(*[one(url, pipeline, options, pcm, seconds, 3.0 * i / streams, out)
                                   for i in range(streams)])
        asyncio.run(go())
        c1, t1 = sp.cpu_times(), time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(30)
    return {"streams": streams, "server_cpu_cores": round((c1.user + c1.system - c0.user - c0.system) / (t1 - t0), 3),
            "results": len(out["server_ms"]), "server_ms": percentiles(out["server_ms"], (50, 99)),
            "client_ms": percentiles(out["client_ms"], (50, 99)), "budget_events": out["budget"],
            "passthrough_blocks": out["passthrough"], "errors": len(out["errors"]), "refused": out["refused"]}


def load_report(port: int) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/info", timeout=10) as r:
        return json.loads(r.read())["load"]


def warm_up_mix(url: str, port: int, mix: dict[str, int], pcm: bytes) -> dict:
    """Two streams of each pipeline for 10 s, repeated until admission has measured every pipeline's cost
    per stream (VAD has none: it runs on the event loop) or 120 s; then 3 s so the warm-up leaves the
    utilisation window. Returns the server's load report."""
    t0 = time.time()
    while time.time() - t0 < 120:
        sink = {"client_ms": [], "server_ms": [], "errors": [], "budget": 0, "passthrough": 0, "refused": 0}

        async def go():
            await asyncio.gather(*[one(url, p, {}, pcm, 10.0, 0.5 * i, sink)
                                   for p in mix if p != "vad" for i in range(2)])
        asyncio.run(go())
        costs = load_report(port)["pipelines"]
        if all((costs.get(p) or {}).get("cost_per_stream") for p in mix if p != "vad"):
            break
    time.sleep(3.0)
    return load_report(port)


def run_mix(mix: dict[str, int], options: dict, seconds: float, extra_args: list[str],
            admission: bool = False) -> list[dict]:
    """Streams of every pipeline in ``mix`` at once against one server; one row per pipeline. With
    ``admission`` the server runs as users run it (admission on) and is warmed up first, so the offered
    mix meets a measured capacity: each row then says how many of its streams were refused."""
    x = speech_16k()
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    total = sum(mix.values())
    pipes = ",".join(["vad"] + [p for p in mix if p != "vad"])
    proc, port = start_server(["--pipelines", pipes, "--max-sessions", str(total + 10),
                               *([] if admission else ["--no-admission"]), *extra_args])
    sp = psutil.Process(proc.pid)
    outs = {p: {"client_ms": [], "server_ms": [], "errors": [], "budget": 0, "passthrough": 0, "refused": 0}
            for p in mix}
    try:
        url = f"ws://127.0.0.1:{port}/v1/stream"
        if admission:
            warm_up_mix(url, port, mix, pcm)
        c0, t0 = sp.cpu_times(), time.perf_counter()

        async def go():
            # arrivals interleave the pipelines (round robin), so none always comes last to admission
            order = [p for i in range(max(mix.values())) for p, n in mix.items() if i < n]
            jobs = [one(url, p, options.get(p, {}), pcm, seconds, 3.0 * k / total, outs[p])
                    for k, p in enumerate(order)]
            await asyncio.gather(*jobs)
        asyncio.run(go())
        c1, t1 = sp.cpu_times(), time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(30)
    cores = round((c1.user + c1.system - c0.user - c0.system) / (t1 - t0), 3)
    return [{"pipeline": p, "streams": mix[p], "server_cpu_cores": cores, "results": len(o["server_ms"]),
             "server_ms": percentiles(o["server_ms"], (50, 99)), "client_ms": percentiles(o["client_ms"], (50, 99)),
             "budget_events": o["budget"], "passthrough_blocks": o["passthrough"], "errors": len(o["errors"]),
             "refused": o["refused"]} for p, o in outs.items()]


def load_table(rows: list[dict], lead: list[str]) -> list[str]:
    """The RESULTS table of load rows: the ``lead`` columns, then the shared latency/budget columns."""
    head = " | ".join(lead)
    lines = [f"| {head} | server CPU (cores) | results | server latency p50/p99 ms | client latency p50/p99 ms | "
             "budget events | passthrough blocks | errors | refused |", "|---" * (len(lead) + 8) + "|"]
    for r in rows:
        cells = " | ".join(str(r[k]) for k in lead)
        lines.append(f"| {cells} | {r['server_cpu_cores']} | {r['results']} | {r['server_ms']['p50']} / "
                     f"{r['server_ms']['p99']} | {r['client_ms']['p50']} / {r['client_ms']['p99']} | "
                     f"{r['budget_events']} | {r['passthrough_blocks']} | {r['errors']} | {r['refused']} |")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", default="vc", choices=sorted(RESULT_TYPES))
    ap.add_argument("--streams", type=int, nargs="+", default=[20])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--option", action="append", default=[], help="KEY=JSON option of the pipeline")
    ap.add_argument("--server-arg", action="append", default=[])
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--mix", default="", help="PIPELINE=N,... streams of several pipelines at once")
    ap.add_argument("--admission", action="store_true",
                    help="with --mix: admission on (as users run the server), warmed up first; refusals reported")
    args = ap.parse_args()
    install_uvloop()
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    if args.mix:
        mix = {k: int(v) for k, v in (item.split("=") for item in args.mix.split(","))}
        rows = run_mix(mix, {}, args.seconds, args.server_arg, admission=args.admission)
        print(json.dumps(rows, indent=2))
        if args.record:
            lines = load_table(rows, ["pipeline", "streams"])
            extra = " ".join([f"--server-arg={a}" for a in args.server_arg] + (["--admission"] if args.admission else []))
            record("Mixed real-time load", f"python bench/stage_load.py --mix {args.mix} --seconds {args.seconds:g} "
                   f"{extra}".rstrip() + " --record", "\n".join(lines))
        return
    rows = [run_level(args.pipeline, options, n, args.seconds, args.server_arg) for n in args.streams]
    print(json.dumps(rows, indent=2))
    if args.record:
        lines = load_table(rows, ["streams"])
        opt = " ".join([f"--option {o}" for o in args.option] + [f"--server-arg={a}" for a in args.server_arg])
        record(f"Real-time load: {args.pipeline}", f"python bench/stage_load.py --pipeline {args.pipeline} --streams "
               f"{' '.join(map(str, args.streams))} --seconds {args.seconds:g} {opt}".rstrip() + " --record",
               "\n".join(lines))


if __name__ == "__main__":
    main()
