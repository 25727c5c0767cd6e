"""Train the profile's student pose head on the pose teacher's keypoints.

Gaussian heatmap targets at 1/4 of the student's input size, confidence-weighted
MSE, the same streaming-like lighting/noise augmentation as the segmenter
(no geometric moves, so keypoints stay exact), resumable atomic checkpoints.
Result: `models/checkpoints/student_pose.pt` (`load_student_pose`).
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable

import numpy as np
import torch

from muse.models.safe_load import one_line
from muse.models.student import StudentPose, atomic_torch_save, save_student
from muse.studio.files import StudioError
from muse.studio.train import read_resume_checkpoint


def heatmaps(points: torch.Tensor, conf: torch.Tensor, size: tuple[int, int], sigma: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,K,2) points in heatmap pixels -> (B,K,h,w) Gaussian targets and (B,K,1,1) weights (confident ones only)."""
    w, h = size
    ys = torch.arange(h, dtype=torch.float32, device=points.device).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=torch.float32, device=points.device).view(1, 1, 1, w)
    px = points[..., 0:1].unsqueeze(-1)
    py = points[..., 1:2].unsqueeze(-1)
    target = torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma**2))
    weight = (conf >= 0.5).float()[..., None, None]
    return target, weight


def train_pose(profile: Any, *, steps: int | None = None, batch: int | None = None, device: str | None = None,
               time_budget: float | None = None, plan: dict[str, Any] | None | bool = True,
               log: Callable[[str], None] = print, progress: str | None = None) -> dict[str, Any] | None:
    """Train (or resume) the pose head; None when the dataset has no keypoints (no pose teacher ran).

    `steps` (default training.pose_steps) and `time_budget` (seconds; training ends when spent) work as
    for the segmenter; without a GPU the CPU plan (`train.cpu_plan`) picks the size and the budget."""
    from muse.studio.dataset import kept_ids, load_data, split_ids
    from muse.studio.progress import for_profile
    from muse.studio.records import load_records
    from muse.studio.train import cpu_plan, replanned_steps

    cfg = profile.config.training
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if plan is True:
        plan = cpu_plan(profile, dev)
    if plan and time_budget is None:
        time_budget = plan["pose_seconds"] or None
    steps_given = steps is not None
    steps = steps if steps is not None else cfg.pose_steps
    if steps <= 0:
        return None
    records = {r["id"]: r for r in load_records(profile.dataset_dir)}
    ids = [i for i in kept_ids(profile.dataset_dir) if i in records and records[i].get("keypoints")]
    if not ids:
        return None
    k = len(records[ids[0]]["keypoints"])
    ids = [i for i in ids if len(records[i]["keypoints"]) == k]
    skeleton = records[ids[0]].get("skeleton") or ("coco17" if k == 17 else "blazepose33")
    train_ids, val_ids = split_ids([records[i] for i in ids], cfg.val_fraction)
    w, h = plan["input_size"] if plan else (int(cfg.input_size[0]), int(cfg.input_size[1]))
    arch_width = plan["width"] if plan else cfg.width
    hw, hh = (w + 3) // 4, (h + 3) // 4

    def keypoint_tensor(sel: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from muse.studio.files import read_image

        pts, conf = [], []
        for fid in sel:
            kp = np.asarray(records[fid]["keypoints"], np.float32)
            fh, fw = read_image(profile.dataset_dir / records[fid]["mask"], gray=True).shape
            pts.append(kp[:, :2] * np.array([hw / fw, hh / fh], np.float32))
            conf.append(kp[:, 2])
        return torch.from_numpy(np.stack(pts)).to(dev), torch.from_numpy(np.stack(conf)).to(dev)

    data = load_data(profile.dataset_dir, train_ids, (w, h)).to(dev)
    pts, conf = keypoint_tensor(train_ids)
    batch = batch or (plan["batch"] if plan else cfg.batch)
    model = StudentPose(num_keypoints=k, width=arch_width).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    last = profile.checkpoints_dir / "last_pose.pt"
    start = 0
    if last.is_file():
        blob = read_resume_checkpoint(last)
        if blob.get("num_keypoints") != k or blob.get("input_size") != [w, h] or blob.get("width", arch_width) != arch_width:
            raise StudioError(f"{last} was trained for other keypoints, input size or width; delete it to start over")
        try:
            model.load_state_dict(blob["model"])
            opt.load_state_dict(blob["optimizer"])
            start = int(blob["step"])
        except Exception as exc:  # missing keys, wrong shapes: a damaged or foreign file
            raise StudioError(f"{last} does not fit this pose head ({one_line(exc)}); delete it to start over") from None
        if not steps_given and blob.get("steps"):
            steps = int(blob["steps"])  # a resumed run keeps its plan and its learning-rate schedule
    if plan and not steps_given and not last.is_file() and time_budget:
        steps = _calibrated_pose_steps(model, data, dev, batch, time_budget, steps)
        log(f"pose head: {steps} steps at {w}x{h} (about {time_budget / 60:.1f} min on the CPU)")
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    t0 = time.time()
    model.train()
    loss_val = float("nan")
    bar = for_profile(profile, "train_pose", steps, unit="step", initial=start, mode=progress)
    done = start
    ended_early = False

    def save(step: int) -> None:
        atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "steps": steps,
                            "num_keypoints": k, "input_size": [w, h], "width": arch_width}, last)

    replan = bool(plan) and not steps_given and start == 0 and bool(time_budget)
    for step in itertools.count(start):
        if step >= steps:  # `steps` may be corrected on the way (replan)
            break
        if replan and time_budget and step % 10 == 0 and time.time() - t0 > 0.2 * time_budget:
            replan = False
            elapsed = time.time() - t0
            steps = replanned_steps(step, steps, step / elapsed, time_budget - elapsed, cfg.pose_steps)
            bar.set_total(steps)
        g = torch.Generator().manual_seed(cfg.seed * 7_000_003 + step)
        idx = torch.randint(0, len(data), (min(batch, len(data)),), generator=g).to(dev)
        x = data.images[idx].float() / 255.0
        gain = (0.7 + 0.6 * torch.rand(len(idx), 1, 1, 1, generator=g)).to(dev)
        x = (x * gain + 0.02 * torch.randn(x.shape, generator=g).to(dev)).clamp(0, 1)
        target, weight = heatmaps(pts[idx], conf[idx], (hw, hh))
        for group in opt.param_groups:
            group["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))
        with torch.autocast(dev.type, dtype=torch.float16, enabled=use_amp):
            out = model(x)
        pred = torch.sigmoid(out.float())[..., :hh, :hw]
        loss = (((pred - target) ** 2) * weight).mean() * 100
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        done = step + 1
        if done % 10 == 0 or done == steps:
            loss_val = float(loss.detach())
            bar.update(done - bar.done, loss=loss_val)
        if done % cfg.checkpoint_every == 0 or done == steps:
            save(done)
        if time_budget is not None and done < steps and done % 10 == 0 and time.time() - t0 > time_budget:
            save(done)
            ended_early = True
            log(f"pose head: time budget of {time_budget / 60:.1f} min spent at step {done}/{steps}")
            break
    bar.close(step=done)
    err = float("nan")
    if val_ids:
        vdata = load_data(profile.dataset_dir, val_ids, (w, h)).to(dev)
        vpts, vconf = keypoint_tensor(val_ids)
        model.eval()
        with torch.no_grad():
            got, _ = StudentPose.decode(model(vdata.images.float() / 255.0).float(), (hw, hh))
        ok = vconf >= 0.5
        err = float(((got - vpts).norm(dim=-1)[ok]).mean() / max(hw, hh)) if ok.any() else float("nan")
    path = save_student(model, profile.checkpoints_dir / "student_pose.pt", {
        "input_size": [w, h], "skeleton": skeleton, "num_keypoints": k, "step": done,
        "val_error": None if math.isnan(err) else round(err, 5),  # mean keypoint error, share of the heatmap side
    })
    log(f"pose head: {done} steps, held-out keypoint error {err:.3f} of the picture side -> {path.name}")
    return {"steps": steps, "step": done, "ended_early": ended_early, "val_error": err, "keypoints": k, "skeleton": skeleton, "seconds": round(time.time() - t0, 2), "loss": loss_val}


def _calibrated_pose_steps(model: torch.nn.Module, data: Any, dev: torch.device, batch: int, seconds: float, most: int) -> int:
    """Steps of the pose head that fit in `seconds` (two timed steps on a copy)."""
    import copy

    probe = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-4)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        x = data.images[: min(batch, len(data))].float() / 255.0
        loss = torch.sigmoid(probe(x)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return int(max(10, min(most, seconds / (min(times[1:]) * 1.15 + 0.002))))
