"""The `antialias` param of pose.blazepose and face.landmarks changes the landmark crops.

On a Full HD (body) or 4K (face) frame the crops shrink several times: with antialias on,
the crop is box-filtered (several taps), with it off it is plain bilinear sampling.
The landmark models' inputs are recorded (through `roi.crop`) and compared."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from muse.nodes.face.tracker import FaceTracker
from muse.nodes.landmarks import roi as R
from muse.nodes.pose.tracker import BlazePoseTracker

CPU = torch.device("cpu")


def _big_frame(astronaut: np.ndarray, height: int) -> torch.Tensor:
    """The astronaut upscaled into a 16:9 frame `height` pixels high."""
    big = cv2.resize(astronaut, (height, height), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((height, height * 16 // 9, 3), 90, np.uint8)
    x0 = (canvas.shape[1] - height) // 2
    canvas[:, x0:x0 + height] = big
    return torch.from_numpy(canvas).permute(2, 0, 1).float() / 255


def _crops(monkeypatch: pytest.MonkeyPatch, make, image: torch.Tensor, size: int) -> list[tuple[int, torch.Tensor]]:
    """(taps, crop) of every `size` x `size` crop one tracker call makes."""
    seen: list[tuple[int, torch.Tensor]] = []
    real = R.crop

    def recording(img, roi, out_size, **kw):  # type: ignore[no-untyped-def]
        out = real(img, roi, out_size, **kw)
        if out_size == size:
            seen.append((kw.get("taps", 1), out.clone()))
        return out

    monkeypatch.setattr(R, "crop", recording)
    tracker = make()
    tracker(image)
    monkeypatch.setattr(R, "crop", real)
    return seen


@pytest.mark.parametrize("kind", ["pose", "face"])
def test_antialias_param_changes_the_landmark_crop(astronaut, monkeypatch, kind):
    # Full HD shrinks a body crop ~4x; a face (~1/3 of the height) needs 4K for that.
    image = _big_frame(astronaut, 1080 if kind == "pose" else 2160)
    if kind == "pose":
        from muse.nodes.pose.tracker import LANDMARK_SIZE as size

        def make(aa: bool):
            return lambda: BlazePoseTracker("pose", CPU, torch.float32, antialias=aa)
    else:
        from muse.nodes.face.tracker import MESH_SIZE as size

        def make(aa: bool):
            return lambda: FaceTracker("face", CPU, torch.float32, iris=False, antialias=aa)

    on = _crops(monkeypatch, make(True), image, size)
    off = _crops(monkeypatch, make(False), image, size)
    assert on and off, "no landmark crop was made (no person found?)"
    assert on[0][0] > 1, "a ~4x shrink uses several taps with antialias on"
    assert off[0][0] == 1, "antialias off samples the crop with one bilinear tap"
    diff = (on[0][1] - off[0][1]).abs().mean()
    assert float(diff) > 1e-3, f"antialias did not change the {kind} crop (mean difference {float(diff):.2e})"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (run on the GPU machine)")
@pytest.mark.parametrize("border", ["zeros", "border"])
@pytest.mark.parametrize("taps", [1, 3])
def test_cuda_uint8_crop_kernel_matches_grid_sample(astronaut, border, taps):
    """CUDA crops from the uint8 picture (one CuPy kernel) equal grid_sample on the float picture."""
    pytest.importorskip("cupy")
    img = (_big_frame(astronaut, 1080) * 255).round().to(torch.uint8).cuda()  # (3, H, W) float -> bytes
    hwc = img.permute(1, 2, 0).contiguous()
    view = hwc.permute(2, 0, 1)
    # a rotated body ROI, a mirrored eye ROI half outside the frame, and the whole frame (letterbox)
    rois = torch.tensor([[960.0, 540.0, 700.0, 700.0, 0.3], [40.0, 500.0, 120.0, 120.0, -0.2],
                         [960.0, 540.0, 1920.0, 1920.0, 0.0]], device="cuda")
    flip = torch.tensor([False, True, False], device="cuda")
    got = R.crop(view, rois, 128, border=border, flip=flip, taps=taps)
    ref = R.crop(view.float() / 255, rois, 128, border=border, flip=flip, taps=taps)
    assert got.dtype == torch.float32 and got.shape == ref.shape == (3, 3, 128, 128)
    assert float((got - ref).abs().max()) < 1e-4
