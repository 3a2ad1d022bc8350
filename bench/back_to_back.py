"""Streams one after another, each sent as fast as the server takes it, against a server with admission on.

What it shows: whether a stream that has just ended still weighs on admission. A script that transcribes
or scans a folder of recordings opens one stream per file, sends it faster than real time and opens the
next as soon as the last result is in. Each such stream is a burst (engine work, and budget misses where
the burst outruns the stages); once it has ended, admission should not refuse the next stream for it.

Per code level (``--baseline DIR``: a source checkout of older code, run first, as in ``bench/asr_load.py``),
one server (``--pipelines`` of the run, admission on, ``--max-frames-per-second 1000``), then ``--files``
of the ../shared sentences streamed in turn at speed 0 (20 ms frames). Reported: streams refused with
``server_busy`` (each refused file is retried after 0.5 s, at most 20 times), results, wall time.

    python bench/back_to_back.py --pipelines vad,wakeword --files 40 --baseline /tmp/old [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voxserve.clients.audiofile import load_audio
from voxserve.clients.client import VoxError, stream_source

from bench.asr_load import baseline_env, baseline_rev
from bench.common import SHARED, record, start_server


def run_level(pipelines: list[str], files: list[Path], env: dict | None) -> dict:
    proc, port = start_server(["--pipelines", ",".join(["vad", *pipelines]), "--max-frames-per-second", "1000",
                               "--frame-burst", "5000"], env=env)
    url = f"ws://127.0.0.1:{port}/v1/stream"
    refused = results = retries_exhausted = 0
    t0 = time.perf_counter()
    try:
        for path in files:
            src = load_audio(path)
            for _ in range(20):
                try:
                    res = asyncio.run(stream_source(url, src, pipelines=pipelines, speed=0, frame_ms=20))
                    results += sum(1 for e in res.events if e.get("type") not in ("vad", "ready", "stats"))
                    break
                except VoxError as exc:
                    if exc.event.get("code") != "server_busy" and exc.close_code not in (1013, 503):
                        raise
                    refused += 1
                    time.sleep(0.5)
            else:
                retries_exhausted += 1
    finally:
        proc.terminate()
        proc.wait(30)
    return {"files": len(files), "refused": refused, "given_up": retries_exhausted, "results": results,
            "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipelines", default="vad,wakeword", help="the server's and each stream's pipelines")
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--baseline", help="a source checkout of older code, measured first")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    pipelines = [p for p in args.pipelines.split(",") if p and p != "vad"] or ["vad"]
    with open(SHARED / "eval" / "speech" / "manifest.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    paths = [SHARED / "eval" / "speech" / r["path"] for r in rows]
    files = [paths[i % len(paths)] for i in range(args.files)]
    levels = ([("baseline", baseline_env(args.baseline))] if args.baseline else []) + [("current", None)]
    table = ["| code | files | refused (server_busy) | gave up | results | wall s |", "|---|---|---|---|---|---|"]
    for code, env in levels:
        r = run_level(pipelines, files, env)
        r["code"] = code
        print(json.dumps(r), flush=True)
        table.append(f"| {code} | {r['files']} | {r['refused']} | {r['given_up']} | {r['results']} | {r['wall_s']} |")
    print("\n".join(table))
    if args.record:
        cmd = "python bench/back_to_back.py " + " ".join(sys.argv[1:]).replace(" --record", "")
        base = f" (baseline = commit {baseline_rev(args.baseline)})" if args.baseline else ""
        record("Back-to-back streams, admission on", cmd,
               f"Streams sent at speed 0 one after another{base}; a refused stream is retried after 0.5 s.\n\n"
               + "\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
