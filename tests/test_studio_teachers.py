"""Teachers on a real person-over-room scene: the clean-plate difference, voting,
and the SAM 2.1 / ViTPose code paths with random weights (no checkpoints here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muse.studio.synthetic import SyntheticScene
from muse.studio.teachers.base import TeacherUnavailable, iou, mask_box
from muse.studio.teachers.combine import TeacherSet, label_frames
from muse.studio.teachers.offline import CleanPlateTeacher


@pytest.fixture(scope="module")
def scene():
    return SyntheticScene(256, 144)


def test_clean_plate_teacher_finds_the_person(scene):
    teacher = CleanPlateTeacher(scene.clean_plate())
    for i in (0, 20, 45):
        rgb, truth = scene.frame(i)
        assert iou(teacher.mask(rgb), truth) > 0.9
    assert (teacher.mask(scene.clean_plate()) > 0.5).mean() < 0.002  # the empty room is empty


def test_clean_plate_teacher_rejects_a_plate_of_another_size(scene):
    teacher = CleanPlateTeacher(scene.clean_plate())
    from muse.studio.files import StudioError

    with pytest.raises(StudioError, match="re-record the plate"):
        teacher.mask(np.zeros((100, 100, 3), np.uint8))


class _Fixed:
    """A mask teacher with known answers, to check the voting arithmetic."""

    def __init__(self, name, masks):
        self.name, self._masks = name, masks

    def masks(self, frames, hints=None):
        return self._masks


def test_voting_uses_the_best_teacher_and_records_agreement(scene):
    rgb, truth = scene.frame(10)
    shifted = np.roll(truth, 40, axis=1)
    ts = TeacherSet(masks=[_Fixed("clean_plate", [truth]), _Fixed("selfie", [shifted])])
    (lab,) = label_frames(ts, [rgb])
    assert lab.teacher == "clean_plate"
    np.testing.assert_array_equal(lab.mask, truth)
    assert lab.agreement == pytest.approx(iou(truth, shifted))
    assert lab.agreement < 0.8


def test_sam2_teacher_needs_a_checkpoint_path():
    from muse.studio.teachers.sam2_teacher import Sam2Teacher

    with pytest.raises(TeacherUnavailable, match="checkpoint"):
        Sam2Teacher("configs/sam2.1/sam2.1_hiera_t.yaml", None)
    with pytest.raises(TeacherUnavailable, match="not found"):
        Sam2Teacher("configs/sam2.1/sam2.1_hiera_t.yaml", "/nonexistent/sam2.1_hiera_large.pt")


def test_sam2_prompts_come_from_mask_and_keypoints(scene):
    from muse.studio.teachers.sam2_teacher import prompts_from_hints

    rgb, truth = scene.frame(0)
    ys, xs = np.nonzero(truth > 0.5)
    kps = np.array([[xs[0], ys[0], 0.9], [3, 3, 0.9], [xs[-1], ys[-1], 0.2]], np.float32)
    p = prompts_from_hints({"mask": truth, "keypoints": kps}, truth.shape)
    assert p["points"].shape == (1, 2)  # outside-mask and low-confidence keypoints are not prompts
    box = p["box"]
    assert box[0] <= xs.min() and box[2] >= xs.max() and box[1] <= ys.min()
    p2 = prompts_from_hints({"mask": truth}, truth.shape)  # no keypoints: the mask's deepest point
    x, y = p2["points"][0]
    assert truth[int(y), int(x)] > 0.5


@pytest.mark.slow
def test_sam2_image_and_video_predictor_random_weights(scene):
    pytest.importorskip("sam2")
    from muse.studio.teachers.sam2_teacher import Sam2Teacher

    torch.manual_seed(0)
    frames = [scene.frame(i)[0] for i in range(3)]
    hints = [{"mask": scene.frame(i)[1]} for i in range(3)]
    t = Sam2Teacher("configs/sam2.1/sam2.1_hiera_t.yaml", None, "cpu", allow_random_weights=True, image_size=256, video=False)
    (m,) = t.masks(frames[:1], hints[:1])
    assert m.shape == (144, 256) and m.dtype == np.float32 and 0 <= m.min() <= m.max() <= 1
    t.video = True
    ms = t.masks(frames, hints)
    assert len(ms) == 3 and all(x.shape == (144, 256) and np.isfinite(x).all() for x in ms)


def test_vitpose_teacher_random_weights(scene):
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    from muse.studio.teachers.vitpose_teacher import VitPoseTeacher

    torch.manual_seed(0)
    cfg = VitPoseConfig(
        backbone_config=VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                              image_size=[64, 48], patch_size=[16, 16], out_indices=[2]),
        num_labels=17,
    )
    teacher = VitPoseTeacher.from_model(VitPoseForPoseEstimation(cfg))
    frames, boxes = [], []
    for i in (0, 15):
        rgb, truth = scene.frame(i)
        frames.append(rgb)
        boxes.append(mask_box(truth))
    frames.append(frames[0])
    boxes.append(None)  # nobody found: no keypoints
    out = teacher.keypoints(frames, boxes)
    assert out[2] is None
    for kp in out[:2]:
        assert kp.shape == (17, 3) and np.isfinite(kp).all()
        assert (kp[:, 2] >= 0).all() and (kp[:, 2] <= 1).all()


def test_vitpose_checkpoint_errors_say_what_to_set(tmp_path):
    from muse.studio.teachers.vitpose_teacher import VitPoseTeacher

    with pytest.raises(TeacherUnavailable, match="teachers.vitpose.checkpoint"):
        VitPoseTeacher.from_checkpoint(None)
    with pytest.raises(TeacherUnavailable, match="config.json"):
        VitPoseTeacher.from_checkpoint(tmp_path)


@pytest.mark.cuda
def test_sam2_teacher_bf16_on_cuda(scene):
    pytest.importorskip("sam2")
    from muse.studio.teachers.sam2_teacher import Sam2Teacher

    frames = [scene.frame(i)[0] for i in range(4)]
    hints = [{"mask": scene.frame(i)[1]} for i in range(4)]
    t = Sam2Teacher("configs/sam2.1/sam2.1_hiera_t.yaml", None, "cuda", allow_random_weights=True)
    ms = t.masks(frames, hints)
    assert len(ms) == 4 and all(np.isfinite(m).all() for m in ms)
