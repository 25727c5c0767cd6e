"""Live changes to a running graph: new params, or a whole new graph, at a frame boundary.

A node that can take new params in place keeps running (a captured frame program is rebuilt
only when a host value baked into it changed); otherwise a new node is opened beside the old
one and swapped in. A replaced graph keeps every unchanged node open.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import replace as dc_replace
from typing import Any, Callable

from muse.graph.slots import Slot, channel_wiring
from muse.graph.validate import ValidatedGraph

log = logging.getLogger("muse.runtime")


class LiveChanges:
    """Mixin of `GraphRunner`: `update_params`, `replace` and the queue of pending changes."""

    def update_params(self, node: str, values: dict[str, Any]) -> None:
        """Change a node's params live; applied at the next frame boundary.

        Invalid values raise pydantic's ValidationError here, before anything changes."""
        slot = self.slots.get(node)
        if slot is None:
            raise KeyError(f"no node {node!r} in the running graph")
        params = slot.rn.cls.Params.model_validate({**slot.node.params.model_dump(), **values})

        def apply() -> None:
            self._apply_params(slot, params)

        self._schedule(apply)

    def replace(self, graph: ValidatedGraph) -> None:
        """Swap in a changed graph without ending the process (kept nodes stay open)."""
        self._schedule(lambda: self._swap_graph(self._own(graph)))

    def _schedule(self, action: Callable[[], None]) -> None:
        with self._pending_lock:
            self._pending.append(action)
        if self._executor is None or not self._executor.is_alive():
            self._run_pending()

    def _run_pending(self) -> None:
        with self._pending_lock:
            actions, self._pending = self._pending, []
        if actions and self._cpu_pipeline is not None:
            self._cpu_pipeline.drain()  # no node changes while the tail thread runs it
        for action in actions:
            try:
                action()
            except Exception:
                log.error("live change failed; the running graph keeps going:\n%s", traceback.format_exc())

    def _apply_params(self, slot: Slot, params: Any) -> None:
        changed = {k for k, v in params.model_dump().items() if getattr(slot.node.params, k, None) != v}
        if slot.absent:
            self._retry_absent(slot, params)
            return
        if slot.node.update_params(params):
            slot.rn.params = params  # the runner's own copy of the node (see muse.graph.resolve)
            if self.program is not None and changed - set(slot.node.live_params):
                self._build_program()  # a host value baked into the recordings changed (or what can be captured)
            log.info("node '%s': parameters updated live", slot.name)
            return
        # The node can't change in place: build a new one beside it, then swap.
        new_rn = dc_replace(slot.rn, params=params)
        fresh = self._make_slot(new_rn)
        self._open_slot(fresh)
        old = self.slots[slot.name]
        if old.rn.cls.is_source() or old.rn.cls.is_sink():
            self._close_slot(old)
            self.slots[slot.name] = fresh
            (self._start_source if fresh.rn.cls.is_source() else self._start_sink)(fresh)
        else:
            self.slots[slot.name] = fresh
            self._close_slot(old)
        self._build_program()
        log.info("node '%s': reopened with new parameters", slot.name)

    def _retry_absent(self, slot: Slot, params: Any) -> None:
        """A switch's branch that was absent or failed, with new params (a checkpoint set live): try to start it."""
        fresh = self._make_slot(dc_replace(slot.rn, params=params))
        self.slots[slot.name] = fresh
        fresh.absent = self._why_not_started(fresh, self.graph)
        if not fresh.absent:
            self._start_or_skip(fresh, optional=True)
        if not fresh.absent:
            fresh.stats.info.pop("state", None)
            if fresh.rn.cls.is_source():
                self._start_source(fresh)
            elif fresh.rn.cls.is_sink():
                self._start_sink(fresh)
            log.info("node '%s': started with its new parameters", slot.name)
        self._find_substitutes(self.graph)
        self._tell_switches(self.graph)
        self._build_program()

    def _swap_graph(self, graph: ValidatedGraph) -> None:
        old_graph = self.graph
        keep: dict[str, Slot] = {}
        for name, slot in self.slots.items():
            new = graph.nodes.get(name)
            if new is not None and new.type == slot.rn.type and new.params == slot.rn.params:
                keep[name] = slot
        # Sources/sinks whose wiring changed get new channels: restart their threads.
        for name in list(keep):
            slot = keep[name]
            if slot.rn.cls.is_source() or slot.rn.cls.is_sink():
                if channel_wiring(old_graph, name) != channel_wiring(graph, name):
                    del keep[name]
        dropped = [s for n, s in self.slots.items() if n not in keep]
        self.slots = {}
        try:
            self._open_all(graph, keep)
        except Exception:
            log.error("new graph failed to start; keeping the old one running")
            for name, slot in keep.items():
                self.slots[name] = slot
            self._open_all(old_graph, {**keep, **{s.name: s for s in dropped}})
            raise
        for slot in dropped:
            self._close_slot(slot)
        log.info("graph replaced: %d nodes kept running, %d restarted/removed", len(keep), len(dropped))
