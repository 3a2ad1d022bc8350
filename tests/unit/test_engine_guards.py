"""Engine guards that matter on GPU machines but can be checked on any: a CUDA engine must not quietly
run on the CPU, and every engine says what precision it computes in."""

from __future__ import annotations

import numpy as np
import pytest

from voxserve.engines import onnxrt
from voxserve.engines.base import PRECISION_RTOL, EngineError
from voxserve.engines.onnxrt import OrtEngine
from voxserve.server.stages.vc import model_path


def test_cpu_engine_reports_fp32_and_describes_it():
    eng = OrtEngine(model_path(), "onnxruntime-cpu")
    assert eng.precision == "fp32" and eng.describe()["precision"] == "fp32"
    assert set(PRECISION_RTOL) == {"fp32", "tf32", "fp16"}


def gpu_build_whose_sessions_fall_back_to_cpu(monkeypatch) -> dict:
    """Test double for onnxruntime-gpu on a machine without usable CUDA: the CUDA provider is listed as
    available, but every session ends up on the CPU provider (as ONNX Runtime does, with a log line, when
    the provider's libraries fail to load). Returns a dict that records the providers each session asked for."""
    import onnxruntime as ort

    real_session = ort.InferenceSession
    asked: dict = {}

    def session_on_cpu_only(src, so, providers):
        asked["providers"] = providers
        return real_session(src, so, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session_on_cpu_only)
    monkeypatch.setattr(onnxrt, "_PRELOADED", True)          # nothing to preload here
    return asked


def test_cuda_engine_refuses_a_session_that_fell_back_to_the_cpu(monkeypatch):
    asked = gpu_build_whose_sessions_fall_back_to_cpu(monkeypatch)
    with pytest.raises(EngineError, match="could not start CUDAExecutionProvider"):
        OrtEngine(model_path(), "onnxruntime-cuda")
    # it asked for CUDA (with TF32 allowed by default) and kept the CPU provider as the fallback
    assert asked["providers"][0] == ("CUDAExecutionProvider", {"use_tf32": 1})
    assert asked["providers"][-1] == "CPUExecutionProvider"


def test_full_precision_request_turns_tf32_off(monkeypatch):
    asked = gpu_build_whose_sessions_fall_back_to_cpu(monkeypatch)
    with pytest.raises(EngineError):
        OrtEngine(model_path(), "onnxruntime-cuda", fp16=False)
    assert asked["providers"][0] == ("CUDAExecutionProvider", {"use_tf32": 0})


def test_incremental_embedding_check_scales_its_tolerance_with_precision():
    """The wakeword start-up self-check: an fp32 engine must match the full window to 1e-3; a TF32 engine
    may differ by what TF32 does on the embedding's scale (an H200 showed 1.4e-2), not by a real error."""
    from voxserve.server.stages.wakeword_incremental import IncrementalEmbedding

    class StepDouble:
        """A step graph whose output is the expected embedding plus a fixed error."""

        def __init__(self, precision, error):
            from voxserve.engines.base import TensorSpec

            self.precision = precision
            self.error = error
            self.inputs = [TensorSpec("mel", (None, 8, 32, 1)), TensorSpec("c0", (None, 4, 3, 2))]
            self.outputs = [TensorSpec("emb", (None, 1, 1, 96))]

        def infer(self, feeds):
            b = feeds["mel"].shape[0]
            return {"emb": np.full((b, 1, 1, 96), 30.0 + self.error, np.float32), "next_c0": feeds["c0"]}

    full = lambda frames: np.full((1, 96), 30.0, np.float32)   # noqa: E731
    silent = np.zeros(32, np.float32)
    IncrementalEmbedding(StepDouble("fp32", 5e-4), silent, full)
    IncrementalEmbedding(StepDouble("tf32", 1.4e-2), silent, full)
    with pytest.raises(EngineError, match="fp32"):
        IncrementalEmbedding(StepDouble("fp32", 1.4e-2), silent, full)
    with pytest.raises(EngineError, match="tf32"):
        IncrementalEmbedding(StepDouble("tf32", 1.0), silent, full)


def test_tensorrt_profiles_cover_every_dynamic_axis():
    """The TensorRT profile (pure, no GPU): batch from 1 to max; every other open axis gets a range (by
    its symbolic name, by input:axis, or the default), never collapsed to 1 as the old profile did."""
    from voxserve.engines.tensorrt_engine import DEFAULT_DIM_RANGE, profile_shapes

    shapes = profile_shapes([("input_values", ("batch", "audio_len")), ("k_cache", ("batch", 8, "kv_len", 64)),
                             ("x", (None, 16, 96)), ("step", (1,))], opt_batch=8, max_batch=32,
                            dim_ranges={"audio_len": (1600, 16000, 160000), "k_cache:2": (1, 32, 448)})
    assert shapes["input_values"] == ((1, 1600), (8, 16000), (32, 160000))
    assert shapes["k_cache"] == ((1, 8, 1, 64), (8, 8, 32, 64), (32, 8, 448, 64))
    assert shapes["x"] == ((1, 16, 96), (8, 16, 96), (32, 16, 96))
    assert shapes["step"] == ((1,), (1,), (1,))                    # fixed axes stay fixed
    default = profile_shapes([("t", ("b", "len"))], opt_batch=4, max_batch=4)["t"]
    assert default == ((1, DEFAULT_DIM_RANGE[0]), (4, DEFAULT_DIM_RANGE[1]), (4, DEFAULT_DIM_RANGE[2]))
    with pytest.raises(EngineError, match="min <= opt <= max"):
        profile_shapes([("t", ("b", "len"))], opt_batch=4, max_batch=4, dim_ranges={"len": (10, 5, 20)})


def test_tensorrt_profile_reads_the_onnx_graph_axes(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from voxserve.engines.tensorrt_engine import onnx_input_shapes

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "T", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "T", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    assert onnx_input_shapes(data) == [("x", ("batch", "T", 4))]
    assert onnx.load_from_string(data).graph.input[0].name == "x"


def test_auto_picks_only_validated_engines():
    from voxserve.engines import factory

    assert "tensorrt" not in factory.AUTO_ORDER and "onnxruntime-trt" not in factory.AUTO_ORDER
    assert factory.AUTO_ORDER[-1] == "onnxruntime-cpu"
