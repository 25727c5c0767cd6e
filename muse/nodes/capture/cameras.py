"""The cameras on this machine: names, indices and modes, for `muse cameras`
and for picking a camera by name in a graph (`device: "Cam Link 4K"`).

Names come from `cv2-enumerate-cameras` (V4L2 on Linux, DirectShow/Media
Foundation on Windows, AVFoundation on macOS), or from V4L2's sysfs on Linux
when that package is missing. Modes (pixel format, size, frame rates) are read
from V4L2 directly on Linux; elsewhere `probe_modes` asks OpenCV for common sizes.
"""

from __future__ import annotations

import os
import platform
import struct
from dataclasses import dataclass, field
from typing import Any

from muse.nodes.capture.camera import backend_id, default_backend, list_camera_names


@dataclass
class Mode:
    fourcc: str
    width: int
    height: int
    fps: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        rates = ", ".join(f"{f:g}" for f in self.fps) if self.fps else "?"
        return f"{self.fourcc} {self.width}x{self.height} @ {rates} fps"


@dataclass
class CameraEntry:
    index: int  # the `device:` index for the backend below
    name: str
    path: str = ""  # /dev/videoN on Linux, a device path on Windows
    backend: str = "auto"
    usb_id: str = ""  # vendor:product
    modes: list[Mode] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "path": self.path, "backend": self.backend, "usb_id": self.usb_id,
                "modes": [{"fourcc": m.fourcc, "width": m.width, "height": m.height, "fps": m.fps} for m in self.modes]}


def _platform_backend() -> str:
    """The backend whose indices `capture.camera` uses by default here."""
    system = platform.system()
    return {"Windows": default_backend(), "Darwin": "avfoundation", "Linux": "v4l2"}.get(system, "auto")


def list_cameras(backend: str = "auto") -> list[CameraEntry]:
    """Every camera OpenCV can open with `backend` (auto = this platform's usual one), with names."""
    name = _platform_backend() if backend == "auto" else backend
    try:
        import cv2_enumerate_cameras as cams
    except ImportError:
        cams = None
    supported_backends = cams.supported_backends if cams is not None else ()
    found: list[CameraEntry] = []
    if cams is not None:
        api = backend_id(name)
        if api in supported_backends:
            for info in cams.enumerate_cameras(api):
                usb = f"{info.vid:04x}:{info.pid:04x}" if info.vid is not None and info.pid is not None else ""
                found.append(CameraEntry(index=int(info.index), name=str(info.name), path=str(info.path or ""), backend=name, usb_id=usb))
    if not found and platform.system() == "Linux":  # no package: V4L2's own names
        for entry in list_camera_names():
            path, _, label = entry.partition(": ")
            digits = path.rsplit("video", 1)[-1]
            found.append(CameraEntry(index=int(digits) if digits.isdigit() else -1, name=label, path=path, backend="v4l2"))
    return found


def find_camera(name: str, backend: str = "auto") -> str | None:
    """The device (a /dev/videoN path on Linux, else an index) of the first camera whose name
    contains `name` (case-insensitive), or None."""
    want = name.lower()
    for cam in list_cameras(backend):
        if want in cam.name.lower():
            return cam.path if cam.path.startswith("/dev/") else str(cam.index)
    return None


# -- V4L2 modes (Linux) ----------------------------------------------------------
def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord("V") << 8) | nr


_FMTDESC = struct.Struct("=III32sII3I")  # struct v4l2_fmtdesc (64 bytes)
_FRMSIZE = struct.Struct("=III6I2I")  # struct v4l2_frmsizeenum (44 bytes)
_FRMIVAL = struct.Struct("=IIIII6I2I")  # struct v4l2_frmivalenum (52 bytes)
VIDIOC_ENUM_FMT = _iowr(2, _FMTDESC.size)
VIDIOC_ENUM_FRAMESIZES = _iowr(74, _FRMSIZE.size)
VIDIOC_ENUM_FRAMEINTERVALS = _iowr(75, _FRMIVAL.size)
_CAPTURE = 1  # V4L2_BUF_TYPE_VIDEO_CAPTURE
_DISCRETE = 1


def _ioctl_all(fd: int, request: int, pack: Any, make: Any) -> list[tuple]:
    """Call an enumerating ioctl with index 0, 1, ... until the driver says no more."""
    import fcntl  # POSIX only: V4L2 is Linux

    out = []
    for index in range(256):
        buf = bytearray(pack.pack(*make(index)))
        try:
            fcntl.ioctl(fd, request, buf)
        except OSError:
            break
        out.append(pack.unpack(bytes(buf)))
    return out


def v4l2_modes(path: str) -> list[Mode]:
    """Pixel formats, sizes and frame rates a V4L2 camera offers (empty if it cannot be asked)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return []
    modes: list[Mode] = []
    try:
        for fmt in _ioctl_all(fd, VIDIOC_ENUM_FMT, _FMTDESC, lambda i: (i, _CAPTURE, 0, b"", 0, 0, 0, 0, 0)):
            pixfmt = fmt[4]
            fourcc = pixfmt.to_bytes(4, "little").decode("ascii", "replace").strip()
            for size in _ioctl_all(fd, VIDIOC_ENUM_FRAMESIZES, _FRMSIZE, lambda i: (i, pixfmt, 0, 0, 0, 0, 0, 0, 0, 0, 0)):
                if size[2] != _DISCRETE:  # stepwise/continuous: report the largest size
                    w, h = size[5], size[6]
                else:
                    w, h = size[3], size[4]
                rates = []
                for iv in _ioctl_all(fd, VIDIOC_ENUM_FRAMEINTERVALS, _FRMIVAL, lambda i: (i, pixfmt, w, h, 0, 0, 0, 0, 0, 0, 0, 0, 0)):
                    num, den = iv[5], iv[6]
                    if iv[4] == _DISCRETE and num:
                        rates.append(round(den / num, 2))
                modes.append(Mode(fourcc, w, h, sorted(set(rates), reverse=True)))
    finally:
        os.close(fd)
    return modes


COMMON_SIZES = [(3840, 2160), (2560, 1440), (1920, 1080), (1280, 720), (640, 480)]


def probe_modes(device: int | str, backend: str) -> list[Mode]:
    """Ask OpenCV for common sizes and keep those the camera accepts (any OS; opens the camera)."""
    import cv2

    cap = cv2.VideoCapture(device, backend_id(backend))
    if not cap.isOpened():
        return []
    modes: list[Mode] = []
    try:
        for w, h in COMMON_SIZES:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, w)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, h)
            gw, gh = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0)
            code = int(cap.get(cv2.CAP_PROP_FOURCC) or 0)
            fourcc = code.to_bytes(4, "little").decode("ascii", "replace").strip("\x00 ") if code else "?"
            if (gw, gh) == (w, h) and not any((m.width, m.height) == (w, h) for m in modes):
                modes.append(Mode(fourcc, w, h, [fps] if fps else []))
    finally:
        cap.release()
    return modes


def describe_cameras(backend: str = "auto", probe: bool = False) -> list[CameraEntry]:
    """`list_cameras` with each camera's modes filled in."""
    cams = list_cameras(backend)
    for cam in cams:
        if cam.path.startswith("/dev/video"):
            cam.modes = v4l2_modes(cam.path)
        if not cam.modes and probe:
            cam.modes = probe_modes(cam.index if cam.index >= 0 else cam.path, cam.backend)
    return cams
