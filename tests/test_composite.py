"""composite.over: person over a key colour, image, video, blurred room or clean plate, in linear light."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import visual_scenes as vs
from muse.graph.node import NodeError
from muse.graph.payloads import Frame, Mask
from muse.graph.testing import build_node, make_context, run_node
from muse.nodes.composite import Composite

PLAIN = {"feather": 0.0, "light_wrap": 0.0}


@pytest.fixture(scope="module")
def scene():
    frame, plate, mask, _ = vs.body_scene()
    return frame, plate, mask


def _run(params, frame, mask, plate=None):
    inputs = dict(frame=Frame(torch.from_numpy(frame)), mask=Mask(torch.from_numpy(mask)))
    if plate is not None:
        inputs["plate"] = Frame(torch.from_numpy(plate))
    return run_node(Composite, params, **inputs)["out"].image.numpy()


def test_green_screen_exact_person_and_colour(scene):
    frame, _, mask = scene
    out = _run({"background": "colour", "colour": (0, 255, 0), **PLAIN}, frame, mask)
    assert np.array_equal(out[mask == 1], frame[mask == 1])  # sRGB -> linear -> sRGB round trip is exact
    assert (out[mask == 0] == np.array([0, 255, 0], np.uint8)).all()


def test_half_alpha_blends_in_linear_light():
    black = np.zeros((8, 8, 3), np.uint8)
    half = np.full((8, 8), 0.5, np.float32)
    out = _run({"background": "colour", "colour": (255, 255, 255), **PLAIN}, black, half)
    # 50 % black over white is linear 0.5 = sRGB 188, not the gamma-space 128
    assert (out == 188).all()


def test_replacement_image_fills_the_background(scene, tmp_path, messi):
    frame, _, mask = scene
    path = tmp_path / "beach.jpg"
    img = cv2.resize(messi, (vs.BODY_W, vs.BODY_H), interpolation=cv2.INTER_AREA)
    assert cv2.imwrite(str(path), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    expected = cv2.imread(str(path))[:, :, ::-1]
    out = _run({"background": "image", "path": str(path), **PLAIN}, frame, mask)
    assert np.abs(out[mask == 0].astype(int) - expected[mask == 0].astype(int)).max() <= 1
    assert np.array_equal(out[mask == 1], frame[mask == 1])


def test_replacement_video_plays_and_loops(scene, tmp_path):
    frame, _, mask = scene
    path = tmp_path / "bg.avi"
    colours = [(255, 0, 0), (0, 0, 255), (255, 255, 0)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for c in colours:
        writer.write(np.full((48, 64, 3), c[::-1], np.uint8))
    writer.release()
    node = build_node(Composite, {"background": "video", "path": str(path), **PLAIN})
    node.open(make_context())
    try:
        seen = []
        for _ in range(4):
            out = node.process(frame=Frame(torch.from_numpy(frame)), mask=Mask(torch.from_numpy(mask)))["out"].image.numpy()
            seen.append(out[mask == 0].reshape(-1, 3).mean(0))
    finally:
        node.close()
    for got, want in zip(seen, colours + colours[:1]):
        assert np.abs(got - np.array(want)).max() < 12, (got, want)


def test_blur_softens_the_room_without_a_person_halo(scene):
    frame, plate, mask = scene
    out = _run({"background": "blur", "blur": 0.03, **PLAIN}, frame, mask)
    room = mask == 0
    lap = lambda im: np.abs(cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), cv2.CV_32F))
    assert lap(out)[room].mean() < 0.5 * lap(frame)[room].mean()
    assert np.array_equal(out[mask == 1], frame[mask == 1])
    # no halo: next to the red shirt the blurred room is no redder than the blurred true room
    ring = (cv2.dilate(mask, np.ones((9, 9))) > 0) & room
    truth = _run({"background": "blur", "blur": 0.03, **PLAIN}, frame, mask, plate=plate)
    redness = lambda im: (im[..., 0].astype(float) - im[..., 1:].mean(-1))[ring].mean()
    assert redness(out) < redness(truth) + 8


def test_plate_background_and_missing_plate_falls_back(scene):
    frame, plate, mask = scene
    out = _run({"background": "plate", **PLAIN}, frame, mask, plate=plate)
    assert np.abs(out.astype(int) - plate.astype(int))[mask == 0].max() <= 1
    out = _run({"background": "plate", **PLAIN}, frame, mask)  # no plate yet: a blurred room, no crash
    assert out.shape == frame.shape


def test_background_changes_live_and_bad_paths_are_refused(scene, tmp_path):
    frame, _, mask = scene
    node = build_node(Composite, {"background": "colour", **PLAIN}, name="comp")
    node.open(make_context("comp"))
    step = lambda: node.process(frame=Frame(torch.from_numpy(frame)), mask=Mask(torch.from_numpy(mask)))["out"].image.numpy()
    green = step()
    assert node.update_params(Composite.Params(background="blur", **PLAIN))
    blurred = step()
    assert not np.array_equal(green[mask == 0], blurred[mask == 0])
    with pytest.raises(NodeError, match="node 'comp': path .*missing.png.* does not exist"):
        node.update_params(Composite.Params(background="image", path=str(tmp_path / "missing.png"), **PLAIN))
    assert node.params.background == "blur"  # the old background keeps running
    assert np.array_equal(step(), blurred)
    node.close()


def test_feather_and_light_wrap_touch_only_the_edge(scene):
    frame, _, mask = scene
    hard = _run({"background": "colour", "colour": (255, 255, 255), **PLAIN}, frame, mask)
    soft = _run({"background": "colour", "colour": (255, 255, 255), "feather": 0.01, "light_wrap": 0.8}, frame, mask)
    deep = cv2.erode(mask, np.ones((31, 31))) > 0.5
    edge = (cv2.dilate(mask, np.ones((3, 3))) > 0.5) & (cv2.erode(mask, np.ones((3, 3))) < 0.5)
    assert np.abs(soft[deep].astype(int) - hard[deep].astype(int)).max() <= 1
    # white light wraps onto the dark shirt edge: brighter there
    inner_edge = edge & (mask == 1)
    assert soft[inner_edge].mean() > hard[inner_edge].mean() + 10


def test_unseen_plate_shows_the_live_frame(scene):
    """Where background.adaptive never saw the room, the live frame shows, not the guessed plate."""
    frame, plate, mask = scene
    guessed = np.full_like(plate, 128)  # a plate that is pure guesswork on the left half
    guessed[:, guessed.shape[1] // 2 :] = plate[:, plate.shape[1] // 2 :]
    coverage = np.ones(mask.shape, np.float32)
    coverage[:, : mask.shape[1] // 2] = 0.0
    out = run_node(Composite, {"background": "plate", **PLAIN}, frame=Frame(torch.from_numpy(frame)),
                   mask=Mask(torch.from_numpy(mask)), plate=Frame(torch.from_numpy(guessed)),
                   coverage=Mask(torch.from_numpy(coverage)))["out"].image.numpy()
    room = mask == 0
    left = np.zeros_like(room)
    left[:, : mask.shape[1] // 2] = True
    assert np.abs(out.astype(int) - frame.astype(int))[room & left].max() <= 1  # unseen: the live frame
    assert np.abs(out.astype(int) - plate.astype(int))[room & ~left].max() <= 1  # seen: the plate


@pytest.mark.parametrize("sigma", [0.7, 4.0, 12.0])
def test_cpu_blur_through_opencv_matches_the_convolution(astronaut, sigma):
    """The CPU fast path (OpenCV) and the convolution (float64 here, so not rerouted) blur alike."""
    from muse.nodes.composite import gaussian_blur

    img = torch.from_numpy(astronaut[:120, :160]).permute(2, 0, 1).float() / 255.0
    fast = gaussian_blur(img, sigma)
    ref = gaussian_blur(img.double(), sigma).float()
    assert fast.shape == img.shape
    assert float((fast - ref).abs().max()) < 1e-5
    assert float(fast.std()) < float(img.std())  # it did blur


@pytest.mark.parametrize("height,width", [(342, 548), (1080, 1920)])
def test_low_resolution_room_blur_sits_on_the_sampling_grid(messi, height, width):
    """The room blur runs at a reduced size, then is sampled bilinearly at full size: its cells must
    sit where that sampling puts them. At 1080p (factor 16 would leave a partial last cell of 8 rows)
    and at messi5's own 548x342 (no whole cell tiles it) the result stays within a level on average
    of a full-resolution blur; strided pooling with a partial last cell drifted to 1.6-2 levels."""
    import torch.nn.functional as F

    from muse.nodes.composite import cell_factor, gaussian_blur, reduced_size, shrink_mean

    rgb = cv2.resize(messi, (width, height), interpolation=cv2.INTER_AREA)
    lin = torch.from_numpy(((rgb / 255.0) ** 2.2).astype(np.float32)).permute(2, 0, 1)
    sigma = 0.03 * height
    factor = cell_factor(height, width, int(sigma // 2))
    size = reduced_size(height, width, factor)
    low = gaussian_blur(shrink_mean(lin[None], size)[0], sigma / factor)
    up = F.interpolate(low[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    full = gaussian_blur(lin, sigma)
    err = (up.clamp(0, 1) ** (1 / 2.2) - full.clamp(0, 1) ** (1 / 2.2)).abs() * 255
    assert float(err.mean()) < 1.0
    if height == 1080:
        assert factor == 15 and height % factor == 0 and width % factor == 0  # one strided pool


def test_cell_factor_prefers_a_whole_tiling():
    from muse.nodes.composite import cell_factor

    assert cell_factor(2160, 3840, 32) == 30
    assert cell_factor(720, 1280, 10) == 10
    assert cell_factor(342, 548, 5) == 5  # nothing >= 3 tiles it: adaptive windows
    assert cell_factor(720, 1280, 0) == 1
