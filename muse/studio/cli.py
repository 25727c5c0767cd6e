"""`muse studio ...` commands. `register(subparsers)` adds them to the main
CLI; imports stay light (no torch) until a command runs. Each command's
handler is `args.func(args) -> exit code`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from typing import Any

STAGE_NAMES = "plate,record,analyze,label,filter,train,export"


def _kv(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"muse studio: --param needs key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def _camera_params(node_type: str, items: list[str] | None) -> dict[str, Any]:
    """key=value strings checked and typed by the capture node's own Params (so `device=0` stays a string)."""
    raw = {k: v for k, v in (i.split("=", 1) for i in items or [] if "=" in i)}
    if len(raw) != len(items or []):
        raise SystemExit("muse studio: --param needs key=value")
    try:
        from muse.graph.registry import load_registry

        cls = load_registry().get(node_type)
    except Exception:
        return _kv(items)
    from pydantic import ValidationError

    from muse.studio.files import StudioError

    try:
        checked = cls.Params(**raw)
    except ValidationError as exc:
        raise StudioError(f"--param does not fit {node_type!r}: {exc}") from None
    return {k: v for k, v in checked.model_dump(mode="json").items() if k in raw}


def _profile(args: argparse.Namespace) -> Any:
    from muse.studio.profiles import load_profile

    return load_profile(args.profile, args.root)


def cmd_new(a: argparse.Namespace) -> int:
    from muse.studio.profiles import create_profile, demo_camera, file_camera

    source = "demo" if a.demo else a.source
    if source and (a.camera or a.param):
        raise SystemExit("muse studio new: --demo/--source replace the camera; leave out --camera/--param")
    if a.plate and source in (None, "demo"):
        raise SystemExit("muse studio new: --plate goes with --source VIDEO (the demo source brings its own empty room)")
    if source == "demo":
        camera: dict[str, Any] | None = demo_camera()
    elif source:
        camera = file_camera(source, a.plate)
    elif a.camera or a.param:
        camera = {"type": a.camera or "capture.camera", "params": _camera_params(a.camera or "capture.camera", a.param)}
    else:
        camera = None
    p = create_profile(a.profile, a.root, **({"camera": camera} if camera else {}))
    if source == "demo":
        nxt = f"`muse studio run {p.name}` (no camera needed: the demo source gives the empty room and the recording)"
    elif source:
        nxt = f"`muse studio run {p.name}` (recording from {source})"
    else:
        nxt = f"`muse studio plate {p.name}` with nobody in the picture"
    print(f"created profile {p.name!r} at {p.root}; next: {nxt}")
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    from muse.studio.profiles import list_profiles, studio_home

    names = list_profiles(a.root)
    print("\n".join(names) if names else f"no profiles in {studio_home(a.root)}; create one with `muse studio new NAME`")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    p = _profile(a)
    summary = p.summary()
    q = summary.get("quality") or {}
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    live, cand = q.get("live"), q.get("candidate")
    print(f"{p.name}: held-out IoU: live " + (f"v{live.get('version')} {fmt(live.get('heldout_iou'))}" if live else "bundled model")
          + (f" | bundled {fmt(q.get('bundled_iou'))}" if q.get("bundled_iou") is not None else "")
          + (f" | candidate v{cand.get('version')} {fmt(cand.get('heldout_iou'))} (not live: {'; '.join(cand.get('reasons') or [])})" if cand else "")
          + f" | floor {fmt(q.get('floor'))}", file=sys.stderr)
    print(json.dumps({**summary, "settings": p.config.model_dump(mode="json")}, indent=2))
    return 0


def cmd_delete(a: argparse.Namespace) -> int:
    from muse.studio.profiles import delete_profile

    yes = a.yes
    if not yes and sys.stdin.isatty():
        yes = input(f"delete profile {a.profile!r} with its recordings and models? [y/N] ").strip().lower() in ("y", "yes")
        if not yes:
            print("kept")
            return 1
    print(f"deleted {delete_profile(a.profile, a.root, yes=yes)}")
    return 0


def cmd_plate(a: argparse.Namespace) -> int:
    from muse.studio.capture import capture_plate

    capture_plate(_profile(a), frames=a.frames, force=a.force)
    return 0


def cmd_record(a: argparse.Namespace) -> int:
    from muse.studio.capture import record

    record(_profile(a), seconds=a.seconds, name=a.name, force=a.force)
    return 0


def cmd_analyze(a: argparse.Namespace) -> int:
    from muse.studio.analyze import analyze_profile

    analyze_profile(_profile(a), frames=a.frames, device=a.device, offline_only=a.offline)
    return 0


def _torchrun(module: str, a: argparse.Namespace, extra: list[str]) -> int:
    from muse.studio.distributed import DDP_ENV

    env = {**os.environ, **DDP_ENV}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}", "-m", module, a.profile]
    if a.root:
        cmd += ["--root", a.root]
    return subprocess.call(cmd + extra, env=env)


def cmd_label(a: argparse.Namespace) -> int:
    if a.nproc > 1:
        return _torchrun("muse.studio.label", a, ["--offline"] if a.offline else [])
    from muse.studio.label import label_profile

    label_profile(_profile(a), device=a.device, offline_only=a.offline, limit=a.limit)
    return 0


def cmd_filter(a: argparse.Namespace) -> int:
    from muse.studio.filter import filter_profile

    filter_profile(_profile(a))
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from muse.studio.train import split_budget

    profile = _profile(a)
    seg_s, pose_s = split_budget(profile, a.max_minutes, pose=not a.no_pose)
    if a.nproc > 1:
        extra = [f"--{k.replace('_', '-')}={v}" for k, v in (("steps", a.steps), ("batch", a.batch), ("max_seconds", a.max_seconds), ("time_budget", seg_s)) if v]
        rc = _torchrun("muse.studio.train", a, extra)
        if rc == 0 and not a.no_pose:  # the pose head is small: one process trains it
            from muse.studio.train_pose import train_pose

            train_pose(profile, steps=a.steps, batch=a.batch, time_budget=pose_s)
        return rc
    from muse.studio.train import train_student

    res = train_student(profile, steps=a.steps, batch=a.batch, max_seconds=a.max_seconds, time_budget=seg_s)
    if res["finished"] and not a.no_pose:
        from muse.studio.train_pose import train_pose

        res["pose"] = train_pose(profile, steps=a.steps, batch=a.batch, time_budget=pose_s)
    print(json.dumps(res, default=str))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from muse.studio.export import export_student

    info = export_student(_profile(a), tensorrt=not a.no_tensorrt, force=a.force)
    return 0 if info["live"] else 3


def cmd_rollback(a: argparse.Namespace) -> int:
    from muse.studio.export import rollback

    rollback(_profile(a))
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from muse.studio.pipeline import run_pipeline

    split = lambda s: [x for x in (s or "").split(",") if x]  # noqa: E731
    opts = {"seconds": a.seconds, "steps": a.steps, "device": a.device, "offline": a.offline, "max_seconds": a.max_seconds,
            "max_minutes": a.max_minutes, "force": a.force or None, "limit": a.limit}
    res = run_pipeline(_profile(a), skip=split(a.skip), redo=split(a.redo), options={k: v for k, v in opts.items() if v is not None})
    print(json.dumps(res, default=str, indent=2))
    return 0


def _sigterm_as_ctrl_c() -> Any:
    """SIGTERM (a service manager, `kill`) stops a Studio step the way Ctrl-C does: a take is closed and
    kept, a step ends where it can resume. Returns the previous handler (None off the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)


def _guard(fn: Any) -> Any:
    """Studio errors (and teachers that cannot run) become one clear line and exit code 2, not a traceback."""

    def handler(args: argparse.Namespace) -> int:
        from muse.models.safe_load import CheckpointError
        from muse.studio.files import StudioError
        from muse.studio.teachers.base import TeacherUnavailable

        previous = _sigterm_as_ctrl_c()
        try:
            return int(fn(args) or 0)
        except Exception as exc:
            from muse.graph.node import NodeError  # a capture or teacher node refused (no camera, bad params)

            if not isinstance(exc, (StudioError, TeacherUnavailable, FileNotFoundError, NodeError, CheckpointError)):
                raise
            print(f"muse studio {getattr(args, 'studio_command', '')}: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("muse studio: stopped; run the same command again to resume", file=sys.stderr)
            return 130
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    handler.__name__ = getattr(fn, "__name__", "handler")
    return handler


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `studio` and its commands to the main CLI's subparsers."""
    studio = subparsers.add_parser("studio", help="personal student models: profiles, capture, labeling, training, export")
    studio.set_defaults(func=lambda a: (studio.print_help(), 1)[1])
    sub = studio.add_subparsers(dest="studio_command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", help="folder holding the profiles (default $MUSE_STUDIO_HOME or ~/.muse/profiles)")

    def add(name: str, fn: Any, help_: str, profile: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, parents=[common])
        if profile:
            p.add_argument("profile", help="profile name (or its folder)")
        p.set_defaults(func=_guard(fn))
        return p

    p = add("new", cmd_new, "create a profile (one per camera angle)")
    p.add_argument("--camera", help="capture node id (capture.camera, capture.demo, capture.file)")
    p.add_argument("--param", action="append", help="camera node param key=value (repeatable)")
    p.add_argument("--demo", action="store_true", help="no camera: plate and recording from the demo source (same as --source demo)")
    p.add_argument("--source", metavar="demo|VIDEO", help="no camera: record from the demo source or a video file of you")
    p.add_argument("--plate", metavar="FILE", help="with --source VIDEO: a picture or video of the empty room for the clean plate")
    add("list", cmd_list, "list profiles", profile=False)
    add("show", cmd_show, "show a profile's state and settings")
    p = add("delete", cmd_delete, "delete a profile (asks, or --yes)")
    p.add_argument("--yes", action="store_true")
    p = add("plate", cmd_plate, "record the empty room (clean plate)")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--force", action="store_true", help="replace an existing plate")
    p = add("record", cmd_record, "record yourself through the camera node")
    p.add_argument("--seconds", type=float, help="how long (default camera.record_seconds in profile.yaml; a video source records to its end)")
    p.add_argument("--name", help="recording name (default take-DATE-TIME)")
    p.add_argument("--force", action="store_true", help="replace a recording with the same name")
    p = add("analyze", cmd_analyze, "preview the teachers on a few frames and check the data")
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--device", default="cpu")
    p.add_argument("--offline", action="store_true", help="only offline teachers")
    p = add("label", cmd_label, "label the recordings with the teachers (resumable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--offline", action="store_true", help="only offline teachers")
    p.add_argument("--limit", type=int, help="at most this many frames per recording")
    p.add_argument("--nproc", type=int, default=1, help="processes/GPUs through torchrun")
    add("filter", cmd_filter, "drop bad frames and write the filter report")
    p = add("train", cmd_train, "train the student (resumes from its last checkpoint)")
    p.add_argument("--steps", type=int, help="steps for each head (segmenter and pose head)")
    p.add_argument("--batch", type=int)
    p.add_argument("--max-seconds", type=float, help="pause after this long (resume later)")
    p.add_argument("--max-minutes", type=float, help="time budget for both heads together; training ends when spent and keeps its best checkpoint")
    p.add_argument("--nproc", type=int, default=1, help="processes/GPUs through torchrun (DDP)")
    p.add_argument("--no-pose", action="store_true", help="skip the student pose head")
    p = add("export", cmd_export, "export to ONNX (+TensorRT), verify, check it beats the live model, make it live")
    p.add_argument("--no-tensorrt", action="store_true")
    p.add_argument("--force", action="store_true", help="make it live even when it does not beat the live model or export.min_iou")
    add("rollback", cmd_rollback, "make the previous model live again")
    p = add("run", cmd_run, f"run every stage ({STAGE_NAMES}); skippable and resumable")
    p.add_argument("--skip", help=f"comma-separated stages to skip ({STAGE_NAMES})")
    p.add_argument("--redo", help="comma-separated stages to run again even if done")
    p.add_argument("--seconds", type=float, help="recording length")
    p.add_argument("--steps", type=int, help="training steps (both heads)")
    p.add_argument("--max-seconds", type=float, help="training time limit (resume later)")
    p.add_argument("--max-minutes", type=float, help="training time budget for both heads; training ends when spent")
    p.add_argument("--limit", type=int, help="label at most this many frames per recording")
    p.add_argument("--force", action="store_true", help="export: make the new student live even if it is not better")
    p.add_argument("--device")
    p.add_argument("--offline", action="store_true")
    return studio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="muse")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 1
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] if sys.argv[1:2] == ["studio"] else ["studio", *sys.argv[1:]]))
