"""Several cameras at once: `graphs/multicam.yaml` on two demo sources at
different rates (the inset shows the second source, checked against its exact
mask; the stream never waits for it), a camera that fails mid-way while the
other keeps running, and `composite.layout`'s placements on real pictures."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import media
from muse.graph.node import Node, NodeParams, Out
from muse.graph.registry import load_registry
from muse.graph.runtime import GraphRunner
from muse.graph.payloads import Frame
from muse.graph.testing import run_node, registry_with
from muse.graph.validate import ValidatedGraph, validate_text
from muse.nodes.layout import Layout, fit, rounded_rect_alpha

GRAPH = Path(__file__).resolve().parents[1] / "graphs" / "multicam.yaml"
W, H = 320, 180


def _graph(doc: dict) -> ValidatedGraph:
    return validate_text(yaml.safe_dump(doc), str(GRAPH), load_registry(), base_dir=GRAPH.parent)


def _inset_box(p: Layout.Params, w: int, h: int, src_w: int, src_h: int) -> tuple[int, int, int, int]:
    """(y0, x0, ih, iw) of the first bottom-right inset, as composite.layout places it."""
    iw = max(8, round(w * p.size))
    ih = max(8, round(iw * src_h / src_w))
    return h - p.margin - ih, w - p.margin - iw, ih, iw


def _fit_hwc(img: torch.Tensor, h: int, w: int) -> np.ndarray:
    out, _ = fit(img.permute(2, 0, 1).float() / 255.0, h, w, "cover")
    return (out.clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()


def test_multicam_graph_inset_shows_second_source_and_never_waits_for_it():
    doc = yaml.safe_load(GRAPH.read_text())
    doc["settings"].update({"device": "cpu", "resolution": [W, H], "fps": 12})
    doc["nodes"]["cam_main"] = {"type": "capture.demo", "params": {"width": W, "height": H, "fps": 12, "background": "coffee"}}
    doc["nodes"]["cam_side"] = {"type": "capture.demo", "params": {"width": W, "height": H, "fps": 4, "background": "rocket", "motion": 0.5}}
    doc["nodes"]["virtualcam"] = {"type": "output.null", "inputs": {"frame": "layout.out"}}
    runner = GraphRunner(_graph(doc), frames=16)
    events: list[tuple[str, object]] = []
    lock = threading.Lock()

    def keep(tag: str):
        def cb(payload: object) -> None:
            with lock:
                events.append((tag, payload))
        return cb

    runner.tap("cam_side", "frame", keep("side"))
    runner.tap("cam_side", "mask", keep("side_mask"))
    runner.tap("layout", "out", keep("out"))
    plates: list[Frame] = []
    runner.tap("cam_main", "clean_plate", plates.append)
    stats = runner.run()
    assert stats.frames_out == 16

    pairs = []
    seen: list[tuple[object, object]] = []  # the second source's frames with their masks, in order
    side = None
    for tag, payload in events:
        if tag == "side":
            side = payload
        elif tag == "side_mask":
            if side is not None:
                seen.append((side, payload))
        elif seen:
            # Which of its recent frames the layout used is decided on its own thread: under load the second
            # camera may emit again before that output arrives. Keep the last three as candidates.
            pairs.append((payload, *seen[-1], seen[-3:]))
    assert len(pairs) >= 12
    # The main source paces the stream: the 4 fps camera's frames repeat across the 12 fps output.
    side_indices = [s.index for _, s, _, _ in pairs]
    assert len(set(side_indices)) < len(pairs) - 3, side_indices

    p = Layout.Params(mode="pip", corner="bottom_right", size=0.3, margin=24, border=4, radius=16)
    y0, x0, ih, iw = _inset_box(p, W, H, W, H)
    inner = rounded_rect_alpha(ih, iw, p.radius - p.border, p.border, torch.device("cpu")).numpy()
    for out, _, _, candidates in pairs[-4:]:  # once segmentation and the learned room have settled
        got = out.image.numpy().astype(np.float64)[y0 : y0 + ih, x0 : x0 + iw]
        # the candidate frame the inset shows: the closest one (the others differ where the person moved)
        s, m = min(candidates, key=lambda c: float(np.abs(got - _fit_hwc(c[0].image, ih, iw)).mean()))
        want = _fit_hwc(s.image, ih, iw)
        alpha = fit(m.alpha[None].float(), ih, iw, "cover")[0][0].numpy()
        person = cv2.erode(((alpha >= 0.999) & (inner >= 0.999)).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        room = cv2.erode(((alpha <= 0.001) & (inner >= 0.999)).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert person.sum() > 300 and room.sum() > 300
        err = np.abs(got - want).mean(-1)
        # Where the second source's exact mask says person, the inset shows that source's picture ...
        assert np.mean(err[person] < 25) > 0.85, f"only {np.mean(err[person] < 25):.2f} of the person matches"
        # ... and around them, not the second camera's own room (the rocket) but the main camera's room.
        err_main_room = np.abs(got - _fit_hwc(plates[-1].image, ih, iw)).mean(-1)
        assert np.mean(err_main_room[room]) < 0.5 * np.mean(err[room]), (np.mean(err_main_room[room]), np.mean(err[room]))
        # Outside the inset it is the main camera's picture, not the second one.
        main_area = out.image.numpy().astype(np.float64)[:y0 - 10]
        side_full = s.image.numpy().astype(np.float64)[:y0 - 10]
        assert np.abs(main_area - side_full).mean() > 30


class FakeCapture:
    """cv2.VideoCapture stand-in that plays a real picture at `fps`, optionally dying after `fail_after` reads."""

    def __init__(self, picture: np.ndarray, fps: float, fail_after: int | None = None) -> None:
        self.picture, self.fps, self.fail_after = picture, fps, fail_after
        self.reads = 0
        self.opened = True

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(1.0 / self.fps)
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            return False, None  # the USB cable was pulled
        img = np.roll(self.picture, self.reads * 3, axis=1)  # the scene moves a little
        return True, img.copy()

    def set(self, *_: object) -> bool:
        return True

    def get(self, *_: object) -> float:
        return 0.0

    def release(self) -> None:
        self.opened = False


def test_a_camera_that_fails_midway_leaves_the_other_running(monkeypatch):
    import muse.nodes.capture.camera as camera_mod

    main_pic = cv2.resize(media.opencv_sample("messi5.jpg")[:, :, ::-1], (W, H))
    side_pic = cv2.resize(media.astronaut()[:, :, ::-1], (W, H))
    opened: dict[str, int] = {"0": 0, "1": 0}

    def factory(device: int | str, api: int) -> FakeCapture:
        key = str(device)
        opened[key] += 1
        if key == "0":
            return FakeCapture(main_pic, fps=20)
        if opened[key] == 1:
            return FakeCapture(side_pic, fps=10, fail_after=5)
        cap = FakeCapture(side_pic, fps=10)
        cap.opened = False  # still unplugged: every reconnect attempt fails
        return cap

    monkeypatch.setattr(camera_mod, "opencv_capture", factory)
    cam = {"width": W, "height": H, "stall_s": 0.2, "retry_max_s": 0.1}
    text = yaml.safe_dump({
        "version": 1,
        "settings": {"device": "cpu", "resolution": [W, H], "fps": 20},
        "nodes": {
            "cam_main": {"type": "capture.camera", "params": {**cam, "device": "0", "fps": 20}},
            "cam_side": {"type": "capture.camera", "params": {**cam, "device": "1", "fps": 10}},
            "layout": {"type": "composite.layout", "params": {"size": 0.4, "radius": 0, "border": 0}, "inputs": {"frames": ["cam_main.frame", "cam_side.frame"]}},
            "sink": {"type": "output.null", "inputs": {"frame": "layout.out"}},
        },
    })  # fmt: skip
    runner = GraphRunner(validate_text(text, "failing.yaml", load_registry()), frames=40)
    outs: list[Frame] = []
    runner.tap("layout", "out", outs.append)
    stats = runner.run()
    assert stats.frames_out == 40  # the main camera kept the stream going
    side = stats.nodes["cam_side"].info
    assert side["outages"] == 1 and side["status"] == "reconnecting" and opened["1"] >= 3, (side, opened)
    assert stats.nodes["cam_main"].info["status"] == "ok"
    last = outs[-1].image.numpy()
    y0, x0, ih, iw = _inset_box(Layout.Params(size=0.4), W, H, W, H)
    inset = last[y0 : y0 + ih, x0 : x0 + iw].astype(int)
    # The lost camera is shown stale: dimmed, a red bar on top.
    top = inset[:2].reshape(-1, 3).mean(0)
    assert top[0] > 150 and top[1] < 80 and top[2] < 80, top
    live = cv2.resize(side_pic[:, :, ::-1], (iw, ih), interpolation=cv2.INTER_AREA).astype(int)
    assert inset[ih // 4 :].mean() < 0.7 * live[ih // 4 :].mean()
    # Meanwhile the main picture kept moving (new frames, not a held one).
    assert outs[-1].index > outs[-10].index


@pytest.mark.parametrize("mode", ["side_by_side", "grid"])
def test_layout_cells_place_each_picture(mode):
    a = torch.from_numpy(cv2.resize(media.astronaut(), (160, 90)))
    b = torch.from_numpy(cv2.resize(media.opencv_sample("messi5.jpg"), (160, 90)))
    c = torch.from_numpy(cv2.resize(media.opencv_sample("basketball1.png"), (160, 90)))
    params = {"mode": mode, "width": 336 if mode == "side_by_side" else 328, "height": 90 if mode == "side_by_side" else 188,
              "gap": 16 if mode == "side_by_side" else 8, "fit": "contain"}  # fmt: skip
    frames = [Frame(a), Frame(b)] + ([Frame(c)] if mode == "grid" else [])
    out = run_node(Layout, params, frames=frames)["out"].image
    if mode == "side_by_side":  # two 160x90 cells, 16 px apart: the pictures land unscaled
        assert torch.equal(out[:, :160], a) and torch.equal(out[:, 176:], b)
        assert (out[:, 160:176] == 16).all()
    else:  # 2x2 grid of 160x90 cells, 8 px gaps; the fourth cell is background
        assert torch.equal(out[:90, :160], a) and torch.equal(out[:90, 168:], b) and torch.equal(out[98:, :160], c)
        assert (out[98:, 168:] == 16).all()


def test_layout_pip_border_and_rounded_corners():
    main = torch.from_numpy(cv2.resize(media.opencv_sample("messi5.jpg"), (320, 180)))
    inset = torch.from_numpy(cv2.resize(media.astronaut(), (320, 180)))
    params = {"mode": "pip", "corner": "top_left", "size": 0.5, "margin": 10, "border": 4, "border_colour": (255, 0, 0), "radius": 20}
    out = run_node(Layout, params, frames=[Frame(main), Frame(inset)])["out"].image.int()
    y0, x0, ih, iw = 10, 10, 90, 160
    assert tuple(out[y0 + ih // 2, x0 + 1].tolist()) == (255, 0, 0)  # border on the left edge
    assert torch.equal(out[y0, x0], main[y0, x0].int())  # rounded corner: the main picture shows through
    small = torch.from_numpy(cv2.resize(media.astronaut(), (iw, ih), interpolation=cv2.INTER_AREA)).int()
    centre = out[y0 + 20 : y0 + ih - 20, x0 + 20 : x0 + iw - 20]
    assert (centre - small[20:-20, 20:-20]).abs().float().mean() < 6
    assert torch.equal(out[120:, 200:], main[120:, 200:].int())  # outside the inset: untouched


# -- the runtime's side of "never wait for a secondary source" ---------------------


class FlakySource(Node):
    """Test source: a real picture at 20 fps; raises forever after `good` frames, or starts late."""

    node_type = "test.flaky"
    description = "test"
    frame: Out[Frame]

    class Params(NodeParams):
        good: int = 1_000_000
        start_delay: float = 0.0
        fps: float = 20.0

    def open(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().open(ctx)
        self.n = 0
        self.picture = torch.from_numpy(cv2.resize(media.astronaut(), (W, H)))

    def process(self) -> dict[str, Frame]:
        if self.n == 0 and self.params.start_delay:
            time.sleep(self.params.start_delay)
        time.sleep(1.0 / self.params.fps)
        self.n += 1
        if self.n > self.params.good:
            raise RuntimeError("device unplugged")
        return {"frame": Frame(self.picture, timestamp=self.n / self.params.fps, index=self.n)}


def _flaky_graph(side: dict) -> GraphRunner:
    reg = registry_with(FlakySource)
    text = yaml.safe_dump({
        "version": 1,
        "settings": {"device": "cpu", "resolution": [W, H], "fps": 20, "max_consecutive_errors": 5},
        "nodes": {
            "main": {"type": "capture.demo", "params": {"width": W, "height": H, "fps": 20}},
            "side": {"type": "test.flaky", "params": side},
            "layout": {"type": "composite.layout", "inputs": {"frames": ["main.frame", "side.frame"]}},
            "sink": {"type": "output.null", "inputs": {"frame": "layout.out"}},
        },
    })  # fmt: skip
    return GraphRunner(validate_text(text, "flaky.yaml", reg), frames=40)


def test_a_secondary_source_that_keeps_failing_is_stopped_not_the_graph():
    stats = _flaky_graph({"good": 5}).run()
    assert stats.frames_out == 40
    assert stats.nodes["side"].info.get("status") == "lost" and stats.nodes["side"].errors >= 5


def test_a_secondary_source_that_starts_late_does_not_hold_up_the_first_frames():
    runner = _flaky_graph({"start_delay": 1.0})
    outs: list[Frame] = []
    t0 = time.perf_counter()
    times: list[float] = []
    runner.tap("layout", "out", lambda f: (outs.append(f), times.append(time.perf_counter() - t0)))
    stats = runner.run()
    assert stats.frames_out == 40
    assert times[0] < 0.9  # the main camera's first frames went out before the late one had any
    first, last = outs[0].image.numpy(), outs[-1].image.numpy()
    y0, x0, ih, iw = _inset_box(Layout.Params(), W, H, W, H)
    # Without the late source the inset is empty (the main picture); once it runs, the inset is there.
    assert np.abs(first[y0 + 20 : y0 + ih - 20, x0 + 20 : x0 + iw - 20].astype(int) - last[y0 + 20 : y0 + ih - 20, x0 + 20 : x0 + iw - 20].astype(int)).mean() > 20


def test_layout_live_params_colours_in_place_geometry_rebuilds():
    from muse.graph.testing import make_context

    node = Layout("layout", Layout.Params(border_colour=(255, 0, 0)))
    node.open(make_context("layout"))
    colour = node._colours["border_colour"]
    assert node.update_params(Layout.Params(border_colour=(0, 0, 255))) is True
    assert node._colours["border_colour"] is colour and colour.flatten().tolist() == [0.0, 0.0, 1.0]
    assert node.update_params(Layout.Params(border_colour=(0, 0, 255), corner="top_left")) is False


def test_shipped_multicam_graph_runs_on_the_cpu_without_cameras(capsys):
    """`muse validate` and `muse run graphs/multicam.yaml` as shipped: no cameras here, so both
    cameras fall back to demo sources; no virtual-camera driver, so the preview (any free port)."""
    from muse.cli import main

    assert main(["validate", str(GRAPH)]) == 0
    small = ["--set", "cam_main.width=320", "--set", "cam_main.height=180", "--set", "cam_side.width=320",
             "--set", "cam_side.height=180", "--set", "virtualcam.fallback_port=0", "--set", "virtualcam.width=320",
             "--set", "virtualcam.height=180", "--set", "cam_main.device=/dev/muse-no-camera-0",
             "--set", "cam_side.device=/dev/muse-no-camera-1"]  # fmt: skip
    assert main(["run", str(GRAPH), "--frames", "4", "--device", "cpu", *small]) == 0
    err = capsys.readouterr().err
    assert "cam_main -> cam_main/demo" in err and "cam_side -> cam_side/demo" in err


@pytest.mark.cuda
def test_layout_on_cuda_matches_the_cpu():
    main = torch.from_numpy(cv2.resize(media.opencv_sample("messi5.jpg"), (320, 180)))
    inset = torch.from_numpy(cv2.resize(media.astronaut(), (320, 180)))
    params = {"mode": "pip", "size": 0.4, "border": 3, "radius": 12}
    cpu = run_node(Layout, params, frames=[Frame(main), Frame(inset)])["out"].image
    gpu = run_node(Layout, params, device="cuda", frames=[Frame(main.cuda()), Frame(inset.cuda())])["out"].image
    assert (gpu.cpu().int() - cpu.int()).abs().float().mean() < 1.0  # fp16 work on the GPU
