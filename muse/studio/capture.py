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
from muse.studio.progress import for_profile

PersonCheck = Callable[[np.ndarray], float]  # RGB frame -> share of the picture that is a person


class CaptureSource:
    """The profile's capture node (`capture.camera`, `capture.demo`, `capture.file`...) driven by hand, frame by frame.

    `where` names the settings the node came from (e.g. "camera.type/camera.params in .../profile.yaml"),
    so every error says which setting to change and in which file."""

    def __init__(self, node_type: str, params: dict[str, Any], where: str = "camera.type/camera.params in profile.yaml") -> None:
        from pydantic import ValidationError

        from muse.graph.node import NodeError
        from muse.graph.registry import load_registry
        from muse.studio.teachers.offline import open_node

        try:
            cls = load_registry().get(node_type)
        except Exception as exc:
            raise StudioError(f"capture node {node_type!r} is not available ({exc}); change {where}") from None
        fps = float(params.get("fps", 30) or 30)
        if node_type == "capture.file" and params.get("path"):
            fps = _file_fps(str(params["path"]), fps)
        size = (int(params.get("width", 1280)), int(params.get("height", 720)))
        self._fell_back = False
        try:
            self.node = open_node(cls, params, "studio.capture", "cpu", fps, size)
        except ValidationError as exc:
            raise StudioError(f"{where} do not fit {node_type!r}: {exc}") from None
        except NodeError as exc:
            stand_in = cls.stand_in(cls.Params(**params))  # a camera's `fallback: demo`, as a run would start it
            if stand_in is not None:
                self.node = open_node(stand_in[0], stand_in[1], "studio.capture/demo", "cpu", fps, size)
                self._fell_back = True
                self.node_type = node_type
                self.fps, self.total = fps, None
                return
            hint = ("; without a camera, make a camera-less profile with `muse studio new NAME --demo` "
                    "(or `--source VIDEO`)" if node_type == "capture.camera" else "")
            raise StudioError(f"{exc} (change {where}{hint})") from None
        self.node_type = node_type
        self.fps = fps
        self.total: int | None = None  # frames in a file source, when known
        if node_type == "capture.file" and params.get("path"):
            self.total = _file_frames(str(params["path"]))

    def fell_back(self) -> bool:
        """True when a camera node could not open its camera and renders the demo source instead."""
        return self._fell_back

    def read(self) -> np.ndarray | None:
        out = self.node.process()
        if out is None:
            return None
        frame = out.get("frame") or next(iter(out.values()))
        return frame.hwc_uint8().cpu().numpy()

    def close(self) -> None:
        self.node.close()


def _file_fps(path: str, default: float) -> float:
    try:
        from muse.studio.files import video_info

        return float(video_info(path)["fps"]) or default
    except Exception:  # a URL or an odd file: the node itself says what is wrong when it opens
        return default


def _file_frames(path: str) -> int | None:
    try:
        from muse.studio.files import video_info

        return int(video_info(path)["frames"]) or None
    except Exception:
        return None


def _where(profile: Any, plate: bool = False) -> str:
    cam = profile.config.camera
    keys = "camera.plate_type/camera.plate_params" if plate and cam.plate_type else "camera.type/camera.params"
    if plate and not cam.plate_type:
        keys += " (camera.plate_params for the plate only)"
    return f"{keys} in {profile.yaml_path}"


def _no_fallback(src: CaptureSource, profile: Any, what: str) -> None:
    """A camera that silently became the demo source would record the demo person instead of you."""
    if src.fell_back():
        src.close()
        raise StudioError(
            f"no camera could be opened, so the camera node fell back to the demo source; a {what} must come from your "
            f"camera. Connect it or fix camera.params.device, and remove `fallback: demo` from camera.params in "
            f"{profile.yaml_path}; to work without a camera, create a camera-less profile: `muse studio new NAME --demo` "
            f"(or `--source VIDEO`)"
        )


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
    frames: int | None = None,
    warmup: int = 5,
    force: bool = False,
    source: CaptureSource | None = None,
    person_check: PersonCheck | None | bool = True,
    max_person: float | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Record the empty room as the profile's clean plate (limits from `plate:` in profile.yaml)."""
    settings = profile.config.plate
    frames = frames or settings.frames
    max_person = settings.max_person if max_person is None else max_person
    if not force:
        refuse_overwrite(profile.plate_path, "clean plate", f"`muse studio plate {profile.name} --force` replaces it")
    plate_type, plate_params = profile.config.camera.plate_source()
    src = source or CaptureSource(plate_type, plate_params, _where(profile, plate=True))
    if source is None:
        _no_fallback(src, profile, "clean plate")
    got: list[np.ndarray] = []
    try:
        with for_profile(profile, "plate", warmup + frames) as bar:
            for i in range(warmup + frames):
                f = src.read()
                if f is None:
                    break
                if i >= warmup:  # auto-exposure settles in the first frames
                    got.append(f)
                bar.update(1)
    finally:
        src.close()
    if len(got) < 3:
        raise StudioError(f"the camera gave only {len(got)} frames for the clean plate (need 3 after {warmup} warm-up frames); "
                          f"check {_where(profile, plate=True)}")
    plate, checks = combine_plate(got, settings.max_moving)
    if checks["moving_share"] > checks["max_moving"]:
        demo = plate_type == "capture.demo" and plate_params.get("person", True)
        raise StudioError(
            f"{checks['moving_share']:.1%} of the picture moved while recording the clean plate (limit plate.max_moving = "
            f"{settings.max_moving:.1%} in {profile.yaml_path}); "
            + ("the demo source draws its person: set camera.plate_params: {person: false} there"
               if demo else
               f"step out of the picture, keep the camera still, and run `muse studio plate {profile.name}` again")
        )
    check = default_person_check() if person_check is True else (person_check or None)
    if check is not None:
        share = check(plate)
        checks["person_share"] = share
        if share > max_person:
            raise StudioError(
                f"someone seems to be in the clean plate ({share:.1%} of the picture looks like a person to the bundled "
                f"segmenter; limit plate.max_person = {max_person:.1%} in {profile.yaml_path}); leave the room's view and "
                f"run `muse studio plate {profile.name}` again. If nobody was there, something in the room looks like a "
                f"person to it: move that out of view (or, knowingly, raise plate.max_person)"
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
    seconds: float | None = None,
    name: str | None = None,
    force: bool = False,
    source: CaptureSource | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Record the person for `seconds` (default camera.record_seconds; a file source stops at its end)
    into recordings/<name>.mp4 inside the profile (atomic; refuses to overwrite)."""
    name = name or time.strftime("take-%Y%m%d-%H%M%S")
    path = profile.recordings_dir / f"{Path(name).stem}.mp4"
    if not force:
        refuse_overwrite(path, "recording", "pick another --name or pass --force")
    cam = profile.config.camera
    src = source or CaptureSource(cam.type, cam.params, _where(profile))
    if source is None:
        _no_fallback(src, profile, "recording")
    writer: VideoWriter | None = None
    known = getattr(src, "total", None)  # a file source knows its length; a camera does not
    if seconds is None and known:
        total = int(known)
    else:
        total = max(1, int(round((seconds or cam.record_seconds) * src.fps)))
        if known:
            total = min(total, int(known))
    try:
        with for_profile(profile, "record", total) as bar:
            for _ in range(total):
                f = src.read()
                if f is None:
                    break
                if writer is None:
                    writer = VideoWriter(path, f.shape[1], f.shape[0], src.fps)
                writer.write(f)
                bar.update(1)
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
        raise StudioError(f"the camera gave no frames; check {_where(profile)}")
    writer.close()
    log(f"recorded {writer.frames} frames to {path}")
    return path
