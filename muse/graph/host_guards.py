"""What a recorded frame must not do on the host, caught where it happens: reading a tensor's value (`.item()`,
`bool(t)`, boolean-mask indexing: under a CUDA capture they fail, or freeze one frame's answer) and copying host
values in (`torch.tensor([...])`, `t[i] = number`: baked into the recording). Both guards are modes on torch's
mode stacks, entered for a recording by `muse.graph.capture`; compiled code comes out from under them
(`host_guards_suspended`)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops whose result the host must see: under a CUDA capture they fail (or, worse, freeze one frame's answer).
_HOST_READS = {
    aten._local_scalar_dense.default,  # .item(), float(t), int(t)
    aten.is_nonzero.default,  # bool(t), `if t:`
    aten.nonzero.default,
    aten.masked_select.default,
    aten.equal.default,
    aten.unique_dim.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
}


class CaptureError(RuntimeError):
    """Work that cannot be replayed: the message says which op and how to avoid it."""


def _host_read_error(func: Any) -> CaptureError:
    return CaptureError(
        f"{func} reads a device value back to the host inside a captured frame; "
        "decide on the device (torch.where, masked blends, clamped indices) or read it a frame late (LateValue)"
    )


def _is_bool_index(func: Any, args: tuple) -> bool:
    if func not in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default):
        return False
    indices = args[1] if len(args) > 1 else []
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or [])


class HostReadGuard(TorchDispatchMode):
    """Turns a host read inside a recording into a CaptureError that names the op (CUDA's own error
    does not); given `on_op`, also hands it every aten op with its arguments and result (the CPU emulation)."""

    def __init__(self, on_op: Callable[[Any, tuple, dict, Any], None] | None = None) -> None:
        super().__init__()
        self.on_op = on_op

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _HOST_READS or _is_bool_index(func, args):
            raise _host_read_error(func)
        out = func(*args, **kwargs)
        if self.on_op is not None:
            self.on_op(func, args, kwargs, out)
        return out


_HOST_METHODS = {"item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"}


def _scalar_index(index: Any) -> bool:
    """An index holding a 0-d tensor: Python indexing reads its value on the host."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dim() == 0 for i in items)


def _host_data(data: Any) -> bool:
    if isinstance(data, torch.Tensor):
        return False
    if isinstance(data, (list, tuple)):
        return any(_host_data(d) for d in data) or not data
    return isinstance(data, (int, float, bool))


class HostDataGuard(TorchFunctionMode):
    """What the dispatcher never sees: reading a tensor in Python (`t.item()`, `x[t0]` with a
    0-d `t0`, `t.numpy()`) and copying host lists in (`torch.tensor([...])`). On a GPU these
    stall the frame or fail under capture; the CPU emulation refuses them the same way."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in _HOST_METHODS:
            raise CaptureError(f"Tensor.{name} reads a tensor on the host inside a recorded frame; decide on the device or use a LateValue")
        if name == "__setitem__" and len(args) > 2 and not isinstance(args[2], torch.Tensor):
            raise CaptureError("`t[i] = number` inside a recorded frame copies a host scalar to the device; "
                               "build the tensor on the device (torch.stack, torch.where) or use fill_ on a view")
        if name == "__getitem__" and len(args) > 1 and _scalar_index(args[1]):
            raise CaptureError("indexing with a 0-d tensor reads it on the host inside a recorded frame; use index_select / gather")
        if func in (torch.tensor, torch.as_tensor) and args and _host_data(args[0]):
            raise CaptureError(
                "torch.tensor(host values) inside a recorded frame copies host memory to the device every frame; "
                "use muse.graph.capture.device_constant (made once), or compute it on the device"
            )
        return func(*args, **(kwargs or {}))


@contextmanager
def host_guards_suspended() -> Iterator[None]:
    """For a call of compiled (Inductor) code inside a recording. The recording's host guards are modes on torch's
    mode stacks, and compiled code is checked against those stacks: with them on, the call reads as another
    program ("Detected recompile", seen on the H200 for every compiled model and the matte at each recording).
    Compiled code reads nothing on the host by construction, so the guards come off the stacks for the call."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode, _pop_mode, _push_mode

    dispatch: list[Any] = []
    while isinstance(_get_current_dispatch_mode(), HostReadGuard):
        dispatch.append(_pop_mode())
    function: list[Any] = []
    while torch._C._len_torch_function_stack() > 0:
        top = torch._C._pop_torch_function_stack()
        if not isinstance(top, HostDataGuard):
            torch._C._push_on_torch_function_stack(top)
            break
        function.append(top)
    try:
        yield
    finally:
        for mode in reversed(function):
            torch._C._push_on_torch_function_stack(mode)
        for mode in reversed(dispatch):
            _push_mode(mode)
