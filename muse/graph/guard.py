"""Per running node: its NaN/Inf check, its last good outputs and what its `on_error` policy puts in their place.

The check costs one fp32 sum per floating output tensor (NaN and Inf make the sum non-finite)
and one small copy to the host per node of its tally of failed checks, read a frame later (`LateValue`): no host sync,
and it records into a captured frame like any other device op. On the same frame, on the
device, every floating output tensor is replaced by the node's last finite one when the
check fails (`torch.where` on a 0-d flag), so a NaN never reaches a consumer, a stateful
node (a clean plate, a temporal filter) or the screen: at worst the stream shows the last
good mask for a frame. The host learns of it a frame late: it counts and logs the fault,
and for `skip`/`fallback` quarantines the node (its outputs replaced on the host, its
captured segment run eagerly) until a check comes back clean; for `stop` it stops the graph.

On a CPU device without frame capture the check is read at once (no device to wait for)
and a bad output is replaced by the last good one held by reference (no copy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, is_dataclass, replace as dc_replace
from typing import Any

import torch

from muse.graph.capture import LateValue
from muse.graph.payloads import Payload
from muse.graph.policy import NODE_OWN, FaultPolicy

log = logging.getLogger("muse.runtime")


@dataclass
class NodeGuard:
    """What the executor keeps per node for its failure policy."""

    name: str
    last: dict[str, Any] | None = None  # the last outputs consumers got (references; valid until replaced)
    held: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)  # (port, field) -> last finite tensor
    late: LateValue | None = None
    judged: int = 0  # the LateValue version already read
    bad_tally: torch.Tensor | None = None  # CUDA: failed checks so far, counted on the device (0-d int32)
    counted: int = 0  # the tally already read
    quarantined: bool = False  # outputs were non-finite at the last check: skip/fallback replace them
    sync_bad: bool = False  # CPU: this frame's check failed (read at once)
    sync_result: bool | None = None  # CPU: the last check, not yet read by `poll`
    nan_seen: bool = False  # the last check read was bad (a lazy consumer, e.g. a switch, is told so)
    failed_now: BaseException | None = None  # it raised this frame (the executor notes it in the frame's faults)
    adopted: Any = None  # the recording whose buffers `held` holds (`adopt`)
    last_timing: Any = None  # (payload, timing) of the replayed frame whose untimed outputs `last` is (program._publish)
    written: Any = None  # CUDA: the event after which `held` and `last` (a replay's buffers, on the program's stream) are written

    # -- the check -------------------------------------------------------------------------------------
    def check(self, outs: dict[str, Any], *, in_place: bool, sync: bool) -> dict[str, Any]:
        """`outs` with every floating tensor guarded (see the module docstring); publishes the flag."""
        floats = [(port, key, t) for port, v in outs.items() if isinstance(v, Payload) and is_dataclass(v)
                  for key, t in vars(v).items() if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
        if not floats:
            return outs
        sums = [t.sum(dtype=torch.float32) for _, _, t in floats]
        total = sums[0] if len(sums) == 1 else torch.stack(sums).sum()
        if sync:  # CPU, no capture: the answer is here now
            self.sync_bad = not bool(torch.isfinite(total))
            self.sync_result = self.sync_bad
            if self.sync_bad:
                return self._replace_bad(outs)
            return outs
        ok = torch.isfinite(total)
        if self.late is None or self.late.cuda != ok.is_cuda:
            # Made on an eager frame (a recording follows warm-up frames): the tally lives outside any graph's pool.
            self.late = LateValue(ok.device, (), torch.int32)
            self.bad_tally = torch.zeros((), dtype=torch.int32, device=ok.device)
            self.judged = self.counted = 0
        # The host reads the tally of bad frames, not this frame's flag: a flag the host had not read before the
        # next frame published its own was lost whenever the host ran more than a frame ahead of the device (one
        # of five NaN frames went uncounted with eight test processes on the H200); the tally loses none.
        assert self.bad_tally is not None
        self.bad_tally.add_(~ok)
        self.late.publish(self.bad_tally)
        changed: dict[str, dict[str, torch.Tensor]] = {}
        if not in_place:  # a recording starts from an idle device (and may not wait on an outside event)
            self.wait_written()
            self.adopted = None  # an eager frame holds its own tensors from here: the next replay adopts again
        for port, key, t in floats:
            old = self.held.get((port, key))
            if old is None or old.shape != t.shape or old.dtype != t.dtype or old.device != t.device:
                # The first frame (or a new size): nothing finite to hold yet, so non-finite values become 0.
                old = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
                if not in_place:
                    self.held[(port, key)] = old
                    changed.setdefault(port, {})[key] = old
                    continue
                old = old.clone()
            if in_place:  # a recorded frame: the same buffer every replay
                new = torch.where(ok, t, old, out=old)
            else:  # eager: a fresh tensor, so consumers of the last frame still see theirs
                new = torch.where(ok, t, old)
            self.held[(port, key)] = new
            changed.setdefault(port, {})[key] = new
        return {p: (dc_replace(v, **changed[p]) if p in changed else v) for p, v in outs.items()}

    def wait_written(self) -> None:
        """Order the current stream after the replay that last wrote `held`/`last` (CUDA; no host wait)."""
        ev, self.written = self.written, None
        if ev is not None:
            torch.cuda.current_stream().wait_event(ev)

    def adopt(self, outs: dict[str, Any], written: Any = None, source: Any = None) -> None:
        """A replayed frame's outputs are its recording's held buffers: hold those from now on (an eager
        frame that follows must stand in with what the replays last wrote, not an older eager copy).
        `written`: the replay's end event on the program's stream. `source`: the recording replayed; the
        buffers of the one adopted last, with nothing held since, are held already (one look a frame, not a
        walk over its outputs)."""
        self.written = written
        if source is not None and source is self.adopted:
            return
        self.adopted = source
        for (port, key) in list(self.held):
            v = outs.get(port)
            t = getattr(v, key, None) if isinstance(v, Payload) else None
            if isinstance(t, torch.Tensor):
                self.held[(port, key)] = t

    def last_outputs(self) -> dict[str, Any]:
        """The last good outputs (a copy of the dict), with the timing of the frame that made them."""
        assert self.last is not None
        if self.last_timing is not None:  # a replay's own buffers, published without that frame's timing
            from muse.graph.replayed import retime

            like, timing = self.last_timing
            return {p: retime(v, like, timing) for p, v in self.last.items()}
        return dict(self.last)

    def _replace_bad(self, outs: dict[str, Any]) -> dict[str, Any]:
        if self.last is not None and set(self.last) >= set(outs):
            return self.last_outputs()
        out: dict[str, Any] = {}
        for port, v in outs.items():
            if isinstance(v, Payload):
                fixed = {k: torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
                         for k, t in vars(v).items() if isinstance(t, torch.Tensor) and t.is_floating_point()}
                v = dc_replace(v, **fixed) if fixed else v
            out[port] = v
        return out

    def poll(self) -> int | None:
        """How many checks failed since the last read, when a newer one has landed (never blocks): 0 = clean,
        None = nothing new to read."""
        if self.sync_result is not None:
            bad, self.sync_result, self.sync_bad = self.sync_result, None, False
            return int(bad)
        late = self.late
        if late is None or not late.published or late.version == self.judged or not late.ready():
            return None
        self.judged = late.version
        tally = int(late.view)  # ready(): its copy has landed
        new, self.counted = tally - self.counted, tally
        return new

    # -- what stands in ---------------------------------------------------------------------------------
    def stand_in(self, policy: FaultPolicy, node: Any, values: dict[str, Any], outputs: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """The outputs consumers get instead of the node's (None: none this frame), and what was done."""
        if policy.on_error == "hold_last" and self.last is not None:
            self.wait_written()
            return self.last_outputs(), "held"
        if policy.on_error in ("hold_last", "fallback") and policy.fallback_ready(outputs):
            got = fallback_outputs(policy, node, values, outputs)
            if got is not None:
                return got, "fallback"
        return None, "skipped"


def fallback_outputs(policy: FaultPolicy, node: Any, values: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any] | None:
    """Each output's stand-in: an input passed through or the node's own `fallback()`; None if any is missing."""
    plain = {k: (v() if callable(v) else [x() if callable(x) else x for x in v] if isinstance(v, list) else v) for k, v in values.items()}
    own: dict[str, Any] | None = None
    out: dict[str, Any] = {}
    for port in outputs:
        src = policy.fallback.get(port)
        if src == NODE_OWN:
            if own is None:
                try:
                    own = node.fallback(**plain) or {}
                except Exception:
                    log.debug("node %r: its fallback failed too", getattr(node, "name", "?"), exc_info=True)
                    return None
            value = own.get(port)
        else:
            value = plain.get(src) if src else None
        if value is None:
            return None
        out[port] = value
    return out
