"""Payloads in and out of a recorded segment: what its inputs look like (a new look is a new variant), static
copies of them, and replayed outputs given the current frame's timing (`muse.graph.program`)."""

from __future__ import annotations

from typing import Any

from muse.graph.liveness import needed_edges
from muse.graph.payloads import Payload

__all__ = ["clone_payload", "input_signature", "retime", "seen_outside", "timing_of", "timing_source"]


def input_signature(ext: dict[tuple[str, str], Any]) -> tuple:
    """What a recorded segment's inputs look like (shapes, dtypes, devices): a new look is a new variant."""
    sig = []
    for k in sorted(ext):
        v = ext[k]
        if isinstance(v, Payload):
            sig.append((k, type(v).__name__, tuple((tuple(t.shape), t.dtype, t.device) for t in v.tensors())))
        else:
            sig.append((k, repr(v)))
    return tuple(sig)


def clone_payload(p: Any) -> Any:
    return p.clone() if isinstance(p, Payload) else p


def timing_source(ext: dict[tuple[str, str], Any]) -> Any:
    for v in ext.values():
        if isinstance(v, Payload) and hasattr(v, "timestamp"):
            return v
    return None


_TIMING = ("timestamp", "index")


def timing_of(like: Any) -> dict[str, Any]:
    """The timing fields of `like` (a frame's source payload) that `retime` copies; empty for None."""
    if like is None:
        return {}
    return {k: getattr(like, k) for k in _TIMING if hasattr(like, k)}


def retime(p: Any, like: Any, timing: dict[str, Any] | None = None) -> Any:
    """A replayed output carries the current frame's timing, not the recorded one's.

    A shallow copy with the timing fields set, not `dataclasses.replace`: the payload was checked when it was
    made and only its timing changes, and `replace` runs its `__init__` and checks again (the executor published
    ~24 payloads a 4K frame this way). `timing`: `timing_of(like)`, when the caller has it for many payloads."""
    if not isinstance(p, Payload) or like is None:
        return p
    timing = timing_of(like) if timing is None else timing
    fields = p.__dict__
    changes = {k: v for k, v in timing.items() if k in fields}
    if not changes:
        return p
    out = object.__new__(type(p))
    state = out.__dict__
    state.update(fields)
    state.pop("_sink_copy", None)  # a copy is nobody's own sink copy (as `replace` made none)
    state.update(changes)
    return out


def seen_outside(runner: Any, nodes: list[str]) -> frozenset[str]:
    """The nodes of a recording whose outputs a node outside it may read: any consumer (of the node, or of the
    node it stands in for) not among `nodes`; the rest are read only inside the replay."""
    graph = runner.graph
    index = graph.consumer_index()
    inside = set(nodes)
    out = set()
    for n in nodes:
        rn = graph.nodes.get(n)
        served = [n] + ([rn.standby_for] if rn is not None and rn.standby_for else [])
        if rn is None or any(c not in inside for m in served for c, _port in index.get(m, ())):
            out.add(n)
    return frozenset(out)


def read_by_sinks(runner: Any, nodes: list[str]) -> list[tuple[str, str]]:
    """The (node, port) outputs of a recording's `nodes` that an output node reads directly this frame (what a
    switch or a stand-in passes on is copied by the runtime, as before): the recording copies these for them."""
    inside = set(nodes)
    found = {(src.node, src.port) for slot in runner.slots.values() if slot.rn.cls.is_sink() and not slot.absent
             for _port, _i, src in needed_edges(slot) if src.node in inside}
    return sorted(found)
