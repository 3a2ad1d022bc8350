"""Native TensorRT engine (``tensorrt`` Python API, TensorRT 10).

NOT YET VALIDATED ON HARDWARE: written against the documented TensorRT 10 API; the GPU machines lent
to this project so far could not run it (see README, Engines), so ``engine=auto`` never picks it: it is
used only when asked for by name. Design:
- build from ONNX with one optimisation profile over **every dynamic axis** (:func:`profile_shapes`: the
  batch axis 1 / ``opt_batch`` / ``max_batch``; any other axis whose size the graph leaves open from
  ``dim_ranges`` by the graph's name for it, e.g. ``{"sequence_length": (1, 64, 512)}``, else
  :data:`DEFAULT_DIM_RANGE`), and a persistent timing cache;
- serialized engines cached on disk under a key of (model SHA-256, TensorRT version, GPU name and
  compute capability, precision, profile); the precision is what was built: ``fp16`` only when asked for
  *and* the GPU has fast FP16, else ``fp32`` (``self.precision`` says which);
- one execution context per batch in flight (``contexts``, default 2: two ASR batches may run at once),
  each with its own CUDA stream and device buffers (grown to the largest shape seen, through PyTorch's
  CUDA allocator); a call takes a free context, so two calls never share buffers; ``execute_async_v3``,
  every status checked.
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


DEFAULT_DIM_RANGE = (1, 64, 1024)     # (min, opt, max) for an open non-batch axis the caller did not size


def profile_shapes(inputs: list[tuple[str, tuple]], *, opt_batch: int, max_batch: int,
                   dim_ranges: Mapping[str, tuple[int, int, int]] | None = None
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes for each input, from its shape as the ONNX graph declares it (ints for fixed
    axes; a name or -1/None for open ones). Axis 0 is the batch; an open axis elsewhere takes
    ``dim_ranges[name]`` (by the graph's symbolic name, or ``"<input>:<axis>"``), else
    :data:`DEFAULT_DIM_RANGE`. Pure: no TensorRT needed (unit-tested on any machine)."""
    ranges = dict(dim_ranges or {})
    out = {}
    for name, shape in inputs:
        lo, opt, hi = [], [], []
        for axis, dim in enumerate(shape):
            if isinstance(dim, int) and dim > 0:
                r = (dim, dim, dim)
            elif axis == 0:
                r = (1, max(1, min(opt_batch, max_batch)), max_batch)
            else:
                r = ranges.get(f"{name}:{axis}") or (ranges.get(dim) if isinstance(dim, str) else None) \
                    or DEFAULT_DIM_RANGE
            if not (1 <= r[0] <= r[1] <= r[2]):
                raise EngineError(f"tensorrt: range {r} for {name} axis {axis} is not min <= opt <= max")
            lo.append(int(r[0]))
            opt.append(int(r[1]))
            hi.append(int(r[2]))
        out[name] = (tuple(lo), tuple(opt), tuple(hi))
    return out


def onnx_input_shapes(model_bytes: bytes) -> list[tuple[str, tuple]]:
    """The graph inputs (not initialisers) with their declared axes: int, symbolic name, or None."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    inits = {i.name for i in model.graph.initializer}
    out = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = []
        for d in inp.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        out.append((inp.name, tuple(dims)))
    return out


def cache_key(model_bytes: bytes, trt_version: str, gpu: str, precision: str, profile: str = "") -> str:
    h = hashlib.sha256()
    for part in (hashlib.sha256(model_bytes).hexdigest(), trt_version, gpu, precision, profile):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


class _Context:
    """One execution context with its own stream and device buffers (one batch in flight)."""

    def __init__(self, engine, torch):
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineError("tensorrt: create_execution_context failed")
        self.stream = torch.cuda.Stream()
        self.buffers: dict[str, object] = {}


class TensorRTEngine(Engine):
    kind = "tensorrt"

    def __init__(self, onnx_path: str | Path, *, max_batch: int = 32, opt_batch: int = 8, fp16: bool = False,
                 cache_dir: str | Path | None = None, workspace_bytes: int = 1 << 30, name: str | None = None,
                 dim_ranges: Mapping[str, tuple[int, int, int]] | None = None, contexts: int = 2):
        super().__init__()
        trt, torch = _import()
        import json
        import queue

        self.trt, self.torch = trt, torch
        self.name = name or Path(onnx_path).stem
        model_bytes = Path(onnx_path).read_bytes()
        self.logger = trt.Logger(trt.Logger.WARNING)
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}-sm{props.major}{props.minor}"
        shapes = profile_shapes(onnx_input_shapes(model_bytes), opt_batch=opt_batch, max_batch=max_batch,
                                dim_ranges=dim_ranges)
        builder = trt.Builder(self.logger)
        precision = "fp16" if fp16 and builder.platform_has_fast_fp16 else "fp32"    # what will be built
        self.precision = precision
        cache = Path(cache_dir or Path.home() / ".cache" / "voxserve" / "tensorrt")
        cache.mkdir(parents=True, exist_ok=True)
        key = cache_key(model_bytes, trt.__version__, gpu, precision, json.dumps(shapes, sort_keys=True))
        plan_path = cache / f"{self.name}-{key}.plan"
        timing_path = cache / f"timing-{trt.__version__}-{gpu}.cache"
        if plan_path.exists():
            plan = plan_path.read_bytes()
            log.info("tensorrt engine from cache", extra={"model": self.name, "plan": str(plan_path)})
        else:
            plan = self._build(builder, model_bytes, shapes, precision == "fp16", workspace_bytes, timing_path)
            plan_path.write_bytes(plan)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineError(f"tensorrt: cannot deserialize {plan_path}; delete it to rebuild")
        self.max_batch = max_batch
        self.profile = shapes
        for i in range(self.engine.num_io_tensors):
            tname = self.engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(tname)))
            declared = tuple(self.engine.get_tensor_shape(tname))
            spec_shape = tuple(None if d < 0 else d for d in declared)
            if spec_shape:
                spec_shape = (None,) + spec_shape[1:]
            target = self.inputs if self.engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT else self.outputs
            target.append(TensorSpec(tname, spec_shape, dtype))
        self._free: "queue.Queue[_Context]" = queue.Queue()
        for _ in range(max(1, contexts)):
            self._free.put(_Context(self.engine, torch))
        self.description = f"{self.name} via TensorRT {trt.__version__} {precision} on {gpu}"

    def _buffer(self, ctx: _Context, name: str, shape: tuple, dtype: np.dtype):
        """A view of ``shape`` on the context's buffer for ``name``, grown when too small."""
        torch = self.torch
        tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
                  np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64,
                  np.dtype(np.bool_): torch.bool, np.dtype(np.int8): torch.int8}[np.dtype(dtype)]
        size = int(np.prod(shape)) if shape else 1
        buf = ctx.buffers.get(name)
        if buf is None or buf.numel() < size:
            buf = torch.empty(max(size, 1), dtype=tdtype, device="cuda")
            ctx.buffers[name] = buf
        return buf[:size].view(shape)

    @staticmethod
    def _check(ok, what: str) -> None:
        if ok is False:
            raise EngineError(f"tensorrt: {what} failed")

    def _build(self, builder, model_bytes: bytes, shapes: dict, fp16: bool, workspace: int,
               timing_path: Path) -> bytes:
        trt = self.trt
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(model_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"tensorrt: ONNX parse failed for {self.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            if t.name not in shapes:
                raise EngineError(f"tensorrt: network input {t.name} is not a graph input of the ONNX file")
            profile.set_shape(t.name, *shapes[t.name])
        config.add_optimization_profile(profile)
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
        config.set_timing_cache(timing, ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f"tensorrt: engine build failed for {self.name} (see TensorRT log above)")
        timing_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
        log.info("tensorrt engine built", extra={"model": self.name, "profile": shapes})
        return bytes(plan)

    def _check_shape(self, name: str, shape: tuple) -> None:
        lo, _, hi = self.profile[name]
        if len(shape) != len(lo) or any(not (a <= d <= b) for d, a, b in zip(shape, lo, hi)):
            raise EngineError(f"tensorrt: {name} shape {tuple(shape)} is outside the engine's profile "
                              f"{lo}..{hi}; build with wider dim_ranges")

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        for s in self.inputs:
            if s.name not in feeds:
                raise EngineError(f"tensorrt: missing input {s.name}")
            self._check_shape(s.name, feeds[s.name].shape)
        ctx = self._free.get()                       # a context of its own: buffers are never shared
        try:
            with torch.cuda.stream(ctx.stream):
                for s in self.inputs:
                    x = np.ascontiguousarray(feeds[s.name], dtype=s.dtype)
                    view = self._buffer(ctx, s.name, x.shape, s.dtype)
                    view.copy_(torch.from_numpy(x), non_blocking=False)
                    self._check(ctx.context.set_input_shape(s.name, x.shape), "set_input_shape")
                    self._check(ctx.context.set_tensor_address(s.name, view.data_ptr()), "set_tensor_address")
                outs = {}
                for s in self.outputs:
                    shape = tuple(ctx.context.get_tensor_shape(s.name))
                    if any(d < 0 for d in shape):
                        raise EngineError(f"tensorrt: output {s.name} shape {shape} unresolved")
                    view = self._buffer(ctx, s.name, shape, s.dtype)
                    self._check(ctx.context.set_tensor_address(s.name, view.data_ptr()), "set_tensor_address")
                    outs[s.name] = view
                self._check(ctx.context.execute_async_v3(ctx.stream.cuda_stream), "execute_async_v3")
            ctx.stream.synchronize()
            return {k: v.cpu().numpy() for k, v in outs.items()}
        finally:
            self._free.put(ctx)
