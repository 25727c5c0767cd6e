"""segment.hybrid: student > MODNet > bundled selfie, safe-mode fallback on real faulty files
(unreadable student, NaN weights, empty output) and on an injected runtime error, and a newly
exported student picked up while running. The live mode is read from the node's stats."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import pytest
import torch

from muse.graph.node import NodeError
from muse.graph.payloads import Frame
from muse.graph.testing import build_node, make_context
from muse.models.modnet import MODNet, save_modnet_official
from muse.models.student import StudentSegmenter, save_student
from muse.nodes.segment.hybrid import HybridSegment

SIZE = 128


@pytest.fixture(autouse=True)
def one_thread():
    # Several models per test on 2 shared cores: one thread each avoids oversubscription.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def frame(astronaut):
    return Frame(torch.from_numpy(cv2.resize(astronaut, (SIZE, SIZE), interpolation=cv2.INTER_AREA)))


@pytest.fixture(scope="module")
def modnet_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_modnet_official(MODNet(), tmp_path_factory.mktemp("modnet") / "modnet_webcam_portrait_matting.ckpt")


def _student(path: Path, head_bias: float | None = None, nan: bool = False) -> Path:
    torch.manual_seed(0)
    model = StudentSegmenter(width=0.5, decoder=16)
    with torch.no_grad():
        if head_bias is not None:  # -30: a student that sees nobody anywhere
            model.head.weight.zero_()
            model.head.bias.fill_(head_bias)
        if nan:  # a training run that diverged
            model.head.bias.fill_(float("nan"))
    return save_student(model, path, {"input_size": [64, 64]})


def _profile(root: Path, live: str | None = "models/live/student.pt") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "profile.yaml").write_text(f"name: streamer\nlive_model: {live}\n" if live else "name: streamer\n")
    return root


class Harness:
    """The hybrid node opened on CPU with its stats visible (what `--stats` shows)."""

    def __init__(self, **params) -> None:
        params.setdefault("modnet_height", 64)
        self.node = build_node(HybridSegment, params, name="seg")
        self.ctx = make_context("seg", resolution=(SIZE, SIZE))
        self.node.open(self.ctx)

    @property
    def info(self) -> dict:
        return self.ctx.stats.info

    def run(self, frame: Frame, n: int = 1):
        out = None
        for _ in range(n):
            out = self.node.process(frame=frame)["mask"]
            assert torch.isfinite(out.alpha).all()
        return out

    def close(self) -> None:
        self.node.close()


@pytest.fixture
def harness():
    made: list[Harness] = []

    def make(**params) -> Harness:
        h = Harness(**params)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_priority_student_then_modnet_then_bundled(tmp_path, modnet_ckpt, frame, harness):
    profile = _profile(tmp_path / "profile")
    _student(profile / "models/live/student.pt")
    h = harness(profile=str(profile), modnet_checkpoint=str(modnet_ckpt))
    assert h.run(frame).size == (64, 64)  # the student's input_size
    assert h.info["mode"] == "personalized" and h.info["live"] == "student"
    assert h.info["branches"] == {"student": "loaded", "modnet": "loaded", "selfie": "loaded"}

    h = harness(modnet_checkpoint=str(modnet_ckpt))
    assert h.run(frame).size == (64, 64) and h.info["mode"] == "base" and h.info["live"] == "modnet"

    h = harness()
    mask = h.run(frame)
    assert h.info["mode"] == "bundled" and mask.size == (256, 256)
    assert float(mask.alpha.mean()) > 0.2  # the real selfie model finds the astronaut


def test_prefer_overrides_the_order(tmp_path, modnet_ckpt, frame, harness):
    h = harness(modnet_checkpoint=str(modnet_ckpt), prefer="bundled")
    h.run(frame)
    assert h.info["mode"] == "bundled"


def test_unreadable_student_falls_back_at_open(tmp_path, modnet_ckpt, frame, harness):
    profile = _profile(tmp_path / "profile")
    live = profile / "models/live/student.pt"
    live.parent.mkdir(parents=True)
    live.write_bytes(b"PK\x03\x04 half a file")
    h = harness(profile=str(profile), modnet_checkpoint=str(modnet_ckpt), bundled=False)
    h.run(frame)
    assert h.info["mode"] == "base"
    assert h.info["branches"]["student"].startswith("failed: ") and "student.pt" in h.info["branches"]["student"]


def test_nan_student_falls_back_on_the_same_frame(tmp_path, modnet_ckpt, frame, harness):
    profile = _profile(tmp_path / "profile")
    _student(profile / "models/live/student.pt", nan=True)
    h = harness(profile=str(profile), modnet_checkpoint=str(modnet_ckpt), bundled=False)
    h.run(frame, 3)  # every output finite (checked in run)
    assert h.info["mode"] == "base"
    assert "NaN" in h.info["last_fault"]


def test_runtime_error_mid_stream_switches_and_logs(tmp_path, modnet_ckpt, frame, harness, caplog):
    profile = _profile(tmp_path / "profile")
    _student(profile / "models/live/student.pt")
    h = harness(profile=str(profile), modnet_checkpoint=str(modnet_ckpt), retry_s=3600, bundled=False)
    h.run(frame, 2)
    assert h.info["mode"] == "personalized"

    def broken(_frame):  # injected fault: the GPU driver resets under the student, say
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    h.node.branches[0].run = broken
    with caplog.at_level("WARNING"):
        h.run(frame, 2)
    assert h.info["mode"] == "base" and h.info["switches"] == 1
    assert "illegal memory access" in h.info["last_fault"]
    assert any("switched from personalized to base" in r.getMessage() for r in caplog.records)


def test_empty_student_gives_way_when_base_sees_a_person(tmp_path, modnet_ckpt, frame, harness):
    profile = _profile(tmp_path / "profile")
    _student(profile / "models/live/student.pt", head_bias=-30.0)
    h = harness(profile=str(profile), empty_frames=3)  # base here: the bundled selfie model
    h.run(frame, 2)
    assert h.info["mode"] == "personalized"
    # Health numbers are read a frame late (on every device): 3 empty frames are judged by frame 4,
    # which asks the bundled model; its answer, judged on frame 5, hands it the stream.
    out = h.run(frame, 4)
    assert h.info["mode"] == "bundled" and float(out.alpha.mean()) > 0.2
    assert "empty mask" in h.info["last_fault"]


def test_empty_is_fine_when_nobody_is_there(tmp_path, frame, harness):
    profile = _profile(tmp_path / "profile")
    _student(profile / "models/live/student.pt", head_bias=-30.0)
    h = harness(profile=str(profile), empty_frames=2)
    wall = Frame(torch.full((SIZE, SIZE, 3), 128, dtype=torch.uint8))  # an empty grey wall
    h.run(wall, 5)
    assert h.info["mode"] == "personalized"


def test_new_student_is_picked_up_live(tmp_path, modnet_ckpt, frame, harness):
    profile = _profile(tmp_path / "profile", live=None)
    h = harness(profile=str(profile), modnet_checkpoint=str(modnet_ckpt), watch_s=0.2, bundled=False)
    h.run(frame)
    assert h.info["mode"] == "base" and h.info["branches"]["student"] == "not loaded"

    # Studio exports: the model first, then profile.yaml points at it.
    _student(profile / "models/live/student.pt")
    _profile(profile)
    deadline = time.monotonic() + 20
    while h.info["mode"] != "personalized" and time.monotonic() < deadline:
        h.run(frame)  # frames keep flowing while the new model loads
        time.sleep(0.05)
    assert h.info["mode"] == "personalized" and h.info["student_swaps"] == 1

    # A broken export replaces it: the running student stays.
    (profile / "models/live/student.pt").write_bytes(b"garbage")
    deadline = time.monotonic() + 20
    while "last_swap_error" not in h.info and time.monotonic() < deadline:
        h.run(frame)
        time.sleep(0.05)
    assert "student.pt" in h.info["last_swap_error"]
    h.run(frame, 2)
    assert h.info["mode"] == "personalized" and h.info["student_swaps"] == 1


def test_nothing_loadable_is_a_clear_error(tmp_path):
    node = build_node(HybridSegment, {"modnet_checkpoint": str(tmp_path / "missing.ckpt"), "bundled": False}, name="seg")
    with pytest.raises(NodeError, match="'seg'.*missing.ckpt not found.*modnet_checkpoint"):
        node.open(make_context("seg"))


@pytest.mark.cuda
def test_cuda_nan_student_never_reaches_the_output(tmp_path, modnet_ckpt, astronaut):
    profile = _profile(tmp_path / "profile")
    _student(profile / "models/live/student.pt", nan=True)
    node = build_node(HybridSegment, {"profile": str(profile), "modnet_checkpoint": str(modnet_ckpt), "modnet_height": 64,
                                      "bundled": False}, name="seg")
    ctx = make_context("seg", "cuda", resolution=(SIZE, SIZE))
    node.open(ctx)
    frame = Frame(torch.from_numpy(cv2.resize(astronaut, (SIZE, SIZE))).cuda())
    try:
        for _ in range(4):
            with torch.cuda.stream(ctx.stream):
                out = node.process(frame=frame)["mask"]
            ctx.stream.synchronize()
            assert torch.isfinite(out.alpha).all()
        assert ctx.stats.info["mode"] == "base"  # the NaN check is read a frame late, without a sync
    finally:
        node.close()


def _onnx_version(folder: Path, bias: float) -> Path:
    """A studio-style version folder: student.onnx (dynamic batch) + student.json."""
    import json

    from muse.studio.export import export_onnx

    torch.manual_seed(0)
    model = StudentSegmenter(width=0.5, decoder=16)
    with torch.no_grad():
        model.head.bias.fill_(bias)
    folder.mkdir(parents=True)
    export_onnx(model, folder / "student.onnx", (64, 64))
    (folder / "student.json").write_text(json.dumps({"input_size": [64, 64], "format": "onnx"}))
    return folder


def test_studio_symlink_swap_is_picked_up(tmp_path, modnet_ckpt, frame, harness):
    import os

    profile = _profile(tmp_path / "profile", live="models/live/student.onnx")
    v1 = _onnx_version(profile / "models/versions/v0001", 0.0)
    v2 = _onnx_version(profile / "models/versions/v0002", 3.0)
    live = profile / "models/live"
    os.symlink(os.path.relpath(v1, live.parent), live)
    h = harness(profile=str(profile), modnet_checkpoint=str(modnet_ckpt), watch_s=0.2, bundled=False)
    before = float(h.run(frame).alpha.mean())
    assert h.info["mode"] == "personalized"

    tmp = live.with_name(".live.tmp")  # what `muse studio export` does: one atomic symlink replace
    os.symlink(os.path.relpath(v2, live.parent), tmp)
    os.replace(tmp, live)
    deadline = time.monotonic() + 20
    while h.info["student_swaps"] == 0 and time.monotonic() < deadline:
        h.run(frame)
        time.sleep(0.05)
    after = float(h.run(frame).alpha.mean())
    assert h.info["student_swaps"] == 1 and h.info["mode"] == "personalized"
    assert after > before + 0.2  # the new version (head bias +3) is the one running


def test_better_model_comes_back_after_retry(tmp_path, modnet_ckpt, frame, harness):
    profile = _profile(tmp_path / "profile")
    _student(profile / "models/live/student.pt")
    h = harness(profile=str(profile), modnet_checkpoint=str(modnet_ckpt), bundled=False, retry_s=0.3)
    h.run(frame)
    student = h.node.branches[0].run
    calls = {"n": 0}

    def flaky(f):  # injected fault: one failure, then healthy again
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("transient")
        return student(f)

    h.node.branches[0].run = flaky
    now = [1000.0]  # the policy's clock, moved by hand: a loaded machine must not decide what "within retry_s" is
    h.node._policy.clock = lambda: now[0]
    h.run(frame)
    assert h.info["mode"] == "base"
    now[0] += 0.2
    h.run(frame)  # within retry_s: the student is not asked again
    assert calls["n"] == 1 and h.info["mode"] == "base"
    now[0] += 0.15
    h.run(frame)
    assert h.info["mode"] == "personalized" and h.info["switches"] == 2


def test_student_node_picks_up_a_new_export_and_is_absent_without_one(tmp_path, frame):
    """segment.student (the hybrid sub-graph's personalized branch) shares the hybrid's watcher: a new
    export is swapped in while streaming, a broken one leaves the running model; no student is NodeAbsent."""
    from muse.graph.node import NodeAbsent
    from muse.nodes.segment.student import StudentSegment

    empty = _profile(tmp_path / "empty", live=None)
    with pytest.raises(NodeAbsent, match="segment.student"):
        build_node(StudentSegment, {"profile": str(empty)}, name="s").open(make_context("s"))
    with pytest.raises(NodeAbsent, match="field 'profile'"):
        build_node(StudentSegment, {}, name="s").open(make_context("s"))

    profile = _profile(tmp_path / "profile")
    _student(profile / "models/live/student.pt", head_bias=-30.0)  # sees nobody
    node = build_node(StudentSegment, {"profile": str(profile), "watch_s": 0.2}, name="s")
    ctx = make_context("s", resolution=(SIZE, SIZE))
    node.open(ctx)
    try:
        assert float(node.process(frame=frame)["mask"].alpha.mean()) < 0.01
        time.sleep(0.05)
        _student(profile / "models/live/student.pt", head_bias=30.0)  # a new export: sees everything
        deadline = time.monotonic() + 20
        while ctx.stats.info.get("student_swaps") != 1 and time.monotonic() < deadline:
            node.process(frame=frame)
            time.sleep(0.05)
        assert ctx.stats.info.get("student_swaps") == 1
        assert float(node.process(frame=frame)["mask"].alpha.mean()) > 0.99
        (profile / "models/live/student.pt").write_bytes(b"garbage")
        deadline = time.monotonic() + 20
        while "last_swap_error" not in ctx.stats.info and time.monotonic() < deadline:
            node.process(frame=frame)
            time.sleep(0.05)
        assert "student.pt" in ctx.stats.info["last_swap_error"]
        assert float(node.process(frame=frame)["mask"].alpha.mean()) > 0.99, "the running model stays"
    finally:
        node.close()
