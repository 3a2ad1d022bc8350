"""PyTorch engines: the numerical reference (CPU, fp32) and a CUDA engine (fp16, CUDA graphs).

``TorchEngine`` calls an ``nn.Module`` whose ``forward`` takes the inputs positionally in
``inputs`` order and returns a tuple in ``outputs`` order. ``TorchCudaGraphEngine`` captures one
CUDA graph per batch bucket (1, 2, 4, ... ``max_batch``) and item shape, pads each call up to its bucket,
replays the graph and returns the first ``n`` rows: no per-call kernel launch overhead and no allocation.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Sequence

import numpy as np

from .base import Engine, EngineError, TensorSpec


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EngineError("the torch engine needs PyTorch: pip install 'voxserve[export]'") from exc
    return torch


class TorchEngine(Engine):
    kind = "torch"

    def __init__(self, module, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *,
                 device: str = "cpu", state_map: Mapping[str, str] | None = None, name: str = "torch-model"):
        super().__init__()
        torch = _torch()
        self.torch = torch
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.state_map = dict(state_map or {})
        self.name = name
        self.description = f"{name} via torch on {device}"

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[s.name])).to(self.device) for s in self.inputs]
            outs = self.module(*args)
            if not isinstance(outs, (tuple, list)):
                outs = (outs,)
            return {s.name: o.detach().float().cpu().numpy().astype(s.dtype, copy=False)
                    for s, o in zip(self.outputs, outs)}


class TorchCudaGraphEngine(Engine):
    """fp16 CUDA engine with one captured graph per batch bucket (GPU only)."""

    kind = "torch-cuda"

    def __init__(self, module, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *, max_batch: int = 32,
                 fp16: bool = True, state_map: Mapping[str, str] | None = None, name: str = "torch-model",
                 max_graphs: int = 32):
        super().__init__()
        torch = _torch()
        if not torch.cuda.is_available():
            raise EngineError("torch-cuda needs a CUDA GPU and a CUDA build of PyTorch; none found here")
        self.torch = torch
        self.dtype = torch.float16 if fp16 else torch.float32
        self.precision = "fp16" if fp16 else "fp32"
        self.module = module.eval().to("cuda", dtype=self.dtype)
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.state_map = dict(state_map or {})
        self.max_batch = max_batch
        self.max_graphs = max_graphs                   # captured graphs kept (batch bucket x item shape)
        self.buckets = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b < max_batch] + [max_batch]
        self.name = name
        self.description = f"{name} via torch CUDA graphs ({'fp16' if fp16 else 'fp32'}), buckets {self.buckets}"
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()

    def _capture(self, key: tuple, bucket: int, feeds: Mapping[str, np.ndarray]):
        torch = self.torch
        static_in = []
        for s in self.inputs:
            shape = (bucket,) + feeds[s.name].shape[1:]
            dt = self.dtype if np.issubdtype(s.dtype, np.floating) else torch.from_numpy(feeds[s.name][:0]).dtype
            static_in.append(torch.zeros(shape, dtype=dt, device="cuda"))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):                       # warm-up before capture, as the CUDA graph docs require
                self.module(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            outs = self.module(*static_in)
        if not isinstance(outs, (tuple, list)):
            outs = (outs,)
        self._graphs[key] = (graph, static_in, outs)
        while len(self._graphs) > self.max_graphs:            # least recently used shape goes first
            self._graphs.popitem(last=False)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        n = next(iter(feeds.values())).shape[0]
        if n > self.max_batch:
            raise EngineError(f"batch {n} exceeds max_batch {self.max_batch}")
        bucket = next(b for b in self.buckets if b >= n)
        missing = [s.name for s in self.inputs if s.name not in feeds]
        if missing:
            raise EngineError(f"missing inputs {missing}")
        # A captured graph has fixed shapes: one per batch bucket *and* per item shape (e.g. the number
        # of frames in a chunk), so a stream that sends a longer chunk gets its own graph.
        key = (bucket,) + tuple(tuple(feeds[s.name].shape[1:]) for s in self.inputs)
        if key not in self._graphs:
            self._capture(key, bucket, feeds)
        self._graphs.move_to_end(key)
        graph, static_in, outs = self._graphs[key]
        with torch.inference_mode():
            for s, buf in zip(self.inputs, static_in):
                src = torch.from_numpy(np.ascontiguousarray(feeds[s.name]))
                buf[:n].copy_(src.to(buf.dtype), non_blocking=False)
                if n < bucket:
                    buf[n:].zero_()
            graph.replay()
            torch.cuda.synchronize()
            return {s.name: o[:n].float().cpu().numpy().astype(s.dtype, copy=False) for s, o in zip(self.outputs, outs)}
