"""One-click capture through the profile's capture node: the clean plate (the
empty room, several frames combined, checked that nobody is in it) and
recordings of the person. Both refuse to overwrite and land atomically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from muse.studio.files import StudioError, VideoWriter, refuse_overwrite, write_image, write_json

PersonCheck = Callable[[np.ndarray], float]  # RGB frame -> share of the picture that is a person


class CaptureSource:
    """The profile's capture node (`capture.camera`, `capture.demo`, `capture.file`...) driven by hand, frame by frame."""

    def __init__(self, node_type: str, params: dict[str, Any]) -> None:
        from pydantic import ValidationError

        from muse.graph.registry import load_registry
        from muse.studio.teachers.offline import open_node

        try:
            cls = load_registry().get(node_type)
        except Exception as exc:
            raise StudioError(f"capture node {node_type!r} is not available ({exc}); set camera.type in profile.yaml") from None
        fps = float(params.get("fps", 30) or 30)
        size = (int(params.get("width", 1280)), int(params.get("height", 720)))
        try:
            self.node = open_node(cls, params, "studio.capture", "cpu", fps, size)
        except ValidationError as exc:
            raise StudioError(f"camera.params in profile.yaml do not fit {node_type!r}: {exc}") from None
        self.fps = fps

    def read(self) -> np.ndarray | None:
        out = self.node.process()
        if out is None:
            return None
        frame = out.get("frame") or next(iter(out.values()))
        return frame.hwc_uint8().cpu().numpy()

    def close(self) -> None:
        self.node.close()


def default_person_check() -> PersonCheck | None:
    """The bundled selfie segmenter as a person detector, when installed."""
    try:
        from muse.studio.teachers.offline import NodeMaskTeacher

        teacher = NodeMaskTeacher("segment.selfie", "selfie")
    except Exception:
        return None
    return lambda rgb: float((teacher.masks([rgb])[0] > 0.5).mean())


def combine_plate(frames: list[np.ndarray], max_moving: float = 0.02) -> tuple[np.ndarray, dict[str, float]]:
    """Median of the frames (removes sensor noise and a passing shadow); reports how much moved."""
    stack = np.stack(frames).astype(np.float32)
    plate = np.median(stack, axis=0)
    moving = float((np.abs(stack - plate).max(axis=(0, 3)) > 40).mean())
    return np.clip(plate + 0.5, 0, 255).astype(np.uint8), {"moving_share": moving, "frames": len(frames), "max_moving": max_moving}


def capture_plate(
    profile: Any,
    *,
    frames: int = 30,
    warmup: int = 5,
    force: bool = False,
    source: CaptureSource | None = None,
    person_check: PersonCheck | None | bool = True,
    max_person: float = 0.01,
    log: Callable[[str], None] = print,
) -> Path:
    """Record the empty room as the profile's clean plate."""
    if not force:
        refuse_overwrite(profile.plate_path, "clean plate", f"`muse studio plate {profile.name} --force` replaces it")
    src = source or CaptureSource(profile.config.camera.type, profile.config.camera.params)
    got: list[np.ndarray] = []
    try:
        for i in range(warmup + frames):
            f = src.read()
            if f is None:
                break
            if i >= warmup:  # auto-exposure settles in the first frames
                got.append(f)
    finally:
        src.close()
    if len(got) < 3:
        raise StudioError(f"the camera gave only {len(got)} frames for the clean plate; check camera settings in {profile.yaml_path}")
    plate, checks = combine_plate(got)
    if checks["moving_share"] > checks["max_moving"]:
        raise StudioError(
            f"{checks['moving_share']:.1%} of the picture moved while recording the clean plate; step out of the picture, "
            f"keep the camera still, and run `muse studio plate {profile.name}` again"
        )
    check = default_person_check() if person_check is True else (person_check or None)
    if check is not None:
        share = check(plate)
        checks["person_share"] = share
        if share > max_person:
            raise StudioError(
                f"someone seems to be in the clean plate ({share:.1%} of the picture looks like a person); leave the room's view "
                f"and run `muse studio plate {profile.name}` again"
            )
    else:
        checks["person_share"] = None
        log("note: no person detector installed (segment.selfie); the plate was only checked for motion")
    write_image(profile.plate_path, plate)
    write_json(profile.plate_path.with_suffix(".json"), {**checks, "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "camera": profile.config.camera.model_dump()})
    log(f"clean plate saved to {profile.plate_path} ({len(got)} frames combined)")
    return profile.plate_path


def record(
    profile: Any,
    *,
    seconds: float,
    name: str | None = None,
    force: bool = False,
    source: CaptureSource | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Record the person for `seconds` into recordings/<name>.mp4 (atomic; refuses to overwrite)."""
    name = name or time.strftime("take-%Y%m%d-%H%M%S")
    path = profile.recordings_dir / f"{Path(name).stem}.mp4"
    if not force:
        refuse_overwrite(path, "recording", "pick another --name or pass --force")
    src = source or CaptureSource(profile.config.camera.type, profile.config.camera.params)
    writer: VideoWriter | None = None
    total = max(1, int(round(seconds * src.fps)))
    try:
        for _ in range(total):
            f = src.read()
            if f is None:
                break
            if writer is None:
                writer = VideoWriter(path, f.shape[1], f.shape[0], src.fps)
            writer.write(f)
    except KeyboardInterrupt:
        log("stopped by you; keeping what was recorded")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        src.close()
    if writer is None or writer.frames == 0:
        if writer is not None:
            writer.abort()
        raise StudioError(f"the camera gave no frames; check camera settings in {profile.yaml_path}")
    writer.close()
    log(f"recorded {writer.frames} frames to {path}")
    return path
