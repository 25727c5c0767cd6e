"""`muse cameras` and picking a camera by name: names from cv2-enumerate-cameras,
modes from V4L2's enumeration ioctls (a fake driver answers them here, since
the test machines have no camera), and the plain no-camera case."""

from __future__ import annotations

import fcntl
import json

import pytest

from muse.cli import main
from muse.nodes.capture import cameras as C


class FakeInfo:
    def __init__(self, index: int, name: str, path: str, vid: int | None, pid: int | None, backend: int) -> None:
        self.index, self.name, self.path, self.vid, self.pid, self.backend = index, name, path, vid, pid, backend


def _fourcc(s: str) -> int:
    return int.from_bytes(s.encode(), "little")


DRIVER = {  # what a USB capture card offers: fourcc -> {(w, h): [fps]}
    "MJPG": {(1920, 1080): [60, 30], (3840, 2160): [30]},
    "YUYV": {(640, 480): [30]},
}


def fake_ioctl(fd: int, request: int, buf: bytearray) -> int:
    """Answers VIDIOC_ENUM_FMT / FRAMESIZES / FRAMEINTERVALS like a V4L2 driver."""
    formats = list(DRIVER)
    if request == C.VIDIOC_ENUM_FMT:
        f = list(C._FMTDESC.unpack(bytes(buf)))
        if f[0] >= len(formats):
            raise OSError(22, "EINVAL")
        f[3], f[4] = formats[f[0]].encode(), _fourcc(formats[f[0]])
        buf[:] = C._FMTDESC.pack(*f)
    elif request == C.VIDIOC_ENUM_FRAMESIZES:
        f = list(C._FRMSIZE.unpack(bytes(buf)))
        sizes = list(DRIVER[f[1].to_bytes(4, "little").decode()])
        if f[0] >= len(sizes):
            raise OSError(22, "EINVAL")
        f[2], f[3], f[4] = 1, *sizes[f[0]]
        buf[:] = C._FRMSIZE.pack(*f)
    elif request == C.VIDIOC_ENUM_FRAMEINTERVALS:
        f = list(C._FRMIVAL.unpack(bytes(buf)))
        rates = DRIVER[f[1].to_bytes(4, "little").decode()][(f[2], f[3])]
        if f[0] >= len(rates):
            raise OSError(22, "EINVAL")
        f[4], f[5], f[6] = 1, 1, rates[f[0]]
        buf[:] = C._FRMIVAL.pack(*f)
    else:
        raise OSError(25, "ENOTTY")
    return 0


def test_ioctl_numbers_match_videodev2():
    assert (C.VIDIOC_ENUM_FMT, C.VIDIOC_ENUM_FRAMESIZES, C.VIDIOC_ENUM_FRAMEINTERVALS) == (0xC0405602, 0xC02C564A, 0xC034564B)
    assert (C._FMTDESC.size, C._FRMSIZE.size, C._FRMIVAL.size) == (64, 44, 52)


def test_v4l2_modes_from_the_driver(monkeypatch, tmp_path):
    dev = tmp_path / "video0"
    dev.write_bytes(b"")
    monkeypatch.setattr(fcntl, "ioctl", fake_ioctl)
    modes = C.v4l2_modes(str(dev))
    assert [str(m) for m in modes] == [
        "MJPG 1920x1080 @ 60, 30 fps", "MJPG 3840x2160 @ 30 fps", "YUYV 640x480 @ 30 fps",
    ]
    assert C.v4l2_modes(str(tmp_path / "missing")) == []


@pytest.fixture
def two_cameras(monkeypatch):
    import cv2_enumerate_cameras as enum

    fake = [FakeInfo(0, "Integrated Webcam", "/dev/video0", 0x0BDA, 0x58F4, 200),
            FakeInfo(2, "Cam Link 4K", "/dev/video2", 0x0FD9, 0x0066, 200)]  # fmt: skip
    monkeypatch.setattr(enum, "enumerate_cameras", lambda api=0: fake)
    monkeypatch.setattr(C.platform, "system", lambda: "Linux")
    return fake


def test_muse_cameras_lists_names_indices_and_modes(two_cameras, monkeypatch, capsys):
    monkeypatch.setattr(C, "v4l2_modes", lambda path: [C.Mode("MJPG", 3840, 2160, [30.0])] if path.endswith("2") else [])
    assert main(["cameras"]) == 0
    out = capsys.readouterr().out
    assert "0: Integrated Webcam  (/dev/video0, USB 0bda:58f4, backend v4l2)" in out
    assert "2: Cam Link 4K" in out and "MJPG 3840x2160 @ 30 fps" in out
    assert main(["cameras", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in data["cameras"]] == ["Integrated Webcam", "Cam Link 4K"]
    assert data["cameras"][1]["modes"][0] == {"fourcc": "MJPG", "width": 3840, "height": 2160, "fps": [30.0]}


def test_camera_node_finds_a_camera_by_name(two_cameras):
    from muse.nodes.capture.camera import Camera

    assert C.find_camera("cam link") == "/dev/video2"
    assert C.find_camera("elgato") is None
    node = Camera("cam", Camera.Params(device="Cam Link"))
    assert node._device_arg() == "/dev/video2"


def test_muse_cameras_without_cameras(monkeypatch, capsys):
    import cv2_enumerate_cameras as enum

    monkeypatch.setattr(enum, "enumerate_cameras", lambda api=0: [])
    monkeypatch.setattr(C, "list_camera_names", lambda: [])
    assert main(["cameras"]) == 0
    assert "no cameras found" in capsys.readouterr().out
