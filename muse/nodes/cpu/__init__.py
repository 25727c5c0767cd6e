"""CPU implementations of the shipped graphs' nodes (issue 13).

Each node keeps its ports and params; on a CPU device its `open` builds one of these
and its `process` hands the frame over. They work on numpy views of the payloads'
tensors (zero copy), with OpenCV and ONNX Runtime (both release the GIL, so stages on
different threads really overlap), uint8 wherever it is enough, at the lowest
resolution a step needs.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

__all__ = ["wanted", "unread", "retain_freed_memory", "machine_cores", "cpu_threads", "ort_session", "decode_lut", "encode_lut", "encode", "as_numpy",
           "shrunk_uint8"]


def wanted(ctx) -> bool:
    """Whether a node opened with `ctx` runs its CPU implementation: on a CPU device, unless
    MUSE_CPU_PATH=torch asks for the torch reference (parity tests, bisecting a difference) or the
    graph emulates frame capture (`capture: emulate` checks the GPU path's contract on the CPU:
    numpy reads the host, which a recorded frame refuses)."""
    if ctx.cuda or (ctx.settings or {}).get("capture") == "emulate":
        return False
    if os.environ.get("MUSE_CPU_PATH", "fast") == "torch":
        return False
    retain_freed_memory()
    return True


_RETAINED = False


def unread(ctx, port: str, any_device: bool = False) -> bool:
    """On a CPU device, whether nothing reads output `port` of the node opened with `ctx` (wired to no
    other node, served by no stand-in, not tapped by the editor's preview: `ctx.wanted_outputs`, kept
    current by the runtime). Such a node may leave the output out of its result to save the work, and
    must produce it again from the frame this turns False. On a GPU, and where unknown: False, unless
    `any_device` (a source, whose outputs no recorded frame depends on the shape of)."""
    wanted = getattr(ctx, "wanted_outputs", None)
    device = getattr(ctx, "device", None)
    return wanted is not None and port not in wanted and (any_device or getattr(device, "type", "cuda") == "cpu")


def retain_freed_memory() -> bool:
    """Let freed frame-sized buffers be reused instead of handed back to the OS (glibc only).

    Every CPU node makes full-resolution temporaries (numpy, OpenCV: 1-11 MB each). glibc serves
    those from fresh mmap'd pages and unmaps them on free, so each one costs a page fault per 4 KB
    when first written: 5,600 faults and half the CPU time of the fused matte's guided filter at 720p.
    Raising the mmap and trim thresholds keeps them in the heap for the next frame. The process keeps
    its peak memory (tens of MB on the CPU path). Process-wide, once; MUSE_CPU_MALLOC=0 leaves malloc alone."""
    global _RETAINED
    if _RETAINED or os.environ.get("MUSE_CPU_MALLOC", "1") == "0":
        return _RETAINED
    _RETAINED = True
    try:
        import ctypes
        import sys

        if not sys.platform.startswith("linux"):
            return False
        libc = ctypes.CDLL(None)
        mallopt = getattr(libc, "mallopt", None)
        if mallopt is None:  # not glibc (musl)
            return False
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1  # 32 MB: glibc's largest mmap threshold on 64-bit
        ok = mallopt(M_TRIM_THRESHOLD, 128 << 20) == 1 and ok
        return ok
    except OSError:
        return False


def machine_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_threads() -> int:
    """Threads one model or OpenCV call may use on the CPU path: half the cores, since two frames are
    in flight (muse/graph/cpu_pipeline.py) and each stage would otherwise wake workers the other
    stage's core is busy with. On two cores that is one thread a stage. MUSE_CPU_THREADS overrides."""
    raw = os.environ.get("MUSE_CPU_THREADS")
    if raw:
        return max(1, int(raw))
    return max(1, machine_cores() // 2)


def ort_session(path: str | os.PathLike, threads: int | None = None, drop_outputs: tuple[int, ...] = ()):  # -> onnxruntime.InferenceSession
    """An ONNX Runtime CPU session set up for a small machine: no spinning idle workers
    (they would steal the core the other pipeline stage needs), full graph optimisation, the graph
    rewritten for ORT's fast kernels and without `drop_outputs` (`onnx_graph.session_model`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or cpu_threads()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    from muse.nodes.cpu.onnx_graph import session_model

    return ort.InferenceSession(session_model(path, drop_outputs), sess_options=so, providers=["CPUExecutionProvider"])


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's numpy view (no copy when it is contiguous)."""
    return t.detach().contiguous().numpy()


_SHRUNK: list[tuple[tuple, torch.Tensor, torch.Tensor]] = []  # (key, source kept alive, result), newest last
_SHRUNK_LOCK = threading.Lock()


def shrunk_uint8(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, height, width) uint8 by torch's antialiased bilinear filter (the torch path's
    own), shared: the segmenter and the refine of one frame shrink it to the same model size (0.4-0.75 ms
    each at 720p), so the second asks for what the first made. Keyed on the tensor's memory, shape, strides
    and version counter (an in-place change makes a new key), with the source kept alive so its memory
    cannot be reused by another frame while it is in the cache (the last 4)."""
    key = (img.data_ptr(), tuple(img.shape), tuple(img.stride()), img._version, height, width)
    with _SHRUNK_LOCK:
        for k, _src, out in _SHRUNK:
            if k == key:
                return out
    out = torch.nn.functional.interpolate(img.permute(2, 0, 1).unsqueeze(0), size=(height, width), mode="bilinear",
                                          align_corners=False, antialias=True)[0]
    with _SHRUNK_LOCK:
        _SHRUNK.append((key, img, out))
        del _SHRUNK[:-4]
    return out


_DECODE: np.ndarray | None = None
_ENCODE: np.ndarray | None = None
ENCODE_STEPS = 65535  # linear light is quantised to 1/65535 before the table: < 0.1 sRGB level of error


def decode_lut() -> np.ndarray:
    """uint8 sRGB -> float32 linear light (IEC 61966-2-1), 256 entries (cv2.LUT / take)."""
    global _DECODE
    if _DECODE is None:
        v = np.arange(256, dtype=np.float64) / 255.0
        _DECODE = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)
    return _DECODE


def encode_lut() -> np.ndarray:
    """Linear light quantised to ENCODE_STEPS+1 levels -> uint8 sRGB, rounded to nearest."""
    global _ENCODE
    if _ENCODE is None:
        x = np.arange(ENCODE_STEPS + 1, dtype=np.float64) / ENCODE_STEPS
        v = np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1.0 / 2.4) - 0.055)
        _ENCODE = np.clip(np.rint(v * 255.0), 0, 255).astype(np.uint8)
    return _ENCODE


def encode(lin: np.ndarray) -> np.ndarray:
    """float linear light (any shape) -> uint8 sRGB through the table."""
    idx = np.clip(lin, 0.0, 1.0) * ENCODE_STEPS + 0.5
    return encode_lut()[idx.astype(np.int32)]
