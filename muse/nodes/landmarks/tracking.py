"""Shared pieces of the detect-then-track nodes: loading a bundled model (torch,
or ONNX Runtime on the CPU) with an actionable error, and a one-frame-late host
copy of the "still tracking" flag so the next frame can skip the detector
without a device sync.
"""

from __future__ import annotations

from typing import Callable

from typing import TYPE_CHECKING

import torch

from muse.graph.capture import LateValue

if TYPE_CHECKING:  # pragma: no cover
    from muse.graph.payloads import Frame


def resolve_backend(backend: str, device: torch.device) -> str:
    """`auto`: torch on a GPU (fp16, stays on the device); ONNX Runtime on the CPU,
    where it runs these small convnets 1.4-1.9x faster than the torch conversion
    at 1 thread (and far faster when torch's 2 threads fight for busy cores)."""
    if backend == "auto":
        if device.type == "cuda":
            return "torch"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "torch"
        return "onnxruntime"
    return backend


class OrtModel:
    """A bundled model's ONNX export run by ONNX Runtime on the CPU, with the
    torch module's contract: NCHW float tensor in, tuple of tensors out (TFLite order)."""

    def __init__(self, path: str, threads: int | None = None, drop_outputs: tuple[int, ...] = ()) -> None:
        from muse.nodes.cpu import ort_session

        # no spinning idle workers (they starve the torch ops between model calls: crops, decoding); PReLUs
        # rewritten for ORT's fast kernels (face mesh and iris: 3-4x faster); `drop_outputs` not computed at
        # all, calls give None in their places
        self.session = ort_session(path, threads or max(1, torch.get_num_threads()), drop_outputs)
        self.drop_outputs = tuple(sorted(drop_outputs))
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def eval(self) -> "OrtModel":
        return self

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from muse.graph.capture import CaptureError, is_recording

        if is_recording():
            raise CaptureError("ONNX Runtime runs on the host, outside a recorded frame; use backend torch to capture this node")
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.fixed_batch == 1 and arr.shape[0] > 1:  # exported with batch 1: run the crops one by one
            parts = [self.session.run(None, {self.input_name: arr[i : i + 1]}) for i in range(arr.shape[0])]
            return self._in_place(tuple(torch.cat([torch.from_numpy(p[k]) for p in parts]) for k in range(len(parts[0]))))
        return self._in_place(tuple(torch.from_numpy(o) for o in self.session.run(None, {self.input_name: arr})))

    def _in_place(self, outs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor | None, ...]:
        """The outputs at their indexes in the full model, None where one was dropped."""
        if not self.drop_outputs:
            return outs
        full: list[torch.Tensor | None] = list(outs)
        for i in self.drop_outputs:
            full.insert(i, None)
        return tuple(full)


def load_bundled(
    node: str, name: str, device: torch.device, dtype: torch.dtype, backend: str = "auto", *, exact_fp32: bool = False,
    drop_outputs: tuple[int, ...] = (),
) -> "torch.nn.Module | OrtModel | _Replayed":
    """A bundled MediaPipe model (muse.models.bundled) ready to call: the converted
    torch module in eval mode, or its ONNX export under ONNX Runtime (CPU only). `drop_outputs`:
    outputs the caller never reads, left out of the ONNX Runtime graph (None in their places);
    the torch module computes them all."""
    from muse.graph.node import NodeError  # here, not at the top: benchmarks use this module without pydantic

    chosen = resolve_backend(backend, device)
    if chosen == "onnxruntime":
        if device.type != "cpu":
            raise NodeError(f"node {node!r}: field 'backend': onnxruntime runs the bundled landmark models on the CPU only; use auto or torch on {device}")
        try:
            from muse.models.bundled import onnx_model_path

            from muse.nodes.cpu import cpu_threads

            # half the cores (two frames in flight on the CPU path), not torch's count when the node opens:
            # that is 2 on first start (before the CPU pipeline sets 1) and 1 after a reopen
            return OrtModel(str(onnx_model_path(name)), threads=cpu_threads(), drop_outputs=drop_outputs)
        except ImportError as exc:
            raise NodeError(f"node {node!r}: field 'backend': onnxruntime is not installed ({exc}); pip install onnxruntime or use backend: torch") from exc
        except FileNotFoundError as exc:
            raise NodeError(f"node {node!r}: bundled model {name!r} is not imported ({exc}); run `muse models import {name}`") from exc
    try:
        from muse.models.bundled import load_model
    except ImportError as exc:
        raise NodeError(f"node {node!r}: the bundled model layer is not available ({exc}); update MUSE") from exc
    try:
        model = load_model(name, device=device, dtype=dtype)
    except FileNotFoundError as exc:
        raise NodeError(f"node {node!r}: bundled model {name!r} is not imported ({exc}); run `muse models import {name}`") from exc
    if device.type == "cuda":
        # These small convnets are launch-bound on a GPU: replayed as CUDA graphs they run
        # 4-12x faster (H100: pose landmarks 4.6 -> 0.9 ms, iris 11.1 -> 0.9 ms, bench_bundled.py).
        from muse.models.backends import TorchBackend

        return _Replayed(TorchBackend(model.eval(), device, dtype, cuda_graph=True, channels_last=False, tf32=not exact_fp32))
    return model.eval()


class _Replayed:
    """A bundled model behind the CUDA-graph backend, with the module's call contract."""

    def __init__(self, backend: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]) -> None:
        self.backend = backend

    def eval(self) -> "_Replayed":
        return self

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.backend(x)


class HostFlag(LateValue):
    """A device bool the host reads one frame later (detector or tracker, still present), never stalling the device."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device, (1,), torch.bool)
        self._landed = False

    def is_set(self) -> bool:
        """The newest flag whose copy has landed (False before any); never waits for the device.

        Frames are pipelined: while the host plans frame N, frames N-1 and N-2 may both still be on the GPU, and
        waiting for N-1's copy would stop the host until the GPU drained, so the GPU idled while the host
        launched the next frame (measured on the H200: stream_4k capped at ~110 fps by this wait). When the
        newest copy has not landed, the one before stands: tracking is then decided two frames late, which
        the tracker tolerates (a lost ROI runs the tracker once more, masked on the device)."""
        if self.ready():
            self._landed = bool(self.view[0])  # one byte: a copy landing meanwhile gives the old or new value
        return self._landed

    def reset(self) -> None:
        super().reset()
        self._landed = False


class TrackerInput:
    """What `pose.blazepose` and `face.landmarks` share: the picture their tracker takes, and why
    they cannot be recorded on the CPU path. `_model` names the tracker's landmark model attribute."""

    _model = "landmarks"
    _uint8 = False  # set in open on the CPU path (issue 13): crops come from the uint8 frame

    def _picture(self, frame: "Frame") -> torch.Tensor:
        """The uint8 picture as is, as a (3, H, W) view, on the CPU path (cropped by OpenCV,
        muse/nodes/cpu/crop.py) and on CUDA (cropped by a CuPy kernel, crop_kernel.py); else (3, H, W) float."""
        if self._uint8:
            return frame.hwc_uint8().permute(2, 0, 1)
        if frame.image.is_cuda and frame.layout == "hwc" and frame.image.dtype == torch.uint8:
            from muse.nodes.landmarks.crop_kernel import usable

            view = frame.image.permute(2, 0, 1)
            if usable(view):
                return view
        return frame.chw(torch.float32)

    def capture_blocker(self) -> str | None:
        if self._uint8:
            return "the CPU path crops the uint8 frame with OpenCV, outside a recorded frame"
        if isinstance(getattr(getattr(self, "tracker", None), self._model, None), OrtModel):
            return "its models run on ONNX Runtime (the CPU path), outside a recorded frame"
        return None
