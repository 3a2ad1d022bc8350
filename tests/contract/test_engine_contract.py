"""One contract suite over every engine kind (uvicorn-style: same tests, each implementation).

ONNX Runtime CPU always runs; CUDA/TensorRT/torch-CUDA skip with the reason when no GPU stack is
present; torch skips only when PyTorch is not installed. Test model: a small streaming convolution
with explicit state (a test double beside the real models), written in torch and exported to ONNX
so every engine runs the same weights; plus the real wakeword embedding model for ONNX Runtime.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from voxserve.engines.base import (EngineError, TensorSpec, precision_atol, run_items, stack_states,
                                   unstack_states)
from voxserve.engines.factory import create_engine
from voxserve.server.scheduler import RUN_LATE, SKIP, BatchScheduler, StageFailed

C, K, T = 8, 5, 16
KINDS = ["onnxruntime-cpu", "torch", "onnxruntime-cuda", "onnxruntime-trt", "tensorrt", "torch-cuda"]
TOL = {"onnxruntime-cpu": 1e-5, "torch": 1e-5, "onnxruntime-cuda": 1e-4, "onnxruntime-trt": 2e-2,
       "tensorrt": 2e-2, "torch-cuda": 2e-2}


def _torch_or_skip():
    return pytest.importorskip("torch", reason="PyTorch not installed (pip install 'voxserve[export]')")


def build_module():
    torch = _torch_or_skip()

    class StreamingConv(torch.nn.Module):
        """y = relu(conv1d over [state, x]); the next state is the last K-1 input frames."""

        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.w = torch.nn.Parameter(torch.randn(C, C, K, generator=g) * 0.3)
            self.b = torch.nn.Parameter(torch.randn(C, generator=g) * 0.1)

        def forward(self, x, state):                     # x [B, T, C], state [B, K-1, C]
            full = torch.cat([state, x], dim=1)
            y = torch.nn.functional.conv1d(full.transpose(1, 2), self.w, self.b).transpose(1, 2)
            return torch.relu(y), full[:, -(K - 1):]

    return StreamingConv()


SPECS_IN = [TensorSpec("x", (None, None, C)), TensorSpec("state", (None, K - 1, C))]
SPECS_OUT = [TensorSpec("y", (None, None, C)), TensorSpec("next_state", (None, K - 1, C))]


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    torch = _torch_or_skip()
    path = tmp_path_factory.mktemp("model") / "streaming_conv.onnx"
    m = build_module()
    torch.onnx.export(m, (torch.zeros(2, T, C), torch.zeros(2, K - 1, C)), str(path), input_names=["x", "state"],
                      output_names=["y", "next_state"], opset_version=17, dynamo=False,
                      dynamic_axes={"x": {0: "batch", 1: "time"}, "state": {0: "batch"}, "y": {0: "batch", 1: "time"},
                                    "next_state": {0: "batch"}})
    return path


def make_engine(kind, onnx_path):
    try:
        if kind == "torch":
            from voxserve.engines.torch_engine import TorchEngine
            return TorchEngine(build_module(), SPECS_IN, SPECS_OUT, state_map={"state": "next_state"})
        if kind == "torch-cuda":
            from voxserve.engines.torch_engine import TorchCudaGraphEngine
            return TorchCudaGraphEngine(build_module(), SPECS_IN, SPECS_OUT, max_batch=8)
        return create_engine(onnx_path, kind, max_batch=8)
    except EngineError as exc:
        pytest.skip(f"{kind} unavailable here: {exc}")


@pytest.fixture(params=KINDS)
def engine(request, onnx_path):
    eng = make_engine(request.param, onnx_path)
    eng.tol = TOL[request.param]
    yield eng
    eng.close()


def streams(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((T, C)).astype(np.float32),
             "state": rng.standard_normal((K - 1, C)).astype(np.float32)} for _ in range(n)]


def test_batched_equals_unbatched(engine):
    items = streams()
    batched = run_items(engine, items)
    for item, out in zip(items, batched):
        single = run_items(engine, [item])[0]
        for k in out:
            np.testing.assert_allclose(out[k], single[k], atol=engine.tol, rtol=engine.tol)


def test_state_stacking_round_trips_and_streaming_equals_whole(engine):
    states = [s["state"] for s in streams(3)]
    stacked = stack_states([{"state": s} for s in states])
    assert stacked["state"].shape == (3, K - 1, C)
    for orig, back in zip(states, unstack_states(stacked, 3)):
        np.testing.assert_array_equal(orig, back["state"])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4 * T, C)).astype(np.float32)
    whole = engine.infer({"x": x, "state": np.zeros((3, K - 1, C), np.float32)})["y"]
    state = np.zeros((3, K - 1, C), np.float32)
    parts = []
    for i in range(4):                                   # chunked, carrying state between calls
        out = engine.infer({"x": x[:, i * T:(i + 1) * T], "state": state})
        parts.append(out["y"])
        state = out["next_state"]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=engine.tol, rtol=engine.tol)


def test_bad_input_from_one_stream_leaves_others_correct(engine):
    items = streams(4)
    expected = run_items(engine, items)
    bad = dict(items[1])
    bad["x"] = np.full((T, C), np.nan, np.float32)
    wrong = {"x": items[2]["x"][:, :3], "state": items[2]["state"]}
    out = run_items(engine, [items[0], bad, wrong, items[3]])
    assert isinstance(out[1], EngineError) and "NaN" in str(out[1])
    assert isinstance(out[2], EngineError) and "shape" in str(out[2])
    for i in (0, 3):
        np.testing.assert_allclose(out[i]["y"], expected[i]["y"], atol=engine.tol)


def test_overloaded_stage_sheds_by_policy(engine):
    """A deliberately slow engine: skippable requests past their deadline are shed, finals run late."""

    def slow(items):
        time.sleep(0.05)
        return run_items(engine, items)

    async def go():
        s = BatchScheduler("slow", slow, max_batch=2, max_wait_s=0.0)
        items = streams(6)
        await s.submit(items[0], deadline=time.perf_counter() + 10)          # measure the batch time
        now = time.perf_counter()
        busy = [s.submit(items[i], deadline=now + 10) for i in range(2)]
        partials = [s.submit(items[i], deadline=now + 0.01, policy=SKIP) for i in range(2, 4)]
        finals = [s.submit(items[i], deadline=now + 0.01, policy=RUN_LATE) for i in range(4, 6)]
        res = await asyncio.gather(*busy, *partials, *finals)
        await s.stop()
        return res, items

    res, items = asyncio.run(go())
    assert all(r.skipped for r in res[2:4])
    for r, item in zip(res[4:], items[4:]):
        assert r.late and not r.skipped
        np.testing.assert_allclose(r.value["y"], run_items(engine, [item])[0]["y"], atol=engine.tol)


def test_failing_engine_fails_its_batch_with_typed_error(engine):
    async def go():
        s = BatchScheduler("broken", lambda items: engine.infer({"nope": np.zeros(1)}), max_batch=4, max_wait_s=0.01)
        futs = [s.submit(item, deadline=time.perf_counter() + 5) for item in streams(3)]
        out = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 10)
        await s.stop()
        return out
    assert all(isinstance(r, StageFailed) for r in asyncio.run(go()))


def test_real_wakeword_embedding_batched_equals_unbatched():
    from voxserve.server.stages.wakeword_model import frontend_paths

    _, emb_path = frontend_paths()
    eng = create_engine(emb_path, "onnxruntime-cpu")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 76, 32, 1)).astype(np.float32)
    name = eng.inputs[0].name
    batched = eng.infer({name: x})[eng.outputs[0].name]
    single = np.concatenate([eng.infer({name: x[i:i + 1]})[eng.outputs[0].name] for i in range(6)])
    np.testing.assert_allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize("kind", [k for k in KINDS if not k.startswith("torch")])
def test_real_incremental_embedding_streams_like_the_full_window(kind):
    """The rewritten step graph on every ONNX engine kind: stepping 8 frames at a time through a batch
    of streams gives the full-window embeddings of the original graph (run on ONNX Runtime CPU)."""
    from voxserve.engines.graph_fixes import cached_derivative
    from voxserve.server.stages.wakeword_incremental import CACHE_ROWS, incremental_graph
    from voxserve.server.stages.wakeword_model import frontend_paths

    _, emb_path = frontend_paths()
    full = create_engine(emb_path, "onnxruntime-cpu")
    step = make_engine(kind, cached_derivative(emb_path, "incremental", incremental_graph))
    rng = np.random.default_rng(1)
    frames = rng.uniform(0, 3, (4, 76 + 8 * 6, 32)).astype(np.float32)      # 4 streams, 6 steps after a window
    caches = [np.zeros((4, s.shape[1], CACHE_ROWS, s.shape[3]), np.float32) for s in step.inputs[1:]]
    got = []
    for j in range(len(frames[0]) // 8):
        out = step.infer({step.inputs[0].name: frames[:, 8 * j:8 * j + 8, :, None],
                          **{s.name: c for s, c in zip(step.inputs[1:], caches)}})
        caches = [out["next_" + s.name] for s in step.inputs[1:]]
        got.append(out[step.outputs[0].name].reshape(4, 96))
    for j in range(9, len(got)):           # from step 9 on, every cached row comes from the stream's frames
        window = frames[:, 8 * j - 68:8 * j + 8, :, None]
        expect = full.infer({full.inputs[0].name: window})[full.outputs[0].name].reshape(4, 96)
        # fp32: the kind's tolerance; TF32/fp16 (GPU): the precision's relative error on the embedding's
        # scale (~30), since small components carry the same absolute error as large ones
        scale = float(np.abs(expect).max())
        tol = TOL[kind] * 50 if step.precision == "fp32" else precision_atol(step.precision, scale)
        np.testing.assert_allclose(got[j], expect, atol=tol, rtol=1e-3)


def test_real_embedding_on_cuda_in_full_precision_matches_cpu():
    """With reduced precision off (fp16=False: no TF32), ONNX Runtime CUDA gives the CPU's embeddings
    to fp32 rounding; with it on (the default) they differ by about 1e-3 relative (TF32)."""
    from voxserve.server.stages.wakeword_model import frontend_paths

    _, emb_path = frontend_paths()
    try:
        exact = create_engine(emb_path, "onnxruntime-cuda", fp16=False)
    except EngineError as exc:
        pytest.skip(f"onnxruntime-cuda unavailable here: {exc}")
    cpu = create_engine(emb_path, "onnxruntime-cpu")
    x = np.random.default_rng(2).uniform(0, 3, (8, 76, 32, 1)).astype(np.float32)
    name, out = cpu.inputs[0].name, cpu.outputs[0].name
    np.testing.assert_allclose(exact.infer({name: x})[out], cpu.infer({name: x})[out], atol=1e-4, rtol=1e-4)
