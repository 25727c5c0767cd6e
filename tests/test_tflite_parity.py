"""Parity of every bundled model converted to torch against the TFLite interpreter
(ai-edge-litert) on real pictures: astronaut, messi5, basketball1.

Tolerance: max |torch - TFLite| <= 2e-3 * max(1, max |TFLite|) per output
(seen: <= 5e-5 on most outputs; ~9e-4 on pose_landmark_full's raw segmentation
logits, which reach ~1700: TFLite's own XNNPACK and reference kernels differ there
by the same order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muse.models import bundled
from muse.models.tflite import convert_tflite, load_artifact, read_tflite, save_artifact

litert = pytest.importorskip("ai_edge_litert.interpreter", reason="the reference interpreter (pip install ai-edge-litert)")

MODELS = bundled.list_models()


@pytest.fixture(scope="module")
def tflite_files() -> dict[str, bytes]:
    """The original .tflite bytes, from the user cache (imported once, seconds)."""
    bundled.import_models(MODELS, os_environ_source(), onnx=False)
    return {n: (bundled.model_dir(n) / bundled.CATALOGUE[n].file_name).read_bytes() for n in MODELS}


def os_environ_source() -> str | None:
    import os

    return os.environ.get(bundled.MODELS_FROM_ENV) or None


@pytest.fixture(scope="module")
def pictures(astronaut, messi, basketball) -> dict[str, np.ndarray]:
    return {"astronaut": astronaut, "messi5": messi, "basketball1": basketball}


@pytest.mark.parametrize("name", MODELS)
def test_converted_model_matches_tflite_on_real_pictures(name: str, tflite_files, pictures) -> None:
    data = tflite_files[name]
    module = convert_tflite(data)
    info = bundled.model_info(name)
    assert [tuple(o["shape"]) for o in info["outputs"]] == list(module.output_shapes)
    for label, picture in pictures.items():
        x = bundled.reference_input(name, picture)
        ref = bundled.tflite_reference(name, data, x)
        with torch.no_grad():
            got = [t.numpy() for t in module(x)]
        assert len(got) == len(ref)
        for i, (r, g) in enumerate(zip(ref, got)):
            assert g.shape == r.shape, f"{name} output {i} on {label}: shape {g.shape} vs TFLite {r.shape}"
            scale = max(1.0, float(np.abs(r).max()))
            err = float(np.abs(r - g).max())
            assert err <= bundled.PARITY_RTOL * scale, f"{name} output {i} on {label}: max error {err:.3g} (scale {scale:.3g})"
            assert np.isfinite(g).all()


def test_pose_landmark_mask_matches_after_sigmoid(tflite_files, basketball) -> None:
    """The one output with loose raw numbers (logits ~1e3) is close where it is used: as a probability.
    (TFLite's own XNNPACK and reference kernels differ by 8.7e-4 here; rounding grows in its 256x256 head.)"""
    name = "pose_landmark_full"
    x = bundled.reference_input(name, basketball)
    ref = bundled.tflite_reference(name, tflite_files[name], x)
    with torch.no_grad():
        got = convert_tflite(tflite_files[name])(x)
    prob_err = float((torch.sigmoid(got[2]) - torch.sigmoid(torch.from_numpy(ref[2]))).abs().max())
    assert prob_err < 2e-3


def test_sparse_and_fp16_weights_are_folded(tflite_files) -> None:
    """pose_detection stores 38 sparse fp16 weight tensors (DENSIFY + DEQUANTIZE): none survive as operators."""
    graph = read_tflite(tflite_files["pose_detection"])
    kinds = graph.op_kinds()
    assert "DENSIFY" not in kinds and "DEQUANTIZE" not in kinds
    assert kinds["DEPTH_TO_SPACE"] == 3 and kinds["CONV_2D"] == 45


def test_artifact_round_trip_is_exact_and_safe(tflite_files, tmp_path, messi) -> None:
    name = "face_detection_short_range"
    graph = read_tflite(tflite_files[name])
    path = save_artifact(graph, tmp_path / "fd.pt", meta={"name": name})
    with pytest.raises(FileExistsError):
        save_artifact(graph, path, overwrite=False)
    loaded, meta = load_artifact(path)
    assert meta["name"] == name
    torch.load(path, weights_only=True)  # no pickled code inside
    x = bundled.reference_input(name, messi)
    with torch.no_grad():
        a, b = convert_tflite(tflite_files[name])(x), loaded(x)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed, not left behind


def test_batch_of_two_gives_each_pictures_own_result(tflite_files, astronaut, messi) -> None:
    name = "selfie_segmentation"
    module = convert_tflite(tflite_files[name])
    xa, xm = bundled.reference_input(name, astronaut), bundled.reference_input(name, messi)
    with torch.no_grad():
        (both,) = module(torch.cat([xa, xm]))
        (one,) = module(xm)
    assert both.shape == (2, 256, 256, 1)
    assert float((both[1] - one[0]).abs().max()) < 5e-4  # batched convs pick other kernels: float noise only
