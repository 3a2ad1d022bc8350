"""The engine interface shared by every inference back end.

An engine wraps one model graph. Obligations:
- synchronous and thread-confined: call ``infer`` from one thread at a time (the scheduler's
  executor); it knows nothing of WebSockets, sessions or asyncio;
- inputs and outputs are numpy arrays keyed by name, batch dimension first, dynamic in size
  (``TensorSpec.shape[0] is None``) unless ``max_batch`` says otherwise;
- optional per-stream state: ``state_map`` names state inputs and the outputs that carry their next
  value; :func:`stack_states` / :func:`unstack_states` batch and split them;
- ``warmup`` runs representative shapes once so the first real call is not slow; ``close`` frees.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np


class EngineError(RuntimeError):
    """An engine could not be created or a call failed; the message says what to do."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]        # None = dynamic (the first axis is the batch)
    dtype: np.dtype = field(default=np.dtype(np.float32))

    def example(self, batch: int, fill: int = 1) -> np.ndarray:
        dims = [batch if i == 0 else (d if d is not None else fill) for i, d in enumerate(self.shape)]
        return np.zeros(dims, dtype=self.dtype)


#: Relative error to expect from each engine precision against an fp32 CPU run of the same graph, on
#: values of the output's own scale (used by self-checks and tests that compare engines).
PRECISION_RTOL = {"fp32": 1e-5, "tf32": 2e-3, "fp16": 1e-2}


def precision_atol(precision: str, scale: float) -> float:
    """Absolute tolerance for comparing an engine of ``precision`` with fp32 on outputs whose largest
    magnitude is ``scale``: reduced precision errs by about the same amount on small components as on
    large ones, so the bound follows the output's scale (3x the precision's relative error)."""
    return 3 * PRECISION_RTOL[precision] * max(1.0, scale)


class Engine(abc.ABC):
    kind: str = "abstract"
    #: arithmetic the engine computes in: "fp32" (exact to rounding), "tf32" (CUDA matmuls/convs with
    #: 10 mantissa bits) or "fp16"
    precision: str = "fp32"

    def __init__(self) -> None:
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.max_batch: int | None = None
        self.state_map: dict[str, str] = {}      # state input name -> output name with its next value
        self.description = ""

    @abc.abstractmethod
    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batched call. Every output has the batch size of the inputs as its first axis."""

    def infer_device(self, feeds: Mapping[str, object], host_outputs: Sequence[str]) -> dict:
        """Like :meth:`infer`, for loops that feed outputs back as inputs (KV caches): outputs named in
        ``host_outputs`` come back as numpy; the others may stay in the engine's device memory as opaque
        handles, valid only as feeds of engines of the same kind and device. Feeds may be numpy or such
        handles. Default: :meth:`infer` (numpy everywhere)."""
        return self.infer({k: host_array(v) for k, v in feeds.items()})

    def warmup(self, batch_sizes: Sequence[int] = (1,), fill: int = 1) -> None:
        for b in batch_sizes:
            if self.max_batch is not None and b > self.max_batch:
                continue
            self.infer({s.name: s.example(b, fill) for s in self.inputs})

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"engine": self.kind, "detail": self.description, "precision": self.precision,
                "max_batch": self.max_batch,
                "inputs": [(s.name, list(s.shape), str(s.dtype)) for s in self.inputs],
                "outputs": [(s.name, list(s.shape), str(s.dtype)) for s in self.outputs]}


def host_array(value) -> np.ndarray:
    """A numpy array of ``value``: numpy as it is, a device handle (ONNX Runtime ``OrtValue``) copied to
    the host."""
    if isinstance(value, np.ndarray):
        return value
    to_numpy = getattr(value, "numpy", None)
    return to_numpy() if callable(to_numpy) else np.asarray(value)


def value_shape(value) -> tuple[int, ...]:
    """The shape of a numpy array or a device handle (an ``OrtValue``'s ``shape`` is a method)."""
    shape = value.shape
    return tuple(shape() if callable(shape) else shape)


def stack_states(states: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-stream state maps (no batch axis) -> one batched map."""
    if not states:
        return {}
    return {k: np.stack([s[k] for s in states]) for k in states[0]}


def unstack_states(batched: Mapping[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """Inverse of :func:`stack_states`: copies, so a stream never aliases another's memory."""
    return [{k: np.array(v[i], copy=True) for k, v in batched.items()} for i in range(n)]


def run_items(engine: Engine, items: Sequence[Mapping[str, np.ndarray]]) -> list:
    """Run per-stream inputs (no batch axis) as one batched call; return per-item output maps.

    Items whose arrays do not match the engine's input specs (missing name, wrong shape or dtype
    kind, non-finite floats) get an :class:`EngineError` in their slot and are left out of the
    call, so one bad stream never corrupts or fails the others. Shapes are checked per item; finiteness
    once per input over the stacked batch (this runs on every engine call of the stages).
    """
    results: list = [None] * len(items)
    good: list[int] = []
    for i, item in enumerate(items):
        problem = _shape_problem(engine, item)
        if problem:
            results[i] = EngineError(problem)
        else:
            good.append(i)
    if not good:
        return results
    feeds = {s.name: np.stack([np.asarray(items[i][s.name], dtype=s.dtype) for i in good]) for s in engine.inputs}
    ok = np.ones(len(good), bool)
    for s in engine.inputs:
        if np.issubdtype(s.dtype, np.floating):
            finite = np.isfinite(feeds[s.name].reshape(len(good), -1)).all(axis=1)
            for j in np.flatnonzero(ok & ~finite):
                results[good[j]] = EngineError(f"input {s.name!r} contains NaN or infinity")
            ok &= finite
    if not ok.all():
        good = [i for i, keep in zip(good, ok) if keep]
        feeds = {k: v[ok] for k, v in feeds.items()}
        if not good:
            return results
    outs = engine.infer(feeds)
    for j, i in enumerate(good):
        results[i] = {k: v[j] for k, v in outs.items()}
    return results


def _shape_problem(engine: Engine, item: Mapping[str, np.ndarray]) -> str | None:
    for s in engine.inputs:
        if s.name not in item:
            return f"input {s.name!r} missing"
        x = item[s.name]
        shape = x.shape if isinstance(x, np.ndarray) else np.shape(x)
        want = s.shape[1:]
        if shape != want and (len(shape) != len(want) or any(w is not None and w != d for w, d in zip(want, shape))):
            return f"input {s.name!r} has shape {list(shape)}, expected {list(want)} (None = any)"
    return None
