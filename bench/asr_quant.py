"""What ONNX Runtime dynamic int8 quantization (activations quantized at run time on the MatMuls) buys
Moonshine on this CPU, and what it costs in WER.

    python bench/asr_quant.py [--record]

Both variants (the fp32 conversion, and ``MoonshineModel(int8=True)``: constants folded, merged decoder
split into its two graphs, ``quantize_dynamic`` on every MatMul) decode the sentences of
../shared/eval/speech whole, interleaved file by file in one run (machines are noisy: the ratio is the
figure). Reported: seconds of decode per second of audio for each, the ratio, WER, and how many
transcripts differ at all. (A first version of this benchmark quantized the graph without folding its
de-quantized weights, which left it unchanged: the "0.98" it recorded compared a graph with itself.)
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asr_eval import load16  # noqa: E402
from common import SHARED, record  # noqa: E402
from textnorm import wer  # noqa: E402


def main() -> int:
    from voxserve.server.asr.moonshine import MoonshineModel

    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    rows = [r for r in csv.DictReader(open(SHARED / "eval" / "speech" / "manifest.tsv"), delimiter="\t")
            if "alphanumeric" not in r["path"]]
    audio = [load16(SHARED / "eval" / "speech" / r["path"]) for r in rows]
    base = MoonshineModel("onnxruntime-cpu")
    quant = MoonshineModel("onnxruntime-cpu", int8=True)
    for m in (base, quant):                           # warm both
        m.transcribe([audio[0]])
    times = {"base": 0.0, "q8": 0.0}
    hyps: dict[str, list[str]] = {"base": [], "q8": []}
    for x in audio:
        for name, m in (("base", base), ("q8", quant)):
            t0 = time.perf_counter()
            hyps[name].append(m.transcribe([x])[0].text)
            times[name] += time.perf_counter() - t0
    seconds = sum(len(x) for x in audio) / 16000
    refs = [r["reference"] for r in rows]
    w = {k: wer(list(zip(refs, v))) for k, v in hyps.items()}
    body = (f"{len(rows)} sentences ({seconds:.0f} s of audio), whole-file greedy decode, one ONNX Runtime thread, "
            f"variants interleaved file by file.\n\n| variant | decode s per audio s | WER |\n|---|---|---|\n"
            f"| fp32 conversion | {times['base'] / seconds:.4f} | {w['base'] * 100:.1f} % |\n"
            f"| int8 (dynamic int8 MatMuls, encoder and both decoder graphs) | {times['q8'] / seconds:.4f} | "
            f"{w['q8'] * 100:.1f} % |\n\n"
            f"Ratio (int8 / fp32 time): {times['q8'] / times['base']:.2f}; WER change "
            f"{(w['q8'] - w['base']) * 100:+.1f} points; transcripts that differ at all: "
            f"{sum(a != b for a, b in zip(hyps['base'], hyps['q8']))} of {len(rows)}.")
    print(body)
    if args.record:
        record("ASR: int8", "python bench/asr_quant.py --record", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
