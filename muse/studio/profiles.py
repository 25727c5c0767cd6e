"""Studio profiles: one folder per camera angle holding its clean plate,
recordings, dataset, trained and exported models, and a `profile.yaml`
(camera, teachers, filter and training settings, which model is live).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from muse.studio.files import StudioError, write_text

HOME_ENV = "MUSE_STUDIO_HOME"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SAM2_CONFIG = re.compile(r"^configs/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*\.yaml$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CameraSettings(_Strict):
    type: str = Field("capture.camera", description="capture node id used for plate and record")
    params: dict[str, Any] = Field(default_factory=lambda: {"width": 1280, "height": 720, "fps": 30})
    plate_type: str | None = Field(None, description="capture node for the clean plate when it differs from `type` (e.g. capture.images for a photo of the empty room)")
    plate_params: dict[str, Any] = Field(default_factory=dict, description="params for the clean plate: merged over `params` (same node) or alone (with plate_type); the demo source uses {person: false}")
    record_seconds: float = Field(60.0, gt=0, description="recording length when `muse studio run` records (a file source stops at its end)")

    def plate_source(self) -> tuple[str, dict[str, Any]]:
        """(node type, params) the clean plate is captured with."""
        if self.plate_type:
            return self.plate_type, dict(self.plate_params)
        return self.type, {**self.params, **self.plate_params}


class PlateSettings(_Strict):
    frames: int = Field(30, ge=3, description="frames median-combined into the clean plate")
    max_moving: float = Field(0.02, ge=0, le=1, description="refuse the plate when more than this share of the picture moved")
    max_person: float = Field(0.01, ge=0, le=1, description="refuse the plate when the bundled segmenter sees more than this share of person")


class ExportSettings(_Strict):
    min_iou: float = Field(0.95, ge=0, le=1, description="a new student goes live only with at least this held-out IoU (and not worse than the live model); `export --force` overrides")


class Sam2Settings(_Strict):
    config: str = Field("configs/sam2.1/sam2.1_hiera_l.yaml", description="sam2 config name (inside the sam2 package)")

    @field_validator("config")
    @classmethod
    def _inside_sam2(cls, v: str) -> str:
        # sam2 builds the model with Hydra, which instantiates whatever `_target_` a config names:
        # a shared profile may only pick one of the configs shipped inside the sam2 package.
        if not _SAM2_CONFIG.match(v) or ".." in v.split("/"):
            raise ValueError(f"{v!r} is not a config of the sam2 package (like configs/sam2.1/sam2.1_hiera_l.yaml)")
        return v
    checkpoint: str | None = Field(None, description="path of the SAM 2.1 .pt on your disk; never downloaded")
    video: bool = Field(True, description="propagate through the video (else image predictor per frame)")


class VitPoseSettings(_Strict):
    checkpoint: str | None = Field(None, description="folder of a transformers VitPose model (e.g. vitpose-plus-huge) on your disk")


class TeacherSettings(_Strict):
    segment: list[str] = Field(default_factory=lambda: ["sam2", "clean_plate", "selfie"], description="mask teachers, best first (the first available gives the label, the others vote); absent ones are skipped")
    pose: list[str] = Field(default_factory=lambda: ["vitpose", "bundled_pose"], description="keypoint teachers, best first")
    sam2: Sam2Settings = Field(default_factory=Sam2Settings)
    vitpose: VitPoseSettings = Field(default_factory=VitPoseSettings)
    every: int = Field(1, ge=1, description="label every Nth frame of the recordings")
    batch: int = Field(8, ge=1, le=256, description="frames per teacher batch on GPU")


class FilterSettings(_Strict):
    min_iou: float = Field(0.85, ge=0, le=1, description="drop frames whose teachers agree less than this (mask IoU)")
    max_keypoints_outside: float = Field(0.34, ge=0, le=1, description="drop if more than this share of confident keypoints lie outside the mask")
    min_sharpness: float = Field(20.0, ge=0, description="variance of the Laplacian below this = blurred")
    exposure: tuple[float, float] = Field((0.12, 0.92), description="mean brightness allowed (0..1); also clipped-pixel share < 0.25")
    max_area_jump: float = Field(0.35, ge=0, description="relative change of mask area between neighbours")
    max_centroid_jump: float = Field(0.12, ge=0, description="centroid move between neighbours, in image widths")
    min_area: float = Field(0.01, ge=0, le=1, description="masks smaller than this share of the picture are empty")
    duplicate_threshold: float = Field(0.1, ge=0, description="mean abs pixel difference (0..255) below this = duplicate of the last kept frame")


class TrainingSettings(_Strict):
    input_size: tuple[int, int] = Field((320, 192), description="student input [width, height]")
    width: float = Field(1.0, gt=0, le=4, description="student channel width multiplier")
    steps: int = Field(3000, ge=1)
    batch: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of frames held out (contiguous blocks, not random frames)")
    ohem_ratio: float = Field(0.25, gt=0, le=1, description="share of hardest pixels kept by the OHEM loss")
    boundary_weight: float = Field(4.0, ge=0, description="extra weight of pixels near the mask edge")
    checkpoint_every: int = Field(100, ge=1)
    pose_steps: int = Field(1500, ge=0, description="steps for the student pose head (0 = no pose head; needs a pose teacher)")
    amp: bool = Field(True, description="mixed precision on GPU")
    seed: int = 0
    cpu: "CpuBudget" = Field(default_factory=lambda: CpuBudget(), description="what training does on a machine without a GPU")


class CpuBudget(_Strict):
    auto: bool = Field(True, description="without a GPU, train a smaller student for a time budget instead of `steps`/`input_size`/`width`")
    minutes: float = Field(10.0, gt=0, description="training time budget on the CPU, both heads together")
    pose_share: float = Field(0.2, ge=0, le=1, description="share of the budget for the pose head")
    input_size: tuple[int, int] = Field((160, 96), description="student input [width, height] on the CPU")
    width: float = Field(0.5, gt=0, le=4, description="student channel width multiplier on the CPU")
    batch: int = Field(8, ge=1, description="batch on the CPU")


TrainingSettings.model_rebuild()


class ProfileConfig(_Strict):
    name: str
    camera: CameraSettings = Field(default_factory=CameraSettings)
    plate: PlateSettings = Field(default_factory=PlateSettings)
    teachers: TeacherSettings = Field(default_factory=TeacherSettings)
    filter: FilterSettings = Field(default_factory=FilterSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    live_model: str | None = Field(None, description="live model file, relative to the profile folder")
    live_pose_model: str | None = Field(None, description="live student pose head, relative to the profile folder")
    notes: str = ""


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def demo_camera(width: int = 640, height: int = 360) -> dict[str, Any]:
    """Camera settings of a camera-less profile: the demo source (a person photo moving in an
    empty room), rendered as fast as the machine goes; its plate is the same room with nobody in it."""
    return {
        "type": "capture.demo",
        "params": {"width": width, "height": height, "fps": 0, "background": "room"},
        "plate_params": {"person": False},
        "record_seconds": 20.0,
    }


def file_camera(source: str | os.PathLike, plate: str | os.PathLike | None = None) -> dict[str, Any]:
    """Camera settings that read a video file (recorded elsewhere) instead of a camera. The clean
    plate comes from `plate` (a picture or a video of the empty room) or else from the video itself."""
    src = Path(source).expanduser().resolve()
    if not src.is_file():
        raise StudioError(f"--source {str(source)!r}: no such video file; give the path of a recording of you (or `--source demo`)")
    cam: dict[str, Any] = {"type": "capture.file", "params": {"path": str(src), "realtime": False}}
    if plate is not None:
        pl = Path(plate).expanduser().resolve()
        if not pl.is_file():
            raise StudioError(f"--plate {str(plate)!r}: no such file; give a picture or video of the empty room")
        if pl.suffix.lower() in IMAGE_SUFFIXES:
            cam.update(plate_type="capture.images", plate_params={"path": str(pl), "fps": 0, "loop": True})
        else:
            cam.update(plate_type="capture.file", plate_params={"path": str(pl), "realtime": False})
    return cam


def studio_home(root: str | os.PathLike | None = None) -> Path:
    if root:
        return Path(root)
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".muse" / "profiles")


class Profile:
    """A profile folder and its settings. Paths are properties so every stage agrees on the layout."""

    def __init__(self, root: Path, config: ProfileConfig) -> None:
        self.root = root
        self.config = config

    name = property(lambda self: self.config.name)
    yaml_path = property(lambda self: self.root / "profile.yaml")
    plate_path = property(lambda self: self.root / "plate" / "clean_plate.png")
    recordings_dir = property(lambda self: self.root / "recordings")
    dataset_dir = property(lambda self: self.root / "dataset")
    analysis_dir = property(lambda self: self.root / "analysis")
    models_dir = property(lambda self: self.root / "models")
    checkpoints_dir = property(lambda self: self.root / "models" / "checkpoints")
    live_dir = property(lambda self: self.root / "models" / "live")
    previous_dir = property(lambda self: self.root / "models" / "previous")
    state_path = property(lambda self: self.root / "state.json")
    progress_path = property(lambda self: self.root / "logs" / "train_progress.jsonl")
    progress_log_path = property(lambda self: self.root / "logs" / "progress.jsonl")  # every stage's progress lines

    def recordings(self) -> list[Path]:
        return sorted(p for p in self.recordings_dir.glob("*.mp4") if not p.name.startswith("."))

    def save(self) -> None:
        data = self.config.model_dump(mode="json")
        write_text(self.yaml_path, yaml.safe_dump(data, sort_keys=False))

    def live_model_path(self) -> Path | None:
        return self.root / self.config.live_model if self.config.live_model else None

    def summary(self) -> dict[str, Any]:
        from muse.studio.files import read_json

        frames = read_json(self.dataset_dir / "labels.json", {}, "delete it and run `muse studio label` (it is rebuilt from dataset/records)").get("frames", [])
        stages = read_json(self.state_path, {}, "delete it: finished stages are then found again from the files on disk").get("stages", {})
        return {
            "name": self.name,
            "path": str(self.root),
            "clean_plate": self.plate_path.is_file(),
            "recordings": [p.name for p in self.recordings()],
            "recovered_takes": [p.name for p in self.recordings() if "-recovered" in p.stem],
            "labelled_frames": len(frames) if isinstance(frames, list) else "damaged labels.json",
            "live_model": self.config.live_model,
            "rollback_available": (self.previous_dir / "student.onnx").is_file(),
            "quality": _quality(self),
            "stages": stages if isinstance(stages, dict) else "damaged state.json",
        }


def _quality(profile: "Profile") -> dict[str, Any]:
    from muse.studio.gate import figures

    try:
        return figures(profile)
    except Exception as exc:  # a hand-edited gate.json must not hide the rest of `show`
        return {"error": str(exc)}


def _check_name(name: str) -> None:
    if not _NAME.match(name or ""):
        raise StudioError(f"profile name {name!r} is not valid: use letters, digits, '-', '_' or '.' (e.g. 'front', 'side-desk')")


def create_profile(name: str, root: str | os.PathLike | None = None, **overrides: Any) -> Profile:
    _check_name(name)
    folder = studio_home(root) / name
    if (folder / "profile.yaml").exists():
        raise StudioError(f"profile {name!r} already exists at {folder}; pick another name or `muse studio delete {name}`")
    try:
        config = ProfileConfig(name=name, **overrides)
    except ValidationError as exc:
        raise StudioError(f"profile {name!r}: bad settings:\n{exc}") from None
    profile = Profile(folder, config)
    for d in (profile.recordings_dir, profile.dataset_dir, profile.models_dir, profile.plate_path.parent):
        d.mkdir(parents=True, exist_ok=True)
    profile.save()
    return profile


def load_profile(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> Profile:
    p = Path(name_or_path)
    folder = p if (p / "profile.yaml").is_file() else studio_home(root) / str(name_or_path)
    cfg_path = folder / "profile.yaml"
    if not cfg_path.is_file():
        known = ", ".join(list_profiles(root)) or "none yet"
        raise StudioError(f"no profile {str(name_or_path)!r} (looked for {cfg_path}); known profiles: {known}. Create one with `muse studio new NAME`")
    try:
        raw = yaml.safe_load(cfg_path.read_text()) or {}
        config = ProfileConfig(**raw)
    except (yaml.YAMLError, ValidationError, TypeError) as exc:
        raise StudioError(f"{cfg_path}: invalid profile settings; fix the file:\n{exc}") from None
    profile = Profile(folder, config)
    _clean_temps(profile)
    return profile


def _clean_temps(profile: Profile) -> None:
    """Temp files of a step that was killed (a checkpoint, a label file, an export's staging folder) go at
    the next start; a killed take is salvaged (kept), not removed."""
    import logging

    from muse.studio.files import clean_stray_staging, clean_stray_temps, salvage_takes

    log = logging.getLogger("muse.studio")
    salvage_takes(profile.recordings_dir, log=log.warning)  # a killed take is kept, never cleaned away
    d = profile.dataset_dir
    folders = [profile.root, profile.recordings_dir, profile.plate_path.parent, d, d / "records", d / "frames", d / "masks",
               profile.models_dir, profile.checkpoints_dir, profile.analysis_dir, profile.root / "logs"]
    removed = clean_stray_temps(folders) + clean_stray_staging(profile.models_dir / "versions")
    if removed:
        log.warning("%s: removed %d temp file(s) left by an interrupted step: %s", profile.name,
                                                 len(removed), ", ".join(p.name for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))


def list_profiles(root: str | os.PathLike | None = None) -> list[str]:
    home = studio_home(root)
    if not home.is_dir():
        return []
    return sorted(p.name for p in home.iterdir() if (p / "profile.yaml").is_file())


def delete_profile(name: str, root: str | os.PathLike | None = None, *, yes: bool = False) -> Path:
    """Delete a profile folder; refuses unless `yes` (the CLI asks first)."""
    profile = load_profile(name, root)
    if not yes:
        raise StudioError(f"deleting profile {name!r} removes {profile.root} with its recordings and models; confirm with --yes")
    # Move aside first so a crash mid-delete never leaves a half profile that looks valid.
    trash = profile.root.with_name(f".deleting-{profile.root.name}")
    os.replace(profile.root, trash)
    shutil.rmtree(trash)
    return profile.root
