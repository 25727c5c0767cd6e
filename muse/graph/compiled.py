"""Code compiled in the background (Inductor, by `muse.models.backends.FusedChain`) as the frame program sees it:
a generation number that a finished compile bumps (recorded frames hold the kernels of before, so the program
records again), what is still compiling (`muse bench` waits for it), and the lock that keeps compiling and CUDA graph
recording apart."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")

_code_generation = 0

# Held by a background compile for its whole run and by whoever records a CUDA graph (a frame program, a model's
# graph). Compiling benchmarks kernels, allocates and synchronizes on the device; while another thread records,
# any of that can land in the recording or break it (seen on the H200: "operation not permitted when stream is
# capturing", a recorded segment failing with cuDNN "unable to find an engine", and the recording's memory pool
# growing until the GPU ran out). Re-entrant: compiled code called inside a recording takes it again.
GPU_CODE = threading.RLock()


def build_gpu_code(cache: dict[Any, T], key: Hashable, make: Callable[[], T], broken: list[str],
                   log: logging.Logger, unavailable: str, level: int = logging.INFO) -> T | None:
    """`cache[key]`, made by `make` (an NVRTC compile and a module load: CuPy kernels) when it can be now, else
    None and the caller's plain steps run this call: never inside a CUDA graph capture (loading a module there is
    not allowed), never while another thread records or a background compile runs (GPU_CODE taken: made on a
    later call, so the stream never waits for a minute-long compile). A failure goes into `broken` and is said
    once (`unavailable`, with `{exc}` for the error): no further try."""
    got = cache.get(key)
    if got is not None:
        return got
    if broken:
        return None
    import torch

    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    if capturing or not GPU_CODE.acquire(blocking=False):
        return None
    try:
        got = cache[key] = make()
    except Exception as exc:  # no CuPy, no NVRTC, a driver without the feature
        broken.append(str(exc))
        log.log(level, unavailable.format(exc=exc))
        return None
    finally:
        GPU_CODE.release()
    return got


def gpu_function(cache: dict[Any, Any], broken: list[str], log: logging.Logger, index: int, source: str, name: str,
                 unavailable: str, options: tuple[str, ...] = ("--std=c++14",)) -> Any:
    """The CuPy kernel `name` of CUDA `source` for device `index` (one per device in `cache`), made as
    `build_gpu_code` makes code; None where it cannot be now (the caller's torch steps run this call)."""

    def make() -> Any:
        import cupy

        with cupy.cuda.Device(index):
            return cupy.RawModule(code=source, options=options).get_function(name)

    return build_gpu_code(cache, index, make, broken, log, unavailable)


def code_changed() -> None:
    """Some node's or model's code changed under the same inputs (compiled code became ready in the background):
    frames recorded before hold the old kernels, so the frame program records again (a new variant)."""
    global _code_generation
    _code_generation += 1


def code_generation() -> int:
    return _code_generation


_background: dict[int, str] = {}  # id of whatever compiles -> what it is (a model, a node's maths)


def background_work(token: int, what: str | None) -> None:
    """Something compiles in the background (`what`), or stopped (None): `muse bench` waits for it."""
    if what is None:
        _background.pop(token, None)
    else:
        _background[token] = what


def background_pending() -> list[str]:
    return list(_background.values())


# Every background compile, as it happened (what, when it started and ended on time.monotonic(), how it ended):
# `muse bench` lists those that overlapped its measured frames, which run eagerly while one is under way.
_compiles: list[dict[str, Any]] = []
_compiles_lock = threading.Lock()
MAX_COMPILES_KEPT = 64


def compile_started(what: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"what": what, "start": time.monotonic(), "end": None, "outcome": "running"}
    with _compiles_lock:
        _compiles.append(entry)
        del _compiles[:-MAX_COMPILES_KEPT]
    return entry


def compile_ended(entry: dict[str, Any], outcome: str) -> None:
    entry["end"], entry["outcome"] = time.monotonic(), outcome


def compiles_since(t: float) -> list[dict[str, Any]]:
    """The compiles still running at monotonic time `t` or started after it, with seconds relative to `t`."""
    with _compiles_lock:
        seen = [dict(c) for c in _compiles if c["end"] is None or c["end"] >= t]
    for c in seen:
        c["start_s"] = round(c.pop("start") - t, 2)
        end = c.pop("end")
        c["end_s"] = None if end is None else round(end - t, 2)
    return seen
