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
