"""`capture.camera`: a webcam through OpenCV, grabbed in its own thread.

The graph always gets the newest frame. A camera that drops out is reopened
with backoff while the graph keeps the last frame and the outage is reported;
a camera missing at start is a clear error; `fallback: demo` asks the runtime
for a visible `capture.demo` stand-in node (`<name>/demo`, see
muse.graph.stand_ins) that takes the camera's place. MJPG/YUV cameras can hand raw bytes to the GPU (nvJPEG, YUV
kernels) instead of decoding 4K on the CPU.
"""

from __future__ import annotations

import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, NoReturn

import numpy as np
import torch
from pydantic import Field

from muse.graph.node import Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame
from muse.graph.transfer import Uploader
from muse.nodes.capture.jpeg import decode_jpeg, is_jpeg
from muse.nodes.capture.live import apply_live
from muse.nodes.capture.yuv import nv12_to_rgb, yuyv_to_rgb

Backend = Literal["auto", "dshow", "msmf", "v4l2", "avfoundation", "gstreamer", "ffmpeg"]

# A capture object is anything with cv2.VideoCapture's isOpened/read/set/get/release.
CaptureFactory = Callable[[int | str, int], Any]


def backend_id(name: str) -> int:
    import cv2

    return {
        "auto": cv2.CAP_ANY,
        "dshow": cv2.CAP_DSHOW,
        "msmf": cv2.CAP_MSMF,
        "v4l2": cv2.CAP_V4L2,
        "avfoundation": cv2.CAP_AVFOUNDATION,
        "gstreamer": cv2.CAP_GSTREAMER,
        "ffmpeg": cv2.CAP_FFMPEG,
    }[name]


def default_backend() -> str:
    """DirectShow on Windows (MSMF opens USB cameras slowly and caps MJPG rates); OpenCV's choice elsewhere."""
    return "dshow" if platform.system() == "Windows" else "auto"


V4L_ROOT = Path("/sys/class/video4linux")


def list_camera_names(root: Path = V4L_ROOT) -> list[str]:
    """'/dev/videoN: name' for each V4L2 device (Linux); empty elsewhere."""
    if not root.is_dir():
        return []
    out = []
    for dev in sorted(root.iterdir(), key=lambda p: p.name):
        try:
            out.append(f"/dev/{dev.name}: {(dev / 'name').read_text().strip()}")
        except OSError:
            continue
    return out


def find_camera_by_name(name: str, root: Path = V4L_ROOT) -> str | None:
    """The first /dev/videoN whose V4L2 name contains `name` (case-insensitive), or None."""
    want = name.lower()
    for entry in list_camera_names(root):
        path, _, label = entry.partition(": ")
        if want in label.lower():
            return path
    return None


def opencv_capture(device: int | str, api: int) -> Any:
    import cv2

    return cv2.VideoCapture(device, api)


def stale_picture(image: torch.Tensor) -> torch.Tensor:
    """A held (H, W, 3) uint8 frame dimmed to half, with a red bar along the top: the camera is not live."""
    out = image.div(2, rounding_mode="floor").to(torch.uint8)
    bar = max(4, image.shape[0] // 40)
    out[:bar] = torch.tensor((220, 30, 30), dtype=torch.uint8, device=image.device)
    return out


@dataclass
class _Grabbed:
    data: np.ndarray  # BGR (H, W, 3), or raw JPEG / YUYV / NV12 bytes
    kind: str  # "bgr" | "jpeg" | "yuyv" | "nv12"
    serial: int
    t: float


class Camera(Node):
    node_type = "capture.camera"
    display_name = "Camera"
    description = (
        "A webcam through OpenCV: backend, device, size, fps and fourcc; newest frame wins; "
        "reconnects on its own; `fallback: demo` when no camera is there."
    )

    frame: Out[Frame]

    class Params(NodeParams):
        device: str = Field("0", description="Camera index (0, 1, ...), a device path (/dev/video2), or part of its name ('Cam Link 4K'; `muse cameras` lists them)")
        backend: Backend = Field("auto", description="OpenCV backend; auto = dshow on Windows, OpenCV's choice elsewhere")
        width: int = Field(1920, ge=16, le=7680, description="Requested width; the camera may pick the nearest it supports")
        height: int = Field(1080, ge=16, le=4320, description="Requested height")
        fps: float = Field(30.0, ge=1, le=240, description="Requested frame rate")
        fourcc: str = Field("", max_length=4, description="Pixel format to ask for: MJPG (needed for 4K60 on USB), YUY2, NV12; empty = camera default")
        decode: Literal["auto", "cpu", "gpu"] = Field(
            "auto", description="Where MJPG/YUV frames are decoded: gpu = raw bytes to nvJPEG/GPU kernels; auto = gpu when the graph runs on CUDA"
        )
        fallback: Literal["none", "demo"] = Field(
            "none", description="demo = the runtime adds a capture.demo stand-in node (NAME/demo) that takes the camera's place when it is missing at start")
        demo_background: Literal["coffee", "chelsea", "rocket"] = Field("coffee", description="Background picture of the demo stand-in made by `fallback: demo` (tells several fallen-back cameras apart)")
        open_timeout_s: float = Field(5.0, ge=0.1, le=60, description="How long to wait for the first frame at start")
        stall_s: float = Field(1.0, ge=0.05, le=30, description="No frame for this long counts as an outage (the last frame is repeated)")
        retry_max_s: float = Field(5.0, ge=0.05, le=60, description="Longest wait between reconnect attempts")
        mark_stale: bool = Field(True, description="Show a held frame (camera stalled or reconnecting) dimmed, with a red bar on top, so a frozen camera is seen as one")

    params: Params

    def __init__(self, name: str, params: NodeParams | None = None, *, capture_factory: CaptureFactory | None = None) -> None:
        super().__init__(name, params)
        # Tests inject a fake capture here; real runs use cv2.VideoCapture.
        self._factory = capture_factory or opencv_capture
        self._thread: threading.Thread | None = None

    @classmethod
    def stand_in(cls, params: Any) -> tuple[type[Node], dict[str, Any]] | None:
        """`fallback: demo`: the demo source, at the camera's size and rate, as a visible stand-in node."""
        if getattr(params, "fallback", "none") != "demo":
            return None
        from muse.nodes.capture.demo import Demo

        return Demo, {"width": params.width, "height": params.height, "fps": params.fps, "background": params.demo_background}

    # -- helpers ---------------------------------------------------------
    def _device_arg(self) -> int | str:
        d = self.params.device.strip()
        if d.lstrip("-").isdigit():
            return int(d)
        if "/" in d or "\\" in d or "://" in d or "!" in d:  # a device path, a URL or a GStreamer pipeline
            return d
        from muse.nodes.capture.cameras import find_camera, list_cameras

        found = find_camera(d, self._backend_name())
        if found is None:
            here = ", ".join(f"{c.index}: {c.name}" for c in list_cameras(self._backend_name()))
            raise NodeError(f"node {self.name!r}: no camera named {d!r} (field `device`); "
                            f"cameras here: {here or 'none found'} (`muse cameras` lists them)")
        return int(found) if found.isdigit() else found

    def _backend_name(self) -> str:
        return default_backend() if self.params.backend == "auto" else self.params.backend

    def _where(self) -> str:
        return f"camera {self.params.device!r} (backend {self._backend_name()})"

    def _want_raw(self) -> bool:
        p = self.params
        fourcc = p.fourcc.upper()
        if fourcc not in ("MJPG", "YUY2", "YUYV", "NV12"):
            return False
        return p.decode == "gpu" or (p.decode == "auto" and self.ctx is not None and self.ctx.cuda)

    def _open_capture(self) -> Any:
        import cv2

        p = self.params
        cap = self._factory(self._device_arg(), backend_id(self._backend_name()))
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        # Order matters on DirectShow/V4L2: fourcc before size, size before fps.
        if p.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*p.fourcc.upper().ljust(4)))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, p.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, p.height)
        cap.set(cv2.CAP_PROP_FPS, p.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a queue of old ones
        if self._want_raw():
            # Ask for undecoded bytes; a backend that cannot keeps converting to BGR (the reported kind says which).
            if not cap.set(cv2.CAP_PROP_CONVERT_RGB, 0):
                cap.set(cv2.CAP_PROP_FORMAT, -1)
        return cap

    def _classify(self, data: np.ndarray) -> str:
        if data.ndim == 3 and data.shape[2] == 3:
            return "bgr"
        if is_jpeg(data):
            return "jpeg"
        if data.ndim == 3 and data.shape[2] == 2:
            return "yuyv"
        w, h = self._size
        if data.size == w * h * 3 // 2:
            return "nv12"
        if data.size == w * h * 2:
            return "yuyv"
        raise NodeError(f"node {self.name!r}: {self._where()} delivered a {data.shape} {data.dtype} buffer that is not BGR, JPEG, YUYV or NV12; set decode: cpu")

    # -- lifecycle -------------------------------------------------------
    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        import cv2

        p = self.params
        self._upload = Uploader(ctx.device)
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._latest: _Grabbed | None = None
        self._served = -1
        self._last_frame: Frame | None = None
        self._index = 0
        self._outages = 0
        self._reconnects = 0
        self._down_since: float | None = None
        self._held = 0
        self._t0 = time.perf_counter()

        cap = self._open_capture()
        first = None
        if cap is not None:
            deadline = time.perf_counter() + p.open_timeout_s
            while time.perf_counter() < deadline:
                ok, data = cap.read()
                if ok and data is not None:
                    first = data
                    break
                time.sleep(0.05)
        if first is None:
            if cap is not None:
                cap.release()
            self._fail_to_open()
        assert cap is not None

        self._cap = cap
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or p.width
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or p.height
        if first.ndim == 3 and first.shape[2] == 3:
            h, w = first.shape[:2]
        self._size = (w, h)
        got_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0)
        if (w, h) != (p.width, p.height):
            ctx.logger.warning("%s: asked for %dx%d, the camera gives %dx%d", self.name, p.width, p.height, w, h)
        kind = self._classify(first)
        ctx.report("camera", f"{self._where()} {w}x{h} @ {got_fps or p.fps:g} fps, {kind}")
        ctx.report("status", "ok")
        ctx.report("outages", 0)
        self._put(first, kind)
        self._thread = threading.Thread(target=self._grab_loop, name=f"muse-camera-{self.name}", daemon=True)
        self._thread.start()

    def _fail_to_open(self) -> NoReturn:
        p = self.params
        hint = {
            "Windows": "check Settings > Privacy > Camera, close apps using it (Zoom, Teams, OBS), or try backend: msmf",
            "Darwin": "allow camera access for your terminal in System Settings > Privacy & Security > Camera",
        }.get(platform.system(), "list cameras with `v4l2-ctl --list-devices`; check you are in the 'video' group")
        raise NodeError(
            f"node {self.name!r}: {self._where()} could not be opened or gave no frame within "
            f"{p.open_timeout_s:g} s (field `device`/`backend`). Try another index or backend; {hint}"
            + ("." if p.fallback == "demo" or (self.ctx is not None and self.ctx.stand_ins) else "; or set `fallback: demo` to run without a camera.")
        )

    def _put(self, data: np.ndarray, kind: str) -> None:
        with self._lock:
            serial = self._latest.serial + 1 if self._latest else 0
            self._latest = _Grabbed(data, kind, serial, time.perf_counter())
            self._lock.notify_all()

    def _grab_loop(self) -> None:
        """Read as fast as the camera delivers; on failure reopen with backoff. Never raises."""
        ctx = self.ctx
        assert ctx is not None
        cap = self._cap
        backoff = 0.1
        while not self._stop.is_set():
            ok, data = (False, None)
            if cap is not None:
                try:
                    ok, data = cap.read()
                except Exception as exc:  # a driver exception is an outage, not a crash
                    ctx.logger.warning("%s: read failed: %s", self.name, exc)
            if ok and data is not None:
                if self._down_since is not None:
                    ctx.logger.warning("%s: %s is back after %.1f s", self.name, self._where(), time.perf_counter() - self._down_since)
                    self._down_since = None
                    self._reconnects += 1
                    ctx.report("status", "ok")
                    ctx.report("reconnects", self._reconnects)
                backoff = 0.1
                try:
                    self._put(data, self._classify(data))
                except NodeError as exc:
                    ctx.logger.error("%s", exc)
                continue
            # The camera went away: hold the last frame (process does) and retry.
            if self._down_since is None:
                self._down_since = time.perf_counter()
                self._outages += 1
                ctx.logger.warning("%s: %s stopped delivering frames; reconnecting (holding the last frame)", self.name, self._where())
                ctx.report("status", "reconnecting")
                ctx.report("outages", self._outages)
            if cap is not None:
                try:
                    cap.release()
                except Exception:
                    pass
                cap = None
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.params.retry_max_s)
            try:
                cap = self._open_capture()
            except Exception as exc:
                ctx.logger.debug("%s: reopen failed: %s", self.name, exc)
                cap = None
            self._cap = cap
        if cap is not None:
            cap.release()

    def _to_frame(self, g: _Grabbed) -> torch.Tensor:
        import cv2

        dev = self.context.device
        if g.kind == "jpeg":
            # On CUDA: upload ~0.5 MB of bytes and decode with nvJPEG; on the CPU: libjpeg-turbo.
            return decode_jpeg(g.data, dev)
        if g.kind == "yuyv":
            w, h = self._size
            return yuyv_to_rgb(self._upload(g.data.reshape(h, w, 2)))
        if g.kind == "nv12":
            w, h = self._size
            return nv12_to_rgb(self._upload(g.data.reshape(-1)), w, h)
        return self._upload(cv2.cvtColor(g.data, cv2.COLOR_BGR2RGB))

    def process(self) -> dict[str, Frame] | None:
        p = self.params
        with self._lock:
            deadline = time.perf_counter() + p.stall_s
            while not self._stop.is_set():
                if self._latest is not None and self._latest.serial != self._served:
                    break
                if self._down_since is not None and self._last_frame is not None:
                    # Outage: keep the graph running on the last frame at the camera's rate.
                    self._lock.wait(1.0 / p.fps)
                    if self._latest is not None and self._latest.serial != self._served:
                        break
                    self._held += 1
                    self.report("held_frames", self._held)
                    return {"frame": self._repeat()}
                left = deadline - time.perf_counter()
                if left <= 0:
                    if self._last_frame is None:  # nothing to hold yet: keep waiting
                        deadline = time.perf_counter() + p.stall_s
                        continue
                    self._held += 1
                    self.report("held_frames", self._held)
                    self.report("status", "stalled")
                    return {"frame": self._repeat()}
                self._lock.wait(left)
            if self._stop.is_set():
                return None
            g = self._latest
            assert g is not None
            self._served = g.serial
        frame = Frame(self._to_frame(g), timestamp=g.t - self._t0, index=self._index)
        self._index += 1
        self._last_frame = frame
        return {"frame": frame}

    def _repeat(self) -> Frame:
        last = self._last_frame
        assert last is not None
        image = stale_picture(last.image) if self.params.mark_stale else last.image
        frame = Frame(image, timestamp=time.perf_counter() - self._t0, index=self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            with self._lock:
                self._lock.notify_all()
            self._thread.join(timeout=5)
            self._thread = None

    def update_params(self, params: Params) -> bool:
        # Device, size, fps and format need a reopen: the runtime rebuilds the node.
        return apply_live(self, params, {"stall_s", "retry_max_s", "open_timeout_s", "mark_stale"})
