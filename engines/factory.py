"""Engine selection. ``auto`` tries only engines validated on hardware (README, "Engines"): ONNX Runtime
CUDA, then ONNX Runtime CPU, and logs what it picked and why each better option was not used. TensorRT
(native or as the ONNX Runtime provider) is used only when asked for by name until it has been run on a GPU."""

from __future__ import annotations

import logging
from pathlib import Path

from .base import Engine, EngineError

log = logging.getLogger("voxserve.engines")

AUTO_ORDER = ("onnxruntime-cuda", "onnxruntime-cpu")          # validated kinds, best first
KINDS = ("tensorrt", "onnxruntime-trt", "onnxruntime-cuda", "onnxruntime-cpu")


def create_engine(onnx_path: str | Path, kind: str = "auto", *, intra_op_threads: int = 1, max_batch: int = 32,
                  fp16: bool | None = None, cache_dir: str | Path | None = None, name: str | None = None) -> Engine:
    """An engine for ``onnx_path``. Explicit kinds fail with an actionable :class:`EngineError`.

    ``fp16``: reduced precision. ``None`` (the default) is each engine's validated default: ONNX Runtime
    CUDA computes in TF32, TensorRT builds FP32; ``True`` asks for FP16 where the GPU has it (the engine's
    ``precision`` says what it got)."""
    name = name or Path(onnx_path).stem
    if kind == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            try:
                engine = create_engine(onnx_path, candidate, intra_op_threads=intra_op_threads, max_batch=max_batch,
                                       fp16=fp16, cache_dir=cache_dir, name=name)
            except EngineError as exc:
                reasons.append(f"{candidate}: {exc}")
                continue
            log.info("engine selected", extra={"model": name, "engine": candidate,
                                               "skipped": reasons or None})
            return engine
        raise EngineError("no engine could load " + name + ": " + " | ".join(reasons))
    if kind == "tensorrt":
        if str(onnx_path).endswith(".ort"):
            raise EngineError("tensorrt needs a standard .onnx graph, not an ONNX Runtime .ort file")
        from .tensorrt_engine import TensorRTEngine
        return TensorRTEngine(onnx_path, max_batch=max_batch, fp16=bool(fp16), cache_dir=cache_dir, name=name)
    if kind.startswith("onnxruntime-"):
        from .onnxrt import OrtEngine
        if kind != "onnxruntime-cpu" and str(onnx_path).endswith(".ort"):
            raise EngineError(f"{kind} needs a standard .onnx graph, not an ONNX Runtime .ort file")
        return OrtEngine(onnx_path, kind, intra_op_threads=intra_op_threads, cache_dir=cache_dir,
                         fp16=True if fp16 is None else fp16, name=name)
    if kind == "torch":
        raise EngineError("the torch engine runs torch modules (models written in torch), not ONNX files")
    raise EngineError(f"unknown engine {kind!r}; use auto, {', '.join(KINDS)} or torch")
