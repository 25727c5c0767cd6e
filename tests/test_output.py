"""Output nodes with the real libraries: recordings decoded back by PyAV,
a virtual camera backend registered with pyvirtualcam, a PyAV listener for
network streams, an HTTP client (and Chromium, if present) for the preview."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import pyvirtualcam
import torch

from muse.graph.node import NodeError
from muse.graph.payloads import Frame, Mask
from muse.graph.testing import build_node, make_context, run_node_frames
from muse.nodes.output import FileOutput, NullOutput, Preview, StreamOutput, VirtualCamera
from muse.nodes.output.virtualcam import install_hint


@pytest.fixture(scope="module")
def clip_frames(astronaut):
    """12 frames of 160x120: the astronaut sliding sideways."""
    small = cv2.resize(astronaut, (160, 120), interpolation=cv2.INTER_AREA)
    return [np.ascontiguousarray(np.roll(small, 5 * i, axis=1)) for i in range(12)]


def frames_in(frames):
    return [{"frame": Frame(torch.from_numpy(f), index=i, timestamp=i / 30)} for i, f in enumerate(frames)]


def decode_all(path, fmt="rgb24"):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format=fmt) for f in c.decode(video=0)]


# -- output.file -----------------------------------------------------------------

@pytest.mark.parametrize("codec,suffix", [("h264", ".mkv"), ("hevc", ".mp4"), ("h264", ".mp4")])
def test_file_lossy_codecs_play_back(tmp_path, clip_frames, codec, suffix):
    path = tmp_path / f"rec{suffix}"
    run_node_frames(FileOutput, {"path": str(path), "codec": codec}, frames_in(clip_frames))
    got = decode_all(path)
    assert len(got) == 12 and got[0].shape == (120, 160, 3)
    assert np.abs(got[6].astype(int) - clip_frames[6]).mean() < 8  # lossy, but the same picture


def test_file_ffv1_is_lossless_for_frames_and_masks(tmp_path, clip_frames):
    path = tmp_path / "lossless.mkv"
    run_node_frames(FileOutput, {"path": str(path), "codec": "ffv1"}, frames_in(clip_frames))
    got = decode_all(path)
    assert len(got) == 12 and all(np.array_equal(g, f) for g, f in zip(got, clip_frames))
    # A mask is written as grey, exactly (alpha 0..1 -> 0..255).
    luma = torch.from_numpy(clip_frames[0]).float().mean(-1) / 255.0
    masks = [{"mask": Mask(luma.roll(i, 1))} for i in range(5)]
    mpath = tmp_path / "mask.mkv"
    run_node_frames(FileOutput, {"path": str(mpath), "codec": "ffv1"}, masks)
    grey = decode_all(mpath, fmt="gray")
    assert len(grey) == 5 and grey[3].shape == (120, 160)
    assert np.array_equal(grey[3], (luma.roll(3, 1) * 255).round().byte().numpy())


def test_file_png_sequence(tmp_path, clip_frames):
    folder = tmp_path / "shots"
    run_node_frames(FileOutput, {"path": str(folder), "codec": "png"}, frames_in(clip_frames[:4]))
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"frame_{i:06d}.png" for i in range(4)]
    back = cv2.cvtColor(cv2.imread(str(folder / "frame_000002.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, clip_frames[2])
    with pytest.raises(NodeError, match="already holds frame_"):
        run_node_frames(FileOutput, {"path": str(folder), "codec": "png"}, frames_in(clip_frames[:1]))


def test_file_never_overwrites_unless_told(tmp_path, clip_frames):
    path = tmp_path / "take1.mkv"
    path.write_bytes(b"precious recording")
    with pytest.raises(NodeError, match=r"take1\.mkv.*already exists.*overwrite: true"):
        run_node_frames(FileOutput, {"path": str(path)}, frames_in(clip_frames[:2]))
    assert path.read_bytes() == b"precious recording"
    run_node_frames(FileOutput, {"path": str(path), "overwrite": True}, frames_in(clip_frames[:3]))
    assert len(decode_all(path)) == 3


def test_file_bad_inputs_are_clear_errors(tmp_path, clip_frames):
    img = torch.from_numpy(clip_frames[0])
    with pytest.raises(NodeError, match="exactly one of the inputs `frame` or `mask` \\(both given\\)"):
        run_node_frames(FileOutput, {"path": str(tmp_path / "a.mkv")}, [{"frame": Frame(img), "mask": Mask(img[..., 0].float())}])
    with pytest.raises(NodeError, match="ffv1 cannot go in a .mp4"):
        run_node_frames(FileOutput, {"path": str(tmp_path / "a.mp4"), "codec": "ffv1"}, [])
    with pytest.raises(NodeError, match="cannot tell the container"):
        run_node_frames(FileOutput, {"path": str(tmp_path / "a.xyz")}, [])


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_file_killed_mid_recording_still_plays(tmp_path, suffix):
    """kill -9 during a recording: what was written decodes (MKV clusters / MP4 fragments flushed each second)."""
    path = tmp_path / f"killed{suffix}"
    script = textwrap.dedent(f"""
        import os, signal, numpy as np, torch
        from muse.graph.payloads import Frame
        from muse.graph.testing import build_node, make_context
        from muse.nodes.output import FileOutput
        from skimage import data
        node = build_node(FileOutput, {{"path": {str(path)!r}, "fps": 10}})
        node.open(make_context(fps=10))
        pic = np.ascontiguousarray(data.astronaut()[::4, ::4])
        for i in range(35):
            node.process(frame=Frame(torch.from_numpy(np.roll(pic, i, 1).copy())))
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no flush
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    got = decode_all(path)
    assert len(got) >= 10 and got[0].shape == (128, 128, 3)


# -- output.null -------------------------------------------------------------------

def test_null_counts_frames_and_masks(clip_frames):
    node = build_node(NullOutput)
    ctx = make_context()
    node.open(ctx)
    for f in frames_in(clip_frames[:5]):
        node.process(**f)
    node.process(mask=Mask(torch.zeros(4, 4)))
    assert node.count == 6 and ctx.stats.info["frames"] == 6


# -- output.virtualcam ---------------------------------------------------------------

class RecordingCamera:
    """A pyvirtualcam backend that keeps what it is sent."""

    sent: list[np.ndarray] = []
    opened: dict = {}

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        RecordingCamera.sent = []
        RecordingCamera.opened = {"width": width, "height": height, "fps": fps, "fourcc": fourcc}

    def send(self, frame: np.ndarray) -> None:
        RecordingCamera.sent.append(frame.copy())

    def close(self) -> None:
        pass

    def device(self) -> str:
        return "muse-test-camera"

    def native_fourcc(self):
        return None


class MissingDriver:
    def __init__(self, **kw):
        raise RuntimeError("No v4l2 loopback device found at /dev/video[0-99]")


pyvirtualcam.register_backend("muse_test", RecordingCamera)
pyvirtualcam.register_backend("muse_missing", MissingDriver)


def test_virtualcam_sends_rgb_fitted(astronaut):
    frames = [{"frame": Frame(torch.from_numpy(astronaut))} for _ in range(3)]  # 512x512 into 320x180
    run_node_frames(VirtualCamera, {"backend": "muse_test", "width": 320, "height": 180, "format": "rgb", "fps": 100}, frames)
    assert len(RecordingCamera.sent) == 3 and RecordingCamera.opened["width"] == 320
    got = RecordingCamera.sent[0].reshape(180, 320, 3)
    ref = cv2.resize(astronaut, (180, 180), interpolation=cv2.INTER_AREA)
    assert np.abs(got[:, 70:250].astype(int) - ref).mean() < 4  # letterboxed in the middle
    assert got[:, :60].max() == 0 and got[:, -60:].max() == 0  # black bars


def test_virtualcam_nv12_made_on_device_decodes(astronaut, messi):
    rgb = cv2.resize(messi, (320, 180), interpolation=cv2.INTER_AREA)
    run_node_frames(VirtualCamera, {"backend": "muse_test", "width": 320, "height": 180, "format": "nv12", "fps": 100},
                    [{"frame": Frame(torch.from_numpy(rgb))}])
    nv12 = RecordingCamera.sent[0].reshape(270, 320)
    back = cv2.cvtColor(nv12, cv2.COLOR_YUV2RGB_NV12)
    assert np.abs(back.astype(int) - rgb).mean() < 6


def test_virtualcam_paces_to_fps(clip_frames):
    t0 = time.perf_counter()
    run_node_frames(VirtualCamera, {"backend": "muse_test", "width": 160, "height": 120, "format": "rgb", "fps": 40},
                    frames_in(clip_frames[:8]))
    assert time.perf_counter() - t0 >= 7 / 40 * 0.8


def test_virtualcam_without_driver_says_what_to_install():
    with pytest.raises(NodeError, match="no virtual camera could be opened.*fallback: preview"):
        run_node_frames(VirtualCamera, {"backend": "muse_missing"}, [])
    assert "modprobe v4l2loopback" in install_hint("Linux") and "v4l2loopback-dkms" in install_hint("Linux")
    # The shipped graph wires the preview as the virtual camera's stand-in: the message says so instead of
    # suggesting a fallback the graph already has.
    ctx = make_context("virtualcam")
    ctx.stand_ins = ("preview",)
    with pytest.raises(NodeError, match="stand-in \\(preview\\) takes over") as err:
        run_node_frames(VirtualCamera, {"backend": "muse_missing"}, [], ctx=ctx)
    assert "fallback: preview" not in str(err.value)
    assert "OBS Studio 26" in install_hint("Windows") and "OBS Studio 26" in install_hint("Darwin")


def test_virtualcam_real_driver_missing_here():
    """On this machine (no v4l2loopback) pyvirtualcam's own backends fail: the message names the fix."""
    try:
        cam = pyvirtualcam.Camera(64, 48, 30, backend="v4l2loopback")
    except RuntimeError:
        pass
    else:
        cam.close()
        pytest.skip("a v4l2loopback device exists on this machine")
    with pytest.raises(NodeError, match=r"sudo modprobe v4l2loopback devices=1 exclusive_caps=1"):
        run_node_frames(VirtualCamera, {"backend": "v4l2loopback"}, [])


def test_virtualcam_falls_back_loudly_to_a_visible_stand_in(caplog):
    """`fallback: null|preview` without a driver: the runtime starts a stand-in output node
    (virtualcam/null, virtualcam/preview) that --stats and the trace show, and says so loudly."""
    from muse.graph.runtime import GraphRunner
    from muse.graph.validate import validate_text

    text = ("version: 1\nsettings: {device: cpu}\nnodes:\n"
            "  src: {type: capture.demo, params: {width: 160, height: 120, fps: 0, frames: %d}}\n"
            "  virtualcam: {type: output.virtualcam, params: {backend: muse_missing, width: 160, height: 120, format: rgb, %s},"
            " inputs: {frame: {from: src.frame, queue: 8}}}\n")
    with caplog.at_level("WARNING", logger="muse"):
        stats = GraphRunner(validate_text(text % (4, "fallback: 'null'"), "v.yaml")).run()
    assert "FALLING BACK to virtualcam/null" in caplog.text
    assert stats.nodes["virtualcam"].info["fallback"] == "virtualcam/null"
    assert "no virtual camera could be opened" in stats.nodes["virtualcam"].info["fallback_reason"]
    assert stats.nodes["virtualcam/null"].frames == 4 and stats.nodes["virtualcam"].frames == 0

    runner = GraphRunner(validate_text(text % (400, "fallback: preview, fallback_port: 0"), "v.yaml")).start()
    try:
        deadline = time.monotonic() + 30
        while runner.stats.nodes["virtualcam/preview"].frames < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        url = runner.stats.nodes["virtualcam/preview"].info["url"]
        jpeg = urllib.request.urlopen(url + "frame.jpg", timeout=5).read()
        pic = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert pic.shape == (120, 160, 3)
    finally:
        runner.stop()


# -- output.stream -------------------------------------------------------------------

def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listen(url: str, got: list, ready: threading.Event, fmt: str = "mpegts") -> None:
    ready.set()
    try:
        # Small probe: the stream is 0.4 s long, FFmpeg's default probe would wait out 5 s of it.
        with av.open(url, format=fmt, timeout=(10, 1.5), options={"probesize": "32768", "analyzeduration": "200000"}) as c:
            for f in c.decode(video=0):
                got.append(f.to_ndarray(format="rgb24"))
    except av.error.ExitError:
        pass  # the read timeout after the last UDP packet
    except Exception as exc:  # surfaced by the assertions below
        got.append(exc)


@pytest.mark.parametrize("scheme,fmt", [("tcp", "mpegts"), ("udp", "mpegts"), ("tcp", "flv")])
def test_stream_reaches_a_listener_with_all_frames(scheme, fmt, clip_frames):
    """MPEG-TS over TCP and UDP, and FLV (what RTMP carries) over TCP."""
    port = free_port(socket.SOCK_STREAM if scheme == "tcp" else socket.SOCK_DGRAM)
    listen_url = f"tcp://127.0.0.1:{port}?listen=1" if scheme == "tcp" else f"udp://127.0.0.1:{port}"
    got: list = []
    ready = threading.Event()
    t = threading.Thread(target=_listen, args=(listen_url, got, ready, fmt), daemon=True)
    t.start()
    ready.wait()
    time.sleep(0.5)  # the listener binds its socket
    run_node_frames(StreamOutput, {"url": f"{scheme}://127.0.0.1:{port}", "format": fmt, "fps": 30}, frames_in(clip_frames))
    t.join(timeout=15)
    frames = [g for g in got if isinstance(g, np.ndarray)]
    assert not [g for g in got if isinstance(g, Exception)], got
    assert len(frames) == 12 and frames[0].shape == (120, 160, 3)
    assert np.abs(frames[11].astype(int) - clip_frames[11]).mean() < 10


def test_stream_errors_name_the_url():
    from muse.nodes.output.stream import protocol_available

    tiny = [{"frame": Frame(torch.zeros(16, 16, 3, dtype=torch.uint8))}]
    if not protocol_available("srt"):  # PyAV's wheels are built without libsrt
        with pytest.raises(NodeError, match="has no srt:// protocol.*use udp:// or tcp://"):
            run_node_frames(StreamOutput, {"url": "srt://127.0.0.1:9"}, tiny)
    with pytest.raises(NodeError, match="unsupported stream URL 'ftp://x'"):
        run_node_frames(StreamOutput, {"url": "ftp://x"}, [])
    port = free_port()  # nobody listens: the first connect fails clearly
    with pytest.raises(NodeError, match=f"cannot open stream 'tcp://127.0.0.1:{port}'"):
        run_node_frames(StreamOutput, {"url": f"tcp://127.0.0.1:{port}"}, tiny)


# -- output.preview -------------------------------------------------------------------

def read_part(resp) -> bytes:
    """One JPEG part of a multipart/x-mixed-replace response."""
    length = None
    while True:
        line = resp.readline().strip()
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        elif not line and length is not None:
            break
    data = resp.read(length)
    resp.readline()
    return data


def test_preview_serves_mjpeg_to_an_http_client(clip_frames, astronaut):
    node = build_node(Preview, {"port": 0, "window": "off"})
    ctx = make_context()
    node.open(ctx)
    try:
        url = ctx.stats.info["url"]
        assert url.startswith("http://127.0.0.1:")
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "/stream.mjpg" in page
        node.process(frame=Frame(torch.from_numpy(clip_frames[0])))
        resp = urllib.request.urlopen(url + "stream.mjpg", timeout=5)
        assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        first = cv2.cvtColor(cv2.imdecode(np.frombuffer(read_part(resp), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.abs(first.astype(int) - clip_frames[0]).mean() < 6
        time.sleep(0.1)
        node.process(frame=Frame(torch.from_numpy(clip_frames[8])))
        second = cv2.cvtColor(cv2.imdecode(np.frombuffer(read_part(resp), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.abs(second.astype(int) - clip_frames[8]).mean() < np.abs(second.astype(int) - clip_frames[0]).mean()
        resp.close()
        # A mask previews as grey; big frames shrink to max_width.
        node.process(mask=Mask(torch.ones(720, 2560) * 0.5))
        still = cv2.imdecode(np.frombuffer(urllib.request.urlopen(url + "frame.jpg", timeout=5).read(), np.uint8), cv2.IMREAD_GRAYSCALE)
        assert still.shape == (360, 1280) and abs(int(still.mean()) - 128) <= 2
    finally:
        node.close()


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium is not installed")
def test_preview_renders_in_chromium(tmp_path, artifacts_dir, astronaut):
    node = build_node(Preview, {"port": 0, "window": "off"})
    ctx = make_context()
    node.open(ctx)
    stop = threading.Event()
    pic = torch.from_numpy(cv2.resize(astronaut, (320, 320)))

    def feed():
        while not stop.is_set():
            node.process(frame=Frame(pic))
            time.sleep(0.05)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        shot = artifacts_dir / "preview_chromium.png"
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=400,400",
                        f"--user-data-dir={tmp_path}", "--virtual-time-budget=3000", f"--screenshot={shot}",
                        ctx.stats.info["url"]], capture_output=True, timeout=60)
        img = cv2.imread(str(shot))
        assert img is not None and img.std() > 20  # the astronaut, not a blank page
    finally:
        stop.set()
        t.join()
        node.close()


@pytest.mark.cuda
def test_virtualcam_and_preview_on_gpu_frames(astronaut):
    """Fit and NV12 run on the GPU where the frame lives; results match the CPU path."""
    frame = Frame(torch.from_numpy(astronaut).cuda())
    params = {"backend": "muse_test", "width": 320, "height": 180, "format": "nv12", "fps": 100}
    run_node_frames(VirtualCamera, params, [{"frame": frame}], device="cuda")
    gpu = RecordingCamera.sent[0].astype(int)
    run_node_frames(VirtualCamera, params, [{"frame": Frame(torch.from_numpy(astronaut))}])
    cpu = RecordingCamera.sent[0].astype(int)
    assert np.abs(gpu - cpu).mean() < 3  # torch antialiased bilinear vs OpenCV area resize


def test_preview_moves_off_a_busy_port(clip_frames):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        node = build_node(Preview, {"port": busy, "window": "off"})
        ctx = make_context()
        node.open(ctx)
        try:
            assert ctx.stats.info["url"] != f"http://127.0.0.1:{busy}/"
            node.process(frame=Frame(torch.from_numpy(clip_frames[0])))
            assert urllib.request.urlopen(ctx.stats.info["url"] + "frame.jpg", timeout=5).status == 200
        finally:
            node.close()
        strict = build_node(Preview, {"port": busy, "window": "off", "busy_port": "error"})
        with pytest.raises(NodeError, match=f"cannot listen on 127.0.0.1:{busy}.*port: 0"):
            strict.open(make_context())


WINDOW_SCRIPT = """
import sys, time, numpy as np, torch, cv2
from skimage import data
from muse.graph.payloads import Frame
from muse.graph.testing import build_node, make_context
from muse.nodes.output import Preview
node = build_node(Preview, {"port": 0, "window": "on"})
node.open(make_context())
pic = np.ascontiguousarray(cv2.resize(data.astronaut(), (320, 240)))
for _ in range(10):
    node.process(frame=Frame(torch.from_numpy(pic)))
    time.sleep(0.03)
snap = node._window.snapshot()
node.close()
assert snap is not None, "no frame buffer from DearPyGui"
# The picture sits inside the window's 8-pixel padding.
diff = np.abs(snap[8:248, 8:328, :3].astype(int) - pic).mean()
print("window diff", diff)
sys.exit(0 if diff < 6 else 1)
"""


@pytest.mark.gui
def test_preview_window_shows_the_frame(tmp_path):
    """The DearPyGui window under a private Xvfb, in a child process (DearPyGui allows one context per process)."""
    import select

    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    r, w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 15)
        number = os.read(r, 64).decode().strip() if ready else ""
        if not number:
            pytest.skip("Xvfb did not start within 15 s")
        env = {**os.environ, "DISPLAY": f":{number}"}
        proc = subprocess.run([sys.executable, "-c", WINDOW_SCRIPT], env=env, capture_output=True, timeout=90)
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()[-3000:]
    finally:
        os.close(r)
        xvfb.terminate()
        xvfb.wait(10)


@pytest.mark.cuda
def test_preview_encodes_jpeg_on_the_gpu_for_a_watcher(astronaut):
    """A watched preview of a GPU frame is encoded by nvJPEG: only the JPEG bytes come to the host."""
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU (run on the GPU machine)")
    node = build_node(Preview, {"port": 0, "window": "off", "max_width": 0})
    ctx = make_context(device="cuda")
    node.open(ctx)
    try:
        node._latest.clients = 1  # a viewer is connected
        node.process(frame=Frame(torch.from_numpy(astronaut).cuda()))
        assert node._gpu_jpeg, "nvJPEG path was given up"
        jpeg = node._latest.jpeg
        assert jpeg is not None and jpeg[:2] == b"\xff\xd8"
        decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.abs(decoded.astype(int) - astronaut.astype(int)).mean() < 4
    finally:
        node._latest.clients = 0
        node.close()


@pytest.mark.cuda
def test_an_unwatched_preview_leaves_the_picture_on_the_gpu_until_a_still_is_asked(astronaut):
    """Nobody watching: no download per frame; a still asked later is the newest picture, even after the
    graph overwrote the buffer it came from."""
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU (run on the GPU machine)")
    node = build_node(Preview, {"port": 0, "window": "off", "max_width": 0})
    node.open(make_context(device="cuda"))
    try:
        buf = torch.from_numpy(astronaut).cuda()
        node.process(frame=Frame(buf))
        assert node._latest.pixels is None and node._latest.pending is not None
        buf.zero_()  # the graph reuses its output buffer for the next frame
        jpeg = node._latest.still()
        decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.abs(decoded.astype(int) - astronaut.astype(int)).mean() < 4
        assert node.count == 1
        # A replayed frame's copy made for this sink alone is kept as it is (no copy a frame), and resized only
        # when a still is asked for.
        node.params = node.params.model_copy(update={"max_width": 256})
        own = Frame(torch.from_numpy(astronaut).cuda()).sink_copy()
        node.process(frame=own)
        jpeg = node._latest.still()
        decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape[:2] == (256, 256)
    finally:
        node.close()
