"""Fuzz a live voxserve server with generated hostile input, next to a well-behaved neighbour stream.

    python bench/fuzz.py --url ws://127.0.0.1:8000/v1/stream --sessions 5000 --concurrency 300 --seed 1

The message sequences come from the same hypothesis generators as the unit fuzz tests
(``tests/fuzzgen.py``): arbitrary bytes and text, every message type with fields dropped, added and
replaced by anything (wrong types, huge and negative numbers, NaN, nesting), odd PCM lengths, in any
order. It fails (exit 1) if any session gets an error the server blames on itself (``internal``,
``stage_failed``) or a close 1011, or if the neighbour's VAD events differ from a solo run of the
same audio. The server needs ``vad`` (and ``vc`` for the started sequences); run it with a higher
``--max-connections-per-ip`` than ``--concurrency``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.helpers import vad_events, voiced_source  # noqa: E402
from tests.fuzzgen import draw_sequences, fuzz_server  # noqa: E402
from voxserve.clients.client import stream_source  # noqa: E402


async def main_async(args) -> int:
    source = voiced_source(20.0, seed=2)
    solo = vad_events(await stream_source(args.url, source, speed=0, frame_ms=100, token=args.token))
    t0 = time.perf_counter()
    sequences = draw_sequences(args.sessions, seed=args.seed)
    print(f"drew {len(sequences)} sequences in {time.perf_counter() - t0:.1f} s", flush=True)
    neighbour = asyncio.create_task(stream_source(args.url, source, speed=1.0, frame_ms=20, token=args.token))
    t0 = time.perf_counter()
    reports = await fuzz_server(args.url, sequences, args.concurrency)
    took = time.perf_counter() - t0
    near = await neighbour
    codes = collections.Counter(c for r in reports for c in r["errors"])
    closes = collections.Counter(r["close"] for r in reports)
    faults = [r for r in reports if r["server_faults"] or r["close"] == 1011]
    print(f"{len(reports)} sessions in {took:.1f} s; closes {dict(closes)}; refused "
          f"{sum(1 for r in reports if r['refused'])}")
    print("error codes:", dict(codes.most_common()))
    ok = not faults and vad_events(near) == solo and near.close_code == 1000
    print(f"server faults: {len(faults)}; neighbour {'unchanged' if vad_events(near) == solo else 'CHANGED'} "
          f"(close {near.close_code})")
    for r in faults[:5]:
        print("  fault:", r["server_faults"][:2], "close", r["close"])
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="ws://127.0.0.1:8000/v1/stream")
    p.add_argument("--sessions", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token", default=None)
    return asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
