"""Inference backends behind one call: `backend(x) -> y` for NCHW image models.

`backend: auto|torch|onnxruntime|tensorrt`. torch runs fp32 on CPU and fp16 +
channels_last + CUDA-graph replay on GPU; onnxruntime runs an exported ONNX file
(CPU or CUDA provider); tensorrt builds an fp16 engine from ONNX and caches it.
Only torch and numpy are imported at module level (onnx/onnxruntime/tensorrt lazily).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from contextlib import nullcontext
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Literal

import torch

from muse.graph.capture import CaptureError, is_recording
from muse.graph.host_guards import host_guards_suspended
from muse.graph.compiled import GPU_CODE, background_work, code_changed, compile_ended, compile_started
from muse.graph.devices import device_index
from muse.graph.streams import new_stream
from muse.models.compile_ahead import AheadJob, ahead_wanted, forget, marked, run_ahead
from muse.models.conv_engine import ConvMode, conv_flags, conv_mode, faster_engine, remember, remembered, replay_ms
from torch import nn

from muse.files import atomic_path, write_bytes

log = logging.getLogger("muse.backends")

BackendName = Literal["auto", "torch", "onnxruntime", "tensorrt"]
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
ONNX_OPSET = 17


class BackendError(RuntimeError):
    """A backend cannot be built or run; the message names the model file and what to do."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("MUSE_CACHE", Path.home() / ".cache" / "muse")) / "engines"


def _compiler_wanted(variable: str, on_needs_triton: bool, default: str = "auto") -> bool:
    """`variable` (default `default`): `off` never, `auto` when Triton is importable, `on` always (or, with
    `on_needs_triton`, also only then)."""
    mode = os.environ.get(variable, default).strip().lower()
    if mode in ("0", "off", "false", "no"):
        return False
    if mode in ("1", "on", "true", "yes") and not on_needs_triton:
        return True
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def compile_wanted() -> bool:
    """Whether CUDA models are compiled with torch.compile (Inductor): `MUSE_COMPILE=off` (default), `auto` when
    Triton is importable, `on` always. Off by default: on the H200 (2026-12-02) the 4K stream's models asked for
    six compiles one after another (every model, every input shape, 1-24 s each on a cold cache), each one
    recording the whole frame again once done, for ~1 ms of GPU time a frame on branches that run side by side."""
    return _compiler_wanted("MUSE_COMPILE", on_needs_triton=False, default="off")


# A compile in this process after the child (or its marker) only loads cached code: 0-6.4 s on the H200 (2026-12-03,
# cold compiles 61-102 s). Longer than this after a marker skipped the child means the cache did not hold it.
STALE_MARKER_S = 30.0


def fuse_wanted(device: torch.device | str) -> bool:
    """Whether a node's per-pixel chains run compiled by Inductor (issue 12: hundreds of small kernels become a
    few fused ones): `MUSE_FUSE=auto` (default) or `on`: on a CUDA device when Triton is importable; `off`: never.
    On by default since the twelfth session: the 4K stream 147.0 -> 168.8 fps on a cold compile cache and 185.8
    on a warm one (H200, 2026-12-03), the first compile running in a process of its own (`compile_ahead`) so the
    stream no longer stalls while it compiles (docs/models.md)."""
    return torch.device(device).type == "cuda" and _compiler_wanted("MUSE_FUSE", on_needs_triton=True, default="auto")


def warm_like(inputs: "list[torch.Tensor | None]", run: Callable[[Callable[..., Any], list], None]) -> Callable[[Callable[..., Any]], None]:
    """A `FusedChain` warm-up: `run(compiled, dummies)` on stand-ins shaped, strided and typed as `inputs` (None
    stays None), on the compiling thread's own stream and in the calling thread's grad and inference modes,
    which are per thread and part of what compiled code is checked against: the code compiled there must be
    the code the stream's calls find. Only shapes are kept here: this may be called inside a recorded frame,
    which must not gain the warm-up's work."""
    like = [None if t is None else (tuple(t.shape), t.stride(), t.dtype, t.device) for t in inputs]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    state = _global_state()
    device = next((m[3] for m in like if m is not None), torch.device("cpu"))

    def warm(compiled: Callable[..., Any]) -> None:
        side = compile_stream(device) if device.type == "cuda" else None
        with torch.cuda.stream(side) if side is not None else nullcontext(), \
                torch.inference_mode(inference), torch.set_grad_enabled(grad):
            _match_state(state)
            dummies = [None if m is None else torch.empty_strided(m[0], m[1], dtype=m[2], device=m[3]).fill_(0.5)
                       for m in like]
            run(compiled, dummies)
        if side is not None:
            side.synchronize()  # the compiling thread's own stream only

    return warm


def _global_state() -> Any:
    """torch's global state as compiled code checks it (grad mode, TF32, threads, default dtype...), or None."""
    try:
        from torch._C._dynamo.guards import GlobalStateGuard

        return GlobalStateGuard()
    except Exception:
        return None


def _match_state(state: Any) -> None:
    """Bring the compiling thread to the caller's torch state where that can differ between threads (the intra-op
    thread count can: OpenMP keeps one a thread; where torch keeps one for the process, it already matches and
    nothing is set); say what still differs, since the compiled code will not fit the caller's calls then."""
    if state is None or state.check():
        return
    try:
        want = json.loads(state.__getstate__())
        if torch.get_num_threads() != int(want["num_threads"]):
            torch.set_num_threads(int(want["num_threads"]))
    except Exception:
        pass
    if not state.check():
        log.warning("the compiling thread's torch state differs from the caller's (%s): its code may not be used",
                    state.reason())


_STREAMS: dict[int, "torch.cuda.Stream"] = {}


def compile_stream(device: torch.device) -> "torch.cuda.Stream":
    """The background compiles' own CUDA stream (one a device): a warm-up's, autotuning's or synchronize's work
    never lands on a stream a node runs or records its frames on (`muse.graph.streams.new_stream`)."""
    index = device_index(device)
    if index not in _STREAMS:
        _STREAMS[index] = new_stream(torch.device("cuda", index))
    return _STREAMS[index]


_NOT_YET = object()
RETRIES = 2  # compiles again for the stream's own calls when they did not fit the code compiled for their warm-up


class FusedChain:
    """A node's per-pixel maths `fn`, compiled by Inductor (static shapes, cached on disk in MUSE_CACHE/inductor)
    in a background thread, while the node goes on calling `fn` as is: a first start on a machine (a minute or
    more of compiling), a new frame size or an edited param never stalls the stream. `prepare(key, warm)` asks
    for code fitting `key` (the node's size and settings): the worker runs `warm(compiled)`, which calls the
    compiled function on the node's spare buffers; once done, `ready(key)` is True and the node may call
    `run(True, ...)`. A failure warns once and leaves `fn` uncompiled: a slower node, never a dead one."""

    def __init__(self, fn: Callable[..., Any], name: str, device: torch.device | str, enabled: bool | None = None) -> None:
        self.fn, self.name = fn, name
        self.enabled = fuse_wanted(device) if enabled is None else enabled
        self.compiled: Callable[..., Any] | None = None
        if self.enabled:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_cache_dir().parent / "inductor"))
            try:
                self.compiled = torch.compile(fn, dynamic=False)
            except Exception as exc:  # no Inductor on this build
                log.warning("compiling %s is not possible (%s: %s); it runs uncompiled", name, type(exc).__name__,
                            str(exc).splitlines()[0] if str(exc) else "")
        self._lock = threading.Lock()
        self._ready: Hashable = _NOT_YET  # the key the compiled code was warmed for
        self._wanted: tuple[Hashable, Callable[[Callable[..., Any]], None]] | None = None
        self._thread: threading.Thread | None = None
        self.seconds: float | None = None  # how long the last compile took
        self.last_compiled = False  # whether the last `run` went through the compiled code
        self.retries = 0  # compiles asked again because the stream's calls did not fit the code (RETRIES)
        self._stop = threading.Event()  # set by close(): a child compile under way is ended
        self._in_child = False  # a child process compiles now
        self._ahead_done: set[Hashable] = set()  # keys a child process compiled (or failed to): not again
        self._ahead_ok: set[Hashable] = set()  # those it compiled: the compile here loads them from the cache
        self._skipped: dict[Hashable, AheadJob] = {}  # keys whose child a marker skipped (checked after the compile)
        self.ahead_seconds: float | None = None  # how long the last child compile took

    def prepare(self, key: Hashable, make_warm: Callable[[], Callable[[Callable[..., Any]], None]],
                make_ahead: "Callable[[], AheadJob] | None" = None) -> None:
        """Compile for `key` in the background unless it is ready or already being compiled; `make_warm()`
        (called only then) gives the warm-up for that key. `make_ahead()`, where given, describes the same
        warm-up for a child process (`muse.models.compile_ahead`): it runs first and fills the compile cache, so
        the compile in this process only loads code and never holds Python's lock for long."""
        if self.compiled is None or key == self._ready:
            return
        with self._lock:
            if self._wanted is not None and self._wanted[0] == key:
                return
            job = make_ahead() if make_ahead is not None and ahead_wanted() and key not in self._ahead_done else None
            self._wanted = (key, make_warm(), job)
            background_work(id(self), self.name)
            if self._thread is None or not self._thread.is_alive():
                # not a daemon: the interpreter's exit waits for a compile under way (ending the process in the
                # middle of one aborts it: "terminate called without an active exception", exit status 134)
                self._thread = threading.Thread(target=self._work, name=f"fuse {self.name}", daemon=False)
                self._thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._wanted is None or self.compiled is None:
                    self._thread = None
                    background_work(id(self), None)
                    return
                key, warm, job = self._wanted
            if job is not None and key not in self._ahead_done:
                self._compile_ahead(key, job)
                continue  # asked for other code meanwhile, or closed: look again
            with GPU_CODE:  # one compile at a time, none while a CUDA graph records or the stream calls compiled code
                with self._lock:
                    if self._wanted is None or self._wanted[0] != key:
                        continue  # closed, or asked for other code, while waiting for the compiler
                t = time.perf_counter()
                if key in self._ahead_ok:
                    log.info("loading %s from the compile cache in the background; it runs uncompiled meanwhile",
                             self.name)
                else:
                    log.info("compiling %s for this device in the background (first start on a machine: a minute or "
                             "more; then cached); it runs uncompiled meanwhile", self.name)
                failed: Exception | None = None
                entry = compile_started(f"{self.name} {key!r}"[:160])
                try:
                    warm(self.compiled)
                except Exception as exc:
                    failed = exc
                compile_ended(entry, "done" if failed is None else f"failed: {type(failed).__name__}")
            if failed is not None:
                log.warning("compiling %s failed (%s: %s); it runs uncompiled", self.name, type(failed).__name__,
                            str(failed).splitlines()[0] if str(failed) else "")
                with self._lock:
                    self.compiled, self._wanted, self._thread = None, None, None
                background_work(id(self), None)
                return
            seconds = time.perf_counter() - t
            with self._lock:
                skipped = self._skipped.pop(key, None)
            if skipped is not None and seconds > STALE_MARKER_S:
                # The marker said the cache held this code, yet compiling here took as long as a cold compile
                # (the cache cleared in part, or moved): the next start compiles in a process of its own again.
                # Before the code is published as ready: whoever waits for it (`wait`) then finds the marker gone.
                forget(skipped)
                log.warning("%s: the compile cache did not hold the code compiled ahead before (compiling here took "
                            "%.0f s); the next start compiles it in a process of its own again", self.name, seconds)
            with self._lock:
                self._ready, self.seconds = key, seconds
                if self._wanted is not None and self._wanted[0] == key:
                    self._wanted = None
            code_changed()  # recorded frames hold the unfused kernels: the frame program records again
            log.info("%s runs compiled (compiled in %.1f s)", self.name, self.seconds)

    def _compile_ahead(self, key: Hashable, job: "AheadJob") -> None:
        """Run the warm-up for `key` in a child process (holding no lock: the stream keeps replaying its
        recorded frames); a failure only means the compile here starts from a cold cache."""
        skipped = marked(job)  # finished before: run_ahead starts no child
        if skipped:
            log.info("%s was compiled ahead on an earlier start (cached); loading it", self.name)
        else:
            log.info("compiling %s in a process of its own (first start on a machine: a minute or more; then "
                     "cached); it runs uncompiled meanwhile", self.name)
        entry = compile_started(f"{self.name} {key!r} ahead, in a process of its own"[:160])
        t = time.perf_counter()
        self._in_child = True
        try:
            why = run_ahead(job, stop=self._stop)
        finally:
            self._in_child = False
        self.ahead_seconds = time.perf_counter() - t
        compile_ended(entry, "done" if why is None else f"failed: {why}"[:200])
        if why is None and not skipped:
            log.info("%s compiled ahead in %.1f s; loading it", self.name, self.ahead_seconds)
        elif why is not None:
            log.warning("compiling %s in a process of its own failed (%s); compiling it in this one", self.name, why)
        with self._lock:
            self._ahead_done.add(key)
            if why is None:
                self._ahead_ok.add(key)
            if skipped and why is None:
                self._skipped[key] = job

    def ready(self, key: Hashable) -> bool:
        return self.compiled is not None and key == self._ready

    def close(self) -> None:
        """No further compiles; one under way finishes (the process's exit waits for it)."""
        self._stop.set()
        with self._lock:
            self._wanted = None
            running = self._thread is not None and self._thread.is_alive()
        background_work(id(self), None)
        if running and not self._in_child:  # a child compile ends at once (_stop)
            log.warning("%s: finishing the compile under way before exit (up to a minute)", self.name)

    def busy(self) -> bool:
        """Compiling now (or about to)."""
        return self.compiled is not None and self._wanted is not None

    def wait(self, timeout: float) -> bool:
        """Block until no compile is pending (tests and benchmarks); True if none is."""
        end = time.monotonic() + timeout
        while self.busy() and time.monotonic() < end:
            time.sleep(0.05)
        return not self.busy()

    def run(self, fused: bool, *args: Any) -> Any:
        """`fn(*args)`, through the compiled code when `fused` (ready for these inputs). The compiled code is
        entered under torch.compile's process-wide "fail_on_recompile" stance (compiling here, on the stream's
        thread, would stall it), which a compile starting on another thread meanwhile would also see: while one
        runs (it holds GPU_CODE) this call runs `fn` as is. Only eager and recording frames get here: a
        replayed frame calls no Python. Calls that do not fit the compiled code (torch state or inputs unlike the
        warm-up's) ask for a compile for them (up to RETRIES times), then stay uncompiled."""
        self.last_compiled = False
        if fused and self.compiled is not None and GPU_CODE.acquire(blocking=False):
            try:
                with torch.compiler.set_stance("fail_on_recompile"), host_guards_suspended():
                    out = self.compiled(*args)
                self.last_compiled = True
                return out
            except CaptureError:
                raise
            except Exception as exc:
                first = str(exc).splitlines()[0] if str(exc) else ""
                if "recompile" in first and self.retries < RETRIES:
                    self.retries += 1
                    log.info("%s: the stream's call does not fit its compiled code (%s); compiling again for it",
                             self.name, first)
                    compile_ended(compile_started(f"{self.name}: call did not fit"), f"asked again: {first[:120]}")
                    with self._lock:
                        self._ready = _NOT_YET  # the node's next prepare() asks again, warmed like this call
                else:
                    log.warning("compiled %s failed (%s: %s); it runs uncompiled", self.name, type(exc).__name__, first)
                    self.compiled = None
            finally:
                GPU_CODE.release()
        return self.fn(*args)


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:  # the registry's stub wheels raise at import when their libraries are missing
        return False
    return True


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_hash(model: nn.Module) -> str:
    """Hash of the architecture's parameter names/shapes and every weight byte (names cached exports)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class InferenceBackend:
    """One model, one call: `y = backend(x)` with x (B,3,H,W) on the graph's device.

    The output is a fresh tensor on the graph's device in the graph's dtype,
    safe to hand to other nodes (static buffers are never exposed)."""

    name: str = "base"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, example: torch.Tensor) -> None:
        """Warm up for this input shape (capture graphs, build engines) before the first frame."""
        self(example)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    def close(self) -> None:
        pass


# -- torch ------------------------------------------------------------------

class _CapturedGraph:
    def __init__(self, graph: "torch.cuda.CUDAGraph", static_in: torch.Tensor, static_out: torch.Tensor,
                 fused: bool = False) -> None:
        self.graph, self.static_in, self.static_out, self.fused = graph, static_in, static_out, fused


class TorchBackend(InferenceBackend):
    """Eager torch; on CUDA in fp16, channels_last, replayed from a CUDA graph per input shape."""

    name = "torch"
    MAX_GRAPHS = 4  # each captured shape pins its activations; a few is plenty for a live stream

    def __init__(
        self, model: nn.Module, device: torch.device | str, dtype: torch.dtype | None = None, *,
        cuda_graph: bool = True, channels_last: bool = True, tf32: bool = True, compile: bool | None = None,
        conv: ConvMode = "auto",
    ) -> None:
        self.tf32 = tf32  # False: exact fp32 convolutions for models that TF32 rounding throws off
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.dtype = dtype or (torch.float16 if self.cuda else torch.float32)
        self.channels_last = channels_last and self.cuda
        model = model.to(device=self.device, dtype=self.dtype).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)  # tensor cores want NHWC for convs
        self.model = model
        self.cuda_graph = cuda_graph and self.cuda
        self._graphs: dict[tuple[int, ...], _CapturedGraph] = {}
        self._graph_failed = False
        self._side = new_stream(self.device) if self.cuda_graph else None
        # Compiled by Inductor in the background (MUSE_COMPILE), per input shape; the model runs as it is until
        # that code is ready, then the next call (or recorded frame) switches to it. `compile=True` also on a CPU.
        wanted = compile if compile is not None else (self.cuda and compile_wanted())
        self._chain = FusedChain(self.model, f"model {type(model).__name__}", self.device, enabled=bool(wanted))
        # cuDNN's convolutions or torch's own (muse.models.conv_engine): chosen by timing both on the first call
        # outside a recorded frame, before anything is captured; a compiled model keeps cuDNN (Inductor's choice).
        mode = conv_mode(conv) if self.cuda else "cudnn"
        self._cudnn: bool | None = {"cudnn": True, "native": False}.get(mode)
        if self._cudnn is None and (not self.cuda_graph or bool(wanted)):
            self._cudnn = True
        self.conv_ms: dict[str, float] = {}  # what the choice measured (describe)
        self._wants_channels_last = self.channels_last
        if self._cudnn is False:
            self._set_layout(channels_last=False)

    def _set_layout(self, *, channels_last: bool) -> None:
        """Weights in NHWC (cuDNN's tensor-core kernels want it) or NCHW (torch's own depthwise kernels need it).
        Only before the first capture: a captured graph reads the weights where they were."""
        if channels_last != self.channels_last:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            self.model.to(memory_format=fmt)  # in place: the chain (and any caller) holds this same module
            self.channels_last = channels_last

    def _choose_conv(self, x: torch.Tensor) -> None:
        """Time the model replayed with cuDNN and with torch's own convolutions (NCHW) for this input; keep the
        faster for good (one answer a process for a model, shape and device: two runners of it agree)."""
        key = (type(self.model).__name__, sum(p.numel() for p in self.model.parameters()), tuple(x.shape),
               str(self.dtype), self._wants_channels_last, self.tf32, torch.cuda.get_device_name(self.device))
        cudnn = remembered(key)
        if cudnn is None:
            try:
                times = {}
                for engine in ("cudnn", "native"):
                    on = engine == "cudnn"
                    self._set_layout(channels_last=self._wants_channels_last and on)
                    xin = self._input(x)
                    with conv_flags(on, self.tf32):
                        times[engine] = replay_ms(lambda: self._record(lambda: self.model(xin))[0], self._side)
                cudnn = faster_engine(times["cudnn"], times["native"])
                self.conv_ms = {k: round(v, 4) for k, v in times.items()}
                log.info("%s %s: convolutions by %s (cuDNN %.3f ms, torch's own %.3f ms a call)", type(self.model).__name__,
                         tuple(x.shape), "cuDNN" if cudnn else "torch's own kernels", times["cudnn"], times["native"])
            except Exception as exc:  # a trial that cannot be captured: cuDNN, as before the choice existed
                log.info("convolution engine trial failed for %s (%s); using cuDNN", type(self.model).__name__, exc)
                cudnn = True
            remember(key, cudnn)
        self._set_layout(channels_last=self._wants_channels_last and cudnn)
        self._cudnn = cudnn

    def _record(self, run: Callable[[], Any]) -> tuple["torch.cuda.CUDAGraph", Any]:
        """`run()` warmed up three times, then captured once: (the graph, the output it writes). On the model's
        own stream, so no other thread's work lands in the capture; thread_local: other nodes' threads keep
        launching work on their own streams meanwhile. Once per shape (at open): torch.cuda.graph syncs the
        device there, not per frame."""
        side = self._side
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up lets cuDNN pick kernels outside the capture
                run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
            out = run()
        return graph, out

    @property
    def compiled(self) -> bool:
        """Whether compiled code is in use (for some input shape)."""
        return self._chain.compiled is not None and self._chain.seconds is not None

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.device, dtype=self.dtype)
        # One layout whatever the caller's crop or view: compiled code is checked against its inputs' strides.
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def _capture(self, x: torch.Tensor, fused: bool) -> _CapturedGraph | None:
        static_in = x.clone()
        try:
            graph, static_out = self._record(lambda: self._chain.run(fused, static_in))
            fused = self._chain.last_compiled  # a compile elsewhere may have kept it uncompiled: capture again later
        except Exception as exc:  # an op that cannot be captured: stay correct, run eagerly
            log.warning("CUDA graph capture failed for %s (%s); running eagerly", type(self.model).__name__, exc)
            self._graph_failed = True
            return None
        entry = _CapturedGraph(graph, static_in, static_out, fused)
        self._graphs[tuple(x.shape)] = entry
        return entry

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cuda:
            return self._run(x)
        if self._cudnn is None:
            if is_recording():  # first met inside a recorded frame: nothing may be timed there; cuDNN for good
                self._cudnn = True
            elif GPU_CODE.acquire(blocking=False):  # not while a compile runs or another thread records
                try:
                    with torch.no_grad():
                        self._choose_conv(x)
                finally:
                    GPU_CODE.release()
        # Kernels are chosen at capture time, so the flags only need to hold while this model launches
        # (undecided, as the weights are laid out now: cuDNN's).
        with conv_flags(self._cudnn is not False, self.tf32):
            return self._run(x)

    @torch.no_grad()  # not inference_mode: its tensors can't be updated in place by nodes outside it
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        shape = tuple(x.shape)
        # no-op without compiling, once ready or under way (the model's TF32 setting is read at run time only)
        self._chain.prepare(shape, lambda: warm_like([x], lambda compiled, xs: [compiled(xs[0]) for _ in range(2)]))
        fused = self._chain.ready(shape)
        if not self.cuda_graph or self._graph_failed or is_recording() or self._cudnn is None:
            # Inside a recorded frame the model's kernels become part of the frame's own graph; nothing is captured
            # before the convolution engine is chosen (a choice may lay the weights out anew).
            return self._chain.run(fused, x)
        entry = self._graphs.get(shape)
        if entry is None or entry.fused != fused:  # a first call of this shape, or compiled code became ready
            if entry is None and len(self._graphs) >= self.MAX_GRAPHS:
                return self._chain.run(fused, x)
            # Not while a compile runs or another thread records (GPU_CODE): the old graph, or eager, meanwhile.
            if GPU_CODE.acquire(blocking=False):
                try:
                    entry = self._capture(x, fused) or entry
                finally:
                    GPU_CODE.release()
            if entry is None:
                return self._chain.run(fused, x)
        entry.static_in.copy_(x)
        entry.graph.replay()
        # The next replay overwrites static_out while consumers may still read it.
        out = entry.static_out
        return tuple(t.clone() for t in out) if isinstance(out, (tuple, list)) else out.clone()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
            "cuda_graph": self.cuda_graph and not self._graph_failed, "graphs": len(self._graphs),
            "compiled": self.compiled,
            "conv": {True: "cudnn", False: "native", None: "undecided"}[self._cudnn],
            **({"conv_ms": self.conv_ms} if self.conv_ms else {}),
        }

    def close(self) -> None:
        self._graphs.clear()
        self._chain.close()


# -- ONNX export ------------------------------------------------------------

def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, *, opset: int = ONNX_OPSET) -> Path:
    """Export `model` at the example's fixed shape in fp32 on CPU; written atomically."""
    import warnings

    path = Path(path)
    cpu_model = _cpu_fp32_copy(model)
    x = example.detach().to("cpu", torch.float32)
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns it is legacy; it needs no onnxscript
        torch.onnx.export(
            cpu_model, (x,), str(tmp), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["output"], do_constant_folding=True,
        )
    return path


def _cpu_fp32_copy(model: nn.Module) -> nn.Module:
    import copy

    m = copy.deepcopy(model)
    return m.to("cpu", torch.float32).to(memory_format=torch.contiguous_format).eval()


def cached_onnx(model: nn.Module, example: torch.Tensor, cache_dir: Path, stem: str) -> Path:
    """The ONNX export of `model` at this input shape, reused while weights and shape are unchanged."""
    shape = "x".join(str(int(s)) for s in example.shape)
    path = Path(cache_dir) / f"{stem}-{model_hash(model)[:16]}-{shape}.onnx"
    if not path.is_file():
        export_onnx(model, example, path)
    return path


# -- ONNX Runtime -----------------------------------------------------------

def _ort_providers(device: torch.device) -> list[Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        opts = {"device_id": device.index or 0}
        if torch.cuda.is_available():
            # Run on the caller's stream, so the graph's stream ordering holds without a sync.
            opts["user_compute_stream"] = str(torch.cuda.current_stream(device).cuda_stream)
        return [("CUDAExecutionProvider", opts), "CPUExecutionProvider"]
    if device.type == "cuda":
        log.warning("onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu); running on CPU")
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend(InferenceBackend):
    """An ONNX file run by ONNX Runtime; CUDA tensors are bound in place (no host round trip)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, device: torch.device | str, dtype: torch.dtype | None = None,
                 *, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(onnx_path)
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        so = ort.SessionOptions()
        # Idle ORT workers spin by default and starve the torch work between model calls on the CPU path.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.intra_op_num_threads = threads or max(1, torch.get_num_threads())
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=_ort_providers(self.device))
        except Exception as exc:
            raise BackendError(f"onnxruntime cannot load {self.path}: {exc}. Re-export the model.") from exc
        self.on_cuda = self.session.get_providers()[0] == "CUDAExecutionProvider"
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_type = _ORT_TYPES.get(inp.type, torch.float32)
        self.output_names = [o.name for o in self.session.get_outputs()]
        out = self.session.get_outputs()[0]
        self._out_shape = tuple(out.shape) if all(isinstance(d, int) for d in out.shape) else None
        self._out_type = _ORT_TYPES.get(out.type, torch.float32)
        self._out_shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
        # The stream ORT was told to use (user_compute_stream), to order its work against the caller's.
        self._ort_stream = torch.cuda.current_stream(self.device) if self.on_cuda else None
        self._run_options = ort.RunOptions()
        if self.on_cuda:
            # The consumer waits on our stream like on any node's; no device-wide sync per frame.
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if is_recording():
            raise CaptureError("ONNX Runtime launches its own work, outside a recorded frame; use backend torch to capture it")
        x = x.to(self.input_type)
        if self.on_cuda:
            return self._run_cuda(x)
        out = self.session.run(self.output_names[:1], {self.input_name: x.detach().cpu().contiguous().numpy()}, self._run_options)[0]
        return torch.from_numpy(out).to(self.device, self.dtype)

    def _run_cuda(self, x: torch.Tensor) -> torch.Tensor:
        caller = torch.cuda.current_stream(self.device)
        ort_stream = self._ort_stream or caller
        x = x.to(self.device).contiguous()
        ort_stream.wait_stream(caller)  # ORT runs on the stream it was created with: order it after our input
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", self.device.index or 0, _NP_TYPES[x.dtype], tuple(x.shape), x.data_ptr())
        shape = self._out_shape or self._out_shapes.get(tuple(x.shape))
        if shape is not None:
            out = torch.empty(shape, device=self.device, dtype=self._out_type)
            binding.bind_output(self.output_names[0], "cuda", self.device.index or 0, _NP_TYPES[out.dtype], shape, out.data_ptr())
            self.session.run_with_iobinding(binding, self._run_options)
            caller.wait_stream(ort_stream)
            return out.to(self.dtype)
        # A dynamic output shape (e.g. the studio's batch axis): learn it on the first call, through the host once.
        binding.bind_output(self.output_names[0], "cuda", self.device.index or 0)
        self.session.run_with_iobinding(binding, self._run_options)
        self._out_shapes[tuple(x.shape)] = tuple(binding.get_outputs()[0].shape())
        return torch.from_numpy(binding.copy_outputs_to_cpu()[0]).to(self.device, self.dtype)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "providers": self.session.get_providers(), "model": str(self.path)}


_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}


def _np_types() -> dict[torch.dtype, Any]:
    import numpy as np

    return {torch.float32: np.float32, torch.float16: np.float16}


_NP_TYPES = _np_types()


# -- TensorRT ---------------------------------------------------------------

def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


class TensorRTBackend(InferenceBackend):
    """An fp16 TensorRT engine built from an ONNX file, cached by (ONNX hash, GPU name, TensorRT version).

    Written against the TensorRT 10 Python API (named I/O tensors, execute_async_v3).
    NOT RUN on our machines: tensorrt cannot be installed there (see docs/segmentation.md)."""

    name = "tensorrt"

    def __init__(self, onnx_path: str | os.PathLike, device: torch.device | str, dtype: torch.dtype | None = None,
                 *, cache_dir: str | os.PathLike | None = None, workspace_mb: int = 1024,
                 input_shape: tuple[int, ...] | None = None) -> None:
        import tensorrt as trt

        self.trt = trt
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise BackendError(f"TensorRT needs a CUDA device, got {self.device}; use backend: torch or onnxruntime")
        self.dtype = dtype or torch.float16
        self.onnx_path = Path(onnx_path)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.workspace_mb = workspace_mb
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape else None
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.key = {
            "onnx_sha256": file_sha256(self.onnx_path),
            "gpu": torch.cuda.get_device_name(self.device),
            "tensorrt": trt.__version__,
            "input_shape": list(self.input_shape) if self.input_shape else None,
        }
        shape = "-" + "x".join(map(str, self.input_shape)) if self.input_shape else ""
        self.engine_path = self.cache_dir / (
            f"{_safe(self.onnx_path.stem)}-{self.key['onnx_sha256'][:16]}{shape}-{_safe(self.key['gpu'])}"
            f"-trt{_safe(self.key['tensorrt'])}.engine"
        )
        self.engine = self._load_or_build()
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._torch_types = {
            trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
            trt.int8: torch.int8, trt.bool: torch.bool,
        }
        self._out_buffers: dict[tuple[int, ...], torch.Tensor] = {}
        self._extra_buffers: dict[str, torch.Tensor] = {}

    def _meta_path(self) -> Path:
        return self.engine_path.with_suffix(".json")

    def _load_or_build(self) -> Any:
        trt = self.trt
        runtime = trt.Runtime(self.logger)
        meta = self._meta_path()
        if self.engine_path.is_file() and meta.is_file():
            try:
                stored = json.loads(meta.read_text())
            except (OSError, ValueError):
                stored = {}
            if stored == self.key:
                engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
                if engine is not None:
                    return engine
                log.warning("cached TensorRT engine %s does not deserialize; rebuilding", self.engine_path)
            else:
                log.warning("cached TensorRT engine %s was built for %s, not %s; rebuilding", self.engine_path, stored, self.key)
        log.info("building TensorRT fp16 engine from %s (takes a minute, once)", self.onnx_path)
        serialized = self._build()
        write_bytes(self.engine_path, bytes(serialized))
        write_bytes(meta, json.dumps(self.key, indent=1).encode())
        engine = runtime.deserialize_cuda_engine(bytes(serialized))
        if engine is None:
            raise BackendError(f"TensorRT built an engine for {self.onnx_path} but cannot load it; use backend: torch")
        return engine

    def _build(self) -> Any:
        trt = self.trt
        builder = trt.Builder(self.logger)
        # Explicit batch is the only mode in TensorRT 10 (flag 0); TensorRT 8 needs it asked for.
        flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(self.onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT cannot parse {self.onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mb << 20)
        dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
        if dynamic:  # e.g. the studio's batch axis: build for the one shape a live stream uses
            profile = builder.create_optimization_profile()
            for inp in dynamic:
                dims = tuple(inp.shape)
                fixed = self.input_shape if self.input_shape and len(self.input_shape) == len(dims) else tuple(1 if d == -1 else d for d in dims)
                profile.set_shape(inp.name, fixed, fixed, fixed)
            config.add_optimization_profile(profile)
        if builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"TensorRT failed to build an engine for {self.onnx_path} (see the TensorRT log above)")
        return serialized

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        name = self.inputs[0]
        want = self._torch_types[self.engine.get_tensor_dtype(name)]
        x = x.to(device=self.device, dtype=want).contiguous()
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        out_name = self.outputs[0]
        shape = tuple(self.context.get_tensor_shape(out_name))
        out = self._out_buffers.get(shape)
        if out is None:
            out = torch.empty(shape, device=self.device, dtype=self._torch_types[self.engine.get_tensor_dtype(out_name)])
            self._out_buffers[shape] = out
        self.context.set_tensor_address(out_name, out.data_ptr())
        for extra in self.outputs[1:]:  # unused outputs still need memory
            s = tuple(self.context.get_tensor_shape(extra))
            buf = self._extra_buffers.get(extra)
            if buf is None or tuple(buf.shape) != s:
                kind = self._torch_types[self.engine.get_tensor_dtype(extra)]
                buf = self._extra_buffers[extra] = torch.empty(s, device=self.device, dtype=kind)
            self.context.set_tensor_address(extra, buf.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise BackendError(f"TensorRT execution failed for {self.onnx_path}")
        return out.to(self.dtype).clone()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "engine": str(self.engine_path), **self.key}


# -- choosing ----------------------------------------------------------------

def resolve_backend(backend: str, device: torch.device, *, has_torch_model: bool) -> str:
    """What `auto` means here: TensorRT on a GPU when it imports, else torch (or onnxruntime for ONNX-only models)."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda" and tensorrt_available():
            return "tensorrt"
        return "torch" if has_torch_model else "onnxruntime"
    if backend == "torch" and not has_torch_model:
        raise BackendError("backend: torch needs a torch model; this model is an ONNX file, use onnxruntime or tensorrt")
    if backend == "tensorrt" and not tensorrt_available():
        raise BackendError("backend: tensorrt but `import tensorrt` fails here; install the tensorrt extra "
                           "(pip install 'muse-engine[tensorrt]') or use backend: auto")
    return backend


def create_backend(
    *,
    backend: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    model: nn.Module | None = None,
    onnx_path: str | os.PathLike | None = None,
    example: torch.Tensor | None = None,
    cache_dir: str | os.PathLike | None = None,
    stem: str = "model",
    cuda_graph: bool = True,
) -> InferenceBackend:
    """Build the chosen backend for a torch `model` (exported to ONNX on demand) or an `onnx_path`.

    `example` fixes the input shape for export and warm-up; pass it when you know it."""
    device = torch.device(device)
    if model is None and onnx_path is None:
        raise BackendError("create_backend needs a model or an onnx_path")
    chosen = resolve_backend(backend, device, has_torch_model=model is not None)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if chosen == "torch":
        assert model is not None
        result: InferenceBackend = TorchBackend(model, device, dtype, cuda_graph=cuda_graph)
    else:
        if onnx_path is None:
            if example is None or model is None:
                raise BackendError(f"backend {chosen} exports the model to ONNX and needs the model and an example input shape")
            onnx_path = cached_onnx(model, example, cache, stem)
        if chosen == "onnxruntime":
            result = OnnxRuntimeBackend(onnx_path, device, dtype)
        else:
            result = TensorRTBackend(onnx_path, device, dtype, cache_dir=cache,
                                     input_shape=tuple(example.shape) if example is not None else None)
    if example is not None:
        result.prepare(example.to(device))
    return result

