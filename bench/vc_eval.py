"""Voice-conversion quality through the live server, judged by tools the server does not use.

For each sentence of ../shared/eval/speech and each shift (-7, -4, +4, +7 semitones, formant 0), the
file is streamed through a real ``voxserve serve`` (pipeline ``vc``) by the project's client and the
returned audio is judged:
- pitch: Praat's autocorrelation tracker (praat-parselmouth) on input and output; on frames voiced
  in both, error in cents against input pitch x 2^(s/12). Frames where the *judge* jumps an octave
  (|error| > 600 cents, i.e. a halving/doubling of its own estimate) are counted and excluded from
  the median and RMS, and reported;
- RMS error in Hz against the target pitch, on the same frames;
- intelligibility: Moonshine (offline, whole file) WER of the converted audio at +/-4 vs of the input;
- spectral envelope (formant 0): distance in dB between the long-term average log spectra (voiced
  frames, cepstrally smoothed) of input and output, compared with naive resampling (which moves the
  formants with the pitch).

    python bench/vc_eval.py [--files 18] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED, record, start_server  # noqa: E402
from textnorm import wer  # noqa: E402

SHIFTS = (-7, -4, 4, 7)


def pitch(x: np.ndarray) -> np.ndarray:
    import parselmouth

    p = parselmouth.Sound(x.astype(np.float64), 16000).to_pitch_ac(time_step=0.01, pitch_floor=50, pitch_ceiling=800)
    return p.selected_array["frequency"]


def ltas_envelope(x: np.ndarray, n_fft: int = 1024, lifter: int = 30) -> np.ndarray:
    hop = n_fft // 4
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    energy = power.sum(axis=1)
    voiced = energy > np.percentile(energy, 50)
    log_ltas = 10 * np.log10(power[voiced].mean(axis=0) + 1e-12)
    cep = np.fft.irfft(log_ltas)
    cep[lifter:-lifter] = 0
    return np.fft.rfft(cep).real[: len(log_ltas)]


def env_distance(a: np.ndarray, b: np.ndarray) -> float:
    ea, eb = ltas_envelope(a), ltas_envelope(b)
    band = slice(int(len(ea) * 100 / 8000), int(len(ea) * 5000 / 8000))      # 100 Hz - 5 kHz
    da, db = ea[band] - ea[band].mean(), eb[band] - eb[band].mean()           # level-independent
    return float(np.sqrt(np.mean((da - db) ** 2)))


def naive_resample_shift(x: np.ndarray, semitones: float) -> np.ndarray:
    import soxr

    return soxr.resample(x, 16000 * 2 ** (semitones / 12), 16000).astype(np.float32)


async def convert_all(url: str, items: list[tuple[np.ndarray, float]]) -> list[np.ndarray]:
    from voxserve.clients.audiofile import pcm_from_array
    from voxserve.clients.client import stream_source

    sem = asyncio.Semaphore(4)

    async def one(x, s):
        async with sem:
            res = await stream_source(url, pcm_from_array(x, 16000), pipelines=["vc"], speed=0, frame_ms=100,
                                      options={"vc": {"semitones": float(s), "formant": 0.0}})
            pcm = b"".join(e["pcm"] for e in res.of_type("audio"))
            return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    return await asyncio.gather(*[one(x, s) for x, s in items])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=18)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from asr_eval import load16

    rows = [r for r in csv.DictReader(open(SHARED / "eval" / "speech" / "manifest.tsv"), delimiter="\t")
            if "alphanumeric" not in r["path"]][: args.files]
    inputs = [load16(SHARED / "eval" / "speech" / r["path"]) for r in rows]
    proc, port = start_server(["--pipelines", "vad,vc", "--no-admission", "--max-frames-per-second", "2000",
                               "--frame-burst", "20000"])
    try:
        items = [(x, s) for s in SHIFTS for x in inputs]
        outs = asyncio.run(convert_all(f"ws://127.0.0.1:{port}/v1/stream", items))
    finally:
        proc.terminate()
        proc.wait(30)
    converted = {s: outs[i * len(inputs):(i + 1) * len(inputs)] for i, s in enumerate(SHIFTS)}
    from voxserve.server.asr.moonshine import MoonshineModel

    asr = MoonshineModel()
    base_wer = wer([(r["reference"], asr.transcribe([x])[0].text) for r, x in zip(rows, inputs)])
    table = []
    for s in SHIFTS:
        cents_all, hz_err, octave, frames = [], [], 0, 0
        for x, y in zip(inputs, converted[s]):
            assert len(y) == len(x)
            fa, fb = pitch(x), pitch(y)
            n = min(len(fa), len(fb))
            fa, fb = fa[:n], fb[:n]
            v = (fa > 0) & (fb > 0)
            target = fa[v] * 2 ** (s / 12)
            c = 1200 * np.log2(fb[v] / target)
            ok = np.abs(c) <= 600
            octave += int((~ok).sum())
            frames += int(v.sum())
            cents_all.append(c[ok])
            hz_err.append(fb[v][ok] - target[ok])
        cents = np.concatenate(cents_all)
        hz = np.concatenate(hz_err)
        row = {"semitones": s, "frames_voiced_both": frames, "median_abs_cents": round(float(np.median(np.abs(cents))), 1),
               "rms_hz": round(float(np.sqrt(np.mean(hz ** 2))), 1), "judge_octave_jumps": octave,
               "octave_jump_share": round(octave / max(1, frames), 4)}
        if abs(s) == 4:
            row["asr_wer"] = round(wer([(r["reference"], asr.transcribe([y])[0].text)
                                        for r, y in zip(rows, converted[s])]), 4)
        row["envelope_db"] = round(float(np.mean([env_distance(x, y) for x, y in zip(inputs, converted[s])])), 2)
        row["envelope_db_naive_resampling"] = round(float(np.mean([env_distance(x, naive_resample_shift(x, s))
                                                                    for x in inputs])), 2)
        table.append(row)
    out = {"files": len(rows), "asr_wer_unconverted": round(base_wer, 4), "table": table}
    print(json.dumps(out, indent=2))
    if args.record:
        lines = ["| shift (st) | voiced frames | median abs error (cents) | RMS error (Hz) | judge octave jumps excluded | "
                 "ASR WER | envelope distance dB (ours / naive resampling) |", "|---|---|---|---|---|---|---|"]
        for r in table:
            lines.append(f"| {r['semitones']:+d} | {r['frames_voiced_both']} | {r['median_abs_cents']} | {r['rms_hz']} | "
                         f"{r['judge_octave_jumps']} ({r['octave_jump_share'] * 100:.1f} %) | "
                         f"{r.get('asr_wer', '') and str(round(r['asr_wer'] * 100, 1)) + ' %'} | "
                         f"{r['envelope_db']} / {r['envelope_db_naive_resampling']} |")
        body = "\n".join(lines) + (f"\n\nUnconverted ASR WER (same files, same offline Moonshine decode): "
                                   f"{base_wer * 100:.1f} %. Judge: Praat autocorrelation pitch (parselmouth), "
                                   f"10 ms frames, 50-800 Hz. Conversion through the live server (formant 0).")
        record("Voice conversion quality", "python bench/vc_eval.py --record", body)


if __name__ == "__main__":
    main()
