"""What batching buys Moonshine on this CPU: B equal-length utterances decoded in one batch.

Median of 3 runs per batch size; 5 s of real speech (JFK), greedy decoding with the KV cache, one
ONNX Runtime thread.

    python bench/asr_batching.py [--record]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, speech_16k  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    from voxserve.server.asr.moonshine import MoonshineModel

    model = MoonshineModel()
    audio = speech_16k()[: 5 * 16000]
    model.transcribe([audio])
    rows = []
    for b in (1, 2, 4, 8):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            model.transcribe([audio] * b)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append((b, med * 1000, med * 1000 / b))
    base = rows[0][2]
    lines = ["| utterances per batch | ms per batch | ms per utterance | throughput vs batch 1 |", "|---|---|---|---|"]
    lines += [f"| {b} | {t:.0f} | {u:.0f} | x{base / u:.2f} |" for b, t, u in rows]
    print("\n".join(lines))
    if args.record:
        record("ASR batching on CPU (Moonshine base, 5 s utterances)", "python bench/asr_batching.py --record",
               "\n".join(lines) + "\n\nThe stage pads each decode with silence to a multiple of 0.25 s so that "
               "streams with similar segment lengths can share these calls; unequal lengths cannot (no attention mask).")


if __name__ == "__main__":
    main()
