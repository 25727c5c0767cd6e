"""The load-time folds of the bundled models (muse/models/tflite/fold.py): fewer steps a call, the same
outputs as the graph TFLite wrote (float rounding aside), on real pictures, batched, and called again."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from muse.models import bundled
from muse.models.tflite.fold import ChannelPadAdd
from muse.models.tflite.ops import Conv, Pad


@pytest.fixture(scope="module")
def imported() -> None:
    bundled.import_models(None, os.environ.get(bundled.MODELS_FROM_ENV) or None, onnx=False)


def _steps(model: torch.nn.Module, kind: type) -> int:
    return sum(isinstance(s, kind) for s in model.steps)


@pytest.mark.parametrize("name", bundled.list_models())
def test_folded_model_matches_the_graph_as_written(name: str, imported: None, astronaut, messi) -> None:
    written = bundled.load_model(name, fold=False)
    folded = bundled.load_model(name)
    x = torch.cat([bundled.reference_input(name, astronaut), bundled.reference_input(name, messi)])
    before = x.clone()
    with torch.no_grad():
        ref = written(x)
        got = folded(x)
        again = folded(x)  # in-place adds write only the step's own fresh tensors
    assert torch.equal(x, before)
    for i, (r, g, a) in enumerate(zip(ref, got, again)):
        assert g.shape == r.shape
        scale = max(1.0, float(r.abs().max()))
        assert float((g - r).abs().max()) <= 1e-5 * scale, f"{name} output {i}"
        assert torch.equal(g, a)
    # every uneven padding went into its convolution, and no spatial zero PAD is left before one
    assert not any(isinstance(s, Conv) and s.pre_pad is not None for s in folded.steps)
    assert len(folded.steps) < len(written.steps) or name.startswith("selfie")
    assert bundled.parity_report(name, folded, None)["status"] == "ok"


def test_what_each_model_loses(imported: None) -> None:
    """The pads the tracked models carried: pose landmarks 5 PADs, face mesh 3 channel PADs, face detector 11."""
    pose = bundled.load_model("pose_landmark_full")
    assert _steps(bundled.load_model("pose_landmark_full", fold=False), Pad) == 5 and _steps(pose, Pad) == 0
    mesh = bundled.load_model("face_landmark")
    assert _steps(mesh, Pad) == 0 and _steps(mesh, ChannelPadAdd) == 3
    detector = bundled.load_model("face_detection_short_range")
    assert _steps(detector, Pad) == 0 and _steps(detector, ChannelPadAdd) == 11


@pytest.mark.parametrize("pads", [(0, 1, 0, 1), (1, 2, 1, 2), (2, 0, 1, 0), (1, 1, 0, 2)])
@pytest.mark.parametrize("groups", [1, 3])
def test_uneven_padding_inside_the_convolution(pads: tuple[int, int, int, int], groups: int, astronaut) -> None:
    img = torch.from_numpy(astronaut[100:164, 180:250].copy()).permute(2, 0, 1)[None].float() / 255  # 64x70, odd/even
    torch.manual_seed(0)
    weight = torch.randn(6, 3 // groups, 3, 5)
    bias = torch.randn(6)
    conv = Conv(weight.clone(), bias, (2, 2), (1, 1), ((pads[2], pads[3]), (pads[0], pads[1])), groups, "NONE")
    expected = F.conv2d(F.pad(img, pads), weight, bias, 2, 0, 1, groups)
    assert conv.pre_pad is not None or pads[0] == pads[1] and pads[2] == pads[3]
    assert conv.set_pads(*pads) and conv.pre_pad is None
    assert torch.allclose(conv(img), expected, atol=1e-5)


def test_folded_model_exports_to_onnx(imported: None, basketball, tmp_path) -> None:
    """The in-place channel add exports in its plain form: ONNX Runtime gives what the folded torch module gives."""
    ort = pytest.importorskip("onnxruntime")
    from muse.models.backends import export_onnx

    name = "face_detection_short_range"  # 11 channel PAD + ADD folds
    model = bundled.load_model(name)
    x = bundled.reference_input(name, basketball)
    path = export_onnx(model, x, tmp_path / "folded.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x)
    for o, r in zip(outs, ref):
        assert abs(o - r.numpy()).max() <= bundled.PARITY_RTOL * max(1.0, float(r.abs().max()))
