"""The generic switch: N candidate inputs of one payload type, in priority order.

Only the branch the switch asks for is computed this frame (its inputs are
lazy). Modes: `first_available` (highest-priority branch that has a value),
`manual` (a Control input or the `index` param picks), `fallback_on_error`
(stay on the live branch; on an error or a non-finite result move down, and
try the better branch again after `retry_s`). The hybrid segmenter and pose
nodes follow the same policy (`SwitchPolicy`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Literal

import torch
from pydantic import Field

from muse.graph.capture import LateValue
from muse.graph.node import In, Node, NodeError, NodeParams, Out
from muse.graph.payloads import Control, Payload

log = logging.getLogger("muse.switch")


class SwitchPolicy:
    """Which branch to try, in order, given what failed and when (no torch, no I/O).

    The one retry/backoff policy of MUSE's switches: flow.switch, segment.hybrid and pose.hybrid.
    `retry_s` None = a failed branch is never retried (only as the last resort of `order`)."""

    def __init__(self, count: int, retry_s: float | None = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.count = count
        self.retry_s = retry_s
        self.clock = clock
        self.failed_at: dict[int, float] = {}
        self.live: int | None = None

    def order(self) -> list[int]:
        """Branches to try now: healthy ones first, in priority order; failed ones whose retry time came back in."""
        ready = self.ready()
        waiting = [i for i in range(self.count) if i not in ready]
        return ready + waiting  # last resort: even a recently failed branch beats no picture

    def ready(self) -> list[int]:
        """Branches that may be tried now, in priority order: healthy ones and those due for a retry."""
        now = self.clock()
        return [i for i in range(self.count)
                if i not in self.failed_at or (self.retry_s is not None and now - self.failed_at[i] >= self.retry_s)]

    def succeeded(self, index: int) -> bool:
        """Record success; True if the live branch changed."""
        self.failed_at.pop(index, None)
        changed = index != self.live
        self.live = index
        return changed

    def failed(self, index: int) -> None:
        self.failed_at[index] = self.clock()


class _FiniteCheck:
    """Per branch, a NaN/Inf flag computed on the device now and read a frame later
    (`LateValue`, the one "read a GPU value a frame later" helper): never stalls the device."""

    def __init__(self) -> None:
        self.flags: dict[int, tuple[LateValue, int]] = {}  # branch -> (its flag, the version last judged)

    def submit(self, branch: int, value: Any) -> None:
        if not isinstance(value, Payload):
            return
        flags = [(~torch.isfinite(t)).any() for t in value.tensors() if t.is_floating_point()]
        if not flags:
            return
        bad = torch.stack(flags).any()
        entry = self.flags.get(branch)
        if entry is None or entry[0].cuda != bad.is_cuda:
            entry = self.flags[branch] = (LateValue(bad.device, (1,), torch.bool), 0)
        entry[0].publish(bad)

    def ready_failures(self) -> list[int]:
        """Branches whose last checked output turned out non-finite (only checks that already finished)."""
        out = []
        for branch, (late, judged) in list(self.flags.items()):
            if late.published and late.version != judged and late.ready():
                if bool(late.read()[0]):  # its copy has landed: this read does not stall the GPU
                    out.append(branch)
                self.flags[branch] = (late, late.version)
        return out


class Switch(Node):
    node_type = "flow.switch"
    display_name = "Switch"
    category = "flow"
    description = (
        "Picks one of several inputs of one type, in priority order; only the picked branch runs. "
        "Modes: first_available, manual, fallback_on_error."
    )
    lazy_inputs = True

    candidates: In[Payload] = In(multiple=True, description="Candidates, highest priority first")
    select: In[Control] = In(optional=True, description="manual mode: Control with the index (or label) to use")
    selected: Out[Payload] = Out(same_as="candidates", description="The live candidate's value")
    live: Out[Control] = Out(Control, description="Which branch is live: {index, label}")

    class Params(NodeParams):
        mode: Literal["first_available", "manual", "fallback_on_error"] = Field(
            "fallback_on_error", description="How the live branch is chosen"
        )
        index: int = Field(0, ge=0, le=63, description="manual mode: the branch to use when no Control says otherwise")
        control_key: str = Field("index", description="manual mode: key of the Control value that selects the branch")
        labels: list[str] = Field(default_factory=list, description="Names of the branches, for stats and the editor")
        retry_s: float = Field(5.0, ge=0.0, le=3600.0, description="fallback_on_error: retry a failed better branch after this long")
        check_finite: bool = Field(True, description="Treat NaN/Inf outputs as a failure (checked without stalling the GPU)")

    params: Params

    def open(self, ctx) -> None:
        super().open(ctx)
        self._policy: SwitchPolicy | None = None
        self._check = _FiniteCheck()
        self._errors: dict[int, str] = {}

    def update_params(self, params: Params) -> bool:
        self.params = params
        if self._policy is not None:
            self._policy.retry_s = params.retry_s
        return True

    def _label(self, i: int) -> str:
        labels = self.params.labels
        return labels[i] if i < len(labels) else f"branch {i}"

    def process(self, candidates: list[Callable[[], Any]], select: Callable[[], Any] | None = None) -> dict[str, Any]:
        p = self.params
        if self._policy is None or self._policy.count != len(candidates):
            self._policy = SwitchPolicy(len(candidates), p.retry_s)
        if p.check_finite:
            for bad in self._check.ready_failures():
                log.warning("switch '%s': %s produced NaN/Inf; falling back", self.name, self._label(bad))
                self._policy.failed(bad)
                self._errors[bad] = "NaN/Inf output"

        if p.mode == "manual":
            index = self._manual_index(select, len(candidates))
            value = candidates[index]()
            if value is None:
                raise NodeError(f"switch '{self.name}': manual branch {self._label(index)} has no value this frame")
            return self._emit(index, value)

        errors: list[str] = []
        order = list(range(len(candidates))) if p.mode == "first_available" else self._policy.order()
        for i in order:
            try:
                value = candidates[i]()
            except Exception as exc:  # a failing branch is exactly what this node is for
                errors.append(f"{self._label(i)}: {exc}")
                self._policy.failed(i)
                self._errors[i] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("switch '%s': %s failed (%s); trying the next", self.name, self._label(i), exc)
                continue
            if value is None:
                continue
            if p.check_finite:
                self._check.submit(i, value)
            return self._emit(i, value)
        raise NodeError(f"switch '{self.name}': no candidate produced a value" + (f" ({'; '.join(errors)})" if errors else ""))

    def _manual_index(self, select: Callable[[], Any] | None, count: int) -> int:
        index = self.params.index
        ctrl = select() if select is not None else None
        if isinstance(ctrl, Control) and self.params.control_key in ctrl.values:
            raw = ctrl.values[self.params.control_key]
            if isinstance(raw, str) and raw in self.params.labels:
                index = self.params.labels.index(raw)
            else:
                index = int(raw)
        if not 0 <= index < count:
            raise NodeError(f"switch '{self.name}': field 'index' is {index}, but there are {count} candidates (0..{count - 1})")
        return index

    def branch_states(self, live: int) -> dict[str, str]:
        """Each branch's state for `--stats` and the editor: live, standby, or failed (why, and when it is retried)."""
        assert self._policy is not None
        now, states = self._policy.clock(), {}
        for i in range(self._policy.count):
            if i == live:
                state = "live"
            elif i in self._policy.failed_at:
                wait = self._policy.retry_s - (now - self._policy.failed_at[i])
                why = self._errors.get(i, "failed")
                state = f"failed: {why}" + (f" (retried in {wait:.0f} s)" if wait > 0 and self.params.mode == "fallback_on_error" else "")
            else:
                state = "standby"
            states[self._label(i)] = state
        return states

    def _emit(self, index: int, value: Any) -> dict[str, Any]:
        assert self._policy is not None
        if self._policy.succeeded(index):
            log.info("switch '%s': live branch is now %s", self.name, self._label(index))
        self._errors.pop(index, None)
        if self.ctx is not None:
            self.report("live", self._label(index))
            self.report("live_index", index)
            self.report("branches", self.branch_states(index))
        ts = getattr(value, "timestamp", 0.0)
        return {"selected": value, "live": Control({"index": index, "label": self._label(index)}, timestamp=ts)}
