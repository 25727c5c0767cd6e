"""MUSE Studio on a GPU: train a student on a 60 s synthetic recording (a real
person photo moving over a real room, 640x360), then report training time, the
student's IoU against the teacher labels on held-out frames (target >= 0.95),
and its inference time vs the base model (MODNet) at the same resolution
(target >= 3x faster). Prints one JSON line and one markdown row; appends both
to bench/results/studio.jsonl.

    python bench/bench_studio.py                      # 1 GPU
    python bench/bench_studio.py --nproc 2            # DDP training through torchrun (issue 9)

Needs torch (+CUDA), numpy, opencv; uses PyAV, pydantic and PyYAML when present
(the full studio pipeline), else labels the frames in memory the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _have(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except Exception:
        return False


def make_profile(root: Path, args: argparse.Namespace) -> tuple[object, bool]:
    """A real studio profile when pydantic+yaml exist; else a stand-in with the same attributes."""
    training = {"input_size": [args.input_w, args.input_h], "steps": args.steps, "batch": args.batch, "lr": args.lr,
                "checkpoint_every": max(50, args.steps // 10), "val_fraction": 0.1, "width": args.width}
    if _have("pydantic") and _have("yaml"):
        from muse.studio.profiles import create_profile

        return create_profile("bench", root, teachers={"segment": ["clean_plate"], "pose": []}, training=training), True
    defaults = dict(ohem_ratio=0.25, boundary_weight=4.0, amp=True, seed=0)
    cfg = SimpleNamespace(training=SimpleNamespace(**{**defaults, **training, "input_size": tuple(training["input_size"])}), live_model=None)
    folder = root / "bench"
    p = SimpleNamespace(
        name="bench", root=folder, config=cfg, plate_path=folder / "plate/clean_plate.png", dataset_dir=folder / "dataset",
        models_dir=folder / "models", checkpoints_dir=folder / "models/checkpoints", progress_path=folder / "logs/train_progress.jsonl",
        save=lambda: None,
    )
    return p, False


def label_in_memory(p, scene, count: int) -> None:
    """The label stage without a video file: clean-plate teacher, same dataset layout as `muse studio label`."""
    from muse.studio.label import write_labelled_clip
    from muse.studio.records import merge_records
    from muse.studio.teachers.combine import TeacherSet, label_frames
    from muse.studio.teachers.offline import CleanPlateTeacher

    ts = TeacherSet(masks=[CleanPlateTeacher(scene.clean_plate())])
    clip = []
    for i in range(count):
        clip.append((i, scene.frame(i)[0]))
        if len(clip) == 64 or i == count - 1:
            write_labelled_clip(p.dataset_dir, "take1", clip, label_frames(ts, [f for _, f in clip]), p.dataset_dir / "records/take1.rank0.jsonl")
            clip = []
    merge_records(p.dataset_dir)


def filter_dataset(p, real: bool) -> dict:
    from muse.studio.files import write_json
    from muse.studio.filter import filter_bad_data
    from muse.studio.records import load_records

    if real:
        settings = p.config.filter
    else:
        settings = SimpleNamespace(min_iou=0.85, max_keypoints_outside=0.34, min_sharpness=20.0, exposure=(0.12, 0.92),
                                   max_area_jump=0.35, max_centroid_jump=0.12, min_area=0.01, duplicate_threshold=0.1)
    report = filter_bad_data(load_records(p.dataset_dir), settings)
    write_json(p.dataset_dir / "kept.json", report.to_json())
    return report.counts()


def time_model(fn, x: torch.Tensor, iters: int = 200, graph: bool = True) -> dict:
    """Median ms of eager calls and of CUDA-graph replays (same method for every model)."""
    out = {}
    if x.device.type == "cpu":  # smoke run only
        with torch.no_grad():
            ts = []
            for _ in range(5):
                t = time.perf_counter()
                fn(x)
                ts.append((time.perf_counter() - t) * 1000)
        return {"eager_ms": round(statistics.median(ts), 3), "graph_ms": round(statistics.median(ts), 3)}
    with torch.no_grad():
        for _ in range(20):
            fn(x)
        torch.cuda.synchronize()
        ts = []
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn(x)
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        out["eager_ms"] = round(statistics.median(ts), 3)
        if graph:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    fn(x)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn(x)
            ts = []
            for _ in range(iters):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                g.replay()
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b))
            out["graph_ms"] = round(statistics.median(ts), 3)
    return out


def heldout_iou_full_res(p, model, device) -> dict:
    """Student vs teacher labels (and vs ground truth) on held-out frames, at the recording's 640x360."""
    import cv2

    from muse.studio.dataset import kept_ids, split_ids
    from muse.studio.files import read_image
    from muse.studio.records import load_records
    from muse.studio.teachers.base import iou

    records = {r["id"]: r for r in load_records(p.dataset_dir)}
    ids = [i for i in kept_ids(p.dataset_dir) if i in records]
    _, val = split_ids([records[i] for i in ids], p.config.training.val_fraction)
    w, h = p.config.training.input_size
    ious = []
    dt = torch.float16 if device.type == "cuda" else torch.float32
    model = model.to(device).eval().to(dt)
    for fid in val:
        frame = read_image(p.dataset_dir / records[fid]["frame"])
        label = read_image(p.dataset_dir / records[fid]["mask"], gray=True) / 255.0
        x = torch.from_numpy(cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)[None].to(device).to(dt) / 255
        with torch.no_grad():
            logits = torch.nn.functional.interpolate(model(x).float(), size=frame.shape[:2], mode="bilinear", align_corners=False)
        ious.append(iou((logits[0, 0] > 0).cpu().numpy().astype(np.float32), label))
    return {"heldout_frames": len(val), "student_vs_teacher_iou": round(float(np.mean(ious)), 4), "min_iou": round(float(np.min(ious)), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--fps", type=float, default=30)
    ap.add_argument("--width", type=int, default=640, dest="frame_w")
    ap.add_argument("--height", type=int, default=360, dest="frame_h")
    ap.add_argument("--input", default="640x352", help="student input WxH (multiples of 32 are fastest)")
    ap.add_argument("--student-width", type=float, default=1.0, dest="width")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-train-seconds", type=float, default=240)
    ap.add_argument("--nproc", type=int, default=1, help="GPUs for DDP training through torchrun")
    ap.add_argument("--workdir", help="keep the profile here (default: a temp folder, removed)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/studio.jsonl"))
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run that checks the code paths (no figures)")
    args = ap.parse_args()
    if args.cpu_smoke:
        args.seconds, args.steps, args.batch, args.input, args.frame_w, args.frame_h = 1.5, 4, 4, "128x64", 192, 108
        args.out = str(Path(tempfile.gettempdir()) / "bench_studio_smoke.jsonl")
    args.input_w, args.input_h = (int(v) for v in args.input.lower().split("x"))
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("bench_studio: needs a CUDA GPU (or --cpu-smoke)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    torch.backends.cudnn.benchmark = True
    from muse.studio.synthetic import SyntheticScene

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="muse-bench-studio-"))
    res: dict = {"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)", "torch": torch.__version__,
                 "recording": f"{args.frame_w}x{args.frame_h} {args.seconds:.0f}s@{args.fps:.0f}", "student_input": args.input}
    try:
        p, real = make_profile(work, args)
        res["pipeline"] = "full (profile, recording, label_profile)" if real and _have("av") else "in-memory labeling"
        scene = SyntheticScene(args.frame_w, args.frame_h, args.fps)
        count = int(args.seconds * args.fps)
        from muse.studio.files import write_image

        write_image(p.plate_path, scene.clean_plate())
        t0 = time.time()
        if real and _have("av"):
            from muse.studio.label import label_profile
            from muse.studio.synthetic import write_recording

            write_recording(p.recordings_dir / "take1.mp4", scene, count)
            label_profile(p, device=str(device), clip=64, log=lambda s: None)
        else:
            label_in_memory(p, scene, count)
        res["label_s"] = round(time.time() - t0, 1)
        res["filter_dropped"] = filter_dataset(p, real)

        t0 = time.time()
        if args.nproc > 1:
            if not real:
                raise SystemExit("bench_studio: --nproc needs pydantic and PyYAML (the torchrun entry point loads the profile)")
            from muse.studio.distributed import DDP_ENV

            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", "-m", "muse.studio.train",
                   "bench", "--root", str(work), "--max-seconds", str(args.max_train_seconds), "--no-bar"]
            out = subprocess.run(cmd, env={**os.environ, **DDP_ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"torchrun training failed:\n{out.stderr[-4000:]}")
            train = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
        else:
            from muse.studio.train import train_student

            train = train_student(p, max_seconds=args.max_train_seconds, progress_bar=False, log=lambda s: None)
        res["train_s"] = round(time.time() - t0, 1)
        res.update({"train_steps": train["step"], "train_frames": train["train_frames"], "world": train["world"],
                    "val_iou_at_input": round(train["best_iou"], 4)})

        from muse.models.student import load_student

        student, _ = load_student(p.checkpoints_dir / "student.pt", "cpu")
        res.update(heldout_iou_full_res(p, student, device))

        t0 = time.time()
        from muse.studio.export import export_student

        try:
            info = export_student(p, log=lambda s: None)
            res["export"] = {"s": round(time.time() - t0, 1), "verify_iou": round(info["verify"]["mask_iou"], 4), "tensorrt": info["tensorrt"]}
        except Exception as exc:  # e.g. no onnxruntime on this machine: the timing below still counts
            res["export"] = {"error": f"{type(exc).__name__}: {exc}"}

        # Speed at the same resolution, fp16, batch 1, the same timing method for both.
        dt = torch.float16 if device.type == "cuda" else torch.float32
        x = torch.rand(1, 3, args.input_h, args.input_w, device=device, dtype=dt)
        student = student.to(device).to(dt).eval()
        res["student_ms"] = time_model(student, x)
        import importlib.util

        spec = importlib.util.spec_from_file_location("bench_modnet", ROOT / "muse/models/modnet.py")
        modnet = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modnet)
        base = modnet.MODNetMatte(modnet.MODNet().eval()).to(device).to(dt).eval()  # random weights: same speed
        res["modnet_ms"] = time_model(base, x)
        res["speedup_eager"] = round(res["modnet_ms"]["eager_ms"] / res["student_ms"]["eager_ms"], 2)
        res["speedup_graph"] = round(res["modnet_ms"]["graph_ms"] / res["student_ms"]["graph_ms"], 2)
        res["targets"] = {"iou>=0.95": res["student_vs_teacher_iou"] >= 0.95, "speedup>=3": res["speedup_graph"] >= 3}
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    line = json.dumps(res)
    print(line)
    md = (f"| {res['date']} | {res['gpu']} | {res['recording']} | train {res['train_s']} s ({res['train_steps']} steps, world {res['world']}) | "
          f"held-out IoU vs teacher {res['student_vs_teacher_iou']} | student {res['student_ms']['graph_ms']} ms vs MODNet "
          f"{res['modnet_ms']['graph_ms']} ms at {args.input} (x{res['speedup_graph']}) |")
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as fh:
        fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
