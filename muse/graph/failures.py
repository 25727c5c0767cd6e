"""How the executor covers a failing node (a mixin of `FrameExecutor`): its `on_error` stand-in when
it raises, the NaN/Inf check read a frame late, stalls counted when a call ends, out of memory
(the node's step down), and a hung call left behind (muse.graph.watchdog finds it).
Policies: muse.graph.policy; the check and the stand-ins: muse.graph.guard."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any, Iterator

import torch

from muse.graph.affinity import pinned
from muse.graph.node import NodeError
from muse.graph.slots import LeftBehind, NodeStopped, Slot
from muse.graph.watchdog import budget_ms

log = logging.getLogger("muse.runtime")


class FailureHandling:
    """Uses the runner's `graph`, `slots`, `device`, `_executor`, `_abandoned`, `_cpu_pipeline`, `_recording`."""

    def _leave_behind(self, slot: Slot, ran_s: float) -> None:
        """The watchdog found a processing node's call running for `ran_s`: go on without it. The thread
        stuck in it is replaced (the executor) or given up (a CPU pipeline worker); the node is
        skipped (its on_error stands in) until the call returns, and that thread then ends quietly."""
        thread = slot.call_thread
        if thread is None or slot.hung or self._recording:
            return  # nothing to take over, already done, or inside a recording (its capture must end first)
        if slot.rn.policy.on_error == "stop":
            self._fail(NodeStopped(f"{self.graph.file}: node '{slot.name}' ({slot.rn.type}) has not returned for {ran_s:.0f} s "
                                   "and its on_error is stop"))
            return
        pipe = self._cpu_pipeline
        if thread is self._executor:
            replace = True
        elif pipe is not None and thread in pipe.threads:
            replace = False
        else:
            return
        slot.hung = True
        self._abandoned.add(thread)
        log.error("node '%s' (%s) has not returned for %.0f s; the stream goes on without it (on_error %s) until it does",
                  slot.name, slot.rn.type, ran_s, slot.rn.policy.on_error)
        slot.ctx.report("stalled", f"left behind after {ran_s:.0f} s")
        if replace:
            self._executor = threading.Thread(target=pinned(self._execute, self._runtime_cores), name="muse-executor", daemon=True)
            self._executor.start()
        else:
            self._cpu_pipeline = None  # whole frames on the executor from now on
            assert pipe is not None
            pipe.abandon()

    def _check_left_behind(self, slot: Slot, t0: float) -> None:
        if threading.current_thread() in self._abandoned:
            slot.hung = False
            slot.stats.info.pop("stalled", None)
            log.warning("node '%s' returned after %.0f s; it runs again", slot.name, time.perf_counter() - t0)
            raise LeftBehind()

    def _failed(self, slot: Slot, exc: Exception, values: dict[str, Any], events: list[Any]) -> tuple[dict[str, Any], list[Any]]:
        """A node raised: count and log it, then do what its `on_error` says."""
        oom = isinstance(exc, torch.OutOfMemoryError)
        if oom:
            self._out_of_memory(slot, exc)
        self._node_failed(slot, exc, expected=isinstance(exc, NodeError) or oom)
        policy = slot.rn.policy
        if policy.on_error == "stop":
            raise NodeStopped(f"{self.graph.file}: node '{slot.name}' ({slot.rn.type}) failed and its on_error is stop: "
                              f"{type(exc).__name__}: {exc}") from exc
        assert slot.guard is not None
        slot.guard.failed_now = exc
        if not self._recording:
            self._tell_selectors(slot, exc)
        with self._in_stream(slot.stream):  # a fallback computed here runs on the node's stream, ordered by its event
            self._wait_events(slot.stream, events, values)
            outs, how = slot.guard.stand_in(policy, slot.node, values, slot.rn.cls.outputs_spec)
            slot.stats.count_handled(how)
            if outs is not None:
                self._fire_taps(slot.name, outs)
            done = self._record(slot)
        return outs or {}, list(events) + done

    def _selector_edges(self, slot: Slot) -> Iterator[tuple[Slot, str, int]]:
        """(consumer that chooses between its inputs, its port, the index of `slot` there) for every such edge."""
        for consumer, port in self.graph.consumers(slot.name):
            other = self.slots.get(consumer)
            if other is None or not other.rn.cls.selects_inputs:
                continue
            for index, src in enumerate(self.graph.nodes[consumer].inputs[port].sources):
                if src.node == slot.name:
                    yield other, port, index

    def _tell_selectors(self, slot: Slot, exc: BaseException) -> None:
        """A switch fed by this node hears of the failure at once, though `on_error` covers it: with two frames
        in flight (the CPU pipeline) the next frame's pick may come before this frame's switch runs."""
        for other, port, index in self._selector_edges(slot):
            other.node.input_failed(port, index, exc)

    def _tell_consumers(self, slot: Slot) -> None:
        """A switch fed by this node hears that it gave NaN/Inf: the guard's stand-in keeps the picture clean,
        the switch falls back to its next branch (from the next frame on)."""
        for other, port, index in self._selector_edges(slot):
            hook = getattr(other.node, "input_unhealthy", None)  # flow.switch has one
            if hook is not None:
                hook(port, index, f"NaN/Inf output (node {slot.name!r})")

    def _judge(self, slot: Slot) -> None:
        """Read the node's NaN/Inf check from the last frame it ran (never blocks) and act on it."""
        guard = slot.guard
        assert guard is not None
        bad = guard.poll()
        if bad is None:
            return
        guard.nan_seen = bool(bad)
        policy = slot.rn.policy
        if not bad:
            if guard.quarantined:
                guard.quarantined = False
                log.info("node '%s' (%s): outputs are finite again", slot.name, slot.rn.type)
            return
        before = slot.stats.nan_frames
        slot.stats.nan_frames += bad  # every failed check since the last read (the host may run frames ahead)
        self._tell_consumers(slot)
        n = slot.stats.nan_frames
        if policy.on_error == "stop":
            raise NodeStopped(f"{self.graph.file}: node '{slot.name}' ({slot.rn.type}) produced NaN/Inf and its on_error is stop")
        if policy.on_error == "hold_last":
            slot.stats.count_handled("held", bad)
        if before == 0 or n // 100 > before // 100:
            what = {"hold_last": "its last good outputs stood in (on the device, the same frame)",
                    "skip": "its outputs are skipped until they are finite again",
                    "fallback": "its fallback stands in until its outputs are finite again"}[policy.on_error]
            log.error("node '%s' (%s) produced NaN/Inf (%d frame(s) so far); %s", slot.name, slot.rn.type, n, what)
        if policy.on_error in ("skip", "fallback"):
            guard.quarantined = True

    def _end_call(self, slot: Slot, t0: float, t1: float | None = None) -> None:
        """A call is over: count it as a stall when it ran past the node's budget."""
        t1 = time.perf_counter() if t1 is None else t1
        ms = (t1 - t0) * 1000.0
        slot.stall_warned = False
        slot.stats.info.pop("stalled", None)
        budget = budget_ms(self, slot)
        if ms <= budget:
            return
        st = slot.stats
        st.stalls += 1
        st.slowest_ms = max(st.slowest_ms, ms)
        if st.stalls == 1 or st.stalls % 100 == 0:
            log.warning("node '%s' (%s) took %.0f ms, over its budget of %.0f ms (%d stall(s) so far)",
                        slot.name, slot.rn.type, ms, budget, st.stalls)

    def _out_of_memory(self, slot: Slot, exc: BaseException) -> None:
        """GPU out of memory: free the cache and let the node step down to a lighter setting (applied
        at the next frame boundary, like a live edit), saying what changed."""
        slot.stats.oom += 1
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            changes = slot.node.step_down()
        except Exception:
            log.error("node '%s': step_down failed:\n%s", slot.name, traceback.format_exc())
            changes = None
        if not changes:
            log.error("node '%s' (%s) ran out of GPU memory and has no lighter setting; its on_error (%s) covers it",
                      slot.name, slot.rn.type, slot.rn.policy.on_error)
            return
        what = ", ".join(f"{k} {getattr(slot.node.params, k, '?')} -> {v}" for k, v in changes.items())
        try:
            self.update_params(slot.name, changes)
        except Exception as err:
            log.error("node '%s': its step down (%s) was refused: %s", slot.name, what, err)
            return
        slot.stats.stepped_down.append(what)
        slot.ctx.report("stepped_down", what)
        log.warning("node '%s' (%s) ran out of GPU memory; stepping down: %s", slot.name, slot.rn.type, what)
