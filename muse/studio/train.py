"""Train a profile's student segmenter on its filtered dataset.

OHEM + boundary-weighted loss, AMP on GPU, streaming-like augmentation, a
held-out split, atomic resumable checkpoints (kill -9, re-run, it continues),
a tqdm bar with ETA, loss and held-out IoU, and a JSON-lines progress stream
(`logs/train_progress.jsonl`) a GUI can tail. Under torchrun it trains with
DDP: NCCL on GPUs, gloo on CPU.

    torchrun --nproc_per_node 2 -m muse.studio.train PROFILE [--steps N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from muse.models.safe_load import CheckpointError, load_checkpoint, one_line
from muse.models.student import StudentSegmenter, atomic_torch_save, save_student
from muse.studio.distributed import all_agree, setup_distributed
from muse.studio.files import StudioError, write_json

class ProgressStream:
    """Appends one JSON object per line, flushed, so a GUI can tail the file while training runs."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        rec = {"stage": "train", "event": event, "time": round(time.time(), 3), **fields}
        rec = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}  # strict JSON for any GUI
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()


def read_resume_checkpoint(path: Path) -> dict[str, Any]:
    """A resume checkpoint, weights only (a shared profile must not run code); damage is a StudioError."""
    try:
        return load_checkpoint(path, "training checkpoint", "delete it to start training over")
    except CheckpointError as exc:
        raise StudioError(str(exc)) from None


def _lr_at(step: int, steps: int, base: float) -> float:
    warm = max(1, min(200, steps // 20))
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Any, device: torch.device, batch: int = 16) -> float:
    """Mean IoU of the student against the teacher labels of `data` (held-out frames)."""
    from muse.studio.dataset import to_float
    from muse.studio.losses import batch_iou

    if data is None or len(data) == 0:
        return float("nan")
    was = model.training
    model.eval()
    ious = []
    for s in range(0, len(data), batch):
        x, m = to_float(data.images[s : s + batch].to(device), data.masks[s : s + batch].to(device))
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits = model(x)
        ious.append(batch_iou(logits.float(), m))
    model.train(was)
    return float(torch.cat(ious).mean())  # one host sync per evaluation, not per step


def train_student(
    profile: Any,
    *,
    steps: int | None = None,
    batch: int | None = None,
    device: str | None = None,
    max_seconds: float | None = None,
    time_budget: float | None = None,
    log: Callable[[str], None] = print,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Train (or resume training) the profile's student; returns the result summary (also written to models/train.json).

    `max_seconds` pauses (run again to resume); `time_budget` ends training when spent (the best
    checkpoint so far is the result). Without a GPU and with `training.cpu.auto`, a smaller student
    is trained for the CPU budget (`cpu_plan`) unless `steps` is given."""
    from muse.studio.dataset import augment, kept_ids, load_data, split_ids
    from muse.studio.records import load_records
    from muse.studio.losses import student_loss

    cfg = profile.config.training
    rank, world, dev = setup_distributed()
    if device:
        dev = torch.device(device)
    is_main = rank == 0
    torch.manual_seed(cfg.seed)
    plan = cpu_plan(profile, dev, world)
    arch_width = plan["width"] if plan else cfg.width
    batch = batch or (plan["batch"] if plan else cfg.batch)
    if plan and time_budget is None:
        time_budget = plan["segment_seconds"]

    records = {r["id"]: r for r in load_records(profile.dataset_dir)}
    ids = [i for i in kept_ids(profile.dataset_dir) if i in records]
    train_ids, val_ids = split_ids([records[i] for i in ids], cfg.val_fraction)
    input_size = plan["input_size"] if plan else (int(cfg.input_size[0]), int(cfg.input_size[1]))
    train_data = load_data(profile.dataset_dir, train_ids, input_size, profile.plate_path).to(dev)
    val_data = load_data(profile.dataset_dir, val_ids, input_size).to(dev) if val_ids else None

    model = StudentSegmenter(width=arch_width).to(dev)
    if world > 1 and dev.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    use_amp = cfg.amp and dev.type == "cuda"
    # bf16 needs no loss scaling, so no per-step host sync inside GradScaler; fp16 (+scaler) on older GPUs.
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    ckpt_dir = profile.checkpoints_dir
    last = ckpt_dir / "last.pt"
    best_path = ckpt_dir / "student.pt"
    start, best_iou = 0, -1.0
    blob = read_resume_checkpoint(last) if last.is_file() else None
    if blob is not None:
        if blob.get("input_size") != list(input_size) or blob.get("width") != arch_width:
            raise StudioError(f"{last} was trained with other settings (input_size/width); delete it to start over")
        try:
            model.load_state_dict(blob["model"])
            opt.load_state_dict(blob["optimizer"])
            scaler.load_state_dict(blob["scaler"])
            start, best_iou = int(blob["step"]), float(blob["best_iou"])
        except Exception as exc:  # missing keys, wrong shapes, wrong types: a damaged or foreign file
            raise StudioError(f"{last} does not fit this student ({one_line(exc)}); delete it to start over") from None
    replan = False  # steps chosen from a timing: corrected once the real rate is known
    if steps is None and plan:
        # a resumed run keeps the plan it started with, so its learning-rate schedule stays the same
        replan = not (blob is not None and blob.get("steps"))
        steps = int(blob["steps"]) if not replan else _calibrated_steps(
            model, train_data, dev, batch, time_budget or plan["segment_seconds"], cfg.steps)
        if is_main:
            log(describe_plan(profile, plan, steps))
    steps = steps or cfg.steps
    if blob is not None and is_main:
        log(f"resuming from {last} at step {start}/{steps}")
    ddp_model: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    stream = ProgressStream(profile.progress_path if is_main else None)
    stream.emit("resume" if start else "start", step=start, steps=steps, train_frames=len(train_data), val_frames=len(val_ids), world=world, device=str(dev))
    from muse.studio.progress import for_profile

    from muse.studio.progress import Progress

    # one progress stream: rank 0's (the others train the same steps in lockstep)
    bar = (for_profile(profile, "train", steps, unit="step", initial=start, mode=None if progress_bar else "off") if is_main
           else Progress("train", steps, unit="step", initial=start, mode="off"))
    t0, s0 = time.time(), start
    per_rank = max(1, batch // world)
    loss_val = float("nan")
    val_iou = float("nan")
    done = start
    ended_early = False
    log_every = max(1, min(10, steps // 10))

    def checkpoint(step: int) -> None:
        nonlocal best_iou, val_iou
        val_iou = evaluate(model, val_data, dev)
        score = val_iou if not math.isnan(val_iou) else float(step)
        if is_main:
            if score >= best_iou:
                best_iou = score
                save_student(model, best_path, _meta(profile, input_size, step, val_iou, len(train_data), len(val_ids)))
            atomic_torch_save(
                {"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "step": step,
                 "best_iou": best_iou, "input_size": list(input_size), "width": arch_width, "steps": steps},
                last,
            )
            elapsed = time.time() - t0
            rate = (step - s0) / elapsed if elapsed > 0 else 0.0
            stream.emit("checkpoint", step=step, steps=steps, loss=loss_val, val_iou=val_iou, best_iou=best_iou,
                        eta_s=round((steps - step) / rate, 1) if rate > 0 else None)

    model.train()
    for step in itertools.count(start):
        if step >= steps:  # `steps` may be corrected on the way (replan)
            break
        seed = cfg.seed * 1_000_003 + rank * 7919 + step  # replayable after resume
        g = torch.Generator().manual_seed(seed)
        g_noise = torch.Generator(device=dev).manual_seed(seed) if dev.type == "cuda" else None
        if g_noise is not None:
            idx = torch.randint(0, len(train_data), (per_rank,), generator=g_noise, device=dev)
        else:
            idx = torch.randint(0, len(train_data), (per_rank,), generator=g)
        x, m = augment(train_data.images[idx], train_data.masks[idx], train_data.plate, g, g_noise)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, cfg.lr)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
            logits = ddp_model(x)
        loss = student_loss(logits, m, cfg.ohem_ratio, cfg.boundary_weight)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        done = step + 1
        if done % log_every == 0 or done == steps:
            loss_val = float(loss.detach())  # host sync only every log_every steps
            if is_main:
                elapsed = time.time() - t0
                rate = (done - s0) / elapsed if elapsed > 0 else 0.0
                stream.emit("step", step=done, steps=steps, loss=round(loss_val, 5), lr=_lr_at(step, steps, cfg.lr),
                            eta_s=round((steps - done) / rate, 1) if rate > 0 else None)
        if done % log_every == 0 or done == steps:
            bar.update(done - bar.done, loss=loss_val, val_iou=val_iou)
        if replan and time_budget and done % log_every == 0 and time.time() - t0 > 0.2 * time_budget:
            # Two timed steps misjudge a shared machine's speed; a fifth of the budget in, the measured
            # rate sets the step count, early enough for the learning-rate schedule to follow smoothly.
            replan = False
            elapsed = time.time() - t0
            better = replanned_steps(done, steps, (done - s0) / elapsed, time_budget - elapsed, cfg.steps)
            if better != steps:
                if is_main:
                    log(f"measured {(done - s0) / elapsed:.2f} steps/s: {better} steps instead of {steps} fit the time budget")
                steps = better
                bar.set_total(steps)
        if done % cfg.checkpoint_every == 0 or done == steps:
            checkpoint(done)
        if time_budget is not None and done < steps and done % log_every == 0 and all_agree(time.time() - t0 > time_budget, world, dev):
            if done % cfg.checkpoint_every:
                checkpoint(done)
            ended_early = True
            if is_main:
                log(f"time budget of {time_budget / 60:.1f} min spent at step {done}/{steps}; using the best checkpoint so far")
            break
        if max_seconds is not None and done < steps and done % log_every == 0 and all_agree(time.time() - t0 > max_seconds, world, dev):
            if done % cfg.checkpoint_every:
                checkpoint(done)
            if is_main:
                log(f"stopped after {max_seconds:.0f} s at step {done}; run again to resume")
            break
    bar.close(step=done, val_iou=val_iou, best_iou=best_iou)
    finished = done >= steps or ended_early
    result = {"finished": finished, "ended_early": ended_early, "step": done, "steps": steps,
              "input_size": list(input_size), "width": arch_width, "cpu_plan": bool(plan), "val_iou": val_iou, "best_iou": best_iou,
              "train_frames": len(train_data), "val_frames": len(val_ids), "seconds": round(time.time() - t0, 2), "world": world, "device": str(dev)}
    if is_main:
        write_json(profile.models_dir / "train.json", result)
        stream.emit("done" if finished else "paused", **result)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return result


def cpu_plan(profile: Any, dev: torch.device, world: int = 1) -> dict[str, Any] | None:
    """What training does without a GPU (`training.cpu` in profile.yaml): a smaller student and a
    time budget split between the two heads; None on a GPU, under DDP or with `cpu.auto: false`."""
    cpu = profile.config.training.cpu
    if dev.type != "cpu" or world > 1 or not cpu.auto:
        return None
    total = cpu.minutes * 60.0
    pose = total * cpu.pose_share if profile.config.training.pose_steps > 0 else 0.0
    return {"input_size": (int(cpu.input_size[0]), int(cpu.input_size[1])), "width": float(cpu.width), "batch": cpu.batch,
            "segment_seconds": total - pose, "pose_seconds": pose, "minutes": cpu.minutes}


def split_budget(profile: Any, minutes: float | None, pose: bool = True) -> tuple[float | None, float | None]:
    """`--max-minutes` for both heads together -> (segmenter seconds, pose head seconds), split by training.cpu.pose_share."""
    if minutes is None:
        return None, None
    total = minutes * 60.0
    cfg = profile.config.training
    pose_s = total * cfg.cpu.pose_share if pose and cfg.pose_steps > 0 else 0.0
    return total - pose_s, (pose_s or None)


def describe_plan(profile: Any, plan: dict[str, Any], steps: int) -> str:
    cfg = profile.config.training
    w, h = plan["input_size"]
    return (
        f"no GPU: training a smaller student for about {plan['segment_seconds'] / 60:.1f} min (+{plan['pose_seconds'] / 60:.1f} min "
        f"for the pose head): {w}x{h} input, width {plan['width']:g}, batch {plan['batch']}, {steps} steps, instead of "
        f"{cfg.input_size[0]}x{cfg.input_size[1]}, width {cfg.width:g}, {cfg.steps} steps on a GPU. Expect a softer, less "
        f"exact edge than a GPU-trained student (held-out IoU about 0.95-0.98 on a still camera and room, lower with "
        f"busy rooms); export only makes it live if it beats the live model and the floor (export.min_iou). "
        f"Change training.cpu (minutes, input_size, width, auto) in {profile.yaml_path}"
    )


def replanned_steps(done: int, steps: int, rate: float, seconds_left: float, most: int) -> int:
    """Step count that ends the schedule when the time budget does (kept when within 10%)."""
    want = int(max(done + 1, min(most, done + 0.97 * rate * max(0.0, seconds_left))))
    return want if abs(want - steps) > 0.1 * steps else steps


def _calibrated_steps(model: torch.nn.Module, data: Any, dev: torch.device, batch: int, seconds: float, most: int) -> int:
    """How many steps fit in `seconds`: time two training steps on a copy (the model itself is untouched)."""
    import copy

    from muse.studio.dataset import augment
    from muse.studio.losses import student_loss

    probe = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(12345)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        idx = torch.randint(0, len(data), (batch,), generator=g)
        x, m = augment(data.images[idx], data.masks[idx], data.plate, g, None)
        loss = student_loss(probe(x), m, 0.25, 4.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    per_step = min(times[1:]) * 1.1 + 0.002  # the first step pays for allocation; a little slack for evaluations
    return int(max(20, min(most, seconds / per_step)))


def _meta(profile: Any, input_size: tuple[int, int], step: int, val_iou: float, n_train: int, n_val: int) -> dict[str, Any]:
    return {
        "input_size": list(input_size),
        "profile": profile.name,
        "step": step,
        "val_iou": None if math.isnan(val_iou) else round(val_iou, 5),
        "train_frames": n_train,
        "val_frames": n_val,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point for torchrun: `torchrun --nproc_per_node N -m muse.studio.train PROFILE`."""
    from muse.studio.profiles import load_profile

    ap = argparse.ArgumentParser(prog="muse.studio.train", description="Train a profile's student (DDP under torchrun)")
    ap.add_argument("profile")
    ap.add_argument("--root", default=None, help="studio folder holding the profiles")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--max-seconds", type=float)
    ap.add_argument("--time-budget", type=float, help="seconds; training ends when spent")
    ap.add_argument("--no-bar", action="store_true")
    a = ap.parse_args(argv)
    try:
        res = train_student(load_profile(a.profile, a.root), steps=a.steps, batch=a.batch, max_seconds=a.max_seconds,
                            time_budget=a.time_budget, progress_bar=not a.no_bar)
    except StudioError as exc:
        print(f"muse studio train: {exc}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
