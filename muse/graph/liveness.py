"""Which nodes run this frame, and which never run at all.

- *Absent* nodes never run: a switch's branch whose model is not there (`NodeAbsent` at
  open), one that failed to start, a `standby_for` node whose primary started, and every
  node that needs one of those. `branch_nodes` says which nodes may be absent without
  stopping the graph: those whose every path to an output goes through a switch's input.
- *Live* nodes run this frame: the outputs, and backwards from them every source of an
  input the consumer needs (`Node.needed_inputs()`, where a switch names only its live
  candidate as `candidates[i]`). The eager pull, the frame program and the CPU pipeline
  all run exactly the live nodes, so a switch's idle branches cost nothing.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterator

from muse.graph.slots import FAULTS, FrameFailed, Slot

if TYPE_CHECKING:  # pragma: no cover
    from muse.graph.resolved import Source, ValidatedGraph

__all__ = ["branch_nodes", "empty_inputs", "gather", "gather_selected", "live_nodes", "needed_edges"]

_ONE = re.compile(r"^(?P<port>[A-Za-z_]\w*)\[(?P<index>\d+)\]$")
MAX_RESELECT = 16  # a switch falls back at most this many times in one frame


_PARSED: dict[tuple[str, ...], dict[str, set[int] | None]] = {}  # needed_inputs() answer -> _wanted's parse of it


def _wanted(slot: Slot) -> dict[str, set[int] | None] | None:
    """What `needed_inputs()` asks for: None = every input; else port -> None (all its sources) or indices.
    A switch answers with one of a few lists, asked several times a frame: each is parsed once (callers only
    read the result)."""
    needed = slot.node.needed_inputs()
    if needed is None:
        return None
    key = tuple(needed)
    parsed = _PARSED.get(key)
    if parsed is None:
        if len(_PARSED) > 256:  # answers that never repeat: start over rather than grow
            _PARSED.clear()
        parsed = _PARSED[key] = _parse(key)
    return parsed


def _parse(needed: tuple[str, ...]) -> dict[str, set[int] | None]:
    out: dict[str, set[int] | None] = {}
    for item in needed:
        m = _ONE.match(item)
        if m is None:
            out[item] = None
        else:
            picked = out.get(m["port"], set())
            if picked is not None:  # None: the whole port was asked for already
                picked.add(int(m["index"]))
                out[m["port"]] = picked
    return out


def empty_inputs(slot: Slot) -> dict[str, Any]:
    """The values of the inputs the node needs this frame before any is computed: None, or a list
    of None per source for a `multiple` port (inputs it does not need are left out)."""
    wanted = _wanted(slot)
    return {p: [None] * len(ri.sources) if ri.port.multiple else None
            for p, ri in slot.rn.inputs.items() if wanted is None or p in wanted}


def needed_edges(slot: Slot) -> Iterator[tuple[str, int, "Source"]]:
    """(port, index, source) of every input source the node needs this frame."""
    wanted = _wanted(slot)
    for port, ri in slot.rn.inputs.items():
        if wanted is not None and port not in wanted:
            continue
        pick = wanted.get(port) if wanted is not None else None
        for i, src in enumerate(ri.sources):
            if pick is None or i in pick:
                yield port, i, src


def gather(runner: Any, slot: Slot, memo: dict) -> tuple[dict[str, Any] | None, list[Any]]:
    """Values for the inputs the node needs (computing upstream nodes on demand) and the events
    to wait on; None when a required input has nothing this frame."""
    values = empty_inputs(slot)
    events: list[Any] = []
    for port, i, src in needed_edges(slot):
        outs, evs = runner._evaluate(src.node, memo)
        events.extend(evs)
        value = outs.get(src.port) if outs else None
        if slot.rn.inputs[port].port.multiple:
            values[port][i] = value
        else:
            values[port] = value
    for port, ri in slot.rn.inputs.items():
        if port in values and not ri.port.multiple and not ri.port.optional and values[port] is None:
            return None, events
    return values, events


def live_nodes(runner: Any) -> set[str]:
    """The nodes that run this frame (sources included), asking switches for their choice first.

    The answer depends only on the switches' choices (and on which nodes never run), so it is
    kept per combination of choices until the graph or its absent nodes change
    (`runner.live_cache = None`): a frame costs one `frame_variant()` per switch."""
    cache = runner.live_cache
    if cache is None:
        selectors = [s for n in runner.graph.order if (s := runner.slots[n]).rn.cls.selects_inputs and not s.absent]
        cache = runner.live_cache = (selectors, {})
    selectors, known = cache
    key = tuple(runner._variant(s) for s in selectors)
    live = known.get(key)
    if live is None:
        live = known[key] = _walk(runner)
        if len(known) > 64:  # choices that never settle: keep the newest only
            known.pop(next(iter(known)))
    return live


def _walk(runner: Any) -> set[str]:
    live: set[str] = set()
    slots: dict[str, Slot] = runner.slots
    for name in reversed(runner.graph.order):
        slot = slots.get(name)
        if slot is None or slot.absent:
            continue
        if slot.rn.cls.is_sink():
            live.add(name)
        if name not in live or slot.rn.cls.is_source():
            continue
        if slot.rn.cls.lazy_inputs:  # decides inside process: everything upstream may run
            live.update(s.node for ri in slot.rn.inputs.values() for s in ri.sources)
            continue
        if slot.rn.cls.selects_inputs:
            runner._variant(slot)
        for _port, _i, src in needed_edges(slot):
            given = runner.provider(src.node)  # itself, or the stand-in in its place
            if given is not None:
                live.add(given)
    return live


def gather_selected(runner: Any, slot: Slot, memo: dict) -> tuple[dict[str, Any] | None, list[Any]]:
    """A switch's inputs: only the sources it needs; when one fails (eagerly: a recording
    lets the failure through, and that variant then runs eagerly), the switch is told and
    may pick again (`Node.input_failed`)."""
    for _ in range(MAX_RESELECT):
        runner._variant(slot)
        try:
            values, events = gather(runner, slot, memo)
        except FrameFailed as exc:
            failed = _failed_edge(slot, exc.node)
            if runner._recording or failed is None or not slot.node.input_failed(*failed, exc.exc):
                raise
            slot.variant_ready = False  # the switch picks again, now knowing this branch failed
            continue
        # A branch that failed but was covered by its on_error (a stand-in) is still a failed branch to a
        # switch: it is told, and picks again in the same frame (muse.graph.executor's FAULTS).
        faults = dict(memo.get(FAULTS, [])) if not runner._recording else {}
        covered = [(port, i, faults[src.node]) for port, i, src in needed_edges(slot) if src.node in faults]
        if covered and any(slot.node.input_failed(port, i, exc) for port, i, exc in covered):
            slot.variant_ready = False
            continue
        empty = [] if values is None or runner._recording else [
            (port, i) for port, i, _src in needed_edges(slot) if slot.rn.inputs[port].port.multiple and values[port][i] is None]
        if empty and any(slot.node.input_failed(port, i, None) for port, i in empty):
            slot.variant_ready = False  # a picked branch has nothing this frame: pick past it
            continue
        return values, events
    raise FrameFailed(slot.name, RuntimeError(f"switch '{slot.name}' fell back {MAX_RESELECT} times in one frame"))


def _failed_edge(slot: Slot, failed: str) -> tuple[str, int] | None:
    """The needed input (port, index) whose source is, or lies upstream of, the node that failed."""
    for port, i, src in needed_edges(slot):
        if src.node == failed:
            return port, i
    edges = list(needed_edges(slot))
    return (edges[0][0], edges[0][1]) if len(edges) == 1 else None


def switches_fed_by(graph: "ValidatedGraph", name: str) -> list[tuple[str, str, int]]:
    """(switch, port, index) of every switch input that `name` feeds, directly or through other branch nodes."""
    out: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    stack = [name]
    while stack:
        node = stack.pop()
        for rn in graph.nodes.values():
            for port, ri in rn.inputs.items():
                for i, s in enumerate(ri.sources):
                    if s.node != node:
                        continue
                    if rn.cls.selects_inputs:
                        out.append((rn.name, port, i))
                    elif rn.name not in seen:
                        seen.add(rn.name)
                        stack.append(rn.name)
    return out


def branch_nodes(graph: "ValidatedGraph") -> set[str]:
    """Nodes whose every path to an output passes through an input of a switch (`selects_inputs`):
    they may be absent or fail to start, and the graph still runs (the switch skips them)."""
    consumers: dict[str, list[str]] = {n: [] for n in graph.order}
    for rn in graph.nodes.values():
        for ri in rn.inputs.values():
            for s in ri.sources:
                consumers[s.node].append(rn.name)
    branch: set[str] = set()
    for name in reversed(graph.order):
        users = consumers[name]
        if users and all(graph.nodes[u].cls.selects_inputs or u in branch for u in users):
            branch.add(name)
    return branch
