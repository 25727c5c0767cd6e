"""The quality gate at export: a new student goes live only when it is at
least as good as what is live now (the live student, or the bundled model when
no student is live) and reaches a floor (`export.min_iou`, 0.95 by default),
all measured on the profile's held-out frames against the teacher labels.
The figures are kept in `models/gate.json` for `muse studio show`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from muse.studio.files import read_json, write_json

Predict = Callable[[np.ndarray], np.ndarray]  # RGB uint8 (H,W,3) -> person probability (h,w) in [0,1]


def gate_path(profile: Any) -> Path:
    return profile.models_dir / "gate.json"


def heldout(profile: Any, limit: int = 200) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, RGB frame, label mask 0..1) of the held-out frames (the training split's validation blocks)."""
    from muse.studio.dataset import kept_ids, split_ids
    from muse.studio.files import StudioError, read_image
    from muse.studio.records import load_records

    records = {r["id"]: r for r in load_records(profile.dataset_dir)}
    ids = [i for i in kept_ids(profile.dataset_dir) if i in records]
    _, val = split_ids([records[i] for i in ids], profile.config.training.val_fraction)
    if not val:
        raise StudioError(f"profile {profile.name!r} has no held-out frames to judge a new model on (training.val_fraction is 0 "
                          f"or the dataset is tiny); record longer or raise training.val_fraction in {profile.yaml_path}")
    step = max(1, len(val) // limit)
    out = []
    for fid in val[::step][:limit]:
        r = records[fid]
        out.append((fid, read_image(profile.dataset_dir / r["frame"]), read_image(profile.dataset_dir / r["mask"], gray=True) / 255.0))
    return out


def mean_iou(predict: Predict, frames: list[tuple[str, np.ndarray, np.ndarray]]) -> float:
    """Mean IoU at the label's resolution of prediction > 0.5 vs label > 0.5 (two empty masks agree)."""
    import cv2

    ious = []
    for _, rgb, label in frames:
        prob = predict(rgb)
        if prob.shape != label.shape:
            prob = cv2.resize(prob.astype(np.float32), (label.shape[1], label.shape[0]), interpolation=cv2.INTER_LINEAR)
        a, b = prob > 0.5, label > 0.5
        union = np.logical_or(a, b).sum()
        ious.append(float(np.logical_and(a, b).sum() / union) if union else 1.0)
    return float(np.mean(ious))


def _resize_input(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    x = cv2.resize(rgb, (int(size[0]), int(size[1])), interpolation=cv2.INTER_AREA)  # as the training data was made
    return (x.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]


def torch_predictor(model: Any, input_size: tuple[int, int]) -> Predict:
    import torch

    model = model.cpu().eval()

    def predict(rgb: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(model(torch.from_numpy(_resize_input(rgb, input_size))))[0, 0].numpy()

    return predict


def onnx_predictor(path: Path) -> Predict:
    """A live student as it runs: its ONNX file, at the input size named in its student.json."""
    import onnxruntime as ort

    info = read_json(path.with_name("student.json"), {})
    shape = (info.get("input") or {}).get("shape") or [None, 3, *reversed(info.get("input_size", [320, 192]))]
    size = (int(shape[3]), int(shape[2]))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def predict(rgb: np.ndarray) -> np.ndarray:
        logits = sess.run(["logits"], {"image": _resize_input(rgb, size)})[0]
        return (1.0 / (1.0 + np.exp(-logits)))[0, 0]

    return predict


def bundled_predictor() -> Predict | None:
    """The bundled selfie segmenter: what runs when no student is live (None when not installed)."""
    try:
        from muse.studio.teachers.offline import NodeMaskTeacher

        teacher = NodeMaskTeacher("segment.selfie", "bundled")
        teacher._open()
    except Exception:
        return None
    return lambda rgb: teacher.masks([rgb])[0]


def judge(profile: Any, candidate: Predict, candidate_version: int, *, force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the candidate, the live student and the bundled model on the held-out frames and decide."""
    frames = heldout(profile)
    floor = profile.config.export.min_iou
    cand = mean_iou(candidate, frames)
    live_path = profile.live_model_path()
    live: dict[str, Any] | None = None
    if live_path is not None and live_path.is_file():
        info = read_json(live_path.with_name("student.json"), {})
        live = {"model": f"student v{info.get('version', '?')}", "version": info.get("version"),
                "heldout_iou": mean_iou(onnx_predictor(live_path), frames)}
    bundled = bundled_predictor()
    bundled_iou = mean_iou(bundled, frames) if bundled is not None else None
    if live is None and bundled_iou is not None:
        live = {"model": "bundled selfie segmenter", "version": None, "heldout_iou": bundled_iou}
    reasons = []
    if cand < floor:
        reasons.append(f"below the floor export.min_iou = {floor:.3f}")
    if live is not None and cand < live["heldout_iou"]:
        reasons.append(f"worse than the live {live['model']} ({live['heldout_iou']:.4f})")
    passed = not reasons
    result = {
        "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "heldout_frames": len(frames),
        "floor": floor,
        "candidate": {"version": candidate_version, "heldout_iou": cand},
        "live_before": live,
        "bundled_iou": bundled_iou,
        "passed": passed,
        "forced": bool(force and not passed),
        "reasons": reasons,
    }
    live_txt = f"live {live['model']} {live['heldout_iou']:.4f}" if live else "no live model"
    log(f"quality gate on {len(frames)} held-out frames: new student v{candidate_version:04d} IoU {cand:.4f}; {live_txt}; floor {floor:.3f}")
    return result


def record(profile: Any, result: dict[str, Any], made_live: bool) -> None:
    data = read_json(gate_path(profile), {})
    result = {**result, "made_live": made_live}
    data["last_check"] = result
    if made_live:
        data["live"] = {**result["candidate"], "checked_at": result["checked_at"], "forced": result["forced"]}
        data.pop("candidate", None)
    else:
        data["candidate"] = {**result["candidate"], "checked_at": result["checked_at"], "reasons": result["reasons"]}
    if result.get("bundled_iou") is not None:
        data["bundled_iou"] = result["bundled_iou"]
    data["floor"] = result["floor"]
    write_json(gate_path(profile), data)


def figures(profile: Any) -> dict[str, Any]:
    """What `muse studio show` prints: the live and the candidate student's held-out IoU."""
    data = read_json(gate_path(profile), {})
    live_link = profile.models_dir / "live"
    info = read_json(live_link / "student.json", {}) if live_link.exists() else {}
    # from the live version's own file, so a rollback shows the right figure
    live = {"version": info.get("version"), "heldout_iou": info.get("heldout_iou")} if info else None
    return {"live": live, "candidate": data.get("candidate"), "bundled_iou": data.get("bundled_iou"),
            "floor": profile.config.export.min_iou, "last_check": data.get("last_check")}
