"""openWakeWord-compatible front end and heads, on the real models."""

import numpy as np
import pytest
import soundfile as sf

from voxserve.server.stages.wakeword_model import (
    MEL_WINDOW, STEP, Head, HeadError, StepRequest, WakewordFrontEnd, frontend_paths,
)

from ..conftest import shared_or_skip


@pytest.fixture(scope="module")
def heads():
    base = shared_or_skip("wakeword", "heads")
    return {n: Head.load(base / f"{n}.onnx") for n in ("hey_livekit", "nihao_livekit")}


@pytest.fixture(scope="module")
def frontend(heads):
    return WakewordFrontEnd("float", heads)                      # incremental embedding (the default)


@pytest.fixture(scope="module")
def window_frontend(heads):
    return WakewordFrontEnd("float", heads, incremental=False)   # full 76-frame window every step


def windows(x, n=None):
    padded = np.concatenate([np.zeros(MEL_WINDOW, np.float32), x])
    n = n or len(x) // STEP
    return np.stack([padded[s * STEP: s * STEP + MEL_WINDOW] for s in range(1, n + 1)])


def test_positive_detected_negative_not(frontend):
    base = shared_or_skip("wakeword", "heads")
    best = {}
    for name in ("positive", "negative"):
        x, rate = sf.read(base / f"{name}.wav", dtype="float32")
        assert rate == 16000
        mel, emb = frontend.initial_state()
        w = windows(x)
        res = frontend.run_batch([StepRequest(w, mel, emb, ("hey_livekit",), np.ones(len(w), bool))])[0]
        best[name] = float(res.scores["hey_livekit"][-1])           # step 25: the first fully warmed step
    assert best["positive"] > 0.9 and best["negative"] < 0.1, best


def test_stepwise_equals_multistep_equals_cross_stream_batch(frontend, heads):
    rng = np.random.default_rng(3)
    streams = [rng.standard_normal(STEP * 12).astype(np.float32) * a for a in (0.01, 0.3, 0.05)]
    batched = frontend.run_batch([StepRequest(windows(x), *frontend.initial_state(), tuple(heads), np.ones(12, bool))
                                  for x in streams])
    for x, res in zip(streams, batched):
        mel, emb = frontend.initial_state()
        scores = []
        w = windows(x)
        for s in range(12):
            r = frontend.run_batch([StepRequest(w[s:s + 1], mel, emb, ("hey_livekit",), np.ones(1, bool))])[0]
            mel, emb = r.acoustic, r.emb_hist
            scores.append(r.scores["hey_livekit"][0])
        np.testing.assert_allclose(res.scores["hey_livekit"], scores, atol=1e-5)
        np.testing.assert_allclose(res.emb_hist, emb, atol=1e-4)


def count_calls(monkeypatch, engines):
    calls = {name: 0 for name in engines}
    for name, eng in engines.items():
        def counted(feed, _orig=eng.infer, _name=name):
            calls[_name] += 1
            return _orig(feed)
        monkeypatch.setattr(eng, "infer", counted)
    return calls


def test_heads_share_one_front_end_call(frontend, window_frontend, heads, monkeypatch):
    reqs = lambda fe: [StepRequest(windows(np.zeros(STEP * 3, np.float32)), *fe.initial_state(), tuple(heads),  # noqa: E731
                                   np.ones(3, bool)) for _ in range(4)]
    calls = count_calls(monkeypatch, {"mel": window_frontend.mel, "emb": window_frontend.emb})
    res = window_frontend.run_batch(reqs(window_frontend))
    assert calls == {"mel": 1, "emb": 1}                       # 4 streams x 3 steps x 2 heads, one call each
    assert all(set(r.scores) == set(heads) for r in res)
    calls = count_calls(monkeypatch, {"mel": frontend.mel, "step": frontend.incremental.engine})
    res = frontend.run_batch(reqs(frontend))
    assert calls == {"mel": 1, "step": 3}                      # one batched step call per step, all 4 streams in it
    assert all(set(r.scores) == set(heads) for r in res)


def test_incremental_embedding_equals_full_window(frontend, window_frontend):
    """Real speech, streamed step by step in both modes (and as one multi-step request):
    same embeddings and same head scores."""
    base = shared_or_skip("wakeword", "heads")
    x, _ = sf.read(base / "positive.wav", dtype="float32")
    w = windows(x)
    whole = {}
    for name, fe in (("inc", frontend), ("win", window_frontend)):
        whole[name] = fe.run_batch([StepRequest(w, *fe.initial_state(), ("hey_livekit",), np.ones(len(w), bool))])[0]
    np.testing.assert_allclose(whole["inc"].emb_hist, whole["win"].emb_hist, atol=1e-4)
    np.testing.assert_allclose(whole["inc"].scores["hey_livekit"], whole["win"].scores["hey_livekit"], atol=1e-5)
    assert whole["inc"].scores["hey_livekit"].max() > 0.9          # and it is the real detection, not a constant
    acoustic, emb = frontend.initial_state()
    for s in range(len(w)):
        r = frontend.run_batch([StepRequest(w[s:s + 1], acoustic, emb, ("hey_livekit",), np.ones(1, bool))])[0]
        acoustic, emb = r.acoustic, r.emb_hist
        assert abs(r.scores["hey_livekit"][0] - whole["win"].scores["hey_livekit"][s]) < 1e-5, s


def test_incremental_graph_rejects_a_time_padded_conv(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from voxserve.engines.base import EngineError
    from voxserve.server.stages.wakeword_incremental import incremental_graph

    x = helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["b", 76, 32, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4, 76, 32])
    inits = [numpy_helper.from_array(np.array([-1, 1, 76, 32], np.int64), "shape"),
             numpy_helper.from_array(np.zeros((4, 1, 3, 3), np.float32), "w")]
    nodes = [helper.make_node("Reshape", ["input_1", "shape"], ["r"]),
             helper.make_node("Conv", ["r", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    path = tmp_path / "padded.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "padded", [x], [y], inits),
                                opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(EngineError, match="padding"):
        incremental_graph(path)


def test_mel_batch_fix_equals_single_calls():
    import onnxruntime as ort

    from voxserve.engines.graph_fixes import per_item_reduce_max

    mel_path, _ = frontend_paths()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    orig = ort.InferenceSession(str(mel_path), so, providers=["CPUExecutionProvider"])
    fixed = ort.InferenceSession(per_item_reduce_max(mel_path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = np.stack([rng.standard_normal(MEL_WINDOW).astype(np.float32) * a for a in (1e-4, 0.5, 0.02)])
    single = np.concatenate([orig.run(None, {"input": x[i:i + 1]})[0] for i in range(3)])
    np.testing.assert_array_equal(fixed.run(None, {"input": x})[0], single)
    assert np.abs(orig.run(None, {"input": x})[0] - single).max() > 0.1   # the unfixed graph is not batch-safe


def test_wrong_shaped_head_rejected_with_clear_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", 16, 64])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])
    w = helper.make_tensor("w", TensorProto.FLOAT, [64, 1], [0.0] * 64)
    graph = helper.make_graph([helper.make_node("ReduceMean", ["embeddings"], ["m"], axes=[1], keepdims=0),
                               helper.make_node("MatMul", ["m", "w"], ["score"])], "bad", [x], [y], [w])
    path = tmp_path / "bad_head.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(HeadError, match=r"\[batch, N, 96\]"):
        Head.load(path)
    with pytest.raises(HeadError, match="does not exist"):
        Head.load(tmp_path / "missing.onnx")


def test_head_json_carries_its_calibrated_threshold(tmp_path):
    import json
    import shutil

    from voxserve.server.stages.wakeword import default_model_dir
    from voxserve.server.stages.wakeword_model import DEFAULT_THRESHOLD

    onnx_path = tmp_path / "ww.onnx"
    shutil.copy(default_model_dir() / "hey_jarvis.onnx", onnx_path)
    assert Head.load(onnx_path).threshold == DEFAULT_THRESHOLD                # no .json: the server default
    meta = tmp_path / "ww.json"
    meta.write_text(json.dumps({"features": "oww", "threshold": 0.62}))
    head = Head.load(onnx_path)
    assert head.threshold == 0.62 and head.flavour == "oww"
    for bad in (0, 1.5, "0.6", True):
        meta.write_text(json.dumps({"threshold": bad}))
        with pytest.raises(HeadError, match="threshold must be a number"):
            Head.load(onnx_path)
    meta.write_text("{not json")
    with pytest.raises(HeadError, match="not valid JSON"):
        Head.load(onnx_path)


def test_head_json_names_the_step_it_may_fire_from(tmp_path):
    """Heads trained on the stream-start padding say so (``warmup_steps``); others wait until their N
    embeddings all come from stream audio (N + 9 steps: 2.0 s for 16)."""
    import json
    import shutil

    from voxserve.server.stages.wakeword import default_model_dir

    onnx_path = tmp_path / "ww.onnx"
    shutil.copy(default_model_dir() / "hey_jarvis.onnx", onnx_path)
    assert Head.load(onnx_path).warmup_steps == 25
    meta = tmp_path / "ww.json"
    meta.write_text(json.dumps({"warmup_steps": 4}))
    assert Head.load(onnx_path).warmup_steps == 4
    for bad in (-1, 2.5, "4", True):
        meta.write_text(json.dumps({"warmup_steps": bad}))
        with pytest.raises(HeadError, match="warmup_steps"):
            Head.load(onnx_path)


def test_head_json_carries_its_calibrated_patience(tmp_path):
    import json
    import shutil

    from voxserve.server.stages.wakeword import default_model_dir

    onnx_path = tmp_path / "ww.onnx"
    shutil.copy(default_model_dir() / "hey_jarvis.onnx", onnx_path)
    assert Head.load(onnx_path).patience == 1
    meta = tmp_path / "ww.json"
    meta.write_text(json.dumps({"patience": 3}))
    assert Head.load(onnx_path).patience == 3
    for bad in (0, 51, 2.0, "2", True):
        meta.write_text(json.dumps({"patience": bad}))
        with pytest.raises(HeadError, match="patience"):
            Head.load(onnx_path)


def test_padded_windows_are_what_the_server_scores_at_the_start_of_a_stream():
    """Training's features and windows for early steps (silent padding + the first embeddings) equal the
    windows the server's front end builds for a new stream, step by step (needs no sample audio)."""
    from voxserve.models.wakeword_train import FeatureExtractor, sliding_windows
    from voxserve.server.stages.wakeword_model import MEL_WINDOW, STEP, StepRequest

    fx = FeatureExtractor(threads=1)
    frontend = fx.fe
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(STEP * 12) * 0.05).astype(np.float32)
    acoustic, hist = frontend.initial_state()
    padded = np.concatenate([np.zeros(MEL_WINDOW, np.float32), x])
    server_windows = []
    for j in range(12):
        win = padded[STEP * (j + 1): STEP * (j + 1) + MEL_WINDOW][None]
        res = frontend.run_batch([StepRequest(win, acoustic, hist, (), np.ones(1, bool))])[0]
        acoustic, hist = res.acoustic, res.emb_hist
        server_windows.append(hist[-16:].copy())
    embs = np.stack([w[-1] for w in server_windows])
    np.testing.assert_allclose(fx.stream_embeddings([x])[0], embs, atol=1e-5)
    ours = sliding_windows(embs, 16, start=1, pad=frontend.silent_emb)
    np.testing.assert_allclose(ours, np.stack(server_windows), atol=1e-6)
