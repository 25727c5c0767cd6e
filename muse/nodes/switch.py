"""The generic switch: N candidate inputs of one payload type, in priority order.

The switch picks its live branch before the frame, in `frame_variant()`, from what it
learnt a frame late (`LateValue` health numbers: NaN/Inf, an empty output) and from
failures it was told of; only the picked branch's nodes run (`needed_inputs()` names it,
and the runtime runs nothing else), and each pick is its own captured variant, so a
switch inside a recorded frame costs one copy-free pass-through. Modes:
`first_available` (highest-priority branch that has a value), `manual` (the `index`
param, or a Control on `select`), `fallback_on_error` (stay on the live branch; on an
error, a NaN/Inf output or a long-empty one move down, and try the better branch again
after `retry_s`). A branch that never started (absent model, failed to start, a stand-in)
is skipped and reported as such. The hybrid segmenter and pose nodes follow the same
retry policy (`SwitchPolicy`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Hashable, Literal

import numpy as np
import torch
from pydantic import Field

from muse.graph.capture import LateValue, is_recording
from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Control, Payload

log = logging.getLogger("muse.switch")

CANDIDATES = "candidates"


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


class _Health:
    """Per branch, [non-finite flag, mean of its first float tensor] computed on the device now and
    read a frame later (`LateValue`, the one "read a GPU value a frame later" helper): never stalls."""

    def __init__(self) -> None:
        self.flags: dict[int, tuple[LateValue, int]] = {}  # branch -> (its numbers, the version last judged)

    def submit(self, branch: int, value: Any, finite: dict[str, Any] | None = None) -> None:
        """Publish [non-finite, mean] of `value`; `finite`: its float fields' isfinite masks (`_finite`)."""
        finite = finite if finite is not None else _finite(value)
        if not finite:
            return
        key = next(iter(finite))
        first, ok = getattr(value, key), finite[key]
        if isinstance(ok, np.ndarray):  # the CPU path: numpy sums, a host-side pair
            arr = first.detach().numpy()
            bad = not all(bool(f.all()) for f in finite.values())
            stats = torch.tensor([float(bad), float(np.where(ok, arr, 0).mean()) if arr.size else 0.0])
        else:
            alls = [f.all() for f in finite.values()]
            bad_t = torch.logical_not(alls[0] if len(alls) == 1 else torch.stack(alls).all()).float()
            stats = torch.stack((bad_t, torch.where(ok, first.float(), 0.0).mean()))
        entry = self.flags.get(branch)
        if entry is None or entry[0].cuda != first.is_cuda:
            entry = self.flags[branch] = (LateValue(first.device, (2,)), 0)
        entry[0].publish(stats)

    def ready(self) -> list[tuple[int, bool, float]]:
        """(branch, non-finite, mean) of every check that finished since it was last judged."""
        out = []
        for branch, (late, judged) in list(self.flags.items()):
            if late.published and late.version != judged and late.ready():
                bad, mean = (float(x) for x in late.view.tolist())  # ready(): its copy has landed, no device stall
                out.append((branch, bool(bad), mean))
                self.flags[branch] = (late, late.version)
        return out


def _finite(value: Any) -> dict[str, Any]:
    """field -> isfinite mask of every float tensor of a payload: torch masks on a GPU or inside a
    recorded frame, numpy ones on the CPU path (torch's thread pool costs more than these small sums:
    measured 12 ms against 0.07 ms for a 256x256 mask under load)."""
    if not isinstance(value, Payload):
        return {}
    fields = {k: t for k, t in vars(value).items() if isinstance(t, torch.Tensor) and t.is_floating_point()}
    if fields and not is_recording() and all(t.device.type == "cpu" for t in fields.values()):
        return {k: np.isfinite(t.detach().numpy()) for k, t in fields.items()}
    return {k: torch.isfinite(t) for k, t in fields.items()}


class Switch(Node):
    node_type = "flow.switch"
    display_name = "Switch"
    category = "flow"
    description = (
        "Picks one of several inputs of one type, in priority order; only the picked branch runs. "
        "Modes: first_available, manual, fallback_on_error. Branches that are absent or failed are skipped and reported."
    )
    capturable = True
    selects_inputs = True

    candidates: In[Payload] = In(multiple=True, description="Candidates, highest priority first")
    select: In[Control] = In(optional=True, description="manual mode: Control with the index (or label) to use (read a frame late)")
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
        hold_last: bool = Field(False, description="Never pass NaN/Inf on: where the live output has them, the last good values stand in")
        empty_below: float = Field(0.0, ge=0.0, le=1.0, description="An output whose mean (a mask's coverage) stays below this counts as empty; 0 = off")
        empty_frames: int = Field(30, ge=1, le=10_000, description="After this many empty frames the next branch is asked too; if it sees something, the live one fails")

    params: Params

    def __init__(self, name: str, params: NodeParams | None = None) -> None:
        super().__init__(name, params)
        self._policy: SwitchPolicy | None = None
        self._health = _Health()
        self._errors: dict[int, str] = {}
        self._absent: dict[int, str] = {}
        self._skip: set[int] = set()  # no value (or failed) this frame: picked past until the frame ends
        self._repick = False  # input_failed() asked for a new pick within this frame
        self._empty: dict[int, int] = {}
        self._pick: tuple[int | None, int | None] = (None, None)
        self._planned = False
        self._control_index: int | None = None
        self._good: dict[str, torch.Tensor] = {}
        self._shown: int | None = -1  # the live branch last reported (-1: none yet)
        self._reported: tuple = ()  # what the branch states were last reported for, and when
        self._reported_at = 0.0

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        count = ctx.fan_in.get(CANDIDATES, 0)
        if count:
            self._policy = SwitchPolicy(count, self.params.retry_s)

    def update_params(self, params: Params) -> bool:
        self.params = params
        if self._policy is not None:
            self._policy.retry_s = params.retry_s
        return True

    def capture_blocker(self) -> str | None:
        if self.params.mode == "manual" and self.ctx is not None and "select" in self.ctx.connected:
            return "manual mode reads the `select` Control on the host every frame"
        return None

    def sources_absent(self, absent: dict[tuple[str, int], str]) -> None:
        self._absent = {i: why for (port, i), why in absent.items() if port == CANDIDATES}
        count = self._policy.count if self._policy is not None else 0
        if count and len(self._absent) >= count:
            detail = "; ".join(f"{self._label(i)}: {why}" for i, why in sorted(self._absent.items()))
            raise NodeError(f"switch '{self.name}': none of its {count} branches can run ({detail})")
        failed = [i for i, why in sorted(self._absent.items()) if why.startswith("failed")]
        first = next((i for i in range(count) if i not in self._absent), None)
        if failed and first is not None and failed[0] < first:  # a branch we wanted did not start: say so loudly
            why = f"{self._label(failed[0])} {self._absent[failed[0]]}"
            log.warning("!!! switch '%s': %s; FALLING BACK to %s !!!", self.name, why, self._label(first))
            self.report("fallback", self._label(first))
            self.report("fallback_reason", why)
        self._report(self._pick[0])

    def _label(self, i: int) -> str:
        labels = self.params.labels
        return labels[i] if i < len(labels) else f"branch {i}"

    # -- the choice, made before the frame ------------------------------------------------------------
    def frame_variant(self) -> Hashable:
        """The live branch (and a lower one asked along, to check an empty output), from earlier frames."""
        policy = self._policy
        if policy is None:
            return None
        if not self._repick:  # a new frame: last frame's skips end even if that frame failed before `process`
            self._skip.clear()
        self._repick = False
        self._judge(policy)
        p = self.params
        usable = [i for i in range(policy.count) if i not in self._absent and i not in self._skip]
        if p.mode == "manual":
            live: int | None = self._control_index if self._control_index is not None else p.index
        elif p.mode == "first_available":
            live = usable[0] if usable else None
        else:
            order = [i for i in policy.order() if i in usable]
            live = order[0] if order else None
        probe = None
        if live is not None and self._empty.get(live, 0) >= p.empty_frames and p.mode != "manual":
            lower = [i for i in usable if i > live]
            if lower:
                probe = lower[0]
                self._empty[live] = 0
        if live is not None and live in usable and p.mode != "manual":
            if policy.succeeded(live) and self._shown not in (-1, None):
                log.warning("switch '%s': live branch is now %s", self.name, self._label(live))
        self._pick, self._planned = (live, probe), True
        self._report(live)
        return self._pick

    def _judge(self, policy: SwitchPolicy) -> None:
        p = self.params
        for branch, bad, mean in self._health.ready():
            live = self._pick[0]
            if bad and p.check_finite:
                self._fail(policy, branch, "NaN/Inf output")
            elif p.empty_below > 0 and branch == live:
                self._empty[branch] = self._empty.get(branch, 0) + 1 if mean < p.empty_below else 0
            elif p.empty_below > 0 and branch == self._pick[1] and live is not None and mean >= max(p.empty_below * 10, 0.01):
                self._fail(policy, live, f"empty output for {p.empty_frames} frames while {self._label(branch)} sees something")

    def _fail(self, policy: SwitchPolicy, branch: int, why: str) -> None:
        log.warning("switch '%s': %s failed (%s); falling back", self.name, self._label(branch), why)
        policy.failed(branch)
        self._errors[branch] = why
        self._empty.pop(branch, None)
        self.report("last_fault", f"{self._label(branch)}: {why}")

    def needed_inputs(self) -> list[str]:
        live, probe = self._pick
        needed = [f"{CANDIDATES}[{i}]" for i in (live, probe) if i is not None]
        if self.params.mode == "manual" and self.ctx is not None and "select" in self.ctx.connected:
            needed.append("select")
        return needed

    def input_failed(self, port: str, index: int, error: BaseException | None) -> bool:
        """A branch raised (or had no value this frame): pick past it; a raise also starts its retry wait."""
        if port != CANDIDATES or self.params.mode == "manual" or self._policy is None:
            return False
        told = index in self._skip  # the CPU pipeline tells at once, then the switch sees it again: say it once
        self._skip.add(index)
        self._repick = True  # asked again this frame: the skip holds
        if error is not None and not told:
            msg = str(error).splitlines()[0] if str(error) else type(error).__name__
            self._fail(self._policy, index, msg)
        return True

    def input_unhealthy(self, port: str, index: int, why: str) -> None:
        """A branch's source gave NaN/Inf (its guard saw it, a frame late, and a stand-in covered it): the
        branch counts as failed from the next pick on; the last usable branch is still picked (safe mode)."""
        if port == CANDIDATES and self.params.check_finite and self.params.mode != "manual" and self._policy is not None:
            self._fail(self._policy, index, why)

    # -- the frame -------------------------------------------------------------------------------------
    def process(self, candidates: list[Any], select: Control | None = None) -> dict[str, Any]:
        if self._policy is None or self._policy.count != len(candidates):
            self._policy = SwitchPolicy(len(candidates), self.params.retry_s)
            self._planned = False
        if not self._planned:  # called directly (tests, other code), not by the runtime
            self.frame_variant()
        self._planned = False
        self._skip.clear()
        live, probe = self._pick
        if select is not None:
            self._control_index = self._manual_index(select, len(candidates))
        if live is None:
            why = "; ".join(f"{self._label(i)}: {w}" for i, w in sorted({**self._errors, **self._absent}.items()))
            raise NodeError(f"switch '{self.name}': no candidate produced a value" + (f" ({why})" if why else ""))
        if not 0 <= live < len(candidates):
            raise NodeError(f"switch '{self.name}': field 'index' is {live}, but there are {len(candidates)} candidates (0..{len(candidates) - 1})")
        value = candidates[live]
        if value is None:
            why = self._absent.get(live, "it has no value this frame")
            raise NodeError(f"switch '{self.name}': branch {self._label(live)} gives nothing ({why})")
        finite = _finite(value) if self.params.check_finite or self.params.empty_below > 0 or self.params.hold_last else {}
        if self.params.check_finite or self.params.empty_below > 0:
            self._health.submit(live, value, finite)
            if probe is not None and candidates[probe] is not None:
                self._health.submit(probe, candidates[probe])
        if self.params.hold_last:
            value = self._held(value, finite)
        ts = getattr(value, "timestamp", 0.0)
        return {"selected": value, "live": Control({"index": live, "label": self._label(live)}, timestamp=ts)}

    def _held(self, value: Any, finite: dict[str, Any]) -> Any:
        """The value with NaN/Inf replaced by the last good numbers (buffers this node owns, updated in place)."""
        if not isinstance(value, Payload) or not dataclasses.is_dataclass(value):
            return value
        changes = {}
        for key, ok in finite.items():
            t = getattr(value, key)
            good = self._good.get(key)
            if good is None or good.shape != t.shape or good.dtype != t.dtype or good.device != t.device:
                good = self._good[key] = torch.zeros_like(t)
            if isinstance(ok, np.ndarray):  # the CPU path: a numpy copy where finite, into the same buffer
                np.copyto(good.numpy(), t.detach().numpy(), where=ok)
            else:
                good.copy_(torch.where(ok, t, good))
            changes[key] = good
        return dataclasses.replace(value, **changes) if changes else value

    def _manual_index(self, ctrl: Control, count: int) -> int | None:
        if self.params.control_key not in ctrl.values:
            return None
        raw = ctrl.values[self.params.control_key]
        if isinstance(raw, str) and raw in self.params.labels:
            return self.params.labels.index(raw)
        index = int(raw)
        if not 0 <= index < count:
            raise NodeError(f"switch '{self.name}': Control '{self.params.control_key}' is {index}, but there are {count} candidates")
        return index

    # -- what --stats and the editor show -------------------------------------------------------------
    def branch_states(self, live: int | None) -> dict[str, str]:
        """Each branch's state: live, standby, failed (why, and when it is retried), absent (why)."""
        policy = self._policy
        if policy is None:
            return {}
        now, states = policy.clock(), {}
        for i in range(policy.count):
            if i in self._absent:
                state = self._absent[i]
            elif i == live:
                state = "live"
            elif i in policy.failed_at:
                wait = policy.retry_s - (now - policy.failed_at[i]) if policy.retry_s is not None else 0
                why = self._errors.get(i, "failed")
                retry = self.params.mode == "fallback_on_error" and wait > 0
                state = f"failed: {why}" + (f" (retried in {wait:.0f} s)" if retry else "")
            else:
                state = "standby"
            states[self._label(i)] = state
        return states

    def _report(self, live: int | None) -> None:
        if self.ctx is None:
            return
        if live != self._shown:
            self._shown = live
            self.report("live", self._label(live) if live is not None else "none")
            self.report("live_index", live)
        policy = self._policy
        now = policy.clock() if policy is not None else 0.0
        key = (live, tuple(sorted(policy.failed_at)) if policy is not None else (), len(self._absent))
        if key != self._reported or now - self._reported_at >= 1.0:  # a change, or the retry countdown (1 s)
            self._reported, self._reported_at = key, now
            self.report("branches", self.branch_states(live))
