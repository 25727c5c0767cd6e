"""The student model contract other nodes rely on: shapes, atomic save/load with meta, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muse.models.student import StudentPose, StudentSegmenter, load_student, load_student_pose, save_student


def _picture(astronaut, w=160, h=96):
    import cv2

    img = cv2.resize(astronaut, (w, h), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0


def test_forward_shape_any_size(astronaut):
    torch.manual_seed(0)
    m = StudentSegmenter().eval()
    with torch.no_grad():
        for w, h in ((160, 96), (150, 100)):  # multiples of 32 or not
            y = m(_picture(astronaut, w, h))
            assert y.shape == (1, 1, h, w)
            assert torch.isfinite(y).all()
    # small: well under a million parameters, so it is much cheaper than the base models
    assert sum(p.numel() for p in m.parameters()) < 1_000_000


def test_save_load_roundtrip_is_exact(tmp_path, astronaut):
    torch.manual_seed(0)
    m = StudentSegmenter(width=0.75).eval()
    x = _picture(astronaut)
    path = save_student(m, tmp_path / "s.pt", {"input_size": [160, 96], "profile": "front"})
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind
    m2, meta = load_student(path, "cpu")
    assert meta["input_size"] == [160, 96] and meta["profile"] == "front"
    assert m2.arch == {"width": 0.75, "decoder": 32}
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x))


def test_meta_needs_input_size_and_bad_files_are_explained(tmp_path):
    with pytest.raises(ValueError, match="input_size"):
        save_student(StudentSegmenter(), tmp_path / "s.pt", {})
    assert not (tmp_path / "s.pt").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="rollback|retrain"):
        load_student(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="muse studio train"):
        load_student(tmp_path / "missing.pt")


def test_pose_head_roundtrip_and_decode(tmp_path, astronaut):
    torch.manual_seed(0)
    m = StudentPose(num_keypoints=17).eval()
    x = _picture(astronaut)
    with torch.no_grad():
        hm = m(x)
    assert hm.shape == (1, 17, 24, 40)
    pts, conf = StudentPose.decode(hm, (160, 96))
    assert pts.shape == (1, 17, 2) and conf.shape == (1, 17)
    assert (pts[..., 0] <= 160).all() and (pts[..., 1] <= 96).all()
    path = save_student(m, tmp_path / "pose.pt", {"input_size": [160, 96], "skeleton": "coco17"})
    m2, meta = load_student_pose(path)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), hm)
    with pytest.raises(ValueError, match="pose"):
        load_student(path)  # a pose head is not a segmenter


def test_onnx_export_matches_torch(tmp_path, astronaut):
    import onnxruntime as ort

    from muse.studio.export import export_onnx

    torch.manual_seed(0)
    m = StudentSegmenter().eval()
    onnx_path = export_onnx(m, tmp_path / "student.onnx", (160, 96))
    x = _picture(astronaut)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = m(x).numpy()
    assert got.shape == (1, 1, 96, 160)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


@pytest.mark.cuda
def test_student_fp16_on_cuda_matches_fp32(astronaut):
    torch.manual_seed(0)
    m = StudentSegmenter().eval().cuda()
    x = _picture(astronaut, 640, 352).cuda()
    with torch.no_grad():
        ref = torch.sigmoid(m(x))
        half = torch.sigmoid(m.half()(x.half())).float()
    assert (ref - half).abs().max() < 0.05
