"""ASR accuracy and latency through the whole server, streamed at real-time pace by the project's client.

For the 18 sentences of ../shared/eval/speech (not the one-second letters/digits), each file is
streamed at real time through ``voxserve-client``'s library (``stream_source``); its finals are joined
and scored against the reference (normalised WER, ``bench/textnorm.py``). The same model decoding each
whole file offline gives the comparison WER. The speech-free files of ../shared/eval/noise must give
no text at all. Latency: each final's ``latency.total_ms`` (from the VAD's end-of-utterance decision,
i.e. after the configured trailing silence, to the final) and the gaps between interims while speaking.

    python bench/asr_eval.py [--concurrency 2] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, percentiles, record, start_server  # noqa: E402
from textnorm import wer  # noqa: E402


def load16(path: Path) -> np.ndarray:
    from voxserve.clients.audiofile import load_audio

    src = load_audio(path, raw_rate=16000)
    x = np.frombuffer(src.data, "<i2" if src.encoding == "s16le" else "<f4").astype(np.float32)
    if src.encoding == "s16le":
        x = x / 32768.0
    x = x.reshape(-1, src.channels).mean(axis=1)
    import soxr
    return soxr.resample(x, src.sample_rate, 16000).astype(np.float32) if src.sample_rate != 16000 else x


async def stream_all(url: str, files: list[Path], concurrency: int, speed: float) -> list:
    from voxserve.clients.audiofile import load_audio
    from voxserve.clients.client import stream_source

    sem = asyncio.Semaphore(concurrency)

    async def one(p: Path):
        async with sem:
            arrivals = []
            res = await stream_source(url, load_audio(p, raw_rate=16000), pipelines=["asr"], speed=speed,
                                      frame_ms=20, on_event=lambda e: arrivals.append((time.perf_counter(), e)))
            return res, arrivals

    return await asyncio.gather(*[one(p) for p in files])


def interim_gaps(arrivals) -> list[float]:
    """Seconds between consecutive interims (or segment start) while a segment is open."""
    gaps, last, open_ = [], None, False
    for t, e in arrivals:
        if e.get("type") == "vad" and e["event"] == "speech_start":
            open_, last = True, t
        elif e.get("type") == "vad" and e["event"] == "speech_end":
            open_ = False
        elif e.get("type") == "transcript_interim" and open_ and last is not None:
            gaps.append(t - last)
            last = t
    return gaps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", help="use a running server instead of starting one")
    ap.add_argument("--concurrency", type=int, default=1, help="files streamed at once")
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    rows = [r for r in csv.DictReader(open(SHARED / "eval" / "speech" / "manifest.tsv"), delimiter="\t")
            if "alphanumeric" not in r["path"]]
    files = [SHARED / "eval" / "speech" / r["path"] for r in rows]
    noise = sorted(p for p in (SHARED / "eval" / "noise").rglob("*") if p.suffix in (".wav", ".ogg", ".opus", ".flac"))
    proc = None
    url = args.url
    if not url:
        proc, port = start_server(["--pipelines", "vad,asr", "--max-sessions", "50", "--no-admission"])
        url = f"ws://127.0.0.1:{port}/v1/stream"
    try:
        t0 = time.time()
        results = asyncio.run(stream_all(url, files, args.concurrency, args.speed))
        noise_results = asyncio.run(stream_all(url, noise, args.concurrency, 0))
        wall = time.time() - t0
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)
    from voxserve.server.asr.moonshine import MoonshineModel

    model = MoonshineModel()
    offline = [model.transcribe([load16(p)])[0].text for p in files]
    streamed = [" ".join(e["text"] for e in res.of_type("transcript")) for res, _ in results]
    pairs_stream = [(r["reference"], h) for r, h in zip(rows, streamed)]
    pairs_off = [(r["reference"], h) for r, h in zip(rows, offline)]
    final_lat = [e["latency"]["total_ms"] for res, _ in results for e in res.of_type("transcript")]
    gaps = [g * 1000 for _, arr in results for g in interim_gaps(arr)]
    noise_text = {p.name: " ".join(e["text"] for e in res.of_type("transcript")).strip()
                  for p, (res, _) in zip(noise, noise_results)}
    out = {"files": len(files), "wer_streaming": round(wer(pairs_stream), 4), "wer_offline": round(wer(pairs_off), 4),
           "final_latency_ms": percentiles(final_lat, (50, 95, 99)), "interim_gap_ms": percentiles(gaps, (50, 95, 99)),
           "interim_gap_max_ms": round(max(gaps), 1) if gaps else None,
           "noise_files_with_text": {k: v for k, v in noise_text.items() if v}, "wall_s": round(wall, 1),
           "per_file": [{"file": r["path"], "ref": r["reference"], "streamed": s, "offline": o}
                        for r, s, o in zip(rows, streamed, offline)]}
    print(json.dumps(out, indent=2))
    if args.record:
        fl, ig = out["final_latency_ms"], out["interim_gap_ms"]
        body = (f"| WER streaming | WER offline (same model, whole file) | final latency p50/p95/p99 ms | "
                f"interim gap p50/p95/max ms | noise files with text |\n|---|---|---|---|---|\n"
                f"| {out['wer_streaming'] * 100:.1f} % | {out['wer_offline'] * 100:.1f} % | {fl['p50']} / {fl['p95']} / "
                f"{fl['p99']} | {ig['p50']} / {ig['p95']} / {out['interim_gap_max_ms']} | "
                f"{len(out['noise_files_with_text'])} of {len(noise)} |\n\n"
                f"{len(files)} sentences streamed at {args.speed:g}x real time, {args.concurrency} at a time, through "
                f"`stream_source` (the client library); final latency is measured from the VAD's end-of-utterance "
                f"decision (after the configured 300 ms trailing silence) to the final.")
        record("ASR accuracy and latency (Moonshine base, streaming)",
               f"python bench/asr_eval.py --concurrency {args.concurrency} --record", body)


if __name__ == "__main__":
    main()
