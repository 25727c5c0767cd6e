"""The bundled models' ONNX graphs, rewritten where ONNX Runtime's CPU kernels are slow (issue 13).

PReLU: ONNX Runtime runs its `PRelu` op (and the `Where(x >= 0, x, x * a)` form older MUSE exports
wrote) as a generic broadcasting loop outside its blocked (NCHWc) convolution layout, so each one
costs a layout round trip too. The face mesh carries 23 of them and each iris model 53: at 720p on
one thread they were 60 % of the face node (face mesh 6.0 -> 1.5 ms, iris 5.4 -> 1.4 ms a call).
The same function as `a * x + (1 - a) * relu(x)` runs on ORT's fast element-wise kernels; it is
exact in real arithmetic and within float rounding (~1e-6 relative) of the original.

The rewrite happens in memory when a session opens: the user's imported files are never touched,
and models imported by any MUSE version get it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["session_model", "rewrite_prelu", "keep_outputs"]


def session_model(path: str | os.PathLike, drop_outputs: tuple[int, ...] = ()) -> str | bytes:
    """What to hand `onnxruntime.InferenceSession`: the serialized, rewritten model when there was
    something to rewrite, else the path itself (no copy of large models in memory).

    `drop_outputs` (indexes into the model's outputs) are cut off with every node only they need:
    ONNX Runtime runs the whole graph whatever outputs are asked for, and the pose landmark model's
    person mask is half its work (720p, one thread: 15 -> 7 ms)."""
    try:
        import onnx
    except ImportError:  # onnx is a dependency; a broken install still runs the original graph
        return str(path)
    model = onnx.load(str(path))
    changed = rewrite_prelu(model) > 0
    if drop_outputs:
        model = keep_outputs(model, [i for i in range(len(model.graph.output)) if i not in drop_outputs])
        changed = True
    return model.SerializeToString() if changed else str(path)


def keep_outputs(model: Any, keep: list[int]) -> Any:
    """The model with only the outputs at `keep` (in that order) and the nodes they need."""
    outputs = [model.graph.output[i] for i in keep]
    needed = {o.name for o in outputs}
    nodes: list[Any] = []
    for node in reversed(model.graph.node):
        if any(out in needed for out in node.output):
            nodes.append(node)
            needed.update(name for name in node.input if name)
    nodes.reverse()
    used = needed
    initializers = [init for init in model.graph.initializer if init.name in used]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    kept_outputs = list(outputs)
    del model.graph.output[:]
    model.graph.output.extend(kept_outputs)
    value_info = [v for v in model.graph.value_info if v.name in used]
    del model.graph.value_info[:]
    model.graph.value_info.extend(value_info)
    return model


def _constant_values(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def rewrite_prelu(model: Any) -> int:
    """Replace every PReLU (the `PRelu` op, or `Where(GreaterOrEqual(x, 0), x, Mul(x, a))` with a
    constant `a`) by `Add(Mul(x, a), Mul(Relu(x), 1 - a))`, in place; returns how many were replaced.
    Nodes left without a consumer (the old comparison and zero) are dropped."""
    from onnx import helper, numpy_helper

    graph = model.graph
    values = _constant_values(model)
    producer = {out: node for node in graph.node for out in node.output}
    replaced: dict[int, list[Any]] = {}  # index of the node that produced y -> its replacement nodes
    for index, node in enumerate(graph.node):
        x = alpha = None
        if node.op_type == "PRelu" and node.input[1] in values:
            x, alpha = node.input[0], node.input[1]
        elif node.op_type == "Where" and len(node.input) == 3:
            cond, keep, neg = (producer.get(name) for name in node.input)
            if (
                cond is not None and cond.op_type == "GreaterOrEqual" and cond.input[0] == node.input[1]
                and cond.input[1] in values and not np.any(values[cond.input[1]])
                and neg is not None and neg.op_type == "Mul" and node.input[1] in neg.input
            ):
                other = neg.input[1] if neg.input[0] == node.input[1] else neg.input[0]
                if other in values:
                    x, alpha = node.input[1], other
        if x is None or alpha is None:
            continue
        y = node.output[0]
        one_minus = f"{y}/muse_one_minus_alpha"
        graph.initializer.append(numpy_helper.from_array((1.0 - values[alpha]).astype(np.float32), one_minus))
        replaced[index] = [
            helper.make_node("Mul", [x, alpha], [f"{y}/muse_ax"]),
            helper.make_node("Relu", [x], [f"{y}/muse_relu"]),
            helper.make_node("Mul", [f"{y}/muse_relu", one_minus], [f"{y}/muse_relu_scaled"]),
            helper.make_node("Add", [f"{y}/muse_ax", f"{y}/muse_relu_scaled"], [y]),
        ]
    if not replaced:
        return 0
    nodes: list[Any] = []
    for index, node in enumerate(graph.node):
        nodes.extend(replaced.get(index, [node]))
    # drop what only the old form used (its comparison, multiply and zero), until nothing changes
    outputs = {o.name for o in graph.output}
    while True:
        used = outputs | {name for node in nodes for name in node.input}
        kept = [node for node in nodes if any(out in used for out in node.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del graph.node[:]
    graph.node.extend(nodes)
    return len(replaced)
