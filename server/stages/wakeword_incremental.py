"""Incremental speech embedding: each 80 ms step computes only the rows its 8 new mel frames add.

The openWakeWord embedding CNN (``embedding_model.onnx``) maps a window of 76 mel frames to one 96-d
vector. Along time it uses only convolutions with kernel 1 or 3 and **no time padding**, element-wise
activations, and max-pools whose time stride (2, 2, 2) multiplies to exactly the 8-frame step between
windows. So every intermediate row of the next window is a row the current window already computed:
a time convolution's new output rows need only its new input rows plus the last 2 rows it saw.

:func:`incremental_graph` rewrites the original graph (weights untouched) into a step graph:

    inputs  ``mel`` [B, 8, 32, 1] (the step's 8 new frames) + one cache per kernel-3 time convolution,
            ``cache_<i>`` [B, C_i, 2, W_i] (its last 2 input rows)
    outputs ``embedding`` [B, 1, 1, 96] + ``next_cache_<i>`` (the new last 2 input rows)

Each kernel-3 convolution gets ``Concat(cache, new rows)`` in front of it; all other nodes are
unchanged. The result equals the full-window embedding up to float rounding (checked at load and in
tests), at about 1/7 of the multiply-adds (bench/RESULTS.md). A stream's caches start as the caches
of an all-silent past, matching the full-window path's silent mel history.

Stale caches (after VAD-gated skips) wash out exactly as a stale mel history does: a row is correct
once all 76 frames of its receptive field are fresh, so the stage's backfill rule is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxserve.engines.base import EngineError, precision_atol

NEW_FRAMES = 8
CACHE_ROWS = 2
_ELEMENTWISE = {"LeakyRelu", "Max", "Relu", "Add", "Mul", "Clip", "Identity"}


def incremental_graph(path: str | Path) -> bytes:
    """Serialized step graph for ``embedding_model.onnx`` (see the module docstring). Raises
    :class:`EngineError` if the graph is not of the shape this rewrite is exact for."""
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    model = onnx.load(str(path))
    g = model.graph
    inferred = shape_inference.infer_shapes(model).graph
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
              for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output)}
    inits = {i.name: i for i in g.initializer}
    if len(g.input) != 1 or shapes[g.input[0].name][1:] != [76, 32, 1]:
        raise EngineError(f"{path}: expected one input [B, 76, 32, 1]")
    src_in = g.input[0].name
    new_nodes, cache_inputs, cache_outputs = [], [], []
    rows_per_level = NEW_FRAMES                     # new time rows entering the current node
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Reshape" and node.input[0] == src_in:
            target = numpy_helper.to_array(inits[node.input[1]]).copy()
            if list(target) != [-1, 1, 76, 32]:
                raise EngineError(f"{path}: unexpected input reshape {list(target)}")
            target[2] = NEW_FRAMES
            name = node.input[1] + "_step"
            g.initializer.append(numpy_helper.from_array(target, name))
            node.input[1] = name
            new_nodes.append(node)
        elif node.op_type == "Conv":
            kt = numpy_helper.to_array(inits[node.input[1]]).shape[2]
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            if attrs.get("strides", [1, 1])[0] != 1 or pads[0] or pads[2] or kt not in (1, 3):
                raise EngineError(f"{path}: {node.name}: time stride/padding/kernel not supported")
            if kt == 3:
                i = len(cache_inputs)
                c, w = shapes[node.input[0]][1], shapes[node.input[0]][3]
                cache_in, joined, cache_out = f"cache_{i}", f"{node.name}_joined", f"next_cache_{i}"
                cache_inputs.append(helper.make_tensor_value_info(cache_in, onnx.TensorProto.FLOAT,
                                                                  ["batch", c, CACHE_ROWS, w]))
                cache_outputs.append(helper.make_tensor_value_info(cache_out, onnx.TensorProto.FLOAT,
                                                                   ["batch", c, CACHE_ROWS, w]))
                new_nodes.append(helper.make_node("Concat", [cache_in, node.input[0]], [joined], axis=2))
                new_nodes.append(helper.make_node("Slice", [joined, "_last2_start", "_last2_end", "_time_axis"],
                                                  [cache_out]))
                node.input[0] = joined
            new_nodes.append(node)
        elif node.op_type == "MaxPool":
            kt, st = attrs["kernel_shape"][0], attrs["strides"][0]
            if kt != st or any(attrs.get("pads", [0])) or rows_per_level % st:
                raise EngineError(f"{path}: {node.name}: time pooling not aligned to the step")
            rows_per_level //= st
            new_nodes.append(node)
        elif node.op_type in _ELEMENTWISE or node.op_type == "Reshape":
            new_nodes.append(node)
        else:
            raise EngineError(f"{path}: op {node.op_type} is not known to be time-local")
    if rows_per_level != 1:
        raise EngineError(f"{path}: time stride is {NEW_FRAMES // rows_per_level}, not one row per {NEW_FRAMES} frames")
    g.initializer.extend([numpy_helper.from_array(np.array([-CACHE_ROWS], np.int64), "_last2_start"),
                          numpy_helper.from_array(np.array([2 ** 62], np.int64), "_last2_end"),
                          numpy_helper.from_array(np.array([2], np.int64), "_time_axis")])
    del g.node[:]
    g.node.extend(new_nodes)
    out_name = g.output[0].name
    del g.input[:]
    g.input.extend([helper.make_tensor_value_info(src_in, onnx.TensorProto.FLOAT, ["batch", NEW_FRAMES, 32, 1]),
                    *cache_inputs])
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, ["batch", 1, 1, 96]),
                     *cache_outputs])
    del g.value_info[:]
    onnx.checker.check_model(model)
    return model.SerializeToString()


class IncrementalEmbedding:
    """The step graph on an engine, with the caches of a silent past. Stateless and thread-confined like
    every engine: per-stream caches are passed in and returned."""

    def __init__(self, engine, silent_frame: np.ndarray, full_embedding) -> None:
        self.engine = engine
        self.in_name = engine.inputs[0].name
        self.cache_names = [s.name for s in engine.inputs[1:]]
        self.out_name = engine.outputs[0].name
        caches = [np.zeros((1, s.shape[1], CACHE_ROWS, s.shape[3]), np.float32) for s in engine.inputs[1:]]
        step = np.repeat(silent_frame[None, None], NEW_FRAMES, axis=1)          # [1, 8, 32]
        for _ in range(12):            # > 76 / 8 steps: every cache row now comes from silence only
            emb, caches = self.step(step, caches)
        expect = full_embedding(np.repeat(silent_frame[None, None], 76, axis=1))
        # fp32 engines agree to 1e-3; TF32/fp16 engines (GPU) to their precision on the embedding's scale
        # (about 30): measured on an H200, TF32 moved single values by up to 1.4e-2.
        precision = getattr(engine, "precision", "fp32")
        tol = 1e-3 if precision == "fp32" else precision_atol(precision, float(np.max(np.abs(expect))))
        if not np.allclose(emb, expect, rtol=0, atol=tol):
            raise EngineError(f"incremental embedding disagrees with the full window on silence "
                              f"(max diff {float(np.max(np.abs(emb - expect))):.2e}, allowed {tol:.1e} "
                              f"for {precision})")
        self.silent_caches = [c[0] for c in caches]

    def initial_caches(self) -> list[np.ndarray]:
        return [c.copy() for c in self.silent_caches]

    def step(self, mel: np.ndarray, caches: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """``mel`` [B, 8, 32] new frames, ``caches`` one [B, ...] array per cache -> ([B, 96], new caches)."""
        feed = {self.in_name: np.ascontiguousarray(mel[..., None], dtype=np.float32)}
        feed.update(zip(self.cache_names, caches))
        out = self.engine.infer(feed)
        return out[self.out_name].reshape(mel.shape[0], -1), [out["next_" + n] for n in self.cache_names]
