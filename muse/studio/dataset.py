"""The student's training data: kept frames and teacher masks held in memory at
the student's input size, a held-out split in contiguous blocks (neighbouring
frames are near-copies, so random frames would leak), and augmentation that
looks like streaming (lighting, white balance, noise, small shifts, a varied
clean plate behind the person).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from muse.studio.files import StudioError, read_image


def split_ids(records: Sequence[dict[str, Any]], val_fraction: float, blocks_per_recording: int = 20) -> tuple[list[str], list[str]]:
    """Train and held-out ids: each recording is cut into blocks; every k-th block is held out."""
    if val_fraction <= 0:
        return [r["id"] for r in records], []
    period = max(2, int(round(1.0 / val_fraction)))
    train, val = [], []
    by_rec: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_rec.setdefault(r.get("recording", ""), []).append(r)
    for recs in by_rec.values():
        recs = sorted(recs, key=lambda r: r.get("index", 0))
        size = max(1, len(recs) // blocks_per_recording)
        for j, r in enumerate(recs):
            (val if (j // size) % period == period - 1 else train).append(r["id"])
    if not train:  # tiny datasets: never leave training empty
        train, val = val, []
    return train, val


@dataclass
class StudioData:
    images: torch.Tensor  # (N,3,h,w) uint8
    masks: torch.Tensor  # (N,1,h,w) uint8 (0..255)
    ids: list[str]
    plate: torch.Tensor | None  # (3,h,w) uint8

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> "StudioData":
        return StudioData(self.images.to(device), self.masks.to(device), self.ids, None if self.plate is None else self.plate.to(device))


def load_data(dataset_dir: Path, ids: Sequence[str], input_size: tuple[int, int], plate_path: Path | None = None) -> StudioData:
    import cv2

    w, h = input_size
    imgs, masks = [], []
    for fid in ids:
        img = read_image(dataset_dir / "frames" / f"{fid}.jpg")
        m = read_image(dataset_dir / "masks" / f"{fid}.png", gray=True)
        imgs.append(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
        masks.append(cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR))
    if not imgs:
        raise StudioError(f"no frames to load from {dataset_dir}; label and filter first")
    plate = None
    if plate_path is not None and plate_path.is_file():
        plate = torch.from_numpy(cv2.resize(read_image(plate_path), (w, h), interpolation=cv2.INTER_AREA)).permute(2, 0, 1).contiguous()
    return StudioData(
        torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(np.stack(masks))[:, None].contiguous(),
        list(ids),
        plate,
    )


def kept_ids(dataset_dir: Path) -> list[str]:
    kept = dataset_dir / "kept.json"
    if kept.is_file():
        from muse.studio.files import read_json

        hint = "run `muse studio filter PROFILE` again to rebuild it"
        ids = read_json(kept, {}, hint).get("kept")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise StudioError(f"{kept} is damaged ('kept' is not a list of frame ids); {hint}")
        return ids
    raise StudioError(f"{kept} not found; run `muse studio filter PROFILE` before training")


def augment(
    images: torch.Tensor, masks: torch.Tensor, plate: torch.Tensor | None, g: torch.Generator, g_noise: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 batch -> float images in [0,1] and float masks, augmented like a live stream would vary.

    Random numbers come from `g_noise` when it lives on the batch's GPU (no host copies in the
    training loop), else from `g` on the CPU; both are seeded per step so a resumed run replays
    the same batches."""
    dev = images.device
    b = images.shape[0]
    x = images.float() / 255.0
    m = masks.float() / 255.0

    on_device = g_noise is not None and g_noise.device.type == dev.type and dev.type != "cpu"

    def rand(*shape: int) -> torch.Tensor:
        if on_device:  # no host->device copy per draw: those would stall the GPU queue each time
            return torch.rand(*shape, generator=g_noise, device=dev)
        return torch.rand(*shape, generator=g).to(dev)

    if plate is not None:
        # Background variation: the person over the clean plate relit, shifted, sometimes mirrored.
        use = (rand(b, 1, 1, 1) < 0.5).float()
        bg = plate.float().div(255.0).expand(b, -1, -1, -1)
        bg = bg * (0.75 + 0.5 * rand(b, 3, 1, 1))
        flip = rand(b) < 0.3
        bg = torch.where(flip[:, None, None, None], bg.flip(-1), bg)
        shift = (torch.rand(2, generator=g) * 0.1 - 0.05) * torch.tensor(bg.shape[-2:], dtype=torch.float32)  # host: no sync
        bg = torch.roll(bg, shifts=(int(shift[0]), int(shift[1])), dims=(-2, -1))
        x = x * (1 - use) + use * (x * m + bg.clamp(0, 1) * (1 - m))
    # Small shifts, zoom and tilt: the person moves in the frame, the camera is nudged.
    theta = torch.zeros(b, 2, 3, device=dev)
    scale = 1.0 + (rand(b) - 0.5) * 0.2
    angle = (rand(b) - 0.5) * 0.12
    theta[:, 0, 0] = scale * torch.cos(angle)
    theta[:, 0, 1] = -scale * torch.sin(angle)
    theta[:, 1, 0] = scale * torch.sin(angle)
    theta[:, 1, 1] = scale * torch.cos(angle)
    theta[:, :, 2] = (rand(b, 2) - 0.5) * 0.16
    flip = rand(b) < 0.5
    theta[:, 0, :2] = torch.where(flip[:, None], -theta[:, 0, :2], theta[:, 0, :2])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    m = F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Lighting: exposure, contrast, white balance, gamma; then sensor noise.
    gain = 0.7 + 0.6 * rand(b, 1, 1, 1)
    wb = 0.9 + 0.2 * rand(b, 3, 1, 1)
    mean = x.mean((1, 2, 3), keepdim=True)
    contrast = 0.8 + 0.4 * rand(b, 1, 1, 1)
    x = ((x - mean) * contrast + mean) * gain * wb
    gamma = 0.8 + 0.4 * rand(b, 1, 1, 1)
    x = x.clamp(1e-4, 1) ** gamma
    if on_device:
        noise = torch.randn(x.shape, generator=g_noise, device=dev)
    else:
        noise = torch.randn(x.shape, generator=g).to(dev)
    noise = noise * (0.03 * rand(b, 1, 1, 1))
    return (x + noise).clamp(0, 1), m


def to_float(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return images.float() / 255.0, masks.float() / 255.0
