"""Source and sink threads: sources make frames into channels, sinks drain theirs.

The first source paces the stream; secondary sources (other cameras) are never waited for and
one that fails keeps its last frame instead of stopping the graph. Channel policies come from
the graph's wiring (`latest` drops stale frames and counts each drop, `queue` keeps them).
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from muse.graph.affinity import pinned
from muse.graph.channels import Channel, ChannelClosed
from muse.graph.slots import GraphRunError, Item, NodeStopped, Slot, channel_wiring

log = logging.getLogger("muse.runtime")


class SourceSinkThreads:
    """Mixin of `GraphRunner`: one thread per source and per sink."""

    def _start_source(self, slot: Slot) -> None:
        policy, size = channel_wiring(self.graph, slot.name)

        def on_drop(n: int) -> None:
            slot.stats.drops += n

        slot.channel = Channel(policy, size, on_drop)
        slot.stop.clear()

        demand = slot.node.on_demand and policy == "latest"
        # Paced, an on-demand source stands in for a camera, whose newest frame is at most one frame
        # period old when the graph takes it: a frame that waited longer is rendered afresh (the stale
        # one counts as dropped, as a camera's would). Rendering only on demand otherwise left each
        # frame waiting a whole graph period and added that to the measured latency.
        fresh_s = 1.0 / slot.ctx.fps if demand and not getattr(self, "unpaced", False) and slot.ctx.fps > 0 else None
        last_put = [0.0]

        # this thread's CPU by step, beside the executor's (`muse bench` prints both)
        steps = self.stats.executor_ns
        waiting, calling, event, handing = (f"source {slot.name!r}: {what}" for what in
                                            ("waiting for its frame to be taken", "node call", "event", "hand-over"))

        def loop() -> None:
            c_end = time.thread_time_ns()
            while not slot.stop.is_set() and not self._stop.is_set():
                if demand and len(slot.channel):
                    # a synthetic source renders only what will be shown: it waits for its frame to be taken
                    # (or, paced, to grow stale), woken by the taker (polling every millisecond cost the CPU
                    # path ~1 % of a core and as many GIL hand-overs)
                    left = 0.05 if fresh_s is None else fresh_s - (time.perf_counter() - last_put[0])
                    if left > 0:
                        slot.channel.wait_taken(min(left, 0.05))
                        continue
                t0 = time.perf_counter()
                c0 = time.thread_time_ns()
                steps[waiting] += c0 - c_end
                slot.call_started = t0
                try:
                    with self._in_stream(slot.stream):
                        out = slot.node.process()
                        c1 = time.thread_time_ns()
                        events = self._record(slot)
                    c2 = time.thread_time_ns()
                    steps[calling] += c1 - c0
                    steps[event] += c2 - c1
                except Exception as exc:
                    if self._thread_call_failed(slot, t0, exc, "source"):
                        break
                    if slot.consecutive_errors >= self.graph.settings.max_consecutive_errors:
                        if self._is_secondary_source(slot.name):
                            # One lost camera must not stop the others: the stream keeps its last frame.
                            log.error("source '%s' failed %d times in a row (%s); it is stopped, the other sources keep running",
                                      slot.name, slot.consecutive_errors, exc)
                            slot.ctx.report("status", "lost")
                            break
                        self._fail(GraphRunError(f"source '{slot.name}' failed {slot.consecutive_errors} times in a row: {exc}"))
                        break
                    time.sleep(0.01)
                    continue
                t1 = time.perf_counter()
                slot.call_started = None
                self._end_call(slot, t0, t1)
                if out is None:
                    log.info("source '%s' reached the end of its stream", slot.name)
                    break
                slot.consecutive_errors = 0
                self._note_time(slot, t0, t1)
                self.stats.frames_in += 1
                last_put[0] = t1
                if not slot.channel.put(Item(out, events, t1), slot.stop):
                    break
                c_end = time.thread_time_ns()
                steps[handing] += c_end - c2
            slot.channel.close()

        slot.thread = threading.Thread(target=pinned(loop, self._runtime_cores), name=f"muse-src-{slot.name}", daemon=True)
        slot.thread.start()

    def _thread_call_failed(self, slot: Slot, t0: float, exc: Exception, what: str) -> bool:
        """A source's or output's call raised: end the call, count it (out of memory may step the node down);
        True when its on_error is stop and the graph stops."""
        slot.call_started = None
        self._end_call(slot, t0)
        if isinstance(exc, torch.OutOfMemoryError):
            self._out_of_memory(slot, exc)
        self._node_failed(slot, exc)
        if slot.rn.policy.on_error == "stop":
            self._fail(NodeStopped(f"{self.graph.file}: {what} '{slot.name}' failed and its on_error is stop: {exc}"))
            return True
        return False

    def _start_sink(self, slot: Slot) -> None:
        policy, size = channel_wiring(self.graph, slot.name)

        def on_drop(n: int) -> None:
            slot.stats.drops += n

        slot.channel = Channel(policy, size, on_drop)
        slot.stop.clear()

        def loop() -> None:
            while True:
                try:
                    item = slot.channel.get(timeout=0.2)
                except TimeoutError:
                    if slot.stop.is_set() and slot.channel.closed:
                        break
                    continue
                except ChannelClosed:
                    break
                t0 = time.perf_counter()
                slot.call_started = t0
                try:
                    with self._in_stream(slot.stream):
                        self._wait_events(slot.stream, item.events, item.values)
                        slot.node.process(**item.values)  # (no event after it: nothing waits on an output's work)
                except Exception as exc:
                    if self._thread_call_failed(slot, t0, exc, "output"):
                        break
                    slot.stats.count_handled("skipped")
                    if slot.consecutive_errors >= self.graph.settings.max_consecutive_errors:
                        others = [s for s in self.slots.values() if s.rn.cls.is_sink() and s is not slot and s.stats.info.get("status") != "lost"]
                        if others:
                            # One dead output (a vanished virtual camera, a full disk) must not stop the others.
                            log.error("output '%s' failed %d times in a row (%s); it is stopped, the other outputs keep running",
                                      slot.name, slot.consecutive_errors, exc)
                            slot.ctx.report("status", "lost")
                            slot.channel.close()
                            break
                        self._fail(GraphRunError(f"output '{slot.name}' failed {slot.consecutive_errors} times in a row: {exc}"))
                        break
                    continue
                t1 = time.perf_counter()
                slot.call_started = None
                self._end_call(slot, t0, t1)
                slot.consecutive_errors = 0
                self._note_time(slot, t0, t1)
                self.stats.add_latency((t1 - item.t_capture) * 1000.0)

        slot.thread = threading.Thread(target=pinned(loop, self._runtime_cores), name=f"muse-sink-{slot.name}", daemon=True)
        slot.thread.start()

    def _is_secondary_source(self, name: str) -> bool:
        """Every source after the first (the first paces the stream; the others are never waited for)."""
        sources = [n for n in self.graph.order if n in self.slots and self.slots[n].rn.cls.is_source() and not self.slots[n].absent]
        return bool(sources) and name in sources and name != sources[0]

    def _gather_sources(self) -> dict[str, Item] | None:
        """The primary source's next item and each secondary source's newest; a secondary source
        that has nothing yet (still starting, or lost before its first frame) is left out."""
        # The first source that runs paces the stream (a camera that did not start leaves it to its stand-in).
        sources = [self.slots[n] for n in self.graph.order if self.slots[n].rn.cls.is_source() and not self.slots[n].absent]
        items: dict[str, Item] = {}
        for i, slot in enumerate(sources):
            primary = i == 0
            waits = primary or (slot.channel is not None and slot.channel.policy == "queue")
            item: Item | None = None
            while True:
                if self._stop.is_set():
                    return None
                try:
                    item = slot.channel.get(timeout=0.1) if waits else slot.channel.get_nowait()
                    slot.last = item
                    break
                except TimeoutError:
                    if waits:
                        continue
                    item = slot.last  # a secondary source never stalls the stream
                    break
                except ChannelClosed:
                    if primary or (waits and slot.last is None):
                        return None
                    item = slot.last
                    break
            if item is not None:
                items[slot.name] = item
        return items
