"""segment.student: a profile's student as a torch checkpoint and as the studio's ONNX export
(dynamic batch axis, student.json), same masks both ways; clear errors for missing models."""

from __future__ import annotations

import json

import cv2
import pytest
import torch

from muse.graph.node import NodeError
from muse.graph.payloads import Frame
from muse.graph.testing import make_context, run_node
from muse.models.student import StudentSegmenter, load_student, save_student
from muse.nodes.segment.student import StudentSegment


@pytest.fixture(scope="module")
def frame(astronaut):
    return Frame(torch.from_numpy(cv2.resize(astronaut, (160, 120), interpolation=cv2.INTER_AREA)))


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """A profile whose live model is a .pt, plus the studio's ONNX export of the same weights."""
    root = tmp_path_factory.mktemp("profile")
    torch.manual_seed(0)
    model = StudentSegmenter(width=0.5, decoder=16)
    with torch.no_grad():
        model.head.bias.fill_(0.5)
    live = root / "models" / "live"
    pt = save_student(model, live / "student.pt", {"input_size": [96, 64]})
    from muse.studio.export import export_onnx  # the exporter the studio really uses

    export_onnx(load_student(pt)[0], live / "student.onnx", (96, 64))
    (live / "student.json").write_text(json.dumps({"input_size": [96, 64], "format": "onnx"}))
    (root / "profile.yaml").write_text("name: me\nlive_model: models/live/student.pt\n")
    return root


def test_profile_live_model(profile, frame):
    mask = run_node(StudentSegment, {"profile": str(profile)}, frame=frame)["mask"]
    assert mask.size == (96, 64)
    a = mask.alpha
    assert torch.isfinite(a).all() and 0 < float(a.min()) and float(a.max()) < 1 and float(a.std()) > 1e-4


def test_onnx_export_matches_checkpoint(profile, frame):
    pt = run_node(StudentSegment, {"model": str(profile / "models/live/student.pt")}, frame=frame)["mask"].alpha
    onnx = run_node(StudentSegment, {"model": str(profile / "models/live/student.onnx")}, frame=frame)["mask"].alpha
    assert onnx.shape == pt.shape
    assert float((onnx - pt).abs().max()) < 1e-4


def test_profile_without_model_says_how_to_get_one(tmp_path, frame):
    (tmp_path / "profile.yaml").write_text("name: me\n")
    node = StudentSegment("student", StudentSegment.Params(profile=str(tmp_path)))
    with pytest.raises(NodeError, match="'student'.*field 'profile'.*muse studio export"):
        node.open(make_context("student"))


def test_no_profile_and_no_model(frame):
    node = StudentSegment("student", StudentSegment.Params())
    with pytest.raises(NodeError, match="field 'profile'.*field 'model'"):
        node.open(make_context("student"))


def test_onnx_without_student_json_is_named(tmp_path, profile):
    lone = tmp_path / "student.onnx"
    lone.write_bytes((profile / "models/live/student.onnx").read_bytes())
    node = StudentSegment("student", StudentSegment.Params(model=str(lone)))
    with pytest.raises(NodeError, match="student.json"):
        node.open(make_context("student"))


@pytest.mark.cuda
def test_cuda_onnx_student_on_gpu(profile, frame):
    cpu = run_node(StudentSegment, {"model": str(profile / "models/live/student.pt")}, frame=frame)["mask"].alpha
    gpu = run_node(StudentSegment, {"model": str(profile / "models/live/student.pt")}, device="cuda",
                   frame=Frame(frame.image.cuda()))["mask"].alpha
    assert gpu.is_cuda and float((gpu.float().cpu() - cpu).abs().max()) < 2e-2
