"""Compile ahead in a process of its own: Inductor's first compile of a node's maths runs in a child process that
fills the on-disk compile cache, so the stream's process only loads the finished code.

Why: a first compile on a machine takes about a minute, most of it Python (tracing, lowering, code generation)
holding the interpreter's lock. Done on a thread of the streaming process it starved the executor: on the H200
(2026-12-02, cold cache) every node of the 4K stream stalled for 1-2 s at a time and the matte for up to 9.5 s.
In a child the parent's threads keep their lock; what is left in the parent is a compile that finds every graph
in the cache (about 5 s on the H200), and the stream keeps replaying its recorded frames meanwhile.

A job names a function inside `muse` ("module:function") and JSON arguments; nothing is pickled. The child runs
at a lower priority (nice 10) with half the cores for Inductor's compile workers, and shares `TORCHINDUCTOR_CACHE_DIR`
with the parent. `MUSE_FUSE_AHEAD=off` compiles in the streaming process as before.

A job that succeeded leaves a marker inside Inductor's cache directory, keyed on the job, torch's version, the GPU
and muse's own sources: the next start with the same key skips the child (which would only find its graphs in the
cache after some 20 s of tracing; H200, 2026-12-02) and compiles in-process from the cache at once. Clearing the
compile cache clears the markers with it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import torch

CHILD_ENV = "MUSE_AHEAD_CHILD"  # set in the child: it never compiles ahead again
DEFAULT_TIMEOUT_S = 1800.0  # a cold compile on a slow machine with the CPU busy; the stream runs unfused meanwhile


@dataclass(frozen=True)
class AheadJob:
    """What the child runs: `target` ("muse.<module>:<function>") called with `args` (JSON: plain values only)."""

    target: str
    args: dict[str, Any] = field(default_factory=dict)


def ahead_wanted() -> bool:
    """Whether first compiles run in a child process (`MUSE_FUSE_AHEAD`, default on; never inside that child)."""
    if os.environ.get(CHILD_ENV):
        return False
    return os.environ.get("MUSE_FUSE_AHEAD", "on").strip().lower() not in ("0", "off", "false", "no")


# Process-wide precision settings as (name, getter, setter). torch keeps a legacy form (allow_tf32, matmul precision)
# and a newer one (fp32_precision) of the same switches, and setting a legacy one also sets the newer one to an
# explicit value that the compile cache keys on ('ieee' instead of the default 'none'): so a setting is only set
# where it differs, and the newer ones come last.
_B = torch.backends


def _attr(obj: Any, name: str) -> tuple[Any, Any]:
    return (lambda: getattr(obj, name)), (lambda v: setattr(obj, name, v))


_FLAGS: list[tuple[str, Any, Any]] = [
    ("matmul_precision", torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
    ("matmul_tf32", *_attr(_B.cuda.matmul, "allow_tf32")),
    ("matmul_fp16_reduced", *_attr(_B.cuda.matmul, "allow_fp16_reduced_precision_reduction")),
    ("matmul_bf16_reduced", *_attr(_B.cuda.matmul, "allow_bf16_reduced_precision_reduction")),
    ("cudnn_tf32", *_attr(_B.cudnn, "allow_tf32")),
    ("cudnn_enabled", *_attr(_B.cudnn, "enabled")),
    ("deterministic", torch.are_deterministic_algorithms_enabled, torch.use_deterministic_algorithms),
    ("threads", torch.get_num_threads, torch.set_num_threads),
]
for _name, _obj in (("fp32", _B), ("matmul_fp32", _B.cuda.matmul), ("cudnn_fp32", _B.cudnn),
                    ("cudnn_conv_fp32", getattr(_B.cudnn, "conv", None))):
    if _obj is not None and hasattr(_obj, "fp32_precision"):  # torch >= 2.9
        _FLAGS.append((_name, *_attr(_obj, "fp32_precision")))


def torch_state() -> dict[str, Any]:
    """The calling thread's torch settings that compiled code is keyed and checked on (grad and inference mode,
    matmul precision, TF32 and reduced-precision flags, deterministic algorithms, intra-op threads): the child
    must compile under the same, or the parent's compile finds nothing in the cache."""
    state: dict[str, Any] = {"grad": torch.is_grad_enabled(), "inference": torch.is_inference_mode_enabled()}
    for name, get, _set in _FLAGS:
        value = get()
        state[name] = value if isinstance(value, (bool, int, str)) else str(value)
    return state


@contextmanager
def torch_state_applied(state: dict[str, Any]) -> Iterator[None]:
    """Run under `state` (from `torch_state`); process-wide flags are set for good (the child does nothing else)."""
    for name, get, put in _FLAGS:
        if name in state and get() != state[name]:
            put(state[name])
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode(bool(state.get("inference", False))))
        stack.enter_context(torch.set_grad_enabled(bool(state.get("grad", True))))
        yield


def tensor_spec(t: torch.Tensor | None) -> dict[str, Any] | None:
    """A tensor as the child rebuilds it for a warm-up: shape, strides, dtype, device (no data)."""
    if t is None:
        return None
    return {"shape": list(t.shape), "stride": list(t.stride()), "dtype": str(t.dtype).removeprefix("torch."),
            "device": str(t.device)}


def tensor_like(spec: dict[str, Any] | None, fill: float = 0.5) -> torch.Tensor | None:
    """A tensor shaped, strided and typed as `spec`, filled with `fill` (the warm-ups' stand-in inputs)."""
    if spec is None:
        return None
    dtype = getattr(torch, spec["dtype"])
    return torch.empty_strided(spec["shape"], spec["stride"], dtype=dtype, device=spec["device"]).fill_(fill)


@lru_cache(maxsize=1)
def _sources_digest() -> str:
    """muse's own Python sources (paths and bytes): a changed line of traced code is a new compile."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _device_names(args: dict[str, Any]) -> list[str]:
    """The GPUs the job's tensors live on, by name and compute capability (the compiled kernels are theirs)."""
    names = []
    if torch.cuda.is_available() and "cuda" in json.dumps(args):
        for i in range(torch.cuda.device_count()):
            names.append(f"{torch.cuda.get_device_name(i)} sm{''.join(map(str, torch.cuda.get_device_capability(i)))}")
    return names


def marker_path(job: AheadJob) -> Path | None:
    """Where a finished `job` is marked: inside Inductor's cache directory (None where torch does not say)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
        base = Path(cache_dir())
    except Exception:  # an older or newer torch without this helper: the child runs every start
        return None
    key = json.dumps({"target": job.target, "args": job.args, "torch": torch.__version__,
                      "python": sys.version.split()[0], "gpus": _device_names(job.args), "muse": _sources_digest()},
                     sort_keys=True, default=str)
    return base / "muse_ahead" / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".done")


def marked(job: AheadJob) -> bool:
    """Whether a marker says `job` finished before (the next `run_ahead` of it starts no child)."""
    path = marker_path(job)
    return path is not None and path.is_file()


def forget(job: AheadJob) -> None:
    """Remove `job`'s marker: its compile was not in the cache after all, so the next start runs the child again."""
    path = marker_path(job)
    if path is not None:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def _mark(path: Path | None, job: AheadJob) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"target": job.target, "args": job.args}, default=str), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # unmarked: the next start runs the child again, nothing worse


def run_ahead(job: AheadJob, timeout_s: float = DEFAULT_TIMEOUT_S, stop: threading.Event | None = None) -> str | None:
    """Run `job` in a child process and wait (the calling thread sleeps, holding no lock); None when it
    succeeded (or a marker says it did before, see the module docstring), else one line saying why (the caller
    then compiles in this process as before). Setting `stop` ends the child (the user quits: nothing waits for a
    minute of compiling)."""
    mark = marker_path(job)
    if mark is not None and mark.is_file():
        return None
    env = dict(os.environ)
    env[CHILD_ENV] = "1"
    # Half the cores for Inductor's compile workers: the stream and whatever else the machine runs keep the rest.
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    payload = json.dumps({"target": job.target, "args": job.args})
    start = time.monotonic()
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err:
        try:
            proc = subprocess.Popen([sys.executable, "-m", "muse.models.compile_ahead"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=err, env=env, text=True)
        except OSError as exc:
            return f"the compiling process could not start ({exc})"
        try:
            assert proc.stdin is not None
            proc.stdin.write(payload)
            proc.stdin.close()
        except OSError:
            pass  # it died at once: its status says why
        while True:
            try:
                code = proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                over = time.monotonic() - start > timeout_s
                if over or (stop is not None and stop.is_set()):
                    _end(proc)
                    return (f"the compiling process ran past {timeout_s:.0f} s and was stopped" if over
                            else "stopped (closing)")
        if code != 0:
            err.seek(0)
            lines = [ln for ln in err.read().splitlines() if ln.strip()]
            mine = [ln for ln in lines if ln.startswith("compile ahead:")]
            last = (mine or lines or [f"exit status {code}"])[-1]
            return f"the compiling process failed after {time.monotonic() - start:.0f} s: {last[:300]}"
    _mark(mark, job)
    return None


def _end(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _lower_priority() -> None:
    """Nice 10: the streaming process's threads come first (set by the child itself: a pre-exec hook is unsafe
    in a process with threads)."""
    if hasattr(os, "nice"):
        try:
            os.nice(10)
        except OSError:
            pass


def _resolve(target: str) -> Any:
    module, _, name = target.partition(":")
    if not (module == "muse" or module.startswith("muse.")) or not name:
        raise ValueError(f"compile ahead: target {target!r} is not a function inside muse ('muse.<module>:<function>')")
    return getattr(importlib.import_module(module), name)


def main() -> int:
    """The child: read one job (JSON) from standard input, run it, exit 0 or 1 with one line on stderr."""
    _lower_priority()
    try:
        job = json.loads(sys.stdin.read())
        fn = _resolve(str(job["target"]))
        fn(**dict(job.get("args") or {}))
    except Exception as exc:  # one line for the parent's log; the child's traceback is of no use to a user
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"compile ahead: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
