"""The pose tracker's person mask merged into the bundled selfie model's (`segment.person`, issue 14, 22nd
session), on real photos: bench/quality_extra.py's astronaut swaying in front of scikit-image's cat (the selfie
model takes the cat's face for a person), a guest standing beside the streamer inside the pose's crop (kept), the
merge's rules on small planes, `pose.blazepose`'s mask with its crop's coverage, the coverage's shape checked, and
the plate's phase correlation that a crisp matte had fooled (coffee_shake_ramp's shaken frames)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from muse.graph.payloads import Frame, Mask
from muse.graph.testing import build_node, make_context
from muse.nodes.pose.blazepose import BlazePose
from muse.nodes.segment.hybrid import HybridSegment
from muse.nodes.segment.person import PersonMerge, with_person
from muse.nodes.segment.selfie import SelfieSegment

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import quality  # noqa: E402
import quality_extra  # noqa: E402

W, H = 640, 360


def _open(cls, params: dict, name: str, device: str = "cpu"):
    node = build_node(cls, params, name)
    node.open(make_context(name, device, resolution=(W, H)))
    return node


def _masks(clip, person: bool, path: str, monkeypatch, device: str = "cpu") -> list[np.ndarray]:
    """segment.selfie's mask of each frame at the frame's size, with or without pose.blazepose's person mask;
    path "cpu" (ONNX Runtime) or "torch" (the GPU path's code)."""
    if path == "torch":
        monkeypatch.setenv("MUSE_CPU_PATH", "torch")
    else:
        monkeypatch.delenv("MUSE_CPU_PATH", raising=False)
    seg, merge = _open(SelfieSegment, {}, "seg", device), _open(PersonMerge, {}, "person", device)
    pose = _open(BlazePose, {}, "pose", device) if person else None
    out = []
    try:
        for i, img in enumerate(clip.frames):
            f = Frame(torch.from_numpy(img).to(device), i / 30.0, i)
            kw = {"person": pose.process(frame=f)["mask"]} if pose is not None else {}
            m = merge.process(mask=seg.process(frame=f)["mask"], **kw)["out"].alpha.float()
            out.append(F.interpolate(m[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0].cpu().numpy())
    finally:
        seg.close()
        if pose is not None:
            pose.close()
    return out


def _iou(p: np.ndarray, a: np.ndarray) -> float:
    pb, gb = p > 0.5, a > 0.5
    return float((pb & gb).sum() / max(1, (pb | gb).sum()))


def _far_room(alpha: np.ndarray) -> np.ndarray:
    """Room more than 15 px from anybody."""
    import cv2

    return cv2.dilate((alpha > 0.01).astype(np.uint8), np.ones((31, 31), np.uint8)) == 0


@pytest.mark.parametrize("path", ["cpu", "torch"])
def test_the_cat_is_let_go_and_the_person_outlined(path, monkeypatch):
    """quality_extra's cat_clutter, 10 frames: the selfie model alone gives her a mean IoU of 0.55 and the room
    beyond 15 px of her (the cat) 0.149 of a person; with the pose's person 0.685-0.688 and 0.085-0.086 (measured,
    both paths; the fused matte then makes 0.78 -> 0.84 of it over 40 frames, bench/quality_extra.py)."""
    clip = next(c for c in quality_extra.clips(H, 10) if c.name == "cat_clutter")
    alone, merged = _masks(clip, False, path, monkeypatch), _masks(clip, True, path, monkeypatch)
    iou = [np.mean([_iou(p, a) for p, a in zip(run, clip.alphas)]) for run in (alone, merged)]
    cat = [np.mean([p[_far_room(a)].mean() for p, a in zip(run, clip.alphas)]) for run in (alone, merged)]
    assert iou[1] > iou[0] + 0.1, iou
    assert cat[1] < cat[0] - 0.04, cat


def test_a_guest_beside_the_streamer_is_kept(monkeypatch):
    """The astronaut and Messi side by side in the home room, both inside the pose's crop (the pose model draws one
    person): the guest keeps most of the selfie model's mask. Measured: IoU over both 0.831 alone, 0.823 merged (0.59
    when the pose's mask replaced the selfie model's over its whole crop, a rule tried and not kept); of Messi's own
    pixels 0.84 are person alone, 0.70 merged (his edge near her goes to the pose's outline, his unsure parts are
    scaled by their sureness); the fused matte after it: 0.858 alone, 0.853 merged."""
    scene = quality.Scene("side_by_side", "home", "two people beside each other",
                          lambda t: [("astronaut", 0.40 + 0.05 * math.sin(t * 2), 0.15, 0.85, False), ("messi", 0.64, 0.22, 0.78, True)])
    clip = quality.render(scene, W, H, 8, seed=7)
    guest = quality.Scene("guest", "home", "", lambda t: [("messi", 0.64, 0.22, 0.78, True)])
    guest_alpha = quality.render(guest, W, H, 1, seed=7).alphas[0] > 0.5
    alone, merged = _masks(clip, False, "cpu", monkeypatch), _masks(clip, True, "cpu", monkeypatch)
    iou = [np.mean([_iou(p, a) for p, a in zip(run, clip.alphas)]) for run in (alone, merged)]
    assert iou[1] > iou[0] - 0.03, iou
    kept = [np.mean([(p[guest_alpha] > 0.5).mean() for p in run]) for run in (alone, merged)]
    assert kept[1] > 0.6, kept


def test_the_merge_rules_on_small_planes():
    """Near the pose's person its mask; in its crop away from the person the selfie model's sure opinion stays and
    an unsure one goes; outside the crop, or with no coverage at all, the selfie model's mask untouched."""
    h, w = 40, 80
    selfie = torch.zeros(h, w)
    selfie[10:30, 10:20] = 0.6  # an unsure blob inside the crop, far from the person
    selfie[10:30, 30:40] = 0.99  # the tracked person, as the selfie model sees them (blurry)
    selfie[10:30, 50:56] = 0.95  # a sure second person, inside the crop
    selfie[10:30, 70:76] = 0.6  # an unsure blob outside the crop
    pose = torch.zeros(h, w)
    pose[8:32, 31:39] = 1.0  # the pose's sharper outline of the tracked person
    cover = torch.zeros(h, w)
    cover[:, :64] = 1.0
    out = with_person(selfie, Mask(pose, coverage=cover), reach=0.1)  # reach 4 px
    assert torch.equal(out[:, 31:39][8:32], pose[8:32, 31:39])  # the pose's outline, where it says person
    assert float(out[20, 29]) < 0.01 and float(out[9, 35]) == 1.0  # the blurry edge trimmed, the missed rim added
    assert float(out[20, 15]) == pytest.approx(0.6 * (0.6 - 0.5) / 0.4)  # the unsure blob in the crop let go (0.15)
    assert float(out[20, 53]) == pytest.approx(0.95)  # the sure guest kept
    assert torch.equal(out[:, 64:], selfie[:, 64:])  # outside the crop: untouched
    nobody = with_person(selfie, Mask(torch.zeros(h, w), coverage=torch.zeros(h, w)), reach=0.1)
    assert torch.equal(nobody, selfie)


def test_blazepose_gives_its_mask_with_the_crops_coverage(monkeypatch):
    """On the astronaut (quality.py's steady clip, first frame): the coverage is the tracked crop's footprint (a
    square about the body, 0 elsewhere) and the mask lies inside it."""
    monkeypatch.delenv("MUSE_CPU_PATH", raising=False)
    clip = next(iter(quality.all_clips(H, 1, {"steady"})))
    pose = _open(BlazePose, {}, "pose")
    try:
        m = pose.process(frame=Frame(torch.from_numpy(clip.frames[0]), 0.0, 0))["mask"]
    finally:
        pose.close()
    assert m.coverage is not None and m.coverage.shape == m.alpha.shape
    cov = m.coverage.float()
    assert 0.2 < float((cov > 0.5).float().mean()) < 0.97 and float(cov.min()) == 0.0  # a crop, not the whole frame
    assert float(m.alpha[cov < 0.01].abs().max()) < 1e-5
    truth = F.interpolate(torch.from_numpy(clip.alphas[0])[None, None], size=m.alpha.shape, mode="bilinear")[0, 0]
    assert _iou(m.alpha.float().numpy(), truth.numpy()) > 0.85


def test_a_coverage_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="Mask.coverage must have the alpha's shape"):
        Mask(torch.zeros(4, 6), coverage=torch.zeros(4, 5))


def test_hybrid_hands_the_person_to_the_bundled_model_only(monkeypatch):
    """segment.hybrid with only the bundled model live gives what segment.selfie -> segment.person give with the
    same person."""
    monkeypatch.delenv("MUSE_CPU_PATH", raising=False)
    clip = next(c for c in quality_extra.clips(H, 2) if c.name == "cat_clutter")
    f = Frame(torch.from_numpy(clip.frames[1]), 1 / 30.0, 1)
    pose = _open(BlazePose, {}, "pose")
    person = pose.process(frame=f)["mask"]
    pose.close()
    seg, hyb, merge = _open(SelfieSegment, {}, "seg"), _open(HybridSegment, {}, "hyb"), _open(PersonMerge, {}, "person")
    try:
        a = merge.process(mask=seg.process(frame=f)["mask"], person=person)["out"].alpha
        b = hyb.process(frame=f, person=person)["mask"].alpha.clone()  # (the node's own buffer: the next call rewrites it)
        c = hyb.process(frame=f)["mask"].alpha
    finally:
        seg.close(), hyb.close()
    assert float((a.float() - b.float()).abs().max()) < 1e-3, float((a.float() - b.float()).abs().max())
    assert float((b.float() - c.float()).abs().max()) > 0.3  # the person made a difference


@pytest.mark.parametrize("path", ["cpu", "torch"])
def test_the_plate_is_found_on_shaken_frames_beside_a_crisp_matte(path, monkeypatch):
    """quality_extra's coffee_shake_ramp with its recorded plate, the model's mask as stream_4k makes it: the plate
    was found at (0, 0) on the shaken frames 1 and 2 once the pose's person sharpened the matte (IoU 0.92 / 0.88);
    with the phase correlation's weight softened (SHIFT_SOFTEN) every frame is >= 0.98 (measured 0.982-0.986)."""
    from muse.nodes.segment.fused import FusedSegment

    if path == "torch":
        monkeypatch.setenv("MUSE_CPU_PATH", "torch")
    else:
        monkeypatch.delenv("MUSE_CPU_PATH", raising=False)
    clip = next(c for c in quality_extra.clips(H, 4) if c.name == "coffee_shake_ramp")
    matte = _open(FusedSegment, {}, "matte")
    plate = Frame(torch.from_numpy(clip.plate), 0.0, 0)
    try:
        ious = []
        for i, (f, prior) in enumerate(quality.priors(clip, torch.device("cpu"), {})):
            m = matte.process(frame=f, prior=prior, plate=plate)["mask"].alpha.float()
            m = F.interpolate(m[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()
            ious.append(_iou(m, clip.alphas[i]))
    finally:
        matte.close()
    assert min(ious) > 0.97, ious


@pytest.mark.cuda
def test_cuda_merge_reads_nothing_back_and_matches_the_cpu(monkeypatch):
    """The merge on the GPU (fp16 selfie mask, fp32 pose mask) under the sync-error mode, against the torch path on
    the CPU for the same frames."""
    clip = next(c for c in quality_extra.clips(H, 3) if c.name == "cat_clutter")
    cpu = _masks(clip, True, "torch", monkeypatch)
    seg, pose = _open(SelfieSegment, {"backend": "torch"}, "seg", "cuda"), _open(BlazePose, {}, "pose", "cuda")
    merge = _open(PersonMerge, {}, "person", "cuda")
    try:
        for i, img in enumerate(clip.frames):
            f = Frame(torch.from_numpy(img).cuda(), i / 30.0, i)
            person, mask = pose.process(frame=f)["mask"], seg.process(frame=f)["mask"]
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                m = merge.process(mask=mask, person=person)["out"].alpha
            finally:
                torch.cuda.set_sync_debug_mode("default")
            g = F.interpolate(m.float()[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
            assert np.abs(g - cpu[i]).mean() < 0.02
    finally:
        seg.close(), pose.close()


def test_mask_on_cpu_off_says_nothing_and_leaves_the_selfie_mask(monkeypatch):
    """stream_4k's pose on the CPU path (`mask_on_cpu: false`): its mask, still read by segment.selfie, covers
    nothing, so the selfie model's mask leaves the merge exactly as it came (and the landmark model skips its mask
    half)."""
    from muse.graph.testing import make_context

    monkeypatch.delenv("MUSE_CPU_PATH", raising=False)
    clip = next(c for c in quality_extra.clips(H, 1) if c.name == "cat_clutter")
    f = Frame(torch.from_numpy(clip.frames[0]), 0.0, 0)
    pose = build_node(BlazePose, {"mask_on_cpu": False, "mask_size": 256}, "pose")
    ctx = make_context("pose", "cpu", resolution=(W, H))
    ctx.wanted_outputs = frozenset({"keypoints", "mask"})
    pose.open(ctx)
    try:
        m = pose.process(frame=f)["mask"]
        assert not pose.tracker.mask  # the mask half is not run
    finally:
        pose.close()
    assert m.coverage is not None and float(m.coverage.abs().max()) == 0.0 and m.alpha.shape == (144, 256)
    seg, merge = _open(SelfieSegment, {}, "seg"), _open(PersonMerge, {}, "person")
    try:
        alone = seg.process(frame=f)["mask"]
        merged = merge.process(mask=alone, person=m)["out"].alpha
        assert merge.process(mask=alone)["out"] is alone  # no person: the mask passes through
    finally:
        seg.close()
    assert torch.equal(alone.alpha, merged)
