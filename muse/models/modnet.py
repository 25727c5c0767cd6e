"""MODNet portrait matting (Ke et al., AAAI 2022; Apache-2.0) with the official state_dict layout.

The module names follow github.com/ZHKKKe/MODNet so its released checkpoints
(`modnet_webcam_portrait_matting.ckpt`, `modnet_photographic_portrait_matting.ckpt`)
load with a strict key match. Only torch is imported here (the bench script loads this file alone).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from muse.files import atomic_path

# MobileNetV2 stages as (expansion, out channels, repeats, first stride); the official backbone.
_MBV2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
# Channels of the five encoder taps (1/2, 1/4, 1/8, 1/16, 1/32) that the branches read.
ENC_CHANNELS = (16, 24, 32, 96, 1280)
# Feature indices that end each tap: features[0..1] -> 1/2, [2..3] -> 1/4, [4..6], [7..13], [14..18].
_TAP_ENDS = (1, 3, 6, 13, 18)

MODNET_MEAN = 0.5  # the official demos normalise RGB in [0,1] as (x - 0.5) / 0.5
MODNET_STD = 0.5
SIZE_MULTIPLE = 32  # input sides must be multiples of the backbone's total stride


class ModnetCheckpointError(ValueError):
    """A MODNet checkpoint file is unreadable or does not match the architecture."""


# -- backbone ---------------------------------------------------------------

def _conv_bn_relu6(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block; `conv` holds the layers so keys read `features.N.conv.M.*`."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = round(cin * expansion)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expansion != 1:  # the pointwise expansion is skipped when it would be the identity
            layers += [nn.Conv2d(cin, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res_connect else y


class MobileNetV2(nn.Module):
    """The feature extractor only (the official backbone is built with num_classes=None)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [_conv_bn_relu6(in_channels, 32, 3, 2)]
        cin = 32
        for t, c, n, s in _MBV2_STAGES:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        blocks.append(_conv_bn_relu6(cin, 1280, 1, 1))
        self.features = nn.Sequential(*blocks)


class MobileNetV2Backbone(nn.Module):
    """Wraps MobileNetV2 as `backbone.model` and returns the five encoder taps."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.model = MobileNetV2(in_channels)
        self.enc_channels = list(ENC_CHANNELS)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.model.features):
            x = layer(x)
            if i in _TAP_ENDS:
                taps.append(x)
        return taps


# -- MODNet building blocks -------------------------------------------------

class IBNorm(nn.Module):
    """Batch norm on the first half of the channels, instance norm on the rest."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bnorm_channels = channels // 2
        self.inorm_channels = channels - self.bnorm_channels
        self.bnorm = nn.BatchNorm2d(self.bnorm_channels, affine=True)
        self.inorm = nn.InstanceNorm2d(self.inorm_channels, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bnorm(x[:, : self.bnorm_channels].contiguous())
        i = self.inorm(x[:, self.bnorm_channels :].contiguous())
        return torch.cat((b, i), 1)


class Conv2dIBNormRelu(nn.Module):
    def __init__(
        self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0,
        with_ibn: bool = True, with_relu: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=True)]
        if with_ibn:
            layers.append(IBNorm(cout))
        if with_relu:
            layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SEBlock(nn.Module):
    """Squeeze-and-excitation channel gate (bias-free linears, as in the checkpoints)."""

    def __init__(self, cin: int, cout: int, reduction: int = 1) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(cin, cin // reduction, bias=False), nn.ReLU(inplace=True),
            nn.Linear(cin // reduction, cout, bias=False), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(x.mean((2, 3)))
        return x * w[:, :, None, None]


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class LRBranch(nn.Module):
    """Low-resolution semantic branch; owns a second reference to the backbone (as the original does)."""

    def __init__(self, backbone: MobileNetV2Backbone) -> None:
        super().__init__()
        c = backbone.enc_channels
        self.backbone = backbone
        self.se_block = SEBlock(c[4], c[4], reduction=4)
        self.conv_lr16x = Conv2dIBNormRelu(c[4], c[3], 5, stride=1, padding=2)
        self.conv_lr8x = Conv2dIBNormRelu(c[3], c[2], 5, stride=1, padding=2)
        self.conv_lr = Conv2dIBNormRelu(c[2], 1, 3, stride=2, padding=1, with_ibn=False, with_relu=False)

    def forward(self, img: torch.Tensor, inference: bool):
        enc2x, enc4x, _, _, enc32x = self.backbone(img)
        lr8x = self.conv_lr8x(_up2(self.conv_lr16x(_up2(self.se_block(enc32x)))))
        semantic = None if inference else torch.sigmoid(self.conv_lr(lr8x))
        return semantic, lr8x, enc2x, enc4x


class HRBranch(nn.Module):
    """High-resolution detail branch."""

    def __init__(self, hr: int, c: list[int]) -> None:
        super().__init__()
        self.tohr_enc2x = Conv2dIBNormRelu(c[0], hr, 1)
        self.conv_enc2x = Conv2dIBNormRelu(hr + 3, hr, 3, stride=2, padding=1)
        self.tohr_enc4x = Conv2dIBNormRelu(c[1], hr, 1)
        self.conv_enc4x = Conv2dIBNormRelu(2 * hr, 2 * hr, 3, padding=1)
        self.conv_hr4x = nn.Sequential(
            Conv2dIBNormRelu(3 * hr + 3, 2 * hr, 3, padding=1),
            Conv2dIBNormRelu(2 * hr, 2 * hr, 3, padding=1),
            Conv2dIBNormRelu(2 * hr, hr, 3, padding=1),
        )
        self.conv_hr2x = nn.Sequential(
            Conv2dIBNormRelu(2 * hr, 2 * hr, 3, padding=1),
            Conv2dIBNormRelu(2 * hr, hr, 3, padding=1),
            Conv2dIBNormRelu(hr, hr, 3, padding=1),
            Conv2dIBNormRelu(hr, hr, 3, padding=1),
        )
        self.conv_hr = nn.Sequential(
            Conv2dIBNormRelu(hr + 3, hr, 3, padding=1),
            Conv2dIBNormRelu(hr, 1, 1, with_ibn=False, with_relu=False),
        )

    def forward(self, img, enc2x, enc4x, lr8x, inference: bool):
        img2x = F.interpolate(img, scale_factor=0.5, mode="bilinear", align_corners=False)
        img4x = F.interpolate(img, scale_factor=0.25, mode="bilinear", align_corners=False)
        enc2x = self.tohr_enc2x(enc2x)
        hr4x = self.conv_enc2x(torch.cat((img2x, enc2x), 1))
        hr4x = self.conv_enc4x(torch.cat((hr4x, self.tohr_enc4x(enc4x)), 1))
        hr4x = self.conv_hr4x(torch.cat((hr4x, _up2(lr8x), img4x), 1))
        hr2x = self.conv_hr2x(torch.cat((_up2(hr4x), enc2x), 1))
        detail = None if inference else torch.sigmoid(self.conv_hr(torch.cat((_up2(hr2x), img), 1)))
        return detail, hr2x


class FusionBranch(nn.Module):
    """Fuses semantics and detail into the final alpha matte."""

    def __init__(self, hr: int, c: list[int]) -> None:
        super().__init__()
        self.conv_lr4x = Conv2dIBNormRelu(c[2], hr, 5, padding=2)
        self.conv_f2x = Conv2dIBNormRelu(2 * hr, hr, 3, padding=1)
        self.conv_f = nn.Sequential(
            Conv2dIBNormRelu(hr + 3, hr // 2, 3, padding=1),
            Conv2dIBNormRelu(hr // 2, 1, 1, with_ibn=False, with_relu=False),
        )

    def forward(self, img, lr8x, hr2x):
        lr2x = _up2(self.conv_lr4x(_up2(lr8x)))
        f = _up2(self.conv_f2x(torch.cat((lr2x, hr2x), 1)))
        return torch.sigmoid(self.conv_f(torch.cat((f, img), 1)))


class MODNet(nn.Module):
    """MODNet: forward(img normalised to [-1, 1], inference) -> (semantic, detail, matte).

    With inference=True only the matte is computed (the other two are None).
    Input sides must be multiples of 32.
    """

    def __init__(self, in_channels: int = 3, hr_channels: int = 32) -> None:
        super().__init__()
        self.backbone = MobileNetV2Backbone(in_channels)
        self.lr_branch = LRBranch(self.backbone)
        self.hr_branch = HRBranch(hr_channels, self.backbone.enc_channels)
        self.f_branch = FusionBranch(hr_channels, self.backbone.enc_channels)
        for m in self.modules():  # the official init, so a fresh model behaves like theirs
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=0, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, img: torch.Tensor, inference: bool = True):
        semantic, lr8x, enc2x, enc4x = self.lr_branch(img, inference)
        detail, hr2x = self.hr_branch(img, enc2x, enc4x, lr8x, inference)
        return semantic, detail, self.f_branch(img, lr8x, hr2x)


class MODNetMatte(nn.Module):
    """Inference wrapper: RGB in [0, 1] (B,3,H,W) -> alpha matte (B,1,H,W); the graph backends run this."""

    def __init__(self, modnet: MODNet) -> None:
        super().__init__()
        self.modnet = modnet

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.modnet((rgb - MODNET_MEAN) / MODNET_STD, True)[2]


# -- checkpoints ------------------------------------------------------------

def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_modnet_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official-layout checkpoint safely (weights_only) and strip the DataParallel `module.` prefix."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModnetCheckpointError(
            f"MODNet checkpoint {path} not found; download modnet_webcam_portrait_matting.ckpt from the "
            "official MODNet release and set its path"
        )
    try:
        blob: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, random bytes
        raise ModnetCheckpointError(f"MODNet checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                                    "the file is corrupt or not a torch checkpoint, download it again") from exc
    if isinstance(blob, Mapping) and "state_dict" in blob and isinstance(blob["state_dict"], Mapping):
        blob = blob["state_dict"]  # a training save that wraps the weights
    if not isinstance(blob, Mapping) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise ModnetCheckpointError(f"MODNet checkpoint {path} holds a {type(blob).__name__}, not a state_dict of tensors")
    prefix = "module."
    if blob and all(k.startswith(prefix) for k in blob):
        blob = {k[len(prefix):]: v for k, v in blob.items()}
    return dict(blob)


def load_modnet(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> MODNet:
    """Build MODNet and load an official checkpoint with a strict key and shape match, in eval mode."""
    state = load_modnet_state(path)
    model = MODNet()
    expected = model.state_dict()
    # Checkpoints saved by torch < 0.4.1 lack BatchNorm's step counter; it is unused at inference.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys: {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_describe(unexpected)}")
        if wrong_shape:
            parts.append(f"wrong shapes: {_describe(wrong_shape)}")
        raise ModnetCheckpointError(
            f"MODNet checkpoint {Path(path)} does not match the MODNet architecture ({'; '.join(parts)}). "
            "Use the official modnet_webcam_portrait_matting.ckpt or modnet_photographic_portrait_matting.ckpt."
        )
    model.load_state_dict(state, strict=False)  # strictness checked above, minus num_batches_tracked
    return model.to(device=device, dtype=dtype).eval()


def save_modnet_official(model: MODNet, path: str | os.PathLike, data_parallel: bool = True) -> Path:
    """Save in the official layout (with `module.` when data_parallel, as the released files are).

    Written to a temp file and renamed, so an existing file is never left half-written."""
    path = Path(path)
    state = {(f"module.{k}" if data_parallel else k): v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def working_size(frame_size: tuple[int, int], height: int, width: int = 0) -> tuple[int, int]:
    """(w, h) for MODNet: `height` (and `width`, or the frame's aspect) rounded to multiples of 32."""
    fw, fh = frame_size
    h = max(SIZE_MULTIPLE, int(round(height / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    w = width or h * fw / max(1, fh)
    w = max(SIZE_MULTIPLE, int(round(w / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    return w, h
