"""Small, documented rewrites of third-party ONNX graphs, applied in memory at load time.

``per_item_reduce_max``: the openWakeWord mel front end (``melspectrogram.onnx``) converts power to
dB with a ``top_db`` floor taken from ``ReduceMax`` over the *whole tensor*, i.e. over every item of
a batch. Batched across streams, a loud stream would raise the floor of a quiet one (measured:
mel values off by up to 2.4 between a batch of 25 windows and 25 single calls). The rewrite
reduces over every axis but the batch (``keepdims=1``) and replaces the scalar-only ``Clip`` that
applies the floor by an element-wise ``Max``; each item then gets exactly what a batch of one gives.
"""

from __future__ import annotations

from pathlib import Path


def per_item_reduce_max(path: str | Path) -> bytes:
    """Return the serialized graph with every global ReduceMax floor made per batch item."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    reduced: set[str] = set()
    for node in graph.node:
        if node.op_type == "ReduceMax" and not any(a.name == "axes" for a in node.attribute) and len(node.input) == 1:
            rank = _rank_of(model, node.input[0])
            for a in list(node.attribute):
                if a.name == "keepdims":
                    node.attribute.remove(a)
            node.attribute.extend([helper.make_attribute("axes", list(range(1, rank))),
                                   helper.make_attribute("keepdims", 1)])
            reduced.add(node.output[0])
    if not reduced:
        raise ValueError(f"{path}: no global ReduceMax found; graph changed upstream?")
    # Follow the floor value (ReduceMax -> Sub -> Cast ...) to the Clip that uses it as its minimum.
    derived = set(reduced)
    for node in graph.node:
        if node.op_type in ("Sub", "Cast", "Add", "Mul") and any(i in derived for i in node.input):
            derived.update(node.output)
    new_nodes = []
    for node in graph.node:
        if node.op_type == "Clip" and len(node.input) >= 2 and node.input[1] in derived:
            mx = helper.make_node("Max", [node.input[0], node.input[1]],
                                  [node.output[0] if len(node.input) < 3 or not node.input[2] else node.output[0] + "_lo"],
                                  name=node.name + "_per_item")
            new_nodes.append(mx)
            if len(node.input) >= 3 and node.input[2]:
                new_nodes.append(helper.make_node("Min", [mx.output[0], node.input[2]], [node.output[0]],
                                                  name=node.name + "_per_item_hi"))
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def cached_fixed_graph(path: str | Path, fix=per_item_reduce_max) -> Path:
    """Apply ``fix`` once and keep the result in the user cache, so every engine kind (TensorRT
    included) can load it from a file."""
    return cached_derivative(path, fix.__name__, fix)


def cached_derivative(path: str | Path, tag: str, make) -> Path:
    """``make(path) -> bytes`` run once per source content; the result lives in
    ``$VOXSERVE_CACHE/graphs`` (default ``~/.cache/voxserve/graphs``), written atomically."""
    import hashlib
    import os

    src = Path(path)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("VOXSERVE_CACHE", Path.home() / ".cache" / "voxserve")) / "graphs"
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{src.stem}-{tag}-{digest}.onnx"
    if not out.exists():
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(make(src))
        tmp.replace(out)
    return out


def _rank_of(model, name: str) -> int:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if vi.name == name:
            return len(vi.type.tensor_type.shape.dim)
    raise ValueError(f"cannot infer the rank of {name}")


class _QuantizerChatter:
    """A logging filter: drops the records below ERROR that ONNX Runtime's quantizer logs on the root logger
    (one INFO line per tensor it leaves alone, and advice to pre-process; about 60 lines per Moonshine
    decoder at a server's first start)."""

    def filter(self, record) -> bool:
        import os

        return record.levelno >= 40 or f"onnxruntime{os.sep}quantization" not in record.pathname


class _quantizer_quiet:
    """While open, :class:`_QuantizerChatter` filters the root logger (records other code logs meanwhile
    pass: the filter looks at where a record was logged from)."""

    def __enter__(self):
        import logging

        self.flt = _QuantizerChatter()
        logging.getLogger().addFilter(self.flt)

    def __exit__(self, *exc):
        import logging

        logging.getLogger().removeFilter(self.flt)


def int8_matmuls(path: str | Path, *, per_channel: bool = False, conv_as_matmul: bool = True,
                 keep_float: tuple[str, ...] = ()) -> bytes:
    """Return the graph with its weight MatMuls quantized dynamically to int8 (ONNX Runtime's
    ``quantize_dynamic``: int8 weights, activations quantized per call; CPU kernels use VNNI where the
    CPU has it).

    Constants are folded first (constant ``DequantizeLinear`` here, which ONNX Runtime never folds,
    then ONNX Runtime's provider-independent *basic* level): graphs such as Moonshine's carry int8
    weights that are de-quantized by nodes at run time, so their MatMul weights are not initializers
    and ``quantize_dynamic`` alone would leave the graph unchanged (it did: an earlier measurement of
    "quantization" compared a graph with itself). ``conv_as_matmul``: wide 1-D convolutions become
    MatMuls first (:func:`conv1d_as_matmul`; as float MatMuls they are already faster than ONNX Runtime's
    Conv) and are quantized with the rest, except nodes whose name starts with one of ``keep_float``
    (a layer whose activations int8 cannot represent: measured per model, see MoonshineModel).
    """
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d:
        plain, folded, out = Path(d) / "plain.onnx", Path(d) / "folded.onnx", Path(d) / "q8.onnx"
        model = onnx.load(str(path))
        _fold_constant_dequantize(model.graph)
        onnx.save(model, str(plain))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(plain), so, providers=["CPUExecutionProvider"])
        if conv_as_matmul:
            model = onnx.load(str(folded))
            if conv1d_as_matmul(model.graph):
                onnx.save(model, str(folded))
        names = [n.name for n in onnx.load(str(folded)).graph.node]
        exclude = [n for n in names if n.startswith(keep_float)] if keep_float else []
        with _quantizer_quiet():
            quantize_dynamic(str(folded), str(out), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                             per_channel=per_channel, nodes_to_exclude=exclude)
        return out.read_bytes()


def conv1d_as_matmul(graph, min_channels: int = 64) -> int:
    """Rewrite each plain 1-D ``Conv`` (group 1, no padding or dilation, constant weights, at least
    ``min_channels`` input channels) as strided slices + one ``MatMul``, so that int8 quantization reaches
    it (ONNX Runtime's integer convolution is slower than its float one; its integer MatMul is not).
    Returns how many were rewritten.

    For input ``x`` [B, C, T], kernel k, stride s: ``x`` is transposed to [B, T, C]; slice j (0 <= j < k)
    takes time steps j, j + s, ... up to T - (k - 1 - j), so every slice has the convolution's output
    length; their concatenation [B, T_out, k*C] times the weight laid out as [k*C, O] (row j*C + c holds
    W[:, c, j]) plus the bias is the output, transposed back to [B, O, T_out]."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    done = 0
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        plain = (w is not None and len(w.dims) == 3 and attrs.get("group", 1) == 1
                 and all(p == 0 for p in attrs.get("pads", [0, 0])) and all(d == 1 for d in attrs.get("dilations", [1]))
                 and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET") and w.dims[1] >= min_channels
                 and (len(node.input) < 3 or not node.input[2] or node.input[2] in inits))
        if not plain:
            nodes.append(node)
            continue
        o, c, k = w.dims
        s = (attrs.get("strides") or [1])[0]
        name = node.name or node.output[0]
        weight = numpy_helper.to_array(w).astype(np.float32)                  # [O, C, k]
        wm = np.ascontiguousarray(weight.transpose(2, 1, 0).reshape(k * c, o))  # [k*C, O]
        wname = f"{name}_as_matmul_W"
        graph.initializer.append(numpy_helper.from_array(wm, wname))
        xt = f"{name}_xt"
        new = [helper.make_node("Transpose", [node.input[0]], [xt], perm=[0, 2, 1], name=f"{name}_t_in")]
        parts = []
        for j in range(k):
            cut = k - 1 - j
            consts = {"starts": [j], "ends": [-cut if cut else np.iinfo(np.int64).max], "axes": [1], "steps": [s]}
            names = []
            for key, val in consts.items():
                cname = f"{name}_slice{j}_{key}"
                graph.initializer.append(numpy_helper.from_array(np.array(val, np.int64), cname))
                names.append(cname)
            parts.append(f"{name}_slice{j}")
            new.append(helper.make_node("Slice", [xt, *names], [parts[-1]], name=f"{name}_slice{j}"))
        new.append(helper.make_node("Concat", parts, [f"{name}_cols"], axis=2, name=f"{name}_cols"))
        mm = f"{name}_mm"
        new.append(helper.make_node("MatMul", [f"{name}_cols", wname], [mm], name=f"{name}_matmul"))
        if len(node.input) > 2 and node.input[2]:
            new.append(helper.make_node("Add", [mm, node.input[2]], [f"{name}_biased"], name=f"{name}_bias"))
            mm = f"{name}_biased"
        new.append(helper.make_node("Transpose", [mm], [node.output[0]], perm=[0, 2, 1], name=f"{name}_t_out"))
        nodes.extend(new)
        done += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    unused = [i for i in graph.initializer if i.name not in used and i.name in inits]
    for i in unused:                                   # the replaced convolutions' weights
        graph.initializer.remove(i)
    return done


def _fold_constant_dequantize(graph) -> None:
    """Replace every ``DequantizeLinear`` whose inputs are all initializers (per-tensor or per-axis) by
    the float initializer it computes."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and all(i in inits for i in node.input if i):
            x = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            zero = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
                    if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and x.ndim > 1:
                shape = [1] * x.ndim
                shape[axis] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            graph.initializer.append(numpy_helper.from_array(((x - zero) * scale).astype(np.float32), node.output[0]))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def if_branch(path: str | Path, branch: str) -> bytes:
    """Return the graph with its single top-level ``If`` replaced by one of its branches
    (``then_branch`` or ``else_branch``), inlined. Moonshine's merged decoder holds its with-cache and
    no-cache graphs as the two branches of one ``If`` on ``use_cache_branch``; quantizers and
    optimizers do not reach into subgraphs, so each branch becomes a graph of its own. Inputs stay as
    they were (a branch that does not read one simply ignores it), so feeds are unchanged."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    ifs = [n for n in graph.node if n.op_type == "If"]
    if len(ifs) != 1:
        raise ValueError(f"{path}: expected one top-level If, found {len(ifs)}")
    node = ifs[0]
    sub = next(a.g for a in node.attribute if a.name == branch)
    inlined = list(sub.node) + [helper.make_node("Identity", [s.name], [o], name=f"{branch}_out_{i}")
                                for i, (s, o) in enumerate(zip(sub.output, node.output)) if s.name != o]
    nodes = []
    for n in graph.node:
        nodes.extend(inlined if n is node else [n])
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(sub.initializer)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def fold_shapes(path: str | Path) -> bytes:
    """Return the graph with its shape arithmetic folded, where the tensor shapes alone decide it.

    Graphs exported from PyTorch compute every ``Reshape`` target at run time
    (``Shape -> Gather -> Unsqueeze -> Concat``), and the attention scale from the key's last
    dimension. ONNX Runtime folds none of it when the batch or sequence length is dynamic, and on a
    CPU each of those tiny nodes costs about as much as a small MatMul (Moonshine's one-token
    decoder step: about 500 of its 950 nodes). With the shapes inferred symbolically
    (``onnxruntime.tools.symbolic_shape_infer``), every integer tensor computed from shapes alone is
    evaluated, element by element, to a number or to a named dimension:

    - a tensor whose elements are all numbers becomes a constant (ONNX Runtime then folds what
      follows from it, e.g. ``Cast -> Sqrt -> Div`` of the attention scale);
    - a ``Reshape`` target whose other elements are numbers, and whose named elements each equal the
      data's own dimension at that position, becomes a constant with 0 there ("keep this
      dimension", the default ``allowzero=0``), or -1 for one element that does not;

    then nodes whose outputs nobody reads are removed. Nothing else changes: run as written (ONNX
    Runtime's optimizer off) the outputs are bit for bit those of the original (tested on Moonshine's
    decoders). With the optimizer on, the constants let it fuse more (the scale into the MatMul),
    which reorders float sums as much as switching the optimizer on does for the original graph.
    Needs every tensor's rank from symbolic inference; raises where that is incomplete (Moonshine's
    encoder: it is not needed there, one call per segment)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path))
    graph = model.graph
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=False, guess_output_rank=False)
    dims: dict[str, list] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                             for d in t.shape.dim]
    ints = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    values: dict[str, tuple[bool, list, int]] = {}     # name -> (scalar?, elements: int | dim name, dtype)
    for init in graph.initializer:
        if init.data_type in ints and len(init.dims) <= 1:
            a = numpy_helper.to_array(init)
            values[init.name] = (a.ndim == 0, [int(v) for v in a.reshape(-1)], init.data_type)

    def attr(node, name, default=None):
        return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)

    def known(name):
        return values.get(name) if name else None

    for node in graph.node:
        op, ins = node.op_type, list(node.input)
        out = None
        if op == "Constant":
            t = attr(node, "value")
            if t is not None and t.data_type in ints and len(t.dims) <= 1:
                a = numpy_helper.to_array(t)
                out = (a.ndim == 0, [int(v) for v in a.reshape(-1)], t.data_type)
        elif op == "Shape" and ins[0] in dims and None not in dims[ins[0]] and attr(node, "start") is None \
                and attr(node, "end") is None:
            out = (False, list(dims[ins[0]]), onnx.TensorProto.INT64)
        elif op in ("Identity", "Cast") and known(ins[0]):
            s, el, dt = values[ins[0]]
            to = attr(node, "to", dt) if op == "Cast" else dt
            out = (s, el, to) if to in ints else None
        elif op == "Gather" and known(ins[0]) and known(ins[1]) and attr(node, "axis", 0) == 0:
            s, el, dt = values[ins[0]]
            si, idx, _ = values[ins[1]]
            if not s and all(isinstance(i, int) and -len(el) <= i < len(el) for i in idx):
                out = (si, [el[i] for i in idx], dt)
        elif op == "Unsqueeze" and known(ins[0]) and known(ins[1] if len(ins) > 1 else None):
            s, el, dt = values[ins[0]]
            if s and values[ins[1]][1] in ([0], [-1]):
                out = (False, el, dt)
        elif op == "Squeeze" and known(ins[0]) and len(values[ins[0]][1]) == 1 and not values[ins[0]][0]:
            out = (True, values[ins[0]][1], values[ins[0]][2])
        elif op == "Concat" and attr(node, "axis") in (0, -1) and all(known(i) and not values[i][0] for i in ins):
            out = (False, [e for i in ins for e in values[i][1]], values[ins[0]][2])
        elif op == "Slice" and known(ins[0]) and not values[ins[0]][0] and all(known(i) for i in ins[1:3]) \
                and (len(ins) < 4 or not ins[3] or values[ins[3]][1] in ([0], [-1])) \
                and (len(ins) < 5 or not ins[4] or known(ins[4])):
            el = values[ins[0]][1]
            step = values[ins[4]][1][0] if len(ins) > 4 and ins[4] else 1
            start, end = values[ins[1]][1][0], values[ins[2]][1][0]
            if isinstance(start, int) and isinstance(end, int) and isinstance(step, int) and step != 0:
                out = (False, el[slice(start, end, step)], values[ins[0]][2])
        if out is not None and len(node.output) == 1:
            values[node.output[0]] = out

    graph_outputs = {o.name for o in graph.output}
    folded: set[str] = set()
    new_inits = []

    def constant(name: str, elements: list[int], scalar: bool, dtype: int) -> None:
        np_type = np.int64 if dtype == onnx.TensorProto.INT64 else np.int32
        a = np.array(elements[0] if scalar else elements, dtype=np_type)
        new_inits.append(numpy_helper.from_array(a, name))

    for node in graph.node:                              # all-number tensors become constants
        for o in node.output:
            v = values.get(o)
            if v is not None and node.op_type != "Constant" and o not in graph_outputs \
                    and all(isinstance(e, int) for e in v[1]):
                constant(o, v[1], v[0], v[2])
                folded.add(o)
    for node in graph.node:                              # Reshape targets: 0 = keep the data's dimension
        if node.op_type != "Reshape" or attr(node, "allowzero", 0) or node.input[1] in folded:
            continue
        v, data = values.get(node.input[1]), dims.get(node.input[0])
        if v is None or v[0] or data is None:
            continue
        target, unknown = [], 0
        for i, e in enumerate(v[1]):
            if isinstance(e, int):
                target.append(e)
                unknown += e == -1
            elif i < len(data) and data[i] == e:
                target.append(0)
            else:
                target.append(-1)
                unknown += 1
        if unknown <= 1:
            name = f"{node.name or node.output[0]}_folded_shape"
            constant(name, target, False, onnx.TensorProto.INT64)
            node.input[1] = name
    def reads(n) -> list[str]:
        """What ``n`` reads, including what the nodes of its subgraphs (If, Loop, Scan) read."""
        names = list(n.input)
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                      list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []):
                for inner in g.node:
                    names += reads(inner)
        return names

    kept = [n for n in graph.node if not (set(n.output) <= folded)]
    needed = set(graph_outputs)
    live = []
    for n in reversed(kept):                             # drop what no one reads any more
        if any(o in needed for o in n.output):
            live.append(n)
            needed.update(i for i in reads(n) if i)
    live.reverse()
    del graph.node[:]
    graph.node.extend(live)
    graph.initializer.extend(i for i in new_inits if i.name in needed)
    onnx.checker.check_model(model)
    return model.SerializeToString()
