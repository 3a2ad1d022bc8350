"""Graph rewrites used at load time: If-branch inlining, int8 MatMul quantization, shape folding (toy graphs here;
Moonshine's real graphs in test_asr_model.py)."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from voxserve.engines.graph_fixes import conv1d_as_matmul, fold_shapes, if_branch, int8_matmuls


def _run(model_bytes, feeds):
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _save(graph, path, opset: int = 17):
    """The model of ``graph`` (IR version 8, default-domain ``opset``), saved at ``path``."""
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return m


def _dequantized_matmul(path, rng):
    """y = x @ DequantizeLinear(Wq, s): a weight stored as int8 and de-quantized at run time (Moonshine's form)."""
    w = rng.standard_normal((64, 32)).astype(np.float32)
    scale = np.float32(np.abs(w).max() / 127)
    wq = numpy_helper.from_array(np.round(w / scale).astype(np.int8), "Wq")
    nodes = [helper.make_node("DequantizeLinear", ["Wq", "s"], ["W"]), helper.make_node("MatMul", ["x", "W"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
                          [wq, numpy_helper.from_array(np.array(scale, np.float32), "s")])
    m = _save(g, path)
    return m


def _if_model(path):
    """y = flag ? x @ W1 : x @ W2 + 1, with W1 an outer-scope initializer and W2 one of the branch."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W2")
    one = numpy_helper.from_array(np.ones(3, np.float32), "one")
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "W1"], ["y"])], "then", [], [out])
    else_g = helper.make_graph([helper.make_node("MatMul", ["x", "W2"], ["t"]),
                                helper.make_node("Add", ["t", "one"], ["y_else"])], "else", [],
                               [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, None)], [w2, one])
    node = helper.make_node("If", ["flag"], ["y"], then_branch=then_g, else_branch=else_g)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
                                        helper.make_tensor_value_info("flag", TensorProto.BOOL, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w1])
    m = _save(g, path)
    return m.SerializeToString()


def test_each_inlined_branch_computes_what_the_if_computes(tmp_path):
    merged = _if_model(tmp_path / "if.onnx")
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    for flag, branch in ((True, "then_branch"), (False, "else_branch")):
        feeds = {"x": x, "flag": np.array([flag])}
        inlined = if_branch(tmp_path / "if.onnx", branch)
        assert not any(n.op_type == "If" for n in onnx.load_from_string(inlined).graph.node)
        np.testing.assert_array_equal(_run(inlined, feeds), _run(merged, feeds))


def test_int8_reaches_weights_that_are_dequantized_at_run_time(tmp_path):
    """The trap the function exists for: weights stored as int8 + DequantizeLinear are not initializers
    of the MatMul, so a plain quantize_dynamic leaves the graph as it was. After folding they are."""
    rng = np.random.default_rng(0)
    m = _dequantized_matmul(tmp_path / "w.onnx", rng)
    q = int8_matmuls(tmp_path / "w.onnx")
    ops = {n.op_type for n in onnx.load_from_string(q).graph.node}
    assert "MatMulInteger" in ops and "MatMul" not in ops, ops
    x = rng.standard_normal((5, 64)).astype(np.float32)
    ref, got = _run(m.SerializeToString(), {"x": x}), _run(q, {"x": x})
    assert not np.array_equal(ref, got)                       # it did change the arithmetic ...
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()  # ... within int8 error


def test_conv1d_as_matmul_computes_the_convolution_for_any_length():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((24, 80, 7)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "B")
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=[7], strides=[3], name="c")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 80, "t"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    ref_bytes = m.SerializeToString()
    assert conv1d_as_matmul(m.graph) == 1
    assert {n.op_type for n in m.graph.node} == {"Transpose", "Slice", "Concat", "MatMul", "Add"}
    assert "W" not in {i.name for i in m.graph.initializer}
    for t in (7, 8, 9, 10, 50, 301):
        x = rng.standard_normal((2, 80, t)).astype(np.float32)
        want, got = _run(ref_bytes, {"x": x}), _run(m.SerializeToString(), {"x": x})
        assert got.shape == want.shape == (2, 24, (t - 7) // 3 + 1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _attention_like(path):
    """What PyTorch exports for multi-head attention's plumbing: q = x @ W reshaped to [B, S, 2, 4] with a
    target computed from Shape(x); y = q / sqrt(q's last dim, read from its shape); plus z, a Reshape whose
    target takes its first dimension from another input (``other``: not provably the data's)."""
    rng = np.random.default_rng(0)
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)     # noqa: E731
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["q"]),
        helper.make_node("Shape", ["x"], ["sx"]),
        helper.make_node("Gather", ["sx", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["sx", "i1"], ["s"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
        helper.make_node("Unsqueeze", ["s", "ax0"], ["s1"]),
        helper.make_node("Concat", ["b1", "s1", "heads"], ["target"], axis=0),
        helper.make_node("Reshape", ["q", "target"], ["qh"]),
        helper.make_node("Shape", ["qh"], ["sq"]),
        helper.make_node("Slice", ["sq", "m1", "big"], ["last"]),
        helper.make_node("Cast", ["last"], ["lastf"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["lastf"], ["scale"]),
        helper.make_node("Div", ["qh", "scale"], ["y"]),
        helper.make_node("Shape", ["other"], ["so"]),
        helper.make_node("Gather", ["so", "i0"], ["ob"], axis=0),
        helper.make_node("Unsqueeze", ["ob", "ax0"], ["ob1"]),
        helper.make_node("Concat", ["ob1", "minus1"], ["target2"], axis=0),
        helper.make_node("Reshape", ["q", "target2"], ["z"]),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W"), c("i0", 0), c("i1", 1),
             c("ax0", [0]), c("heads", [2, 4]), c("m1", [-1]), c("big", [2 ** 62]), c("minus1", [-1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 8]),
                                       helper.make_tensor_value_info("other", TensorProto.FLOAT, ["N"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 2, 4]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", "M"])], inits)
    m = _save(g, path, 14)
    return m.SerializeToString()


def test_fold_shapes_removes_shape_arithmetic_and_keeps_every_value(tmp_path):
    ref = _attention_like(tmp_path / "a.onnx")
    folded = fold_shapes(tmp_path / "a.onnx")
    nodes = onnx.load_from_string(folded).graph.node
    reshapes = [n for n in nodes if n.op_type == "Reshape"]
    target = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(folded).graph.initializer}
    # the head reshape keeps B and S by position (0) and the scale's shape read is gone ...
    assert any(list(target.get(n.input[1], [])) == [0, 0, 2, 4] for n in reshapes)
    # ... but the target sized by another input is still computed at run time (two unknowns: no constant)
    assert sum(n.op_type == "Shape" for n in nodes) == 1
    assert len(nodes) < len(onnx.load_from_string(ref).graph.node)
    rng = np.random.default_rng(1)
    for b, s in ((1, 1), (2, 5), (3, 2)):
        feeds = {"x": rng.standard_normal((b, s, 8)).astype(np.float32),
                 "other": np.zeros(b * s, np.float32)}
        want = ort.InferenceSession(ref, providers=["CPUExecutionProvider"]).run(None, feeds)
        got = ort.InferenceSession(folded, providers=["CPUExecutionProvider"]).run(None, feeds)
        for w, g in zip(want, got):
            assert w.shape == g.shape
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_int8_matmuls_keeps_the_quantizers_chatter_out_of_the_log(tmp_path, caplog):
    """ONNX Runtime's quantizer logs on the root logger (a line per tensor it leaves alone, advice to
    pre-process): a server's first start printed about 60 such lines per decoder. int8_matmuls drops them;
    what other code logs meanwhile, and the quantizer's errors, still pass."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from voxserve.engines.graph_fixes import _QuantizerChatter

    _dequantized_matmul(tmp_path / "w.onnx", np.random.default_rng(0))
    caplog.set_level(logging.INFO)
    quantize_dynamic(str(tmp_path / "w.onnx"), str(tmp_path / "plain.onnx"), weight_type=QuantType.QInt8)
    from_quantizer = [r for r in caplog.records if "quantization" in r.pathname]
    assert from_quantizer, "the quantizer logged nothing here: this test no longer shows the filter working"
    caplog.clear()
    int8_matmuls(tmp_path / "w.onnx")
    assert not [r.getMessage() for r in caplog.records if "quantization" in r.pathname]
    assert not logging.getLogger().filters                    # removed again afterwards
    ours = logging.LogRecord("voxserve", logging.INFO, "/x/voxserve/server/app.py", 1, "m", (), None)
    theirs_error = logging.LogRecord("root", logging.ERROR, "/x/onnxruntime/quantization/q.py", 1, "m", (), None)
    assert _QuantizerChatter().filter(ours) and _QuantizerChatter().filter(theirs_error)


def test_fold_shapes_keeps_what_only_a_subgraph_reads(tmp_path):
    """A node whose output only an If branch reads (an outer-scope value) is live, not dead."""
    one = numpy_helper.from_array(np.ones(3, np.float32), "one")
    branch_out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3])
    then_g = helper.make_graph([helper.make_node("Identity", ["t"], ["b"])], "then", [], [branch_out])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["b2"])], "else", [],
                               [helper.make_tensor_value_info("b2", TensorProto.FLOAT, [2, 3])])
    nodes = [helper.make_node("Add", ["x", "one"], ["t"]),
             helper.make_node("If", ["flag"], ["y"], then_branch=then_g, else_branch=else_g)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                                       helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [one])
    _save(g, tmp_path / "if.onnx")
    folded = fold_shapes(tmp_path / "if.onnx")
    assert [n.op_type for n in onnx.load_from_string(folded).graph.node] == ["Add", "If"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = ort.InferenceSession(folded, providers=["CPUExecutionProvider"]).run(None, {"x": x, "flag": np.array(True)})
    np.testing.assert_array_equal(got[0], x + 1)
