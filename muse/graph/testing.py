"""A small runner to test one node without a graph (MediaPipe's runner, dora's MockNode).

    out = run_node(Invert, {"amount": 1.0}, frame=Frame(image))
    outs = run_node_frames(Smooth, {}, [{"points": k0}, {"points": k1}])
    reg = registry_with(MyTestNode)  # the built-in nodes and a test's own, for a whole graph
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from muse.graph.node import Node, NodeContext
from muse.graph.registry import Registry, load_registry
from muse.graph.stats import NodeStats
from muse.graph.streams import new_stream


def make_context(
    name: str = "node",
    device: str | torch.device = "cpu",
    *,
    fps: float = 30.0,
    resolution: tuple[int, int] = (1280, 720),
    dtype: torch.dtype | None = None,
) -> NodeContext:
    dev = torch.device(device)
    stream = new_stream(dev) if dev.type == "cuda" else None
    return NodeContext(
        name=name,
        device=dev,
        dtype=dtype or (torch.float16 if dev.type == "cuda" else torch.float32),
        fps=fps,
        resolution=resolution,
        stream=stream,
        stats=NodeStats(name, ""),
    )


def build_node(node_cls: type[Node], params: dict[str, Any] | None = None, name: str = "node") -> Node:
    return node_cls(name, node_cls.Params(**(params or {})))


def run_node_frames(
    node_cls: type[Node],
    params: dict[str, Any] | None,
    frames: Iterable[dict[str, Any]],
    *,
    device: str | torch.device = "cpu",
    ctx: NodeContext | None = None,
) -> list[dict[str, Any] | None]:
    """Open the node, call `process` once per input dict, close it; return every output dict."""
    node = build_node(node_cls, params)
    ctx = ctx or make_context(node.name, device)
    node.open(ctx)
    results: list[dict[str, Any] | None] = []
    try:
        for inputs in frames:
            if node_cls.lazy_inputs:
                inputs = {k: (lambda v=v: v) for k, v in inputs.items()}
            if ctx.stream is not None:
                with torch.cuda.stream(ctx.stream):
                    results.append(node.process(**inputs))
                ctx.stream.synchronize()  # tests may sync; nodes never do
            else:
                results.append(node.process(**inputs))
    finally:
        node.close()
    return results


def run_node(
    node_cls: type[Node],
    params: dict[str, Any] | None = None,
    *,
    device: str | torch.device = "cpu",
    **inputs: Any,
) -> dict[str, Any] | None:
    """Run a node once on the given inputs and return its outputs."""
    return run_node_frames(node_cls, params, [inputs], device=device)[0]


def registry_with(*extra: type[Node], source: str = "test") -> Registry:
    """A fresh registry holding every built-in node and `extra` (a test's own node classes); the shared
    registry `load_registry()` returns is left as it is."""
    reg = Registry()
    for cls in (*load_registry().classes(), *extra):
        reg.register(cls, source)
    return reg
