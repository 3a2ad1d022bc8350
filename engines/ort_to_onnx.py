"""Convert an ONNX Runtime ``.ort`` (ORT format, flatbuffers) model back to a standard ``.onnx`` graph.

Why: the Moonshine graphs ship only as ``.ort``. That format runs only on ONNX Runtime's CPU build and
is frozen: its weight-only int8 weights are cast to float *on every call* (measured: a Cast of each
[416, 3328] weight inside every decoder step). As ``.onnx`` the same graph (same nodes, same
weights) can be optimised by ONNX Runtime at load time (constant folding turns those casts into
plain float weights) and can be handed to the CUDA and TensorRT providers or to TensorRT itself.

The reader uses the flatbuffers schema classes that ship inside the onnxruntime wheel
(``onnxruntime.tools.ort_format_model``). Nodes, attributes (subgraphs included), initializers,
value types and opset imports are carried over; ORT's saved runtime-optimisation records and
kernel hashes are dropped (they describe ORT's own session state, not the model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_NP = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
       10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def _fbs():
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs
    return fbs


def _tensor(t):
    from onnx import TensorProto, helper, numpy_helper

    name = t.Name().decode()
    dims = [int(d) for d in t.DimsAsNumpy()] if t.DimsLength() else []
    dtype = t.DataType()
    if dtype == 8:                                           # STRING
        vals = [t.StringData(i) for i in range(t.StringDataLength())]
        return helper.make_tensor(name, TensorProto.STRING, dims, vals)
    if dtype not in _NP:
        raise ValueError(f"tensor {name}: unsupported ORT data type {dtype}")
    if t.ExternalDataOffset() not in (0, -1):
        raise ValueError(f"tensor {name}: external data is not supported")
    raw = t.RawDataAsNumpy().tobytes() if t.RawDataLength() else b""
    arr = np.frombuffer(raw, dtype=_NP[dtype]).reshape(dims) if raw else np.zeros(dims, _NP[dtype])
    return numpy_helper.from_array(arr, name)


def _value_info(vi):
    from onnx import helper

    name = vi.Name().decode()
    ti = vi.Type()
    if ti is None or ti.ValueType() != _fbs().TypeInfoValue.TypeInfoValue.tensor_type:
        return helper.make_empty_tensor_value_info(name)
    tts = _fbs().TensorTypeAndShape.TensorTypeAndShape()
    tts.Init(ti.Value().Bytes, ti.Value().Pos)
    shape = None
    if tts.Shape() is not None:
        shape = []
        s = tts.Shape()
        for i in range(s.DimLength()):
            dv = s.Dim(i).Value()
            if dv is None:
                shape.append(None)
            elif dv.DimType() == 1:                          # value
                shape.append(int(dv.DimValue()))
            else:
                p = dv.DimParam()
                shape.append(p.decode() if p else None)
    return helper.make_tensor_value_info(name, tts.ElemType(), shape)


def _attribute(a):
    from onnx import helper

    name = a.Name().decode()
    t = a.Type()
    if t == 1:
        return helper.make_attribute(name, a.F())
    if t == 2:
        return helper.make_attribute(name, a.I())
    if t == 3:
        return helper.make_attribute(name, a.S())
    if t == 4:
        return helper.make_attribute(name, _tensor(a.T()))
    if t == 5:
        return helper.make_attribute(name, _graph(a.G(), name))
    if t == 6:
        return helper.make_attribute(name, [float(x) for x in a.FloatsAsNumpy()], attr_type=6)
    if t == 7:
        return helper.make_attribute(name, [int(x) for x in a.IntsAsNumpy()], attr_type=7)
    if t == 8:
        return helper.make_attribute(name, [a.Strings(i) for i in range(a.StringsLength())], attr_type=8)
    if t == 9:
        return helper.make_attribute(name, [_tensor(a.Tensors(i)) for i in range(a.TensorsLength())])
    if t == 10:
        return helper.make_attribute(name, [_graph(a.Graphs(i), f"{name}_{i}") for i in range(a.GraphsLength())])
    raise ValueError(f"attribute {name}: unsupported type {t}")


def _graph(g, name: str):
    from onnx import helper

    inits = [_tensor(g.Initializers(i)) for i in range(g.InitializersLength())]
    init_names = {t.name for t in inits}
    infos = {}
    for i in range(g.NodeArgsLength()):
        vi = _value_info(g.NodeArgs(i))
        infos[vi.name] = vi
    nodes = []
    for i in range(g.NodesLength()):
        n = g.Nodes(i)
        nodes.append(helper.make_node(
            n.OpType().decode(), [n.Inputs(j).decode() for j in range(n.InputsLength())],
            [n.Outputs(j).decode() for j in range(n.OutputsLength())], name=n.Name().decode() or None,
            domain=n.Domain().decode() or None))
        nodes[-1].attribute.extend(_attribute(n.Attributes(j)) for j in range(n.AttributesLength()))
    ins = [g.Inputs(i).decode() for i in range(g.InputsLength())]
    outs = [g.Outputs(i).decode() for i in range(g.OutputsLength())]
    inputs = [infos.get(x) or helper.make_empty_tensor_value_info(x) for x in ins if x not in init_names]
    outputs = [infos.get(x) or helper.make_empty_tensor_value_info(x) for x in outs]
    produced = {o for n in nodes for o in n.output}
    value_info = [v for k, v in infos.items() if k in produced and k not in outs]
    return helper.make_graph(nodes, name, inputs, outputs, initializer=inits, value_info=value_info)


def ort_to_onnx(path: str | Path):
    """Read ``path`` (.ort) and return an ``onnx.ModelProto``."""
    from onnx import helper

    buf = Path(path).read_bytes()
    fbs = _fbs()
    if not fbs.InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(buf, 0):
        raise ValueError(f"{path} is not an ORT format model")
    sess = fbs.InferenceSession.InferenceSession.GetRootAs(buf, 0)
    model = sess.Model()
    graph = _graph(model.Graph(), Path(path).stem)
    opsets = [helper.make_opsetid(model.OpsetImport(i).Domain().decode(), model.OpsetImport(i).Version())
              for i in range(model.OpsetImportLength())]
    out = helper.make_model(graph, opset_imports=opsets, producer_name="voxserve ort_to_onnx")
    out.ir_version = model.IrVersion()
    return out


def converted(path: str | Path) -> Path:
    """The ``.onnx`` conversion of ``path``, made once and kept in the user cache (keyed by content)."""
    from .graph_fixes import cached_derivative

    return cached_derivative(path, "onnx", lambda src: ort_to_onnx(src).SerializeToString())
