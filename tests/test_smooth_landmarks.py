"""landmarks.smooth: less jitter when still (synthetic camera noise and the real
pose model on a noisy photo), little lag when moving, lost points pass through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muse.graph.payloads import FaceLandmarks, Frame, Keypoints
from muse.graph.testing import build_node, make_context, run_node_frames
from muse.nodes.face import regions as REG
from muse.nodes.landmarks.smooth import Smooth

# A standing person in a 1280x720 frame (BlazePose-33 layout, pixels): realistic spacing, not random.
POSE = torch.tensor([
    [640, 200], [650, 188], [656, 188], [662, 188], [630, 188], [624, 188], [618, 188], [672, 195], [608, 195],
    [650, 215], [630, 215], [700, 260], [580, 260], [720, 340], [560, 340], [730, 420], [550, 420], [735, 435],
    [545, 435], [732, 438], [548, 438], [728, 432], [552, 432], [675, 430], [605, 430], [680, 540], [600, 540],
    [682, 650], [598, 650], [680, 665], [600, 665], [690, 680], [590, 680],
], dtype=torch.float32)  # fmt: skip


def _kp(points: torch.Tensor, i: int, conf: torch.Tensor | None = None) -> Keypoints:
    c = conf if conf is not None else torch.ones(points.shape[0])
    return Keypoints(points, c, "blazepose33", (1280, 720), timestamp=i / 30, index=i)


def test_still_person_jitter_is_cut_below_30_percent():
    """Camera-like noise (sigma 1.5 px) on a still pose: after a 10-frame warm-up the
    smoothed points' frame-to-frame motion is under 30 % of the raw points' (seen: 18 %)."""
    g = torch.Generator().manual_seed(0)
    raw = [POSE + 1.5 * torch.randn(POSE.shape, generator=g) for _ in range(60)]
    outs = run_node_frames(Smooth, {}, [{"keypoints": _kp(p, i)} for i, p in enumerate(raw)])
    smooth = torch.stack([o["smoothed_keypoints"].points for o in outs])
    raw_t = torch.stack(raw)
    raw_motion = (raw_t[11:] - raw_t[10:-1]).norm(dim=-1).mean()
    smooth_motion = (smooth[11:] - smooth[10:-1]).norm(dim=-1).mean()
    assert smooth_motion < 0.3 * raw_motion, f"{float(smooth_motion):.2f} vs raw {float(raw_motion):.2f} px/frame"
    # and it stays centred on the truth
    assert (smooth[10:].mean(0) - POSE).norm(dim=-1).max() < 1.5


def test_moving_person_lags_under_half_a_frame():
    """A pose moving 12 px/frame (a brisk step sideways at 720p) with the same
    noise: the smoothed pose trails the true one by under half a frame (seen: 0.25)."""
    g = torch.Generator().manual_seed(1)
    v = torch.tensor([12.0, 0.0])
    truth = [POSE + v * i for i in range(40)]
    raw = [t + 1.5 * torch.randn(POSE.shape, generator=g) for t in truth]
    outs = run_node_frames(Smooth, {}, [{"keypoints": _kp(p, i)} for i, p in enumerate(raw)])
    lag_px = torch.stack([(truth[i] - outs[i]["smoothed_keypoints"].points)[:, 0].mean() for i in range(15, 40)])
    lag_frames = float(lag_px.mean()) / 12.0
    assert lag_frames < 0.5, f"lag {lag_frames:.2f} frames"


def test_jump_is_followed_within_three_frames():
    """The person steps 80 px at once: within 3 frames the smoothed pose is within 10 px."""
    frames = [POSE] * 10 + [POSE + torch.tensor([80.0, 0.0])] * 6
    outs = run_node_frames(Smooth, {}, [{"keypoints": _kp(p, i)} for i, p in enumerate(frames)])
    err = (outs[13]["smoothed_keypoints"].points - frames[13]).norm(dim=-1).max()
    assert err < 10, f"{float(err):.1f} px behind 3 frames after the jump"


def test_lost_points_pass_through_and_restart():
    node = build_node(Smooth)
    node.open(make_context("smooth"))
    node.process(keypoints=_kp(POSE, 0))
    conf = torch.ones(33)
    conf[15] = 0.0  # left wrist lost
    moved = POSE.clone()
    moved[15] += torch.tensor([200.0, -100.0])
    out = node.process(keypoints=_kp(moved, 1, conf))["smoothed_keypoints"]
    assert torch.allclose(out.points[15], moved[15])
    assert out.confidence[15] == 0 and out.skeleton == "blazepose33"


def test_real_pose_on_a_noisy_photo_jitters_less(astronaut):
    """The bundled pose model on the astronaut with fresh camera noise each frame
    (sigma 8 grey levels): smoothing cuts the upper-body keypoints' frame-to-frame
    motion below 60 % of the model's raw jitter."""
    from muse.nodes.pose.blazepose import BlazePose

    rng = np.random.default_rng(0)
    frames = []
    for i in range(10):
        noisy = np.clip(astronaut.astype(np.float32) + rng.normal(0, 8, astronaut.shape), 0, 255).astype(np.uint8)
        frames.append({"frame": Frame(torch.from_numpy(noisy), timestamp=i / 30, index=i)})
    raw = [o["keypoints"] for o in run_node_frames(BlazePose, {}, frames)]
    smooth = [o["smoothed_keypoints"] for o in run_node_frames(Smooth, {}, [{"keypoints": k} for k in raw])]
    upper = list(range(0, 13))

    def motion(seq):
        p = torch.stack([k.points[upper] for k in seq])
        return float((p[3:] - p[2:-1]).norm(dim=-1).mean())

    assert motion(smooth) < 0.6 * motion(raw), f"smoothed {motion(smooth):.2f} vs raw {motion(raw):.2f} px/frame"


def test_face_landmarks_are_smoothed_on_device_tensors():
    g = torch.Generator().manual_seed(2)
    base = torch.rand(REG.MESH_POINTS, 3, generator=g) * torch.tensor([120.0, 150.0, 20.0]) + torch.tensor([500.0, 200.0, 0.0])
    faces = [
        FaceLandmarks(base + 1.0 * torch.randn(base.shape, generator=g), torch.tensor(0.98), REG.face_regions(False), (1280, 720), torch.tensor([500.0, 200, 620, 350]), i / 30, i)
        for i in range(30)
    ]
    outs = run_node_frames(Smooth, {}, [{"face": f} for f in faces])
    sm = torch.stack([o["smoothed_face"].points for o in outs])
    raw = torch.stack([f.points for f in faces])
    assert (sm[11:] - sm[10:-1]).norm(dim=-1).mean() < 0.4 * (raw[11:] - raw[10:-1]).norm(dim=-1).mean()
    assert outs[-1]["smoothed_face"].regions == faces[-1].regions


def test_one_euro_follows_the_textbook_filter():
    """The device filter (written as a few fused ops: lerp, addcmul) against One-Euro as published, in float64
    on the host, over a walk that stops, jumps, loses points and has one frame whose time does not advance."""
    from muse.nodes.landmarks.smooth import OneEuro

    def alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2 * np.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    rng = np.random.default_rng(3)
    f = OneEuro(1.0, 20.0, 1.0)
    x_ref = dx_ref = None
    t_ref = 0.0
    pts = POSE.double().numpy()
    for i in range(40):
        pts = pts + rng.normal(0, 1.5, pts.shape) + (25.0 if 15 <= i < 18 else 0.0)
        valid = rng.random(len(pts)) > 0.1
        t = i / 30 if i != 9 else 8 / 30  # frame 9 repeats frame 8's time: counts as 1/30 s later
        scale = 420.0
        got = f(torch.from_numpy(pts).float(), torch.tensor(t, dtype=torch.float64), torch.tensor(scale), torch.from_numpy(valid), 1 / 30)
        if x_ref is None:
            x_ref, dx_ref, t_ref, want = pts.copy(), np.zeros_like(pts), t, pts
        else:
            dt = t - t_ref if t > t_ref else 1 / 30
            speed = (pts - x_ref) / dt / scale
            dx = dx_ref + alpha(1.0, dt) * (speed - dx_ref)
            a = alpha(1.0 + 20.0 * np.linalg.norm(dx, axis=-1, keepdims=True), dt)
            want = np.where(valid[:, None], x_ref + a * (pts - x_ref), pts)
            dx_ref = np.where(valid[:, None], dx, 0.0)
            x_ref, t_ref = want, t_ref + dt
        assert np.abs(got.double().numpy() - want).max() < 2e-3, i


def test_body_and_face_together_match_each_alone(monkeypatch):
    """The torch path runs body keypoints and face landmarks of one frame through one filter on the stacked
    points: the same smoothed points as two nodes that each get only one of them."""
    monkeypatch.setenv("MUSE_CPU_PATH", "torch")  # the GPU code, on the CPU
    from dataclasses import replace

    lm = FaceLandmarks(torch.rand(478, 3) * 80 + torch.tensor([600.0, 150.0, 0.0]), torch.tensor(0.9), REG.face_regions(True), (1280, 720))
    both, body, face = (build_node(Smooth, {"beta": 5.0}) for _ in range(3))
    for n in (both, body, face):
        n.open(make_context(n.name, "cpu"))
    gen = torch.Generator().manual_seed(5)
    for i in range(8):
        kp = _kp(POSE + torch.randn(POSE.shape, generator=gen) * 2 + 15.0 * i, i, torch.where(torch.arange(33) == 15, 0.1, 0.9))
        fl = replace(lm, points=lm.points + torch.randn(lm.points.shape, generator=gen) + 15.0 * i, timestamp=i / 30, index=i)
        got = both.process(kp, fl)
        assert torch.allclose(got["smoothed_keypoints"].points, body.process(kp, None)["smoothed_keypoints"].points, atol=1e-4)
        assert torch.allclose(got["smoothed_face"].points, face.process(None, fl)["smoothed_face"].points, atol=1e-4)
        assert got["smoothed_keypoints"].points.shape == (33, 2) and got["smoothed_face"].points.shape == (478, 3)
    assert "both" in both._filters and "both" not in body._filters


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (run on the GPU machine)")
def test_cuda_one_kernel_smooths_body_and_face_as_the_torch_steps(monkeypatch):
    """On CUDA, body and face go through the filter in one launch (smooth_kernel.py) from the second frame on: the
    same points as the torch steps over 24 frames of a moving person, with a keypoint below the confidence floor
    throughout and the face's confidence dropping below it for three frames (its points pass through and restart)."""
    from dataclasses import replace

    import visual_scenes as vs
    from muse.nodes.landmarks import smooth as smooth_mod

    dev = torch.device("cuda")
    calls = {"kernel": 0}
    real = smooth_mod.one_euro_both_cuda

    def counted(*a, **k):
        got = real(*a, **k)
        calls["kernel"] += got is not None
        return got

    lm = vs.astronaut_landmarks()
    fast, steps = (build_node(Smooth, {"beta": 5.0}) for _ in range(2))
    for n in (fast, steps):
        n.open(make_context(n.name, dev))
    gen = torch.Generator().manual_seed(7)
    for i in range(24):
        kp = _kp(POSE + torch.randn(POSE.shape, generator=gen) * 2 + 9.0 * i, i, torch.where(torch.arange(33) == 15, 0.1, 0.9))
        kp = replace(kp, points=kp.points.to(dev), confidence=kp.confidence.to(dev))
        conf = torch.tensor(0.2 if 10 <= i < 13 else 0.9, device=dev)
        fl = replace(lm, points=(lm.points + torch.randn(lm.points.shape, generator=gen) + 9.0 * i).to(dev), confidence=conf,
                     timestamp=i / 30, index=i)
        monkeypatch.setattr(smooth_mod, "one_euro_both_cuda", counted)
        a = fast.process(kp, fl)
        monkeypatch.setattr(smooth_mod, "one_euro_both_cuda", lambda *a, **k: None)  # the torch steps
        b = steps.process(kp, fl)
        for key in ("smoothed_keypoints", "smoothed_face"):
            pa, pb = a[key].points, b[key].points
            assert pa.shape == pb.shape and pa.dtype == pb.dtype, key
            assert float((pa - pb).abs().max()) <= 2e-3, (i, key, float((pa - pb).abs().max()))
        if 10 <= i < 13:
            assert torch.equal(a["smoothed_face"].points, fl.points), "a lost face passes through"
    torch.cuda.synchronize()
    assert calls["kernel"] == 23, calls  # every frame but the first, which sets the filter's state up
