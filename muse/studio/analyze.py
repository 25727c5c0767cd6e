"""A quick look before the long run: teachers on a few frames (preview images
written for the user) and data checks (plate vs recording size, exposure,
blur, teacher agreement) with plain warnings."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from muse.studio.files import StudioError, read_image, read_video, video_info, write_image, write_json


def _overlay(frame: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    tint = np.array(colour, np.float32)
    a = (mask[..., None] * 0.5).astype(np.float32)
    return np.clip(frame * (1 - a) + tint * a, 0, 255).astype(np.uint8)


def analyze_profile(profile: Any, *, frames: int = 6, device: str = "cpu", teachers: Any = None, offline_only: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    from muse.studio.filter import measure
    from muse.studio.teachers.combine import build_teachers, label_frames

    recs = profile.recordings()
    if not recs:
        raise StudioError(f"profile {profile.name!r} has no recordings; record one with `muse studio record {profile.name} --seconds 60`")
    plate = read_image(profile.plate_path) if profile.plate_path.is_file() else None
    warnings: list[str] = []
    if plate is None:
        warnings.append(f"no clean plate: the clean-plate teacher and background augmentation are off (`muse studio plate {profile.name}`)")
    infos = {p.name: video_info(p) for p in recs}
    for name, info in infos.items():
        if plate is not None and (info["width"], info["height"]) != (plate.shape[1], plate.shape[0]):
            warnings.append(f"{name} is {info['width']}x{info['height']} but the clean plate is {plate.shape[1]}x{plate.shape[0]}; "
                            "re-record one of them (the clean-plate teacher is off until then)")
            plate = None
    for w in warnings:  # said before the teachers run, so a failure below still tells why
        log(f"warning: {w}")
    n_early = len(warnings)
    ts = teachers or build_teachers(profile, device, plate, offline_only=offline_only)
    info0 = infos[recs[0].name]
    every = max(1, (info0["frames"] or frames * 10) // frames)
    picked = list(read_video(recs[0], every=every, limit=frames))
    labels = label_frames(ts, [f for _, f in picked])
    colours = [(255, 60, 60), (60, 200, 255), (80, 255, 80), (255, 200, 40)]
    rows = []
    out = profile.analysis_dir
    for (i, frame), lab in zip(picked, labels):
        st = measure(frame, lab.mask, lab.keypoints, lab.agreement)
        panel = [frame, _overlay(frame, lab.mask, colours[0])]
        if lab.keypoints is not None:
            import cv2

            kp_img = panel[1].copy()
            for x, y, c in lab.keypoints:
                if c >= 0.5:
                    cv2.circle(kp_img, (int(x), int(y)), 3, (255, 255, 0), -1)
            panel[1] = kp_img
        write_image(out / f"preview_{i:06d}.jpg", np.concatenate(panel, axis=1))
        rows.append({"index": i, "teacher": lab.teacher, "agreement": lab.agreement, "ious": lab.ious, **{k: v for k, v in st.items() if k != "thumb"}})
    s = profile.config.filter
    agree = [r["agreement"] for r in rows]
    if agree and min(agree) < s.min_iou:
        warnings.append(f"teachers disagree on some preview frames (lowest IoU {min(agree):.2f}); the filter will drop such frames")
    if any(r["sharpness"] < s.min_sharpness for r in rows):
        warnings.append("some frames look blurred: more light or a shorter exposure helps")
    if any(not (s.exposure[0] <= r["brightness"] <= s.exposure[1]) for r in rows):
        warnings.append("some frames are too dark or too bright: fix the room light or camera exposure")
    if any(r["area"] < s.min_area for r in rows):
        warnings.append("nobody found in some frames: stay in the picture while recording")
    report = {"recordings": infos, "teachers": [t.name for t in ts.masks], "pose_teachers": [t.name for t in ts.poses], "skipped_teachers": ts.skipped, "frames": rows, "warnings": warnings}
    write_json(out / "report.json", report)
    for w in warnings[n_early:]:
        log(f"warning: {w}")
    log(f"analysis: {len(rows)} preview images in {out}")
    return report
