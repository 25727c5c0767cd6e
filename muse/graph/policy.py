"""What a node does when it fails: its `on_error` policy, stall budget and fallback, resolved at validation.

    seg:
      type: segment.hybrid
      on_error: hold_last     # skip | hold_last | fallback | stop
      budget_ms: 80           # a call longer than this is a stall (default: settings.budget_ms)
    reshape:
      type: warp.apply
      on_error: fallback
      fallback: {out: frame}  # output port -> the input passed through in its place

A failure is an exception (out of memory included, after the node's `step_down`), a NaN/Inf
in a floating output, or, for `stop`, a stall. Processing nodes default to
`settings.on_error` (hold_last); sources and outputs take `skip` (a source retries, an
output drops that frame) or `stop`.

Fallback outputs, per output port: the graph's `fallback:` entry, else the node's own
`fallback()` method (a node that knows its degraded answer, e.g. "the frame unwarped"),
else the first connected input of the same payload type. `on_error: fallback` with an
output left without any is a validation error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from muse.graph.node import Node

if TYPE_CHECKING:  # pragma: no cover
    from muse.graph.payloads import Payload
    from muse.graph.resolved import GraphError, ResolvedNode
    from muse.graph.spec import GraphSpec, SourceMap

POLICIES = ("skip", "hold_last", "fallback", "stop")
NODE_OWN = "<node>"  # a fallback output computed by the node's own `fallback()`


@dataclass
class FaultPolicy:
    """A node's resolved failure handling."""

    on_error: str = "hold_last"
    budget_ms: float = 1000.0
    fallback: dict[str, str] = field(default_factory=dict)  # output port -> input port, or NODE_OWN

    def fallback_ready(self, outputs: dict[str, Any]) -> bool:
        return bool(outputs) and all(o in self.fallback for o in outputs)


def has_own_fallback(cls: type[Node]) -> bool:
    return getattr(cls, "fallback", None) is not getattr(Node, "fallback", None)


def check_fault_policies(spec: "GraphSpec", nodes: dict[str, "ResolvedNode"], out_types: dict[tuple[str, str], type["Payload"]],
                         smap: "SourceMap", errors: list["GraphError"]) -> None:
    """Resolve every node's FaultPolicy (on `rn.policy`), reporting what cannot work, naming file, node and field."""
    from muse.graph.resolved import GraphError

    settings = spec.settings
    file = smap.file
    for name, rn in nodes.items():
        ns = spec.nodes.get(name)
        if ns is None:
            continue
        edge = rn.cls.is_source() or rn.cls.is_sink()
        on_error = ns.on_error or ("skip" if edge else settings.on_error)
        if edge and on_error in ("hold_last", "fallback"):
            kind = "a source" if rn.cls.is_source() else "an output"
            errors.append(GraphError("bad_policy", f"on_error: {on_error} does not apply to {kind} ({rn.type})", file,
                                     smap.line("nodes", name, "on_error"), node=name, field="on_error",
                                     hint="sources and outputs take skip (a source retries, an output drops that frame) or stop"))
            on_error = "skip"
        policy = FaultPolicy(on_error, ns.budget_ms or settings.budget_ms)
        # Explicit `fallback:` entries first, each checked.
        for out_port, in_port in ns.fallback.items():
            line = smap.line("nodes", name, "fallback", out_port)
            if out_port not in rn.cls.outputs_spec:
                errors.append(GraphError("bad_fallback", f"{rn.type} has no output {out_port!r}", file, line, node=name,
                                         field=f"fallback.{out_port}", hint=f"its outputs are: {', '.join(rn.cls.outputs_spec) or '(none)'}"))
                continue
            ri = rn.inputs.get(in_port)
            if in_port not in rn.cls.inputs_spec:
                errors.append(GraphError("bad_fallback", f"{rn.type} has no input {in_port!r} to pass through as {out_port!r}", file, line,
                                         node=name, field=f"fallback.{out_port}", hint=f"its inputs are: {', '.join(rn.cls.inputs_spec) or '(none)'}"))
                continue
            if ri is None or not ri.sources or ri.port.multiple:
                errors.append(GraphError("bad_fallback", f"input {in_port!r} is not connected (or takes a list), so it cannot stand in for {out_port!r}",
                                         file, line, node=name, field=f"fallback.{out_port}", hint="name a connected single input"))
                continue
            have, want = _input_type(rn, in_port, out_types), out_types.get((name, out_port))
            if have is not None and want is not None and have is not want:
                errors.append(GraphError("bad_fallback", f"input {in_port!r} gives {have.type_name}, but output {out_port!r} is {want.type_name}",
                                         file, line, node=name, field=f"fallback.{out_port}", hint="name an input of the output's type"))
                continue
            policy.fallback[out_port] = in_port
        if ns.fallback and on_error != "fallback":
            errors.append(GraphError("bad_fallback", f"'fallback' is only used with on_error: fallback (this node has on_error: {on_error})",
                                     file, smap.line("nodes", name, "fallback"), node=name, field="fallback",
                                     hint="add 'on_error: fallback' or remove 'fallback'"))
        own = has_own_fallback(rn.cls)
        for out_port in rn.cls.outputs_spec:
            if out_port in policy.fallback:
                continue
            if own:
                policy.fallback[out_port] = NODE_OWN
                continue
            auto = _same_type_input(rn, name, out_port, out_types)
            if auto is not None:
                policy.fallback[out_port] = auto
        missing = [o for o in rn.cls.outputs_spec if o not in policy.fallback]
        if on_error == "fallback" and missing:
            errors.append(GraphError("bad_fallback", f"on_error: fallback, but nothing can stand in for output(s) {', '.join(missing)}",
                                     file, smap.line("nodes", name, "on_error"), node=name, field="on_error",
                                     hint="map each to an input of its type under 'fallback:' (e.g. fallback: {out: frame}), "
                                          "or use hold_last or skip"))
        rn.policy = policy


def _input_type(rn: "ResolvedNode", port: str, out_types: dict[tuple[str, str], type["Payload"]]) -> type["Payload"] | None:
    ri = rn.inputs.get(port)
    if ri is None:
        return None
    if not ri.port.generic:
        return ri.port.type
    for s in ri.sources:
        t = out_types.get((s.node, s.port))
        if t is not None:
            return t
    return None


def _same_type_input(rn: "ResolvedNode", name: str, out_port: str, out_types: dict[tuple[str, str], type["Payload"]]) -> str | None:
    """The connected single input of the output's type: the one of the same name, else the first declared."""
    want = out_types.get((name, out_port))
    if want is None:
        return None
    fits = [p for p, ri in rn.inputs.items() if ri.sources and not ri.port.multiple and _input_type(rn, p, out_types) is want]
    if out_port in fits:
        return out_port
    order = list(rn.cls.inputs_spec)
    fits.sort(key=order.index)
    return fits[0] if fits else None
