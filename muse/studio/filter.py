"""Filter bad training data: drop frames where teachers disagree, keypoints
fall outside the mask, the picture is blurred, badly exposed, empty or a
duplicate, or the mask jumps (area/centroid) against its neighbours.
`filter_bad_data` returns what it kept and, for each dropped frame, why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

REASONS = {
    "disagree": "teachers disagree (mask IoU below min_iou)",
    "keypoints_outside": "body keypoints fall outside the mask",
    "blur": "picture is blurred (motion or focus)",
    "exposure": "too dark, too bright or clipped",
    "empty": "nobody in the picture (mask nearly empty) or a blank picture",
    "duplicate": "same picture as the previous frame (frozen camera)",
    "area_jump": "mask area jumps against its neighbours",
    "centroid_jump": "mask centre jumps against its neighbours",
}


def measure(frame: np.ndarray, mask: np.ndarray, keypoints: np.ndarray | None = None, agreement: float = 1.0) -> dict[str, Any]:
    """Per-frame numbers the filter decides on (cheap; computed once while labeling)."""
    import cv2

    h, w = mask.shape
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    scale = 320.0 / w  # sharpness at a fixed width so thresholds do not depend on resolution
    small = cv2.resize(gray, (320, max(1, int(round(h * scale)))), interpolation=cv2.INTER_AREA)
    binary = mask > 0.5
    area = float(binary.mean())
    if area > 0:
        ys, xs = np.nonzero(binary)
        centroid = [float(xs.mean() / w), float(ys.mean() / h)]
    else:
        centroid = [0.5, 0.5]
    outside = None
    if keypoints is not None and len(keypoints):
        kp = np.asarray(keypoints, np.float32)
        conf = kp[:, 2] >= 0.5
        inside = np.zeros(len(kp), bool)
        for j, (x, y, _) in enumerate(kp):
            xi, yi = int(round(x)), int(round(y))
            if 0 <= xi < w and 0 <= yi < h:
                # a few pixels of slack: joints sit on the silhouette's edge
                inside[j] = binary[max(0, yi - 3) : yi + 4, max(0, xi - 3) : xi + 4].any()
        outside = float((conf & ~inside).sum() / max(1, conf.sum())) if conf.any() else None
    return {
        "sharpness": float(cv2.Laplacian(small, cv2.CV_32F).var()),
        "brightness": float(gray.mean() / 255.0),
        "clipped": float(((gray <= 3) | (gray >= 252)).mean()),
        "contrast": float(gray.std()),
        "area": area,
        "centroid": centroid,
        "keypoints_outside": outside,
        "agreement": float(agreement),
        "thumb": cv2.resize(gray, (32, 18), interpolation=cv2.INTER_AREA).astype(np.float32).round(1).tolist(),
    }


@dataclass
class FilterReport:
    kept: list[str] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)  # frame id -> reasons

    def counts(self) -> dict[str, int]:
        return dict(Counter(r for reasons in self.dropped.values() for r in reasons))

    def to_json(self) -> dict[str, Any]:
        return {"kept": self.kept, "dropped": self.dropped, "counts": self.counts(), "total": len(self.kept) + len(self.dropped)}

    def markdown(self) -> str:
        total = len(self.kept) + len(self.dropped)
        lines = [f"# Filter report", "", f"Kept {len(self.kept)} of {total} frames; dropped {len(self.dropped)}.", "", "| reason | frames | meaning |", "|---|---|---|"]
        for reason, n in sorted(self.counts().items(), key=lambda kv: -kv[1]):
            lines.append(f"| {reason} | {n} | {REASONS.get(reason, '')} |")
        lines += ["", "## Dropped frames", ""]
        lines += [f"- {fid}: {', '.join(r)}" for fid, r in self.dropped.items()]
        return "\n".join(lines) + "\n"


def _window_median(values: np.ndarray, i: int, radius: int = 2) -> np.ndarray:
    lo, hi = max(0, i - radius), min(len(values), i + radius + 1)
    neighbours = np.concatenate([values[lo:i], values[i + 1 : hi]])
    return np.median(neighbours, axis=0) if len(neighbours) else values[i]


def filter_bad_data(records: Sequence[dict[str, Any]], settings: Any = None) -> FilterReport:
    """Decide per frame. `records` are in time order (per recording), each with an `id`,
    a `recording` and the numbers from `measure` under `stats`; `settings` is a
    profile's FilterSettings (defaults if None)."""
    if settings is None:
        from muse.studio.profiles import FilterSettings

        settings = FilterSettings()
    s = settings
    report = FilterReport()
    by_rec: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_rec.setdefault(r.get("recording", ""), []).append(r)
    for recs in by_rec.values():
        stats = [r["stats"] for r in recs]
        areas = np.array([st["area"] for st in stats], np.float64)
        cents = np.array([st["centroid"] for st in stats], np.float64)
        last_thumb: np.ndarray | None = None
        for i, (rec, st) in enumerate(zip(recs, stats)):
            why: list[str] = []
            if st.get("agreement", 1.0) < s.min_iou:
                why.append("disagree")
            if st.get("keypoints_outside") is not None and st["keypoints_outside"] > s.max_keypoints_outside:
                why.append("keypoints_outside")
            if st["sharpness"] < s.min_sharpness:
                why.append("blur")
            lo, hi = s.exposure
            if not (lo <= st["brightness"] <= hi) or st["clipped"] > 0.25:
                why.append("exposure")
            empty = st["area"] < s.min_area or st.get("contrast", 99.0) < 2.0
            if empty:
                why.append("empty")
            thumb = np.asarray(st["thumb"], np.float32)
            if last_thumb is not None and float(np.abs(thumb - last_thumb).mean()) < s.duplicate_threshold:
                why.append("duplicate")
            if not empty and len(recs) > 2:
                ref_area = _window_median(areas, i)
                if ref_area > 0 and abs(areas[i] - ref_area) / ref_area > s.max_area_jump:
                    why.append("area_jump")
                ref_c = _window_median(cents, i)
                if float(np.abs(cents[i] - ref_c).max()) > s.max_centroid_jump:
                    why.append("centroid_jump")
            if why:
                report.dropped[rec["id"]] = why
            else:
                report.kept.append(rec["id"])
                last_thumb = thumb
            if "duplicate" not in why and last_thumb is None:
                last_thumb = thumb
    return report


def filter_profile(profile: Any, log: Any = print) -> FilterReport:
    """Filter a labelled profile: writes dataset/kept.json and dataset/filter_report.md."""
    from muse.studio.files import StudioError, write_json, write_text
    from muse.studio.records import load_records

    from muse.studio.progress import for_profile

    records = load_records(profile.dataset_dir)
    with for_profile(profile, "filter", len(records)) as bar:
        report = filter_bad_data(records, profile.config.filter)
        bar.update(len(records), kept=len(report.kept))
    if not report.kept:
        raise StudioError(
            f"filter dropped every frame of profile {profile.name!r} ({report.counts()}); see "
            f"{profile.dataset_dir / 'filter_report.md'} and loosen `filter:` in profile.yaml or re-record"
        )
    write_json(profile.dataset_dir / "kept.json", report.to_json())
    write_text(profile.dataset_dir / "filter_report.md", report.markdown())
    log(f"filter: kept {len(report.kept)} of {len(records)} frames; dropped {report.counts() or 'none'}")
    return report
