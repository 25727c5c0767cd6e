"""JPEG bytes to RGB frames: nvJPEG on the GPU through torchvision, or the CPU.

The 4K fast path: a USB camera in MJPG mode hands over compressed bytes (a
few hundred KB), which are far cheaper to upload than the decoded 24 MB frame,
and nvJPEG decodes them where the graph runs."""

from __future__ import annotations

import numpy as np
import torch


def is_jpeg(buf: np.ndarray) -> bool:
    """True for a 1-D byte buffer that starts with a JPEG SOI marker."""
    flat = buf.reshape(-1)
    return buf.dtype == np.uint8 and flat.size > 4 and flat[0] == 0xFF and flat[1] == 0xD8


def decode_jpeg(data: np.ndarray | bytes | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Decode one JPEG to (H, W, 3) uint8 RGB on `device` (nvJPEG when it is CUDA)."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as tv_decode_jpeg

    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(data, dtype=np.uint8)
    raw = torch.from_numpy(np.ascontiguousarray(data).reshape(-1)) if isinstance(data, np.ndarray) else data.reshape(-1)
    # torchvision takes the bytes as a CPU tensor and uploads them itself when device is cuda.
    chw = tv_decode_jpeg(raw.cpu(), mode=ImageReadMode.RGB, device=torch.device(device))
    return chw.permute(1, 2, 0)
