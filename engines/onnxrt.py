"""ONNX Runtime engines: CPU (default everywhere), CUDA and TensorRT execution providers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .base import Engine, EngineError, TensorSpec

log = logging.getLogger("voxserve.engines")

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}

PROVIDERS = {
    "onnxruntime-cpu": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-trt": "TensorrtExecutionProvider",
}


def installed_builds() -> list[str]:
    """The ONNX Runtime distributions installed (more than one share and overwrite one module)."""
    from importlib import metadata

    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
            found.append(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def _two_builds_note() -> str:
    builds = installed_builds()
    if len(builds) < 2:
        return ""
    return (f" Both {' and '.join(builds)} are installed and overwrite each other's files: pip uninstall -y "
            "onnxruntime onnxruntime-gpu, then pip install 'onnxruntime-gpu[cuda,cudnn]'.")


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(_ORT_TYPES.get(arg.type, np.float32)))


_PRELOADED = False


def _preload_cuda_libraries(ort) -> None:
    """Load CUDA and cuDNN from their pip packages (``nvidia-*``) when present, once per process.

    ``onnxruntime-gpu`` finds them only on the library path otherwise; with PyTorch installed the same
    libraries are already in the process. Best effort: a failure here shows up as the provider check below.
    """
    global _PRELOADED
    if _PRELOADED or not hasattr(ort, "preload_dlls"):
        return
    _PRELOADED = True
    try:
        ort.preload_dlls()
    except Exception:  # pragma: no cover - depends on the install
        pass


class OrtEngine(Engine):
    """One ``onnxruntime.InferenceSession``. ``kind`` picks the provider; CUDA/TensorRT sessions keep
    the CPU provider as a fallback for unsupported nodes. The TensorRT provider caches its built
    engines and timing data under ``cache_dir``."""

    def __init__(self, model: str | Path | bytes, kind: str = "onnxruntime-cpu", *, intra_op_threads: int = 1,
                 cache_dir: str | Path | None = None, fp16: bool = True, name: str | None = None):
        super().__init__()
        import onnxruntime as ort

        if kind not in PROVIDERS:
            raise EngineError(f"unknown ONNX Runtime engine {kind!r}; use one of {sorted(PROVIDERS)}")
        available = ort.get_available_providers()
        wanted = PROVIDERS[kind]
        if wanted not in available:
            raise EngineError(
                f"{kind}: ONNX Runtime here has {available}, not {wanted}. Swap in the GPU build on a machine "
                f"with an NVIDIA driver (pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu[cuda,cudnn]'"
                f"), or run with --engine onnxruntime-cpu.{_two_builds_note()}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        providers: list = []
        if kind == "onnxruntime-trt":
            cache = Path(cache_dir or Path.home() / ".cache" / "voxserve" / "ort-trt")
            cache.mkdir(parents=True, exist_ok=True)
            providers.append(("TensorrtExecutionProvider", {
                "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
                "trt_fp16_enable": fp16}))
        if kind in ("onnxruntime-trt", "onnxruntime-cuda"):
            # TF32 matmuls/convolutions (ONNX Runtime's default on Ampere and later) keep ~10 mantissa bits:
            # results differ from the CPU by ~1e-3 relative. fp16=False asks for full fp32.
            providers.append(("CUDAExecutionProvider", {"use_tf32": int(bool(fp16))}))
        providers.append("CPUExecutionProvider")
        if kind != "onnxruntime-cpu":
            _preload_cuda_libraries(ort)
        src = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(src, so, providers=providers)
        except Exception as exc:
            raise EngineError(f"{kind}: cannot load {name or model!s:.200}: {exc}") from exc
        active = self.session.get_providers()
        if wanted not in active:
            # ONNX Runtime falls back to the CPU provider (with a log line) when the CUDA or TensorRT
            # libraries fail to load; an engine named "cuda" must not quietly run on the CPU.
            raise EngineError(
                f"{kind}: ONNX Runtime could not start {wanted} (session runs on {active}); its CUDA/cuDNN"
                f"{'/TensorRT' if kind == 'onnxruntime-trt' else ''} libraries are missing or do not match: "
                f"pip install 'voxserve[gpu]' brings CUDA and cuDNN as pip packages, or put them on LD_LIBRARY_PATH")
        self.kind = kind
        self.precision = {"onnxruntime-cpu": "fp32", "onnxruntime-cuda": "tf32" if fp16 else "fp32",
                          "onnxruntime-trt": "fp16" if fp16 else "tf32"}[kind]
        self.name = name or (Path(model).stem if not isinstance(model, bytes) else "model")
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        first = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None
        self.max_batch = first if isinstance(first, int) else None
        self._out_names = [o.name for o in self.outputs]
        self.description = f"{self.name} via {self.session.get_providers()[0]}"

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self._out_names, dict(feeds))
        return dict(zip(self._out_names, outs))

    def infer_device(self, feeds: Mapping[str, object], host_outputs: Sequence[str]) -> dict:
        """I/O binding: feeds that are ``OrtValue`` handles are bound where they live (no copy), numpy
        feeds are copied in, outputs not in ``host_outputs`` stay on the session's device (CUDA memory for
        the CUDA/TensorRT providers) as ``OrtValue`` handles."""
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        device = "cpu" if self.kind == "onnxruntime-cpu" else "cuda"
        for name in self._out_names:
            if name in host_outputs:
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, device, 0)
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return {n: (o.numpy() if n in host_outputs else o) for n, o in zip(self._out_names, outs)}
