"""Which nodes start, and what the runtime says about those that do not.

- A switch's branch (a node whose every path to an output goes through a switch's input) and a
  node with a stand-in may fail to start without stopping the graph: it is reported `absent: why`
  (`NodeAbsent`: its model is simply not there) or `failed: why`, and never runs.
- A node that needs one that did not start does not start either (`absent: its input ...`).
- A stand-in (`standby_for`) is looked at right after its primary: `standby: for X` while X runs,
  started (and reported loudly, and in the stats as the primary's `fallback`) when X did not. One
  that nothing is wired to takes its primary's place (`muse.graph.stand_ins.substitutes`).
- Every switch is told which of its candidates will never have a value (`Node.sources_absent`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from muse.graph.liveness import branch_nodes
from muse.graph.node import NodeAbsent, NodeError
from muse.graph.slots import GraphRunError, Slot
from muse.graph.stand_ins import substitutes
from muse.graph.validate import ResolvedNode, ValidatedGraph

log = logging.getLogger("muse.runtime")


class Starting:
    """Mixin of `GraphRunner`: opening the nodes of a graph, with absent branches and stand-ins."""

    slots: dict[str, Slot]
    substitute: dict[str, str]

    if TYPE_CHECKING:  # pragma: no cover - provided by GraphRunner
        def _make_slot(self, rn: ResolvedNode) -> Slot: ...
        def _open_slot(self, slot: Slot) -> None: ...

    def _open_nodes(self, graph: ValidatedGraph, keep: dict[str, Slot], opened: list[Slot]) -> None:
        optional = branch_nodes(graph) | {rn.standby_for for rn in graph.nodes.values() if rn.standby_for}
        stand_ins: dict[str, list[str]] = {}
        for name in graph.order:
            primary = graph.nodes[name].standby_for
            if primary:
                stand_ins.setdefault(primary, []).append(name)

        def visit(name: str) -> None:
            rn = graph.nodes[name]
            slot = keep.get(name)
            if slot is None:
                slot = self._make_slot(rn)
                self.slots[name] = slot
                slot.absent = self._why_not_started(slot, graph)
                if not slot.absent:
                    self._start_or_skip(slot, name in optional)
                if not slot.absent:
                    opened.append(slot)
            else:
                slot.rn = rn
                self.slots[name] = slot
            for other in stand_ins.get(name, []):
                visit(other)

        for name in graph.order:
            if not graph.nodes[name].standby_for or graph.nodes[name].standby_for not in graph.nodes:
                visit(name)
        self._find_substitutes(graph)
        self._tell_switches(graph)
        self._report_stand_ins(graph)
        self._trace_branches(graph)

    def _find_substitutes(self, graph: ValidatedGraph) -> None:
        absent = {n for n, s in self.slots.items() if s.absent}
        self.substitute = substitutes(graph, absent, {n for n, s in self.slots.items() if not s.absent})

    def provider(self, name: str) -> str | None:
        """The node that gives `name`'s outputs: itself, the stand-in in its place, or None (absent)."""
        slot = self.slots.get(name)
        if slot is None or not slot.absent:
            return name
        return getattr(self, "substitute", {}).get(name)

    def _why_not_started(self, slot: Slot, graph: ValidatedGraph) -> str:
        """Why this node is not started: a stand-in whose primary runs, or a required input that never has a value."""
        primary = self.slots.get(slot.rn.standby_for) if slot.rn.standby_for else None
        if primary is not None and not primary.absent:
            return f"standby: for {primary.name}"
        for port, ri in slot.rn.inputs.items():
            if ri.port.optional or ri.port.multiple or not ri.sources:
                continue
            gone = [self.slots[s.node] for s in ri.sources
                    if s.node in self.slots and self.slots[s.node].absent and not self._stands_in_for(s.node, graph)]
            if len(gone) == len(ri.sources):
                return f"absent: its input {port!r} comes from {gone[0].name}, which is {gone[0].absent.split(':')[0]}"
        return ""

    def _stands_in_for(self, name: str, graph: ValidatedGraph) -> bool:
        """A started stand-in wired to nothing will take `name`'s place (decided once all have started)."""
        return any(s.rn.standby_for == name and not s.absent and not graph.consumers(s.name) for s in self.slots.values())

    def _start_or_skip(self, slot: Slot, optional: bool) -> None:
        """Open the node; a switch's branch or a node with a stand-in that cannot start is reported instead of stopping the graph."""
        try:
            self._open_slot(slot)
        except GraphRunError as exc:
            if not optional:
                raise
            cause: Any = exc.__cause__
            why = str(cause or exc).splitlines()[0] if str(cause or exc) else type(cause).__name__
            if cause is not None and not isinstance(cause, NodeError):
                why = f"{type(cause).__name__}: {why}"
            slot.absent = ("absent: " if isinstance(cause, NodeAbsent) else "failed: ") + why
            slot.stats.info["state"] = slot.absent
            (log.info if isinstance(cause, NodeAbsent) else log.warning)(
                "node '%s' (%s) does not run: %s", slot.name, slot.rn.type, slot.absent)

    def _tell_switches(self, graph: ValidatedGraph) -> None:
        """Every switch learns which of its candidates will never have a value, and why."""
        for name in graph.order:
            slot = self.slots[name]
            if slot.absent:
                slot.stats.info["state"] = slot.absent
                continue
            if not slot.rn.cls.selects_inputs:
                continue
            gone = {(port, i): self.slots[s.node].absent for port, ri in slot.rn.inputs.items()
                    for i, s in enumerate(ri.sources) if self.provider(s.node) is None}
            try:
                slot.node.sources_absent(gone)
            except NodeError as exc:
                raise GraphRunError(f"{graph.file}: node '{name}' ({slot.rn.type}) could not start: {exc}") from exc

    def _trace_branches(self, graph: ValidatedGraph) -> None:
        """The trace starts with every node that does not run and why, and each switch's branches."""
        trace = getattr(self, "trace", None)
        if trace is None:
            return
        for name in graph.order:
            slot = self.slots[name]
            if slot.absent:
                trace.instant(f"{name}: {slot.absent.split(':')[0]}", {"node": name, "state": slot.absent})
            elif "branches" in slot.stats.info:
                trace.instant(f"{name}: branches", {"node": name, **slot.stats.info["branches"]})

    def _report_stand_ins(self, graph: ValidatedGraph) -> None:
        """Loudly, and in the stats: which node stands in for which, and why."""
        for name in graph.order:
            slot = self.slots[name]
            primary = self.slots.get(slot.rn.standby_for) if slot.rn.standby_for else None
            if primary is None or slot.absent or primary.stats.info.get("fallback") == name:
                continue
            slot.stats.info["state"] = f"live: standing in for {primary.name}"
            users = [c for c, _ in graph.consumers(name)]
            if users and all(graph.nodes[c].cls.selects_inputs for c in users):
                continue  # its switch reports the fallback (and which branch is live)
            primary.stats.info["fallback"] = name
            primary.stats.info["fallback_reason"] = primary.absent
            log.warning("!!! %s did not start (%s); FALLING BACK to %s !!!", primary.name, primary.absent, name)
