"""The OpenAI-compatible file transcription path: real-time factor, request latency, and WER against the
streaming path on the same files.

    python bench/rest_transcription.py [--record]

Starts ``voxserve serve --pipelines vad,asr`` and, with the official ``openai`` SDK as the client:
1. WER of ``POST /v1/audio/transcriptions`` on the sentences of ../shared/eval/speech (the same files
   ``bench/asr_eval.py`` scores), against the streaming path's finals for the same files in the same run;
2. the real-time factor of one 10-minute file: those sentences concatenated (0.5 s apart), repeated;
3. p50/p95 request latency for 5 s files (cut from that audio) at 1, 8 and 32 requests at once.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asr_eval import load16  # noqa: E402
from common import SHARED, machine, percentiles, record, start_server, today  # noqa: E402
from textnorm import wer  # noqa: E402


def flac(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="FLAC")
    return buf.getvalue()


def main() -> int:
    import openai

    from voxserve.clients.audiofile import pcm_from_array
    from voxserve.clients.client import stream_source

    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    rows = [r for r in csv.DictReader(open(SHARED / "eval" / "speech" / "manifest.tsv"), delimiter="\t")
            if "alphanumeric" not in r["path"]]
    audio = [load16(SHARED / "eval" / "speech" / r["path"]) for r in rows]
    refs = [r["reference"] for r in rows]
    proc, port = start_server(["--pipelines", "vad,asr", "--no-admission", "--max-sessions", "100",
                               "--max-upload-s", "7200"])
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)

    def transcribe(x: np.ndarray) -> tuple[str, float]:
        t0 = time.perf_counter()
        text = client.audio.transcriptions.create(model="whisper-1", file=("a.flac", flac(x))).text
        return text, time.perf_counter() - t0

    try:
        rest = [transcribe(x)[0] for x in audio]

        async def streamed():
            out = []
            for x in audio:
                res = await stream_source(f"ws://127.0.0.1:{port}/v1/stream", pcm_from_array(x, 16000),
                                          pipelines=["vad", "asr"], speed=0, frame_ms=100,
                                          options={"asr": {"interims": False}})
                out.append(" ".join(e["text"] for e in res.of_type("transcript")))
            return out
        stream = asyncio.run(streamed())
        wer_rest = wer(list(zip(refs, rest)))
        wer_stream = wer(list(zip(refs, stream)))
        same = sum(a == b for a, b in zip(rest, stream))

        gap = np.zeros(8000, np.float32)
        one_pass = np.concatenate([np.concatenate([x, gap]) for x in audio])
        reps = int(np.ceil(args.minutes * 60 * 16000 / len(one_pass)))
        long = np.concatenate([one_pass] * reps)[: int(args.minutes * 60 * 16000)]
        _, took = transcribe(long)
        rtf = took / (len(long) / 16000)

        clips = [long[i:i + 80000] for i in range(0, len(long) - 80000, 80000)]
        lat_rows = []
        for conc, n in ((1, 16), (8, 48), (32, 96)):
            with ThreadPoolExecutor(conc) as pool:
                t0 = time.perf_counter()
                lat = [t for _, t in pool.map(transcribe, [clips[i % len(clips)] for i in range(n)])]
                wall = time.perf_counter() - t0
            p = percentiles(lat, (50, 95))
            lat_rows.append(f"| {conc} | {n} | {p['p50'] * 1000:.0f} | {p['p95'] * 1000:.0f} | "
                            f"{n * 5 / wall:.1f} |")
    finally:
        proc.terminate()
        proc.wait(30)
    body = (f"WER on the {len(rows)} sentences of ../shared/eval/speech: REST {wer_rest * 100:.1f} %, streaming "
            f"finals of the same files in the same run {wer_stream * 100:.1f} % ({same} of {len(rows)} transcripts "
            f"identical).\n\nA {args.minutes:g}-minute file (the sentences concatenated 0.5 s apart, repeated), one "
            f"request: {took:.1f} s, real-time factor {rtf:.3f} ({1 / rtf:.1f}x faster than real time).\n\n"
            "5 s files, requests at once (latency per request, client side; throughput in audio seconds per "
            "wall second):\n\n| concurrent | requests | p50 ms | p95 ms | audio s/s |\n|---|---|---|---|---|\n"
            + "\n".join(lat_rows))
    print(body)
    if args.record:
        record(f"OpenAI-compatible transcription ({today()})", "python bench/rest_transcription.py",
               f"{machine()}\n\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
