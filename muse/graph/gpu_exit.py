"""MUSE's GPU caches let go before the interpreter exits.

Module-level caches hold CUDA tensors (device constants, sampling grids, decode tables), compiled CuPy
kernels and models. Left to the interpreter's final garbage collection, they are freed in no set order
after torch's and CuPy's own exit hooks have run. On the H200 every process that ran the GPU path ended
with a segmentation fault there (exit 139, faulthandler: "Garbage-collecting"), while the same run of a
pose node that emptied these caches before returning exited cleanly (bench/RESULTS.md, ninth session).
So an exit hook, registered when the GPU path starts (`muse.graph.streams.new_stream`), waits for the
device and empties them while everything they depend on is still alive.
"""

from __future__ import annotations

import atexit
import gc
import sys
from typing import Any, Callable

__all__ = ["release_at_exit", "release_gpu_caches"]

_registered = False


def release_at_exit() -> None:
    """Register `release_gpu_caches` to run at exit (once; later registrations run first, so it runs
    before torch's and CuPy's own exit hooks, which were registered when they were imported)."""
    global _registered
    if not _registered:
        _registered = True
        atexit.register(release_gpu_caches)


def _holds_gpu(value: Any) -> bool:
    """A CUDA tensor, a torch module, a CuPy object, or a tuple/list of those."""
    if isinstance(value, (tuple, list)):
        return any(_holds_gpu(v) for v in value[:4])
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(value, torch.Tensor):
            return value.is_cuda
        if isinstance(value, torch.nn.Module):
            return True
    return type(value).__module__.startswith("cupy")


def clear_module_caches(holds: Callable[[Any], bool] = _holds_gpu, prefix: str = "muse") -> int:
    """Empty every private module-level dict of the `prefix` package whose values `holds`, and drop
    private module attributes that do (a compiled CuPy module); returns how many were cleared."""
    cleared = 0
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == prefix or name.startswith(prefix + ".")):
            continue
        for attr, value in list(vars(mod).items()):
            if not attr.startswith("_") or attr.startswith("__"):
                continue
            if isinstance(value, dict):
                if any(holds(v) for v in list(value.values())[:8]):
                    value.clear()
                    cleared += 1
            elif not isinstance(value, type) and holds(value):
                setattr(mod, attr, None)
                cleared += 1
    return cleared


def release_gpu_caches() -> None:
    """Wait for the device, then empty MUSE's GPU caches and collect (see the module docstring)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    try:
        torch.cuda.synchronize()
    except Exception:  # a device error at exit: still let go of what can be let go of
        pass
    clear_module_caches()
    gc.collect()
