"""Capture nodes on real pictures and real video: demo source, video files,
picture folders, camera (through an injected capture for failures), and the
YUV/JPEG conversions of the GPU fast path (run here on the CPU)."""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from muse.graph.node import NodeError
from muse.graph.testing import build_node, make_context, run_node_frames
from muse.nodes.capture import Camera, Demo, Images, VideoFile
from muse.nodes.capture.jpeg import decode_jpeg, is_jpeg
from muse.nodes.capture.yuv import nv12_to_rgb, rgb_to_nv12, yuyv_to_rgb


def pull(node_cls, params, n):
    """Open a source, take up to n frames, close it."""
    return [o for o in run_node_frames(node_cls, params, [{}] * n)]


# -- capture.demo ------------------------------------------------------------

def test_demo_is_deterministic_and_moves():
    a = pull(Demo, {"width": 320, "height": 180, "fps": 0}, 40)
    b = pull(Demo, {"width": 320, "height": 180, "fps": 0}, 40)
    assert a[0]["frame"].image.shape == (180, 320, 3) and a[0]["frame"].image.dtype == torch.uint8
    for i in (0, 17, 39):
        assert torch.equal(a[i]["frame"].image, b[i]["frame"].image)
    # The person moves: later frames differ from the first.
    moved = (a[39]["frame"].image.int() - a[0]["frame"].image.int()).abs().float().mean()
    assert moved > 3.0
    # `start` renders the same picture as reaching that frame by playing.
    c = pull(Demo, {"width": 320, "height": 180, "fps": 0, "start": 17}, 1)
    assert torch.equal(c[0]["frame"].image, a[17]["frame"].image)


def test_demo_mask_and_clean_plate_are_ground_truth():
    out = pull(Demo, {"width": 320, "height": 180, "fps": 0}, 1)[0]
    img, plate, alpha = out["frame"].image, out["clean_plate"].image, out["mask"].alpha
    assert alpha.shape == (180, 320) and 0.15 < float(alpha.mean()) < 0.6  # a person-sized region
    outside = alpha == 0
    assert torch.equal(img[outside], plate[outside])  # background pixels are the plate exactly
    inside = alpha > 0.99
    diff = (img[inside].int() - plate[inside].int()).abs().float().mean()
    assert diff > 20  # the astronaut is painted over the plate where the mask says
    empty = pull(Demo, {"width": 320, "height": 180, "fps": 0, "person": False}, 1)[0]
    assert torch.equal(empty["frame"].image, plate)
    assert float(empty["mask"].alpha.max()) == 0.0


def test_demo_stops_after_frames_and_paces():
    t0 = time.perf_counter()
    outs = pull(Demo, {"width": 64, "height": 48, "fps": 50, "frames": 6}, 8)
    elapsed = time.perf_counter() - t0
    assert [o is None for o in outs] == [False] * 6 + [True] * 2
    assert elapsed >= 5 / 50 * 0.9  # six frames at 50 fps span five intervals


def test_demo_4k_frame():
    node = build_node(Demo, {"width": 3840, "height": 2160, "fps": 0})
    node.open(make_context())
    out = node.process()
    assert out["frame"].size == (3840, 2160)
    node.close()


# -- YUV and JPEG helpers (the GPU fast path's code, on the CPU here) -----------

def _yuyv_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """YUYV made with OpenCV's own BT.601 limited-range conversion (4:4:4, then 2:1 chroma)."""
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # BT.601 limited, as cameras use
    h, w = rgb.shape[:2]
    y = yuv[:h]
    u = yuv[h : h + h // 4].reshape(h // 2, w // 2)
    v = yuv[h + h // 4 :].reshape(h // 2, w // 2)
    u = np.repeat(u, 2, axis=0)
    v = np.repeat(v, 2, axis=0)
    out = np.empty((h, w, 2), np.uint8)
    out[..., 0] = y
    out[:, 0::2, 1] = u
    out[:, 1::2, 1] = v
    return out


def test_yuyv_and_nv12_match_opencv(astronaut):
    rgb = np.ascontiguousarray(astronaut[:256, :320])
    yuyv = _yuyv_from_rgb(rgb)
    ours = yuyv_to_rgb(torch.from_numpy(yuyv)).numpy()
    ref = cv2.cvtColor(yuyv, cv2.COLOR_YUV2RGB_YUY2)
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 3
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    h, w = rgb.shape[:2]
    nv12 = np.concatenate([i420[:h].reshape(-1), np.stack([i420[h : h + h // 4].reshape(-1), i420[h + h // 4 :].reshape(-1)], 1).reshape(-1)])
    ours = nv12_to_rgb(torch.from_numpy(nv12), w, h).numpy()
    ref = cv2.cvtColor(nv12.reshape(h * 3 // 2, w), cv2.COLOR_YUV2RGB_NV12)
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 3


def test_rgb_to_nv12_round_trips_through_opencv(astronaut):
    rgb = np.ascontiguousarray(astronaut[:200, :300])
    nv12 = rgb_to_nv12(torch.from_numpy(rgb)).numpy()
    assert nv12.shape == (300, 300)
    back = cv2.cvtColor(nv12, cv2.COLOR_YUV2RGB_NV12)
    # 4:2:0 loses chroma detail; on average the picture survives.
    assert np.abs(back.astype(int) - rgb.astype(int)).mean() < 6


def test_decode_jpeg_matches_opencv(messi):
    ok, buf = cv2.imencode(".jpg", messi[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok and is_jpeg(buf)
    ours = decode_jpeg(buf.reshape(-1)).numpy()
    ref = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert ours.shape == messi.shape
    assert np.abs(ours.astype(int) - ref.astype(int)).mean() < 1.5


@pytest.mark.cuda
def test_decode_jpeg_and_yuv_on_gpu(messi):
    ok, buf = cv2.imencode(".jpg", messi[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    gpu = decode_jpeg(buf.reshape(-1), "cuda")
    assert gpu.is_cuda and gpu.shape == messi.shape
    cpu = decode_jpeg(buf.reshape(-1), "cpu")
    assert (gpu.cpu().int() - cpu.int()).abs().float().mean() < 1.5
    rgb = np.ascontiguousarray(messi[: messi.shape[0] // 4 * 4, : messi.shape[1] // 4 * 4])  # I420 packs chroma rows in pairs
    yuyv = torch.from_numpy(_yuyv_from_rgb(rgb))
    # Same kernel on both devices; fused multiply-adds may round a .5 the other way.
    assert int((yuyv_to_rgb(yuyv.cuda()).cpu().int() - yuyv_to_rgb(yuyv).int()).abs().max()) <= 1


# -- capture.file ----------------------------------------------------------------

def _write_video(path: Path, frames: list[np.ndarray], fps: int = 25, codec: str = "ffv1") -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height = frames[0].shape[1], frames[0].shape[0]
        s.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, astronaut):
    """20 frames of the astronaut sliding sideways, lossless, 25 fps."""
    small = cv2.resize(astronaut, (96, 96), interpolation=cv2.INTER_AREA)
    frames = [np.ascontiguousarray(np.roll(small, 4 * i, axis=1)) for i in range(20)]
    path = tmp_path_factory.mktemp("clip") / "clip.mkv"
    _write_video(path, frames)
    return path, frames


@pytest.fixture(scope="module")
def clip_frames_small(clip):
    return clip[1][:10]


def test_file_reads_every_frame_exactly(clip):
    path, frames = clip
    outs = pull(VideoFile, {"path": str(path), "realtime": False}, 25)
    got = [o["frame"] for o in outs if o is not None]
    assert len(got) == 20 and outs[20] is None
    for i in (0, 7, 19):
        assert np.array_equal(got[i].image.numpy(), frames[i])
    assert got[10].timestamp == pytest.approx(10 / 25)


def test_file_seek_loop_and_pacing(clip):
    path, frames = clip
    outs = pull(VideoFile, {"path": str(path), "realtime": False, "start": 0.4}, 3)
    assert np.array_equal(outs[0]["frame"].image.numpy(), frames[10])  # 0.4 s at 25 fps
    looped = pull(VideoFile, {"path": str(path), "realtime": False, "loop": True, "frames": 45}, 46)
    assert sum(o is not None for o in looped) == 45
    assert np.array_equal(looped[20]["frame"].image.numpy(), frames[0])
    ts = [o["frame"].timestamp for o in looped if o is not None]
    assert all(b > a for a, b in zip(ts, ts[1:]))  # timestamps keep rising across loops
    t0 = time.perf_counter()
    pull(VideoFile, {"path": str(path), "realtime": True, "frames": 6}, 6)
    assert time.perf_counter() - t0 >= 5 / 25 * 0.9


def test_file_reads_h264_sample_video():
    import media

    outs = pull(VideoFile, {"path": str(media.opencv_sample_path("vtest.avi")), "realtime": False, "frames": 5}, 5)
    assert outs[4]["frame"].size == (768, 576)
    assert float(outs[4]["frame"].image.float().std()) > 10  # a real street scene, not a blank


def test_file_missing_names_the_file(tmp_path):
    with pytest.raises(NodeError, match=r"nope\.mp4.*does not exist"):
        pull(VideoFile, {"path": str(tmp_path / "nope.mp4")}, 1)


# -- capture.images -------------------------------------------------------------

def test_images_in_natural_name_order(tmp_path, astronaut, messi):
    pics = {"shot1.png": astronaut, "shot10.png": messi, "shot2.jpg": astronaut[:, ::-1]}
    for name, rgb in pics.items():
        cv2.imwrite(str(tmp_path / name), np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 100])
    outs = pull(Images, {"path": str(tmp_path), "fps": 0}, 4)
    assert outs[3] is None
    assert np.array_equal(outs[0]["frame"].image.numpy(), astronaut)
    assert np.abs(outs[1]["frame"].image.numpy().astype(int) - astronaut[:, ::-1]).mean() < 3  # shot2 (jpeg) second
    assert outs[2]["frame"].size == (512, 512)  # messi resized to the first picture's size
    globbed = pull(Images, {"path": str(tmp_path / "*.png"), "fps": 0}, 3)
    assert sum(o is not None for o in globbed) == 2


def test_images_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(NodeError, match="no pictures found"):
        pull(Images, {"path": str(tmp_path)}, 1)


# -- capture.camera (no webcam here: a scripted capture object stands in) -----------

class ScriptedCapture:
    """Behaves like cv2.VideoCapture for a camera that can be unplugged and plugged back."""

    def __init__(self, rig: "CameraRig") -> None:
        self.rig = rig
        self.opened = rig.plugged.is_set()
        self.props: dict[int, float] = {}

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self.opened

    def set(self, prop: int, value: float) -> bool:
        if prop == cv2.CAP_PROP_CONVERT_RGB and (self.rig.jpeg or self.rig.yuyv):
            self.props[prop] = value
            return True
        self.props[prop] = value
        return prop in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FPS)

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FRAME_WIDTH: self.rig.w, cv2.CAP_PROP_FRAME_HEIGHT: self.rig.h, cv2.CAP_PROP_FPS: 100}.get(prop, 0)

    def read(self):
        if not self.opened or not self.rig.plugged.is_set():
            time.sleep(0.005)
            return False, None
        time.sleep(0.01)  # a 100 fps camera
        self.rig.reads += 1
        bgr = np.ascontiguousarray(np.roll(self.rig.picture, self.rig.reads, axis=1)[:, :, ::-1])
        if self.rig.jpeg and self.props.get(cv2.CAP_PROP_CONVERT_RGB) == 0:
            return True, cv2.imencode(".jpg", bgr)[1].reshape(1, -1)
        if self.rig.yuyv and self.props.get(cv2.CAP_PROP_CONVERT_RGB) == 0:
            return True, _yuyv_from_rgb(np.ascontiguousarray(bgr[:, :, ::-1]))  # V4L2 hands YUYV as (H, W, 2)
        return True, bgr

    def release(self) -> None:
        self.opened = False


class CameraRig:
    def __init__(self, picture: np.ndarray, jpeg: bool = False, yuyv: bool = False) -> None:
        self.picture = picture
        self.h, self.w = picture.shape[:2]
        self.plugged = threading.Event()
        self.plugged.set()
        self.opens = 0
        self.reads = 0
        self.jpeg = jpeg
        self.yuyv = yuyv

    def factory(self, device, api):
        self.opens += 1
        return ScriptedCapture(self)


def _camera(rig: CameraRig, **params) -> Camera:
    base = {"width": rig.w, "height": rig.h, "fps": 100, "stall_s": 0.2, "retry_max_s": 0.1}
    base.update(params)
    return Camera("cam", Camera.Params(**base), capture_factory=rig.factory)


def test_camera_survives_unplug_and_resumes(astronaut):
    rig = CameraRig(cv2.resize(astronaut, (64, 48)))
    node = _camera(rig)
    ctx = make_context("cam")
    node.open(ctx)
    try:
        first = [node.process()["frame"] for _ in range(5)]
        assert first[-1].size == (64, 48)
        # Each frame is one the camera delivered (the picture rolled by its read count), as RGB.
        assert any(np.array_equal(first[0].image.numpy(), np.roll(rig.picture, k, axis=1)) for k in range(1, rig.reads + 1))
        rig.plugged.clear()  # unplugged: process keeps returning the last frame, never raises
        held = [node.process()["frame"] for _ in range(8)]
        assert all(torch.equal(h.image, held[-1].image) for h in held[-3:])
        assert ctx.stats.info["outages"] == 1 and ctx.stats.info["status"] == "reconnecting"
        assert ctx.stats.info["held_frames"] >= 3
        rig.plugged.set()  # plugged back: fresh frames flow again without a restart
        deadline = time.time() + 3
        while ctx.stats.info.get("status") != "ok" and time.time() < deadline:
            node.process()
        fresh = [node.process()["frame"] for _ in range(3)]
        assert ctx.stats.info["status"] == "ok" and ctx.stats.info["reconnects"] == 1
        assert not torch.equal(fresh[-1].image, held[-1].image)
        assert rig.opens >= 2  # it reopened the device
        assert [f.index for f in fresh] == sorted(f.index for f in fresh)
    finally:
        node.close()


def test_camera_missing_is_a_clear_error(astronaut):
    rig = CameraRig(astronaut)
    rig.plugged.clear()
    node = _camera(rig, device="3", backend="v4l2", open_timeout_s=0.2)
    with pytest.raises(NodeError, match=r"camera '3' \(backend v4l2\).*fallback: demo"):
        node.open(make_context("cam"))


def test_camera_missing_falls_back_to_a_visible_demo_stand_in(caplog):
    """`fallback: demo`: no hidden child; the runtime starts a `camera/demo` node in the camera's place."""
    from muse.graph.runtime import GraphRunner
    from muse.graph.validate import validate_text

    text = ("version: 1\nsettings: {device: cpu}\nnodes:\n"
            "  camera: {type: capture.camera, params: {device: /nonexistent/video7, width: 160, height: 90, fps: 100,"
            " fallback: demo, open_timeout_s: 0.1}}\n"
            "  inv: {type: basic.invert, inputs: {frame: camera.frame}}\n"
            "  sink: {type: output.null, inputs: {frame: inv.out}}\n")
    runner = GraphRunner(validate_text(text, "cam.yaml"), frames=5)
    with caplog.at_level("WARNING", logger="muse"):
        stats = runner.run()
    assert "FALLING BACK to camera/demo" in caplog.text
    assert stats.nodes["camera"].info["fallback"] == "camera/demo" and stats.nodes["camera"].frames == 0
    assert stats.nodes["camera/demo"].frames >= 5 and stats.frames_out == 5
    assert stats.nodes["inv"].frames == 5, "the camera's consumers read the stand-in in its place"
    assert runner.graph.nodes["camera/demo"].params.width == 160


def test_camera_raw_jpeg_path_decodes(astronaut):
    rig = CameraRig(cv2.resize(astronaut, (128, 96)), jpeg=True)
    node = _camera(rig, fourcc="MJPG", decode="gpu")  # raw bytes path; decodes on the CPU here
    ctx = make_context("cam")
    node.open(ctx)
    try:
        assert "jpeg" in ctx.stats.info["camera"]
        f = node.process()["frame"]
        assert f.size == (128, 96)
        shifted = [np.roll(rig.picture, k, axis=1) for k in range(1, rig.reads + 2)]
        assert min(np.abs(f.image.numpy().astype(int) - s).mean() for s in shifted) < 4
    finally:
        node.close()


@pytest.mark.cuda
def test_demo_on_gpu_matches_cpu():
    params = {"width": 640, "height": 360, "fps": 0, "start": 20}
    cpu = pull(Demo, params, 1)[0]
    gpu = run_node_frames(Demo, params, [{}], device="cuda")[0]
    assert gpu["frame"].image.is_cuda
    diff = (gpu["frame"].image.cpu().int() - cpu["frame"].image.int()).abs()
    assert diff.float().mean() < 1.0 and int(diff.max()) <= 3  # fp16 blend vs OpenCV's
    assert torch.allclose(gpu["mask"].alpha.float().cpu(), cpu["mask"].alpha.float(), atol=5e-3)  # fp16 on the GPU


@pytest.mark.cuda
@pytest.mark.parametrize("start", [0, 45, 135])  # centred, cut by the right edge, cut by the left edge (motion 2)
def test_demo_kernel_renders_what_the_torch_ops_render(start):
    """The one-pass CUDA render (demo_kernel.py) against the torch ops it replaces, her square whole or cut by
    the frame's edges: within one level (float32 lerp vs fp16), the alpha exactly where she is not."""
    params = {"width": 640, "height": 360, "fps": 30, "start": start, "motion": 2.0}
    node = build_node(Demo, params)
    node.open(make_context("demo", "cuda"))
    try:
        assert node._kernel is not None
        x0, _ = node.placement(start)
        assert (start == 0) == (0 <= x0 <= 640 - node._side)  # the cut cases really cut her square
        fast, fast_mask = node.render(start)
        node_kernel, node._kernel = node._kernel, None
        slow, slow_mask = node.render(start)
        node._kernel = node_kernel
        diff = (fast.int() - slow.int()).abs()
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.05
        assert torch.allclose(fast_mask.float(), slow_mask.float(), atol=1e-3)
        assert torch.equal(fast[slow_mask == 0], node._plate[slow_mask == 0])
        no_mask, none = node.render(start, with_mask=False)
        assert none is None and torch.equal(no_mask, fast)
    finally:
        node.close()


def test_camera_raw_yuyv_path_converts(astronaut):
    rig = CameraRig(cv2.resize(astronaut, (128, 96)), yuyv=True)
    node = _camera(rig, fourcc="YUY2", decode="gpu")  # the YUYV kernel, here on the CPU
    ctx = make_context("cam")
    node.open(ctx)
    try:
        assert "yuyv" in ctx.stats.info["camera"]
        f = node.process()["frame"]
        shifted = [np.roll(rig.picture, k, axis=1) for k in range(1, rig.reads + 2)]
        assert min(np.abs(f.image.numpy().astype(int) - s).mean() for s in shifted) < 4
    finally:
        node.close()


def test_live_param_changes_take_safe_fields_only(astronaut):
    rig = CameraRig(cv2.resize(astronaut, (64, 48)))
    node = _camera(rig)
    node.open(make_context("cam"))
    try:
        assert node.update_params(node.Params(**{**node.params.model_dump(), "stall_s": 0.5}))
        assert node.params.stall_s == 0.5
        assert not node.update_params(node.Params(**{**node.params.model_dump(), "width": 1280}))
        assert node.params.width == 64  # unchanged: the runtime rebuilds the node instead
    finally:
        node.close()


def test_file_reads_a_network_stream(clip_frames_small):
    """capture.file takes URLs: here an MPEG-TS stream over TCP sent by output.stream."""
    import socket

    from muse.graph.payloads import Frame
    from muse.nodes.output import StreamOutput

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got: list = []

    def receive():
        try:
            got.extend(pull(VideoFile, {"path": f"tcp://127.0.0.1:{port}?listen=1", "timeout_s": 10}, 20))
        except Exception as exc:  # surfaced below
            got.append(exc)

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    time.sleep(0.5)
    frames = [{"frame": Frame(torch.from_numpy(f))} for f in clip_frames_small]
    run_node_frames(StreamOutput, {"url": f"tcp://127.0.0.1:{port}", "fps": 25}, frames)
    t.join(timeout=20)
    assert not [g for g in got if isinstance(g, Exception)], got
    received = [g["frame"] for g in got if g is not None]
    assert len(received) == len(clip_frames_small)
    assert np.abs(received[-1].image.numpy().astype(int) - clip_frames_small[-1]).mean() < 10


def test_camera_found_by_name_in_sysfs(tmp_path):
    from muse.nodes.capture.camera import find_camera_by_name, list_camera_names

    for n, label in ((0, "Integrated Webcam"), (2, "Cam Link 4K: Cam Link 4K")):
        (tmp_path / f"video{n}").mkdir()
        (tmp_path / f"video{n}" / "name").write_text(label + "\n")
    assert find_camera_by_name("cam link", tmp_path) == "/dev/video2"
    assert find_camera_by_name("nope", tmp_path) is None
    assert list_camera_names(tmp_path) == ["/dev/video0: Integrated Webcam", "/dev/video2: Cam Link 4K: Cam Link 4K"]
    node = Camera("cam", Camera.Params(device="Elgato Facecam"), capture_factory=lambda d, a: None)
    with pytest.raises(NodeError, match="no camera named 'Elgato Facecam'"):
        node.open(make_context("cam"))


def test_camera_demo_fallback_is_unpaced_under_bench():
    """`muse bench` (settings unpaced) runs a missing camera's demo stand-in flat out, not at the camera's
    fps; a normal run keeps the camera's pace."""
    from muse.nodes.capture.demo import Demo

    for unpaced, fps in ((True, 0.0), (False, 30.0)):
        made = Camera.stand_in(Camera.Params(device="7", width=160, height=90, fps=30, fallback="demo"))
        assert made is not None and made[0] is Demo and made[1]["fps"] == 30
        node = Demo("cam/demo", Demo.Params(**made[1]))
        ctx = make_context("cam/demo")
        ctx.settings = {"unpaced": unpaced}
        node.open(ctx)
        try:
            assert node._pacer.fps == fps
        finally:
            node.close()
