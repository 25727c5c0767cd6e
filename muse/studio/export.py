"""Export a profile's student for live use and swap it in atomically.

ONNX export (plus a TensorRT engine when `tensorrt` imports), a check of the
exported model against the torch model on held-out frames, then a swap:
each export is a version folder `models/versions/vNNNN/`; `models/live` and
`models/previous` are symlinks replaced in one `os.replace`, so a running
engine sees either the old or the new model, never half of one.
`rollback` swaps live and previous back.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from muse.studio.files import STAGING_LOCK, StudioError, hold_temp, read_json, write_json

LIVE_MODEL = "models/live/student.onnx"
LIVE_POSE_MODEL = "models/live/student_pose.pt"


def _set_link(link: Path, target: Path) -> None:
    """Point `link` at `target` (relative) in one atomic step."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


def _versions_dir(profile: Any) -> Path:
    return profile.models_dir / "versions"


def _adopt_plain_dir(profile: Any, link: Path) -> None:
    """A `live`/`previous` that is a real folder (copied by hand) becomes a version, so swaps stay atomic."""
    if link.is_dir() and not link.is_symlink():
        dest = _versions_dir(profile) / f"adopted-{link.name}-{int(time.time())}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(link, dest)
        _set_link(link, dest)


def export_onnx(model: Any, path: Path, input_size: tuple[int, int], opset: int = 17) -> Path:
    import torch

    w, h = input_size
    dummy = torch.rand(1, 3, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter needs no onnxscript
        torch.onnx.export(
            model.cpu().eval(), (dummy,), str(path), input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset, dynamo=False,
        )
    try:
        import onnx
    except ImportError:  # ONNX Runtime loading it in verify_onnx is the real check
        return path
    onnx.checker.check_model(str(path))
    return path


def build_tensorrt_engine(onnx_path: Path, engine_path: Path, fp16: bool = True) -> str:
    """Build a serialized TensorRT engine; returns a status line. Needs the `tensorrt` package with its libraries."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as exc:  # the PyPI stubs raise at import when the libraries are missing
        return f"not built: tensorrt is not importable here ({type(exc).__name__}); the engine runs through ONNX Runtime instead"
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return f"not built: TensorRT could not parse the ONNX model ({errors})"
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    inp = network.get_input(0)
    profile = builder.create_optimization_profile()
    shape = tuple(inp.shape)[1:]
    profile.set_shape(inp.name, (1, *shape), (1, *shape), (4, *shape))
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        return "not built: TensorRT build failed (see its log above)"
    tmp = engine_path.with_suffix(".engine.tmp")
    tmp.write_bytes(bytes(blob))
    os.replace(tmp, engine_path)
    return f"built {engine_path.name} (TensorRT {trt.__version__}, fp16={fp16})"


def verify_onnx(model: Any, onnx_path: Path, frames: np.ndarray, min_iou: float = 0.995, max_prob_diff: float = 0.02) -> dict[str, Any]:
    """Run torch and ONNX Runtime on the same held-out frames (N,3,h,w float in [0,1]) and compare."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = torch.sigmoid(model.cpu().eval()(torch.from_numpy(frames))).numpy()
    got = 1.0 / (1.0 + np.exp(-sess.run(["logits"], {"image": frames})[0]))
    diff = float(np.abs(ref - got).max())
    a, b = ref > 0.5, got > 0.5
    union = np.logical_or(a, b).sum()
    agree = float(np.logical_and(a, b).sum() / union) if union else 1.0
    ok = diff <= max_prob_diff and agree >= min_iou
    return {"frames": int(len(frames)), "max_prob_diff": diff, "mask_iou": agree, "ok": ok}


def _heldout_frames(profile: Any, input_size: tuple[int, int], count: int) -> np.ndarray:
    """Held-out frames at the student's size (the training split); random pictures never stand in."""
    from muse.studio.dataset import kept_ids, load_data, split_ids
    from muse.studio.records import load_records

    records = {r["id"]: r for r in load_records(profile.dataset_dir)}
    ids = [i for i in kept_ids(profile.dataset_dir) if i in records]
    _, val = split_ids([records[i] for i in ids], profile.config.training.val_fraction)
    pick = (val or ids)[:count]
    data = load_data(profile.dataset_dir, pick, input_size)
    return (data.images.float() / 255.0).numpy()


def export_student(profile: Any, *, verify_count: int = 16, tensorrt: bool = True, force: bool = False,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export the trained student, verify it, and swap it live (previous kept for rollback) when it passes
    the quality gate (`muse.studio.gate`); `force` makes it live anyway. `info["live"]` says which happened."""
    from muse.models.student import load_student
    from muse.studio import gate
    from muse.studio.progress import for_profile

    src = profile.checkpoints_dir / "student.pt"
    model, meta = load_student(src, "cpu")
    input_size = (meta["input_size"][0], meta["input_size"][1])
    versions = _versions_dir(profile)
    versions.mkdir(parents=True, exist_ok=True)
    number = 1 + max((int(p.name[1:]) for p in versions.glob("v[0-9]*") if p.name[1:].isdigit()), default=0)
    staging = versions / f".staging-v{number:04d}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    # Held while this export runs: a staging folder whose lock nobody holds was left by a killed export,
    # and the next start removes it (`clean_stray_staging`).
    lock = staging / STAGING_LOCK
    lock.touch()
    hold = hold_temp(lock)
    bar = for_profile(profile, "export", 4, unit="step")
    try:
        onnx_path = export_onnx(model, staging / "student.onnx", input_size)
        bar.update(1, done_step="onnx")
        shutil.copy2(src, staging / "student.pt")
        pose_src = profile.checkpoints_dir / "student_pose.pt"
        if pose_src.is_file():  # the pose head travels with the segmenter it was trained beside
            shutil.copy2(pose_src, staging / "student_pose.pt")
        check = verify_onnx(model, onnx_path, _heldout_frames(profile, input_size, verify_count))
        bar.update(1, done_step="verify")
        if not check["ok"]:
            raise StudioError(
                f"exported ONNX model differs from the torch model on held-out frames (max prob diff {check['max_prob_diff']:.4f}, "
                f"mask IoU {check['mask_iou']:.4f}); the live model was NOT changed. Re-run `muse studio export {profile.name}`"
            )
        trt_status = build_tensorrt_engine(onnx_path, staging / "student.engine") if tensorrt else "not built: disabled"
        bar.update(1, done_step="tensorrt")
        verdict = gate.judge(profile, gate.torch_predictor(model, input_size), number, force=force, log=log)
        bar.update(1, done_step="gate")
        info = {
            **meta,
            "format": "onnx",
            "version": number,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "input": {"name": "image", "shape": [None, 3, input_size[1], input_size[0]], "range": [0, 1], "layout": "RGB NCHW float32"},
            "output": {"name": "logits", "shape": [None, 1, input_size[1], input_size[0]], "activation": "sigmoid"},
            "verify": check,
            "tensorrt": trt_status,
            "heldout_iou": verdict["candidate"]["heldout_iou"],
            "gate": verdict,
        }
        write_json(staging / "student.json", info)
        final = versions / f"v{number:04d}"
        os.replace(staging, final)
        (final / STAGING_LOCK).unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        hold.close()
        bar.close()
    cand = verdict["candidate"]["heldout_iou"]
    before = verdict["live_before"]
    figures = f"new {cand:.4f} vs live {before['model']} {before['heldout_iou']:.4f}" if before else f"new {cand:.4f} (nothing live)"
    if not verdict["passed"] and not force:
        gate.record(profile, verdict, made_live=False)
        log(f"exported {final.name} but did NOT make it live: held-out IoU {figures}; {'; '.join(verdict['reasons'])}. "
            f"The live model is unchanged. Record more or train longer; `muse studio export {profile.name} --force` makes it live anyway")
        return {**info, "live": False}
    swap_live(profile, final)
    gate.record(profile, verdict, made_live=True)
    forced = " (forced past the quality gate: " + "; ".join(verdict["reasons"]) + ")" if verdict["forced"] else ""
    log(f"exported {final.name}: held-out IoU {figures}; verify {check['mask_iou']:.4f} IoU vs torch; TensorRT {trt_status}; now live{forced}")
    return {**info, "live": True}


def swap_live(profile: Any, version_dir: Path) -> None:
    """Make `version_dir` live; the current live becomes previous (for rollback)."""
    live, previous = profile.models_dir / "live", profile.models_dir / "previous"
    _adopt_plain_dir(profile, live)
    _adopt_plain_dir(profile, previous)
    if live.is_symlink() and live.resolve() != version_dir.resolve():
        _set_link(previous, live.resolve())
    _set_link(live, version_dir)
    _point_profile_at(profile, version_dir)


def _point_profile_at(profile: Any, version_dir: Path) -> None:
    """profile.yaml names the live files; the pose head only when this version has one."""
    pose = LIVE_POSE_MODEL if (version_dir / "student_pose.pt").is_file() else None
    if profile.config.live_model != LIVE_MODEL or getattr(profile.config, "live_pose_model", None) != pose:
        profile.config.live_model = LIVE_MODEL
        if hasattr(profile.config, "live_pose_model"):
            profile.config.live_pose_model = pose
        profile.save()


def rollback(profile: Any, log: Callable[[str], None] = print) -> Path:
    """Swap live and previous; a second rollback rolls forward again."""
    live, previous = profile.models_dir / "live", profile.models_dir / "previous"
    if not (previous.is_symlink() and (previous / "student.onnx").is_file()):
        raise StudioError(f"profile {profile.name!r} has no previous model to roll back to ({previous} is missing)")
    _adopt_plain_dir(profile, live)
    old_live = live.resolve() if live.exists() else None
    target = previous.resolve()
    _set_link(live, target)
    if old_live is not None:
        _set_link(previous, old_live)
    _point_profile_at(profile, target)
    info = read_json(target / "student.json", {})
    log(f"rolled back profile {profile.name!r} to {target.name} (version {info.get('version')})")
    return target
