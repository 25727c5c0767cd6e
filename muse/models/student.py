"""The personal student segmenter that MUSE Studio trains per profile.

A MobileNetV3-small-like encoder with a light U-shaped decoder: (B,3,H,W) floats
in [0,1] -> (B,1,H,W) logits. Saved as a checkpoint with its metadata (input
size, architecture) so `load_student` rebuilds it exactly; written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from muse.files import atomic_path
from muse.models.safe_load import CheckpointError, load_checkpoint, one_line

STUDENT_FORMAT = "muse-student-v1"
DEFAULT_ARCH: dict[str, Any] = {"width": 1.0, "decoder": 32}

# (kernel, expansion, out channels, squeeze-excite, hardswish, stride): MobileNetV3-small, trimmed.
_BLOCKS = [
    (3, 16, 16, True, False, 2),  # 1/4
    (3, 72, 24, False, False, 2),  # 1/8
    (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2),  # 1/16
    (5, 240, 40, True, True, 1),
    (5, 240, 64, True, True, 2),  # 1/32
    (5, 384, 64, True, True, 1),
]


def _ch(c: float, width: float) -> int:
    """Channels scaled by width, rounded to 8 (tensor cores like multiples of 8)."""
    return max(8, int(c * width + 4) // 8 * 8)


class _ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        mid = max(8, c // 4)
        self.fc1 = nn.Conv2d(c, mid, 1)
        self.fc2 = nn.Conv2d(mid, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, hs: bool, stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(_ConvBN(cin, exp, 1, act=act))
        layers.append(_ConvBN(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(_SqueezeExcite(exp))
        layers.append(_ConvBN(exp, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class _Fuse(nn.Module):
    """Upsample the deeper map to the skip's size, add, refine with a depthwise-separable conv."""

    def __init__(self, c_skip: int, c: int) -> None:
        super().__init__()
        self.skip = _ConvBN(c_skip, c, 1)
        self.refine = nn.Sequential(_ConvBN(c, c, 3, groups=c), _ConvBN(c, c, 1))

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(up + self.skip(skip))


class StudentSegmenter(nn.Module):
    """Small, fast person segmenter: (B,3,H,W) in [0,1] -> (B,1,H,W) logits.

    Any H, W work (the decoder resizes to each skip); multiples of 32 are fastest.
    No pretrained weights: it is trained from scratch on one person's footage.
    """

    def __init__(self, width: float = 1.0, decoder: int = 32) -> None:
        super().__init__()
        self.arch = {"width": float(width), "decoder": int(decoder)}
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1), persistent=False)
        c0 = _ch(16, width)
        self.stem = _ConvBN(3, c0, 3, 2, act=nn.Hardswish)  # 1/2
        blocks = []
        cin = c0
        self.taps: list[int] = []  # block indices whose outputs feed the decoder
        tap_channels: list[int] = []
        for i, (k, exp, cout, se, hs, s) in enumerate(_BLOCKS):
            cout_w, exp_w = _ch(cout, width), _ch(exp, width)
            blocks.append(_InvertedResidual(cin, k, exp_w, cout_w, se, hs, s))
            cin = cout_w
            last_of_stage = i + 1 == len(_BLOCKS) or _BLOCKS[i + 1][5] == 2
            if last_of_stage:
                self.taps.append(i)
                tap_channels.append(cout_w)
        self.blocks = nn.ModuleList(blocks)
        d = int(decoder)
        # LR-ASPP-like context: a global gate on the deepest features.
        self.context = _ConvBN(cin, d, 1)
        self.gate = nn.Conv2d(cin, d, 1)
        skips = [c0] + tap_channels[:-1]  # 1/2, 1/4, 1/8, 1/16
        self.fuse = nn.ModuleList([_Fuse(c, d) for c in reversed(skips)])
        self.head = nn.Conv2d(d, 1, 1)

    def decoded(self, x: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """Decoder features after `levels` fuse steps (all: 1/2 resolution), before the head."""
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        x = self.stem(x)
        feats = [x]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        deep = feats.pop()
        y = self.context(deep) * torch.sigmoid(self.gate(deep.mean((2, 3), keepdim=True)))
        steps = list(zip(self.fuse, reversed(feats)))
        for fuse, skip in steps[:levels]:
            y = fuse(y, skip)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        logits = self.head(self.decoded(x))
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)


class StudentPose(nn.Module):
    """Optional student pose head: the same encoder, heatmaps for `num_keypoints` at 1/4 resolution.

    forward (B,3,H,W) -> (B,K,H/4,W/4) heatmap logits; `decode` turns them into pixels.
    """

    def __init__(self, num_keypoints: int = 17, width: float = 1.0, decoder: int = 32) -> None:
        super().__init__()
        self.arch = {"width": float(width), "decoder": int(decoder), "num_keypoints": int(num_keypoints)}
        self.backbone = StudentSegmenter(width, decoder)
        self.backbone.head = nn.Conv2d(decoder, num_keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        return b.head(b.decoded(x, levels=len(b.fuse) - 1))  # stop at 1/4

    @staticmethod
    def decode(heatmaps: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps (B,K,h,w) -> points (B,K,2) in pixels of image_size (w, h), confidence (B,K)."""
        bsz, k, hh, ww = heatmaps.shape
        flat = heatmaps.flatten(2)
        conf, idx = flat.max(-1)
        ys = torch.div(idx, ww, rounding_mode="floor").float()
        xs = (idx % ww).float()
        sx, sy = image_size[0] / ww, image_size[1] / hh
        pts = torch.stack([(xs + 0.5) * sx, (ys + 0.5) * sy], -1)
        return pts, torch.sigmoid(conf)


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _check_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: student meta is a {type(meta).__name__}, not a mapping with input_size: [width, height]")
    size = meta.get("input_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"{where}: student meta needs input_size: [width, height] (got {size!r})")
    out = dict(meta)
    out["input_size"] = [int(size[0]), int(size[1])]
    return out


def save_student(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write the model and its meta (must hold `input_size: [w, h]`) atomically to `path`."""
    path = Path(path)
    meta = _check_meta(meta, str(path))
    model = getattr(model, "module", model)  # unwrap DDP
    kind = "pose" if isinstance(model, StudentPose) else "segmenter"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": STUDENT_FORMAT, "kind": kind, "arch": dict(model.arch), "meta": meta, "state_dict": state}, path)
    return path


def _load(path: str | os.PathLike, device: str | torch.device, kind: str) -> tuple[nn.Module, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"student model {path} not found; train one with `muse studio train PROFILE`")
    blob = load_checkpoint(path, "student model", "retrain or roll back with `muse studio rollback PROFILE`")
    if not isinstance(blob, dict) or blob.get("format") != STUDENT_FORMAT:
        raise ValueError(f"{path}: not a MUSE student checkpoint (format {blob.get('format') if isinstance(blob, dict) else None!r}, want {STUDENT_FORMAT})")
    if blob.get("kind", "segmenter") != kind:
        raise ValueError(f"{path}: holds a student {blob.get('kind')}, not a {kind}")
    arch = blob.get("arch", DEFAULT_ARCH)
    try:
        model: nn.Module = StudentPose(**arch) if kind == "pose" else StudentSegmenter(**arch)
    except Exception as exc:  # unknown or absurd architecture settings in a damaged or foreign file
        raise CheckpointError(f"student model {path} has an unusable architecture ({one_line(exc)}); retrain or roll back with `muse studio rollback PROFILE`") from None
    try:
        model.load_state_dict(blob["state_dict"])
    except Exception as exc:  # missing keys, wrong shapes: a damaged or foreign file
        raise CheckpointError(f"student model {path} does not fit its architecture ({one_line(exc)}); retrain or roll back with `muse studio rollback PROFILE`") from None
    model.to(device).eval()
    return model, _check_meta(blob.get("meta"), str(path))


def load_student(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[StudentSegmenter, dict[str, Any]]:
    """Rebuild a saved student segmenter in eval mode on `device`; returns (model, meta)."""
    model, meta = _load(path, device, "segmenter")
    assert isinstance(model, StudentSegmenter)
    return model, meta


def load_student_pose(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[StudentPose, dict[str, Any]]:
    """Rebuild a saved student pose head; returns (model, meta)."""
    model, meta = _load(path, device, "pose")
    assert isinstance(model, StudentPose)
    return model, meta


def live_model_path(profile_dir: str | os.PathLike) -> Path:
    """The live model file of a profile (`live_model` in profile.yaml, relative to the profile)."""
    import yaml  # light; only needed here

    root = Path(profile_dir)
    cfg_path = root / "profile.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found; create the profile with `muse studio new NAME`")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    live = cfg.get("live_model")
    if not live:
        raise FileNotFoundError(f"{cfg_path}: no live_model yet; run `muse studio export {root.name}`")
    return root / live


def read_onnx_meta(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """The `student.json` written beside an exported `student.onnx`."""
    p = Path(onnx_path).with_name("student.json")
    return _check_meta(json.loads(p.read_text()), str(p))
