"""No pickled code runs from a profile: a payload planted in each checkpoint file a
Studio profile holds is refused with one clear line, and its code never runs.

Also a source check: every `torch.load` in MUSE passes `weights_only=True`, and
nothing calls `pickle.load(s)` or `numpy.load(allow_pickle=True)`.
"""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from muse.models.safe_load import CheckpointError, load_checkpoint
from muse.studio.files import write_image, write_json
from muse.studio.profiles import create_profile

ROOT = Path(__file__).resolve().parent.parent


class _Payload:
    """Unpickling this creates `marker`: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant(path: Path, marker: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"model": _Payload(marker), "step": 1}
    if fmt == "torch-zip":
        torch.save(blob, path)  # what a real checkpoint looks like, with code inside
    else:
        with open(path, "wb") as fh:
            pickle.dump(blob, fh)  # the legacy plain-pickle format


def test_every_torch_load_is_weights_only():
    offenders = []
    for folder in ("muse", "tests", "bench"):
        for py in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(py.read_text(encoding="utf-8"), str(py))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                name = ast.unparse(node.func)
                kw = {k.arg: k.value for k in node.keywords}
                where = f"{py.relative_to(ROOT)}:{node.lineno}"
                if name.endswith("torch.load"):
                    flag = kw.get("weights_only")
                    if not (isinstance(flag, ast.Constant) and flag.value is True):
                        offenders.append(f"{where}: {ast.unparse(node)}")
                if name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load"):
                    offenders.append(f"{where}: {name}")
                if name.endswith("np.load") or name.endswith("numpy.load"):
                    flag = kw.get("allow_pickle")
                    if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                        offenders.append(f"{where}: {ast.unparse(node)}")
    assert not offenders, "loaders that could run pickled code:\n" + "\n".join(offenders)


@pytest.fixture
def profile(tmp_path, astronaut):
    """A tiny labelled and filtered profile: 4 astronaut frames, masks, 33 keypoints each."""
    p = create_profile(
        "shared", tmp_path / "studio",
        camera={"type": "capture.demo", "params": {"width": 64, "height": 64}},
        teachers={"segment": ["clean_plate"], "pose": []},
        training={"input_size": [32, 32], "steps": 2, "batch": 2, "checkpoint_every": 1, "val_fraction": 0.0, "pose_steps": 2, "amp": False},
    )
    img = cv2.resize(astronaut, (64, 64), interpolation=cv2.INTER_AREA)
    mask = np.zeros((64, 64), np.uint8)
    cv2.ellipse(mask, (32, 30), (16, 26), 0, 0, 360, 255, -1)  # the astronaut's rough silhouette
    records = []
    rng = np.random.default_rng(0)
    for i in range(4):
        fid = f"take1_{i:06d}"
        write_image(p.dataset_dir / "frames" / f"{fid}.jpg", np.roll(img, i, axis=1))
        write_image(p.dataset_dir / "masks" / f"{fid}.png", np.roll(mask, i, axis=1))
        kp = np.concatenate([rng.uniform(16, 48, (33, 2)), np.ones((33, 1))], 1).round(2).tolist()
        records.append({"id": fid, "recording": "take1.mp4", "index": i, "mask": f"masks/{fid}.png", "keypoints": kp})
    write_json(p.dataset_dir / "labels.json", {"frames": records})
    write_json(p.dataset_dir / "kept.json", {"kept": [r["id"] for r in records]})
    return p


def _studio(args: list[str], capsys) -> tuple[int, str]:
    from muse.studio.cli import main

    rc = main(["studio", *args])
    return rc, capsys.readouterr().err


def _one_clear_line(err: str, path: Path) -> str:
    # tqdm bars and the JSON-lines progress stream (stderr is not a terminal here) aside
    lines = [ln for ln in err.splitlines() if ln.strip() and "%|" not in ln and not ln.lstrip().startswith("{")]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert str(path) in lines[0] and "cannot be read safely" in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("fmt", ["torch-zip", "plain-pickle"])
def test_payload_in_resume_checkpoint_is_refused(profile, tmp_path, capsys, fmt):
    marker = tmp_path / "pwned"
    last = profile.checkpoints_dir / "last.pt"
    _plant(last, marker, fmt)
    rc, err = _studio(["train", str(profile.root), "--no-pose"], capsys)
    assert rc == 2
    line = _one_clear_line(err, last)
    assert "delete it" in line
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["torch-zip", "plain-pickle"])
def test_payload_in_pose_resume_checkpoint_is_refused(profile, tmp_path, capsys, fmt):
    marker = tmp_path / "pwned"
    last = profile.checkpoints_dir / "last_pose.pt"
    _plant(last, marker, fmt)
    rc, err = _studio(["train", str(profile.root)], capsys)  # trains the segmenter (2 steps), then reads last_pose.pt
    assert rc == 2
    _one_clear_line(err, last)
    assert not marker.exists()
    assert (profile.checkpoints_dir / "student.pt").is_file()  # the work done before it is kept


@pytest.mark.parametrize("fmt", ["torch-zip", "plain-pickle"])
def test_payload_in_trained_student_is_refused_by_export(profile, tmp_path, capsys, fmt):
    marker = tmp_path / "pwned"
    best = profile.checkpoints_dir / "student.pt"
    _plant(best, marker, fmt)
    rc, err = _studio(["export", str(profile.root), "--no-tensorrt"], capsys)
    assert rc == 2
    _one_clear_line(err, best)
    assert not marker.exists()
    assert not (profile.root / "models" / "live").exists()  # nothing was made live


@pytest.mark.parametrize("fmt", ["torch-zip", "plain-pickle"])
@pytest.mark.parametrize("node_type,rel", [("segment.student", "models/live/student.pt"), ("pose.student", "models/live/student_pose.pt")])
def test_payload_in_live_model_is_refused_by_the_graph(profile, tmp_path, fmt, node_type, rel):
    from muse.graph.node import NodeContext, NodeError
    from muse.graph.registry import load_registry

    marker = tmp_path / "pwned"
    path = profile.root / rel
    _plant(path, marker, fmt)
    cls = load_registry().get(node_type)
    node = cls("student", cls.Params(model=str(path)))
    with pytest.raises(NodeError) as err:
        node.open(NodeContext("student", torch.device("cpu"), torch.float32, 30.0, (64, 64)))
    assert "cannot be read safely" in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"PK\x03\x04truncated zip", b"\x80\x04K\x01."])
def test_damaged_checkpoints_are_one_clear_line(tmp_path, content):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, "training checkpoint", "delete it to start over")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "delete it to start over" in msg


def test_real_training_checkpoint_still_resumes(profile, capsys):
    """weights_only=True must still read what MUSE itself saves (optimizer and scaler state included)."""
    rc, _ = _studio(["train", str(profile.root), "--no-pose", "--steps", "1"], capsys)
    assert rc == 0
    rc, _ = _studio(["train", str(profile.root), "--no-pose", "--steps", "2"], capsys)
    assert rc == 0
    blob = load_checkpoint(profile.checkpoints_dir / "last.pt")
    assert blob["step"] == 2 and "optimizer" in blob and "scaler" in blob
    progress = [json.loads(ln) for ln in profile.progress_path.read_text().splitlines() if ln.strip()]
    assert any(e["event"] == "resume" and e["step"] == 1 for e in progress)


@pytest.mark.parametrize("config", ["../../../tmp/evil.yaml", "/tmp/evil.yaml", "configs/../../evil.yaml", "evil.yaml"])
def test_a_shared_profile_cannot_point_sam2_at_a_foreign_config(tmp_path, config):
    """sam2 builds its model through Hydra, which instantiates any `_target_`: code by another road."""
    from muse.studio.files import StudioError
    from muse.studio.profiles import load_profile

    p = create_profile("shared", tmp_path)
    text = p.yaml_path.read_text().replace("configs/sam2.1/sam2.1_hiera_l.yaml", config)
    p.yaml_path.write_text(text)
    with pytest.raises(StudioError, match="not a config of the sam2 package"):
        load_profile("shared", tmp_path)
