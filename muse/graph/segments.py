"""A frame program's plan: segments of capturable nodes, the variants each recorded, and why a node runs eagerly.

`muse.graph.program.FrameProgram` drives the frames through these; `muse bench` reads the reason constants
(`TRANSITIONAL`: the passing states of a settling program) to know when the program has settled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable

from muse.graph.liveness import needed_edges

if TYPE_CHECKING:  # pragma: no cover
    from muse.graph.capture import FrameGraph
    from muse.graph.runtime import GraphRunner

__all__ = ["COMPILE_UNDER_WAY", "EAGER_STEP", "MAX_VARIANTS", "ONE_OFF_STEPS", "RECORDING_STEP", "RECORD_TRIES",
           "TRANSITIONAL", "WARM_UP_NEW_CODE", "WARM_UP_NEW_VARIANT", "Segment", "Variant", "capture_blocker", "ends",
           "generation", "live_inputs", "plan_segments"]

RECORD_TRIES = 3  # a variant whose recording a node's exception broke is recorded again, up to this many times
MAX_VARIANTS = 8  # per segment; each keeps its activations alive, so an unstable choice can't grow memory forever
# Why a frame ran eagerly while the program was still settling (a new variant warming up, new compiled code, a
# compile holding the recorder): passing states, unlike a node that never runs captured. `muse bench` measures
# only once these stop.
WARM_UP_NEW_CODE = "warm-up after new compiled code"
WARM_UP_NEW_VARIANT = "warm-up of a new variant"
COMPILE_UNDER_WAY = "a compile was under way"
TRANSITIONAL = (WARM_UP_NEW_CODE, WARM_UP_NEW_VARIANT, COMPILE_UNDER_WAY)
# The executor's steps (`GraphStats.executor_ns`) that only those one-off frames take: `muse bench` subtracts them
RECORDING_STEP = "frame program: recordings"
EAGER_STEP = "frame program: eager frames"
ONE_OFF_STEPS = (RECORDING_STEP, EAGER_STEP)


def capture_blocker(runner: "GraphRunner", name: str) -> str | None:
    """Why this node runs eagerly, or None when it can be captured."""
    slot = runner.slots[name]
    cls = slot.rn.cls
    if not getattr(cls, "capturable", False):
        return f"{cls.node_type} does not declare itself capturable"
    if cls.lazy_inputs:
        return "pulls its inputs lazily (a host choice per frame)"
    if slot.absent:
        return None
    why = slot.node.capture_blocker()
    return why


@dataclass
class Variant:
    nodes: list[str]  # the segment's nodes that run in this variant (a switch's idle branches do not)
    graph: FrameGraph
    static_in: dict[tuple[str, str], Any]
    static_out: dict[str, dict[str, Any]]
    replays: int = 0
    outside: frozenset[str] | None = None  # its nodes whose outputs something outside it reads (replayed.seen_outside)
    clock: Any = None  # muse.graph.frame_clock.BoundClock: the recording writes the frame clock
    copies: Any = None  # muse.graph.frame_copies.BoundCopies: the recording copies its inputs in
    outputs: Any = None  # muse.graph.frame_copies.BoundOutputs: the recording copies the sinks' outputs


def generation(seg: "Segment") -> Hashable:
    """The compiled-code generation the segment's newest recording was made with."""
    return next(reversed(seg.variants))[2]


@dataclass
class Segment:
    nodes: list[str]
    captured: bool
    reason: str = ""  # eager segments: why
    warm: dict[Hashable, int] = field(default_factory=dict)
    variants: dict[Hashable, Variant] = field(default_factory=dict)
    disabled: str = ""  # recordings failed again and again: the segment runs eagerly from then on
    failed: dict[Hashable, str] = field(default_factory=dict)  # variants whose recording failed: run eagerly
    record_failures: dict[Hashable, int] = field(default_factory=dict)  # a node raised while recording: tried again
    live_in: tuple[Any, list[str], list[tuple[str, str]]] | None = None  # live_inputs(): for which live set


def live_inputs(runner: "GraphRunner", seg: Segment) -> tuple[list[str], list[tuple[str, str]]]:
    """This frame's nodes of `seg` (a switch's idle branches sit out) and the outputs (node, port) from outside it
    that they read. Worked out once per live set: `runner.live` is one set object per combination of the switches'
    choices (muse.graph.liveness), and which inputs a node needs depends on those choices alone."""
    live = runner.live
    known = seg.live_in
    if known is not None and known[0] is live:
        return known[1], known[2]
    nodes = [n for n in seg.nodes if n in live]
    inside = set(nodes)
    edges = sorted({(s.node, s.port) for n in nodes for _p, _i, s in needed_edges(runner.slots[n]) if s.node not in inside})
    seg.live_in = (live, nodes, edges)
    return nodes, edges


def ends(runner: "GraphRunner", nodes: list[str]) -> list[str]:
    """The nodes of `nodes` that no other of them consumes: evaluating these pulls all the others."""
    fed = {s.node for n in nodes for ri in runner.slots[n].rn.inputs.values() for s in ri.sources}
    return [n for n in nodes if n not in fed]


def plan_segments(runner: "GraphRunner", blocked: dict[str, str], per_node: bool = False) -> list[Segment]:
    """Capturable nodes grouped by how many eager nodes lie upstream: the fewest segments that keep order (`blocked`
    gets each eager node's reason)."""
    r = runner
    g = r.graph
    needed: set[str] = set()
    stack = [n for n in g.order if r.slots[n].rn.cls.is_sink() and not r.slots[n].absent]
    while stack:  # only what some sink consumes runs, as in eager pulling
        n = stack.pop()
        for ri in g.nodes[n].inputs.values():
            for s in ri.sources:
                given = r.provider(s.node)  # itself, or the stand-in in its place (None: never runs)
                if given is not None and given not in needed:
                    needed.add(given)
                    stack.append(given)
    work = [n for n in g.order if n in needed and not r.slots[n].rn.cls.is_source() and not r.slots[n].rn.cls.is_sink()]
    reasons = {n: capture_blocker(r, n) for n in work}
    depth: dict[str, int] = {}
    for n in work:  # graph.order is topological
        preds = [s.node for ri in g.nodes[n].inputs.values() for s in ri.sources if s.node in depth]
        base = max((depth[p] for p in preds), default=0)
        depth[n] = base + (1 if reasons[n] else 0)
    segments: list[Segment] = []
    by_level: dict[int, list[str]] = {}
    for n in work:  # one pass (a scan of `work` per level was quadratic in a chain of eager nodes)
        by_level.setdefault(depth[n], []).append(n)
    for level in sorted(by_level):
        eager = [n for n in by_level[level] if reasons[n]]
        if eager:
            segments.append(Segment(eager, captured=False, reason="; ".join(f"{n}: {reasons[n]}" for n in eager)))
            blocked.update({n: reasons[n] or "" for n in eager})
        captured = [n for n in by_level[level] if not reasons[n]]
        if captured:
            segments.append(Segment(captured, captured=True))
    if per_node:  # diagnostic: one recording per node, so each replay can be timed on its own
        return [Segment([n], captured=s.captured, reason=s.reason) for s in segments for n in s.nodes]
    return segments
