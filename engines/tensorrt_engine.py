"""Native TensorRT engine (``tensorrt`` Python API, TensorRT 10).

NOT YET VALIDATED ON HARDWARE: written against the documented TensorRT 10 API; the GPU machines lent
to this project so far could not run it (see README, Engines). Design:
- build from ONNX with one optimisation profile over the batch axis (min 1, opt ``opt_batch``,
  max ``max_batch``) and a persistent timing cache;
- serialized engines cached on disk under a key of (model SHA-256, TensorRT version, GPU name and
  compute capability, precision); FP16 when ``fp16`` and the GPU has fast FP16;
- device buffers allocated once at the profile maximum (through PyTorch's CUDA allocator), inputs
  copied into them, ``execute_async_v3`` on a private stream, every call's status checked.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from .base import Engine, EngineError, TensorSpec

log = logging.getLogger("voxserve.engines")


def _import():
    try:
        import tensorrt as trt
        import torch
    except ImportError as exc:
        raise EngineError("the tensorrt engine needs the 'tensorrt' package and a CUDA build of PyTorch: "
                          "pip install 'voxserve[gpu]' on a machine with an NVIDIA GPU") from exc
    if not torch.cuda.is_available():
        raise EngineError("tensorrt: no CUDA device visible (check the NVIDIA driver and CUDA_VISIBLE_DEVICES)")
    return trt, torch


def cache_key(model_bytes: bytes, trt_version: str, gpu: str, precision: str) -> str:
    h = hashlib.sha256()
    for part in (hashlib.sha256(model_bytes).hexdigest(), trt_version, gpu, precision):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


class TensorRTEngine(Engine):
    kind = "tensorrt"

    def __init__(self, onnx_path: str | Path, *, max_batch: int = 32, opt_batch: int = 8, fp16: bool = True,
                 cache_dir: str | Path | None = None, workspace_bytes: int = 1 << 30, name: str | None = None):
        super().__init__()
        trt, torch = _import()
        self.trt, self.torch = trt, torch
        self.name = name or Path(onnx_path).stem
        model_bytes = Path(onnx_path).read_bytes()
        self.logger = trt.Logger(trt.Logger.WARNING)
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}-sm{props.major}{props.minor}"
        precision = "fp16" if fp16 else "fp32"
        self.precision = precision
        cache = Path(cache_dir or Path.home() / ".cache" / "voxserve" / "tensorrt")
        cache.mkdir(parents=True, exist_ok=True)
        key = cache_key(model_bytes, trt.__version__, gpu, precision)
        plan_path = cache / f"{self.name}-{key}.plan"
        timing_path = cache / f"timing-{trt.__version__}-{gpu}.cache"
        if plan_path.exists():
            plan = plan_path.read_bytes()
            log.info("tensorrt engine from cache", extra={"model": self.name, "plan": str(plan_path)})
        else:
            plan = self._build(model_bytes, max_batch, opt_batch, fp16, workspace_bytes, timing_path)
            plan_path.write_bytes(plan)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineError(f"tensorrt: cannot deserialize {plan_path}; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError("tensorrt: create_execution_context failed")
        self.stream = torch.cuda.Stream()
        self.max_batch = max_batch
        self._buffers: dict[str, "torch.Tensor"] = {}
        for i in range(self.engine.num_io_tensors):
            tname = self.engine.get_tensor_name(i)
            mode = self.engine.get_tensor_mode(tname)
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(tname)))
            if mode == trt.TensorIOMode.INPUT:
                max_shape = tuple(self.engine.get_tensor_profile_shape(tname, 0)[2])
                spec_shape = (None,) + max_shape[1:]
                self.inputs.append(TensorSpec(tname, spec_shape, dtype))
            else:
                max_shape = None
                self.outputs.append(TensorSpec(tname, (None,) + tuple(self.engine.get_tensor_shape(tname))[1:], dtype))
            if max_shape is not None:
                self._alloc(tname, max_shape, dtype)
        # Output buffers: shapes known once every input has its maximum shape.
        for s in self.inputs:
            self._check(self.context.set_input_shape(s.name, tuple(self._buffers[s.name].shape)), "set_input_shape")
        for s in self.outputs:
            self._alloc(s.name, tuple(self.context.get_tensor_shape(s.name)), s.dtype)
        for tname, buf in self._buffers.items():
            self._check(self.context.set_tensor_address(tname, buf.data_ptr()), "set_tensor_address")
        self.description = f"{self.name} via TensorRT {trt.__version__} {precision} on {gpu}"

    def _alloc(self, name: str, shape: tuple, dtype: np.dtype) -> None:
        torch = self.torch
        tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
                  np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64,
                  np.dtype(np.bool_): torch.bool, np.dtype(np.int8): torch.int8}[np.dtype(dtype)]
        self._buffers[name] = torch.empty(shape, dtype=tdtype, device="cuda")

    @staticmethod
    def _check(ok, what: str) -> None:
        if ok is False:
            raise EngineError(f"tensorrt: {what} failed")

    def _build(self, model_bytes: bytes, max_batch: int, opt_batch: int, fp16: bool, workspace: int,
               timing_path: Path) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(model_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"tensorrt: ONNX parse failed for {self.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        if fp16 and builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            rest = tuple(max(1, d) for d in tuple(t.shape)[1:])
            profile.set_shape(t.name, (1,) + rest, (min(opt_batch, max_batch),) + rest, (max_batch,) + rest)
        config.add_optimization_profile(profile)
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
        config.set_timing_cache(timing, ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"tensorrt: engine build failed for {self.name} (see TensorRT log above)")
        timing_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
        log.info("tensorrt engine built", extra={"model": self.name})
        return bytes(plan)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        n = next(iter(feeds.values())).shape[0]
        if n > self.max_batch:
            raise EngineError(f"batch {n} exceeds the profile maximum {self.max_batch}")
        with torch.cuda.stream(self.stream):
            for s in self.inputs:
                x = feeds[s.name]
                buf = self._buffers[s.name]
                view = buf.view(-1)[: x.size].view(x.shape)
                view.copy_(torch.from_numpy(np.ascontiguousarray(x, dtype=s.dtype)), non_blocking=False)
                self._check(self.context.set_input_shape(s.name, x.shape), "set_input_shape")
                self._check(self.context.set_tensor_address(s.name, view.data_ptr()), "set_tensor_address")
            outs = {}
            for s in self.outputs:
                shape = tuple(self.context.get_tensor_shape(s.name))
                view = self._buffers[s.name].view(-1)[: int(np.prod(shape))].view(shape)
                self._check(self.context.set_tensor_address(s.name, view.data_ptr()), "set_tensor_address")
                outs[s.name] = view
            self._check(self.context.execute_async_v3(self.stream.cuda_stream), "execute_async_v3")
        self.stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outs.items()}
