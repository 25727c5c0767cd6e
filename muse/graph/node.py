"""The node contract: typed ports on the class, a pydantic `Params` model,
and the `open(ctx)` / `process(...)` / `close()` lifecycle.

    class Invert(Node):
        node_type = "image.invert"
        category = "image"
        description = "Inverts the colours of a frame."

        frame: In[Frame]
        out: Out[Frame]

        class Params(NodeParams):
            amount: float = Field(1.0, ge=0, le=1, description="0 = off, 1 = full")

        def process(self, frame: Frame) -> dict[str, Frame]:
            ...

The registry and the editor read ports and params from the class alone; constructors do no work.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Generic, Hashable, Iterable, TypeVar

import torch
from pydantic import BaseModel, ConfigDict

from muse.graph.payloads import Payload

if TYPE_CHECKING:  # pragma: no cover
    from muse.graph.stats import NodeStats

P = TypeVar("P", bound=Payload)


class NodeParams(BaseModel):
    """Base for every node's `Params`: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class PortSpec:
    """One input or output of a node class."""

    name: str
    direction: str  # "in" | "out"
    type: type[Payload]
    optional: bool = False  # inputs only: may be left unconnected
    multiple: bool = False  # inputs only: takes a list of sources, all of one type
    same_as: str | None = None  # outputs only: the type bound at that input
    description: str = ""

    @property
    def generic(self) -> bool:
        return self.type is Payload

    @property
    def type_name(self) -> str:
        return self.type.type_name


class _PortDecl:
    """Shared base of the `In`/`Out` declarations."""

    direction: ClassVar[str] = ""

    def __init__(
        self,
        type: type[Payload] | None = None,
        *,
        optional: bool = False,
        multiple: bool = False,
        same_as: str | None = None,
        description: str = "",
    ) -> None:
        self.type = type
        self.optional = optional
        self.multiple = multiple
        self.same_as = same_as
        self.description = description

    def __class_getitem__(cls, item: type[Payload]) -> "_PortHint":
        return _PortHint(cls, item)

    def spec(self, name: str, hinted: type[Payload] | None) -> PortSpec:
        typ = self.type or hinted
        if typ is None or not (isinstance(typ, type) and issubclass(typ, Payload)):
            raise TypeError(f"port {name!r} needs a payload type, e.g. In[Frame]")
        return PortSpec(
            name=name,
            direction=self.direction,
            type=typ,
            optional=self.optional,
            multiple=self.multiple,
            same_as=self.same_as,
            description=self.description,
        )


class _PortHint:
    """What `In[Frame]` evaluates to in a class annotation."""

    def __init__(self, decl_cls: type[_PortDecl], type_: type[Payload]) -> None:
        self.decl_cls = decl_cls
        self.type = type_

    def __repr__(self) -> str:
        return f"{self.decl_cls.__name__}[{getattr(self.type, '__name__', self.type)}]"


class In(_PortDecl, Generic[P]):
    """An input port: `frame: In[Frame]`, or `mask: In[Mask] = In(optional=True)`."""

    direction = "in"


class Out(_PortDecl, Generic[P]):
    """An output port: `mask: Out[Mask]`, or `out: Out[Payload] = Out(same_as="candidates")`."""

    direction = "out"


class NodeError(RuntimeError):
    """A node failed in a way the user can act on; the message says how."""


class NodeAbsent(NodeError):
    """Raised by `open` when the node has nothing to run because what it needs was not given or
    not made yet (no student trained, no MODNet checkpoint set): a normal state for a switch's
    branch, which is then reported `absent` and costs nothing per frame. Anywhere else it is an
    error like any other `NodeError`."""


@dataclass
class NodeContext:
    """What the runtime gives a node at `open`: where to run and how to report.

    `stream` is the CUDA stream the runtime owns for this node (None on CPU);
    `process` is already called inside it, so plain torch work lands there."""

    name: str
    device: torch.device
    dtype: torch.dtype
    fps: float
    resolution: tuple[int, int]
    stream: Any = None  # torch.cuda.Stream | None
    graph_file: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("muse"))
    stats: "NodeStats | None" = None
    clock: "torch.Tensor | None" = None  # this frame's source time in seconds, a float64 device scalar
    connected: frozenset[str] = frozenset()  # the input ports wired in the graph
    fan_in: dict[str, int] = field(default_factory=dict)  # input port -> how many sources are wired to it
    stand_ins: tuple[str, ...] = ()  # nodes with `standby_for: <this node>` (they start if it does not)
    wanted_outputs: frozenset[str] | None = None  # outputs anything reads (wired, tapped; kept current); None: unknown

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def report(self, key: str, value: Any) -> None:
        """Publish a live value (a switch's mode, an outage count) to stats and the editor."""
        if self.stats is not None:
            self.stats.info[key] = value

    def cupy_stream(self) -> Any:
        """This node's stream as a CuPy stream, for kernels on the same memory (DLPack)."""
        import cupy  # optional: only GPU nodes call this

        if self.stream is None:
            raise NodeError(f"node {self.name!r}: no CUDA stream on device {self.device}")
        return cupy.cuda.ExternalStream(self.stream.cuda_stream)


class Node:
    """Base class of every node. Subclasses declare:

    - `node_type`: namespaced id (`segment.modnet`, `acme.invert`)
    - `display_name`, `category`, `description`
    - ports as annotations `name: In[Type]` / `name: Out[Type]`
    - `Params`: a `NodeParams` subclass
    - flags: `capturable` (the runtime may record `process` once and replay it
      every frame: see "The capture contract" below), `lazy_inputs` (inputs
      come as thunks; only those called are computed),
      `on_demand` (a source whose frames cost CPU to make and that loses
      nothing by waiting: it is called only when its last frame was taken)

    The capture contract (`capturable = True`): after a few warm-up frames the
    runtime records the frame's GPU work once and replays it, so `process`
    runs on the host only while recording. Such a node therefore
    - allocates its state in `open` (or on the first frame of a new size) and
      updates it in place (`copy_`, `lerp_`, `out=`), never reassigning it;
    - reads nothing back to the host (`.item()`, `bool(t)`, `nonzero`,
      boolean-mask indexing), deciding on the device (`torch.where`) or from a
      `LateValue` it published a frame earlier;
    - makes every host choice (detector or tracker, face lost, first frame) in
      `frame_variant()`, whose result selects one recording per value;
    - reads time from `ctx.clock` (a device scalar), not from payload timestamps;
    - keeps params that change live in device tensors (`live_params`: no new recording), updated in `update_params`.
    Outputs are valid until the next frame: consumers that keep one copy it.
    """

    node_type: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    category: ClassVar[str] = ""
    description: ClassVar[str] = ""
    capturable: ClassVar[bool] = False
    cuda_graph_safe: ClassVar[bool] = False  # the old name of `capturable`, still read from plugins
    live_params: ClassVar[frozenset[str]] = frozenset()  # params kept in device tensors: a change needs no new recording
    lazy_inputs: ClassVar[bool] = False
    selects_inputs: ClassVar[bool] = False  # needed_inputs() follows this frame's frame_variant() (a switch)
    on_demand: ClassVar[bool] = False  # sources: make a frame only when the last one was taken (synthetic sources)

    Params: ClassVar[type[NodeParams]] = NodeParams

    inputs_spec: ClassVar[dict[str, PortSpec]] = {}
    outputs_spec: ClassVar[dict[str, PortSpec]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.inputs_spec, cls.outputs_spec = _collect_ports(cls)
        if cls.__dict__.get("cuda_graph_safe") and "capturable" not in cls.__dict__:
            cls.capturable = True
        if not cls.display_name and cls.node_type:
            cls.display_name = cls.node_type.split(".")[-1].replace("_", " ").title()
        if not cls.category and "." in cls.node_type:
            cls.category = cls.node_type.split(".")[0]

    # Typed params: each node declares `params: Params` (its own class), so `self.params.<field>` type-checks.
    params: NodeParams

    def __init__(self, name: str, params: NodeParams | None = None) -> None:
        # Constructors do no work: the registry and the editor build nodes freely.
        self.name = name
        self.params = params if params is not None else self.Params()
        self.ctx: NodeContext | None = None

    @property
    def context(self) -> NodeContext:
        """The context given at `open` (an error naming the node before that)."""
        if self.ctx is None:
            raise NodeError(f"node {self.name!r} ({self.node_type}) is not open")
        return self.ctx

    @property
    def logger(self) -> logging.Logger:
        """The node's logger once open (muse.node.<name>), else the framework's."""
        return self.ctx.logger if self.ctx is not None else logging.getLogger(f"muse.node.{self.name}")

    def report(self, key: str, value: Any) -> None:
        """Publish a live value to stats and the editor (nothing before `open`)."""
        if self.ctx is not None:
            self.ctx.report(key, value)

    # -- lifecycle -------------------------------------------------------
    def open(self, ctx: NodeContext) -> None:
        """Load models, allocate buffers. Called once before the first frame."""
        self.ctx = ctx

    def process(self, *args: Any, **inputs: Any) -> dict[str, Any] | None:
        """Compute outputs from inputs. Sources return None at end of stream."""
        raise NotImplementedError

    def close(self) -> None:
        """Release devices and files; sinks flush here so files stay playable."""

    def update_params(self, params: Any) -> bool:
        """Apply new (validated) params live; False: the node must be rebuilt instead."""
        self.params = params
        return True

    def frame_variant(self) -> Hashable:
        """The host choices for the coming frame (read from one-frame-late values), called once
        before each `process`. A recorded frame is replayed only while this stays the same."""
        return None

    @classmethod
    def stand_in(cls, params: Any) -> "tuple[type[Node], dict[str, Any]] | None":
        """A shorthand param (a camera's `fallback: demo`) asking for a stand-in: its class and params.
        The runtime adds it as a visible node that starts only if this one does not (muse.graph.stand_ins)."""
        return None

    def warming(self) -> str | None:  # what it still compiles in the background (it runs slower meanwhile)
        return None

    def capture_blocker(self) -> str | None:
        """Why this node, as configured, cannot be recorded (None: it can); shown by `muse bench`."""
        return None

    def fallback(self, **inputs: Any) -> dict[str, Any] | None:
        """What this node stands in with when it fails under `on_error: fallback` (e.g. the frame
        unwarped), from the same inputs `process` got. Not overridden: an input of each output's
        type is passed through instead (muse.graph.policy)."""
        return None

    def step_down(self) -> dict[str, Any] | None:
        """Out of GPU memory: the param changes to a lighter setting (a smaller working size, a
        smaller model), e.g. {"working_height": 216}; None when there is nothing lighter. The runtime
        applies them like a live edit (a captured frame is recorded again) and says what changed."""
        return None

    def needed_inputs(self) -> Iterable[str] | None:
        """Inputs to compute this frame (None = all connected): port names, or `port[i]` for one
        source of a `multiple` port (the others arrive as None). Only what some needed input
        consumes runs this frame, captured or not. A node whose answer depends on its host choice
        sets `selects_inputs`: its `frame_variant()` is then asked first. Nodes with
        `lazy_inputs` decide inside `process` instead."""
        return None

    def sources_absent(self, absent: dict[tuple[str, int], str]) -> None:
        """Called once every node has started, with the input sources (port, index) that will never
        have a value (a branch that is absent, failed to start or stands by) and why. A switch
        skips them; raise NodeError if the node cannot work without them."""

    def input_failed(self, port: str, index: int, error: BaseException) -> bool:
        """A needed source of `port` (its `index`-th) failed this frame. Return True to be asked
        `frame_variant()` and `needed_inputs()` again (a switch falls back to its next branch);
        False (the default) fails this node's frame too."""
        return False

    # -- class facts -----------------------------------------------------
    @classmethod
    def is_source(cls) -> bool:
        return not cls.inputs_spec

    @classmethod
    def is_sink(cls) -> bool:
        return not cls.outputs_spec

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Everything the CLI and the editor show about this node type."""
        return {
            "id": cls.node_type,
            "display_name": cls.display_name,
            "category": cls.category,
            "description": cls.description,
            "inputs": {n: _port_json(p) for n, p in cls.inputs_spec.items()},
            "outputs": {n: _port_json(p) for n, p in cls.outputs_spec.items()},
            "params": cls.Params.model_json_schema(),
            "flags": {"capturable": cls.capturable, "lazy_inputs": cls.lazy_inputs, "on_demand": cls.on_demand,
                      "selects_inputs": cls.selects_inputs},
        }


LazyInput = Callable[[], Any]


def _port_json(p: PortSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"type": p.type_name}
    if p.direction == "in":
        out["optional"] = p.optional
        out["multiple"] = p.multiple
    if p.same_as:
        out["same_as"] = p.same_as
    if p.description:
        out["description"] = p.description
    return out


def _collect_ports(cls: type) -> tuple[dict[str, PortSpec], dict[str, PortSpec]]:
    """Ports from the class's own annotations, on top of those inherited from its bases."""
    inputs: dict[str, PortSpec] = {}
    outputs: dict[str, PortSpec] = {}
    for base in reversed(cls.__mro__[1:]):
        inputs.update(getattr(base, "inputs_spec", {}) if isinstance(getattr(base, "inputs_spec", None), dict) else {})
        outputs.update(getattr(base, "outputs_spec", {}) if isinstance(getattr(base, "outputs_spec", None), dict) else {})
    module = sys.modules.get(cls.__module__)
    namespace = dict(vars(module)) if module else {}
    namespace.update({"In": In, "Out": Out})
    for name, raw in dict(cls.__dict__.get("__annotations__", {})).items():
        hint = raw
        if isinstance(raw, str):
            if "In[" not in raw and "Out[" not in raw and raw not in ("In", "Out"):
                continue  # not a port (ClassVar and friends)
            try:
                hint = eval(raw, namespace, dict(vars(cls)))  # noqa: S307 - the class's own annotation text
            except Exception as exc:  # a typo in a port annotation should name the class
                raise TypeError(f"node class {cls.__qualname__}: cannot read port {name!r} ({raw}): {exc}") from exc
        default = cls.__dict__.get(name)
        if isinstance(hint, _PortHint):
            decl = default if isinstance(default, hint.decl_cls) else hint.decl_cls()
            spec = decl.spec(name, hint.type)
        elif isinstance(default, _PortDecl):
            spec = default.spec(name, None)
        else:
            continue
        (inputs if spec.direction == "in" else outputs)[name] = spec
    for name, value in cls.__dict__.items():  # `x = In(Frame)` without an annotation
        if isinstance(value, _PortDecl) and name not in inputs and name not in outputs:
            spec = value.spec(name, None)
            (inputs if spec.direction == "in" else outputs)[name] = spec
    for name, spec in outputs.items():
        if spec.same_as and spec.same_as not in inputs:
            raise TypeError(f"node class {cls.__qualname__}: output {name!r} is same_as unknown input {spec.same_as!r}")
    return inputs, outputs
