"""MUSE Studio without a camera, as a new user runs it: `muse studio new NAME --demo`
then `muse studio run NAME` through every stage with progress on stderr (JSON
lines when not on a terminal), the CPU plan, `--steps` for both heads, and the
quality gate at export that refuses a worse student and accepts a better one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from muse.studio.files import write_image
from muse.studio.profiles import create_profile, load_profile
from muse.studio.synthetic import SyntheticScene, write_recording

ROOT = Path(__file__).parent.parent
QUIET = lambda s: None  # noqa: E731


def _muse(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    env.pop("MUSE_PROGRESS", None)  # stderr is a pipe here: the JSON-lines stream
    return subprocess.run([sys.executable, "-m", "muse.cli", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _progress(stderr: str) -> list[dict]:
    out = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`muse studio new demo1 --demo` + `muse studio run demo1` with a small time budget, as subprocesses."""
    root = tmp_path_factory.mktemp("studio")
    new = _muse("studio", "new", "demo1", "--demo", "--root", str(root))
    assert new.returncode == 0, new.stderr
    assert "no camera needed" in new.stdout
    run = _muse("studio", "run", "demo1", "--root", str(root), "--seconds", "2", "--max-minutes", "0.3")
    return root, run


@pytest.mark.slow
def test_demo_profile_runs_every_stage_with_progress(demo_run):
    root, run = demo_run
    assert run.returncode == 0, run.stderr[-3000:]
    p = load_profile("demo1", root)
    assert p.config.camera.type == "capture.demo" and p.config.camera.plate_params == {"person": False}
    stages = json.loads(p.state_path.read_text())["stages"]
    assert {s: v["status"] for s, v in stages.items()} == {s: "done" for s in ("plate", "record", "analyze", "label", "filter", "train", "export")}
    # The demo room is truly empty for the bundled segmenter, and the plate passed the strict check.
    plate_check = json.loads(p.plate_path.with_suffix(".json").read_text())
    assert plate_check["person_share"] is not None and plate_check["person_share"] <= 0.01
    assert plate_check["moving_share"] <= 0.02
    # The recording went into the profile (never the working directory).
    assert [r.parent for r in p.recordings()] == [p.recordings_dir] and not (ROOT / "recordings").exists()
    # Progress: JSON lines for each long stage, each ending with done == total.
    prog = _progress(run.stderr)
    for stage in ("record", "label", "filter", "train", "train_pose", "export"):
        ends = [r for r in prog if r["stage"] == stage and r["event"] == "done"]
        assert ends, f"no progress for {stage}"
        if stage.startswith("train"):  # the time budget may end training a few steps early
            assert 0 < ends[-1]["done"] <= ends[-1]["total"]
        else:
            assert ends[-1]["done"] == ends[-1]["total"] and ends[-1]["done"] > 0
        assert {"rate", "eta_s", "elapsed_s"} <= set(ends[-1])
    assert any(r["stage"] == "label" and r["event"] == "progress" and r["eta_s"] is not None for r in prog)
    assert p.progress_log_path.is_file()
    # The CPU plan said what it chose and what to expect, and both heads kept to the time budget.
    assert "no GPU: training a smaller student" in run.stdout and "held-out IoU" in run.stdout
    train = json.loads((p.models_dir / "train.json").read_text())
    assert train["cpu_plan"] and train["input_size"] == [160, 96] and train["width"] == 0.5
    assert train["seconds"] < 0.3 * 60 + 20
    # Export ran the quality gate and said both figures.
    lines = run.stdout.splitlines()
    res = json.loads("\n".join(lines[max(i for i, line in enumerate(lines) if line == "{"):]))  # the result, printed last
    gate = res["export"]["gate"]
    assert gate["heldout_frames"] > 0 and 0 <= gate["candidate"]["heldout_iou"] <= 1
    assert gate["live_before"]["model"] == "bundled selfie segmenter"
    assert "quality gate on" in run.stdout and "held-out IoU new" in run.stdout


@pytest.mark.slow
def test_steps_apply_to_both_heads_and_show_prints_the_figures(demo_run, tmp_path):
    root, run = demo_run
    assert run.returncode == 0, run.stderr[-3000:]
    copy = tmp_path / "studio"
    shutil.copytree(root, copy, symlinks=True)
    p = load_profile("demo1", copy)
    shutil.rmtree(p.checkpoints_dir)
    out = _muse("studio", "train", "demo1", "--root", str(copy), "--steps", "7")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["step"] == 7 and res["pose"]["step"] == 7
    prog = _progress(out.stderr)
    assert [r["done"] for r in prog if r["stage"] == "train_pose" and r["event"] == "done"] == [7]
    show = _muse("studio", "show", "demo1", "--root", str(copy))
    assert show.returncode == 0, show.stderr
    q = json.loads(show.stdout)["quality"]
    assert q["floor"] == 0.95 and q["bundled_iou"] > 0.5
    assert "held-out IoU: live" in show.stderr and "floor 0.9500" in show.stderr


def test_demo_plate_messages_name_the_setting_and_the_file(tmp_path):
    from muse.studio.capture import capture_plate
    from muse.studio.files import StudioError
    from muse.studio.profiles import demo_camera

    cam = demo_camera(192, 108)
    cam["plate_params"] = {}  # the person is drawn into the plate: the check must say which setting fixes it
    p = create_profile("moving", tmp_path, camera=cam)
    with pytest.raises(StudioError) as err:
        capture_plate(p, frames=8, warmup=0, person_check=False, log=QUIET)
    msg = str(err.value)
    assert "plate.max_moving" in msg and "camera.plate_params: {person: false}" in msg and str(p.yaml_path) in msg

    cam = demo_camera(192, 108)
    cam["params"]["background"] = "coffee"  # a room with a cup the bundled model takes for a person
    cam["params"]["motion"] = 0.0
    q = create_profile("cup", tmp_path, camera=cam)
    with pytest.raises(StudioError) as err:
        capture_plate(q, frames=3, warmup=0, person_check=lambda rgb: 0.65, log=QUIET)
    msg = str(err.value)
    assert "65.0%" in msg and "plate.max_person" in msg and str(q.yaml_path) in msg


def test_missing_camera_says_how_to_work_without_one(tmp_path):
    from muse.studio.capture import capture_plate
    from muse.studio.files import StudioError

    p = create_profile("cam", tmp_path, camera={"type": "capture.camera", "params": {"device": "/dev/video-none", "open_timeout_s": 0.5}})
    with pytest.raises(StudioError) as err:
        capture_plate(p, frames=3, warmup=0, person_check=False, log=QUIET)
    msg = str(err.value)
    assert "--demo" in msg and str(p.yaml_path) in msg and "camera.params" in msg
    q = create_profile("fallback", tmp_path, camera={"type": "capture.camera", "params": {
        "device": "/dev/video-none", "open_timeout_s": 0.5, "fallback": "demo", "width": 160, "height": 96}})
    with pytest.raises(StudioError, match="fell back to the demo source") as err:
        capture_plate(q, frames=3, warmup=0, person_check=False, log=QUIET)
    assert "muse studio new NAME --demo" in str(err.value) and not q.plate_path.exists()


def test_source_file_profile_records_the_video(tmp_path):
    from muse.studio.capture import record
    from muse.studio.cli import main
    from muse.studio.files import read_video

    scene = SyntheticScene(160, 96)
    video = tmp_path / "me.mp4"
    write_recording(video, scene, 12)
    plate = tmp_path / "empty.png"
    write_image(plate, scene.clean_plate())
    assert main(["studio", "new", "me", "--root", str(tmp_path / "root"), "--source", str(video), "--plate", str(plate)]) == 0
    p = load_profile("me", tmp_path / "root")
    assert p.config.camera.type == "capture.file" and p.config.camera.plate_type == "capture.images"
    path = record(p, log=QUIET)  # a file source records to its end
    assert path.parent == p.recordings_dir and len(list(read_video(path))) == 12
    assert main(["studio", "new", "bad", "--root", str(tmp_path / "root"), "--source", str(tmp_path / "nope.mp4")]) == 2


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A labelled synthetic profile (clean-plate teacher) for the quality gate."""
    from muse.studio.filter import filter_profile
    from muse.studio.label import label_profile

    root = tmp_path_factory.mktemp("gate")
    p = create_profile(
        "front", root,
        camera={"type": "capture.demo", "params": {"width": 192, "height": 108}},
        teachers={"segment": ["clean_plate"], "pose": []},
        training={"input_size": [96, 64], "steps": 60, "batch": 4, "checkpoint_every": 30, "val_fraction": 0.2, "lr": 5e-3,
                  "cpu": {"auto": False}},
        export={"min_iou": 0.3},
    )
    scene = SyntheticScene(192, 108)
    write_image(p.plate_path, scene.clean_plate())
    write_recording(p.recordings_dir / "take1.mp4", scene, 48)
    label_profile(p, clip=16, log=QUIET)
    filter_profile(p, log=QUIET)
    return p


def test_export_refuses_a_worse_student_and_accepts_a_better_one(gated, tmp_path, capsys):
    from muse.models.student import StudentSegmenter, save_student
    from muse.studio.cli import main
    from muse.studio.export import export_student
    from muse.studio.train import train_student

    dst = tmp_path / "studio"
    shutil.copytree(gated.root.parent, dst, symlinks=True)
    p = load_profile("front", dst)
    live = p.models_dir / "live"

    # v1: a student that calls every pixel a person (its IoU is the person's share of the picture),
    # forced live past the gate (the bundled model beats it).
    torch.manual_seed(0)
    everyone = StudentSegmenter()
    with torch.no_grad():
        everyone.head.bias.fill_(20.0)
    save_student(everyone, p.checkpoints_dir / "student.pt", {"input_size": [96, 64]})
    v1 = export_student(p, force=True, log=QUIET)
    assert v1["live"] and v1["gate"]["forced"] and live.resolve().name == "v0001"
    v1_iou = v1["gate"]["candidate"]["heldout_iou"]
    assert 0.05 < v1_iou < 0.6

    # v2: a broken student (predicts nobody) is worse than v1: refused, v1 stays live.
    broken = StudentSegmenter()
    with torch.no_grad():
        broken.head.bias.fill_(-20.0)
    save_student(broken, p.checkpoints_dir / "student.pt", {"input_size": [96, 64]})
    lines: list[str] = []
    v2 = export_student(p, log=lines.append)
    assert not v2["live"] and live.resolve().name == "v0001"
    assert v2["gate"]["candidate"]["heldout_iou"] < v1_iou
    said = " ".join(lines)
    assert "did NOT make it live" in said and f"{v1_iou:.4f}" in said and f"{v2['gate']['candidate']['heldout_iou']:.4f}" in said
    assert "--force" in said
    assert load_profile(p.root).config.live_model == "models/live/student.onnx"
    # `muse studio show` prints the live and the refused candidate's figures.
    assert main(["studio", "show", "front", "--root", str(dst)]) == 0
    err = capsys.readouterr().err
    assert f"live v1 {v1_iou:.4f}" in err and "candidate v2" in err and "not live" in err

    # The CLI says "refused" with its exit code.
    assert main(["studio", "export", "front", "--root", str(dst)]) == 3
    assert live.resolve().name == "v0001"

    # v4: a trained student beats v1 and the floor: it goes live.
    res = train_student(p, log=QUIET, progress_bar=False)
    assert res["finished"]
    v4 = export_student(p, log=QUIET)
    assert v4["live"] and not v4["gate"]["forced"], v4["gate"]
    assert v4["gate"]["candidate"]["heldout_iou"] > v1_iou and live.resolve().name == f"v{v4['version']:04d}"
    gate = json.loads((p.models_dir / "gate.json").read_text())
    assert gate["live"]["version"] == v4["version"] and "candidate" not in gate
    capsys.readouterr()
    assert main(["studio", "show", "front", "--root", str(dst)]) == 0
    q = json.loads(capsys.readouterr().out)["quality"]
    assert q["live"]["version"] == v4["version"] and np.isclose(q["live"]["heldout_iou"], v4["gate"]["candidate"]["heldout_iou"])
