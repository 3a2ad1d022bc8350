"""What ONNX Runtime dynamic int8 quantization (activations quantized at run time on the MatMuls) buys
Moonshine on this CPU, and what it costs in WER.

    python bench/asr_quant.py [--record]

Both variants (the shipped conversion, and ``quantize_dynamic`` of it with MatMul ops only) decode the
sentences of ../shared/eval/speech whole, interleaved file by file in one run (machines are noisy: the
ratio is the figure). Reported: seconds of decode per second of audio for each, the ratio, and WER.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asr_eval import load16  # noqa: E402
from common import SHARED, machine, record, today  # noqa: E402
from textnorm import wer  # noqa: E402


def quantized(src: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from voxserve.engines.graph_fixes import cached_derivative

    def make(path: Path) -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "q.onnx"
            quantize_dynamic(str(path), str(out), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
            return out.read_bytes()
    return cached_derivative(src, "dynq8", make)


def main() -> int:
    from voxserve.engines.factory import create_engine
    from voxserve.engines.ort_to_onnx import converted
    from voxserve.server.asr.moonshine import MoonshineModel, model_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    rows = [r for r in csv.DictReader(open(SHARED / "eval" / "speech" / "manifest.tsv"), delimiter="\t")
            if "alphanumeric" not in r["path"]]
    audio = [load16(SHARED / "eval" / "speech" / r["path"]) for r in rows]
    base = MoonshineModel("onnxruntime-cpu")
    quant = MoonshineModel("onnxruntime-cpu")
    d = model_dir()
    quant.encoder = create_engine(quantized(converted(d / "encoder_model.ort")), "onnxruntime-cpu",
                                  name="moonshine-encoder-q8")
    quant.decoder = create_engine(quantized(converted(d / "decoder_model_merged.ort")), "onnxruntime-cpu",
                                  name="moonshine-decoder-q8")
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
            f"| shipped conversion | {times['base'] / seconds:.4f} | {w['base'] * 100:.1f} % |\n"
            f"| + dynamic int8 MatMuls | {times['q8'] / seconds:.4f} | {w['q8'] * 100:.1f} % |\n\n"
            f"Ratio (quantized / shipped time): {times['q8'] / times['base']:.2f}; WER change "
            f"{(w['q8'] - w['base']) * 100:+.1f} points.")
    print(body)
    if args.record:
        record(f"ASR: dynamic int8 activation quantization ({today()})", "python bench/asr_quant.py",
               f"{machine()}\n\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
