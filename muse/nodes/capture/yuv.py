"""YUV <-> RGB conversions as torch ops, so they run as GPU kernels where the
frame lives (and on the CPU in tests): YUYV/YUY2 and NV12 from cameras to RGB,
RGB to NV12 for virtual cameras. BT.601 or BT.709, limited ("TV") range, which
is what USB cameras and OBS use."""

from __future__ import annotations

import torch

# (Kr, Kb) of each colour matrix.
_MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def _coeffs(matrix: str) -> tuple[float, float]:
    try:
        return _MATRICES[matrix]
    except KeyError:
        raise ValueError(f"unknown colour matrix {matrix!r}; use one of {', '.join(_MATRICES)}") from None


def _yuv_to_rgb(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, matrix: str) -> torch.Tensor:
    """Full-resolution float planes (limited range, 0..255) -> (H, W, 3) uint8."""
    kr, kb = _coeffs(matrix)
    kg = 1.0 - kr - kb
    yf = (y - 16.0) * (255.0 / 219.0)
    uf = (u - 128.0) * (255.0 / 224.0)
    vf = (v - 128.0) * (255.0 / 224.0)
    r = yf + 2.0 * (1.0 - kr) * vf
    b = yf + 2.0 * (1.0 - kb) * uf
    g = yf - (2.0 * kb * (1.0 - kb) / kg) * uf - (2.0 * kr * (1.0 - kr) / kg) * vf
    return torch.stack((r, g, b), dim=-1).round_().clamp_(0, 255).to(torch.uint8)


def yuyv_to_rgb(yuyv: torch.Tensor, matrix: str = "bt601") -> torch.Tensor:
    """YUYV 4:2:2 (YUY2), as (H, W, 2) uint8 or (H, W*2) bytes, to (H, W, 3) uint8 RGB."""
    if yuyv.dim() == 2:
        yuyv = yuyv.reshape(yuyv.shape[0], -1, 2)
    if yuyv.dim() != 3 or yuyv.shape[-1] != 2 or yuyv.shape[1] % 2:
        raise ValueError(f"YUYV frame must be (H, W, 2) with even W, got {tuple(yuyv.shape)}")
    f = yuyv.float()
    y = f[..., 0]
    uv = f[..., 1].reshape(f.shape[0], -1, 2)  # per pixel pair: U, V
    u = uv[..., 0].repeat_interleave(2, dim=1)
    v = uv[..., 1].repeat_interleave(2, dim=1)
    return _yuv_to_rgb(y, u, v, matrix)


def nv12_to_rgb(nv12: torch.Tensor, width: int, height: int, matrix: str = "bt601") -> torch.Tensor:
    """NV12 (Y plane, then interleaved UV at half resolution), any shape with
    W*H*3/2 bytes, to (H, W, 3) uint8 RGB."""
    flat = nv12.reshape(-1)
    if flat.numel() != width * height * 3 // 2 or width % 2 or height % 2:
        raise ValueError(f"NV12 frame of {width}x{height} needs {width * height * 3 // 2} bytes, got {flat.numel()}")
    y = flat[: width * height].reshape(height, width).float()
    uv = flat[width * height :].reshape(height // 2, width // 2, 2).float()
    uv = uv.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)
    return _yuv_to_rgb(y, uv[..., 0], uv[..., 1], matrix)


def rgb_to_nv12(rgb: torch.Tensor, matrix: str = "bt601") -> torch.Tensor:
    """(H, W, 3) uint8 RGB with even H and W -> (H*3/2, W) uint8 NV12."""
    h, w = int(rgb.shape[0]), int(rgb.shape[1])
    if h % 2 or w % 2:
        raise ValueError(f"NV12 needs even width and height, got {w}x{h}")
    kr, kb = _coeffs(matrix)
    kg = 1.0 - kr - kb
    f = rgb.float()
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    yl = kr * r + kg * g + kb * b
    y = yl * (219.0 / 255.0) + 16.0
    # Chroma from 2x2 averages of the colour differences.
    cb = (b - yl) / (2.0 * (1.0 - kb))
    cr = (r - yl) / (2.0 * (1.0 - kr))
    cb = cb.reshape(h // 2, 2, w // 2, 2).mean(dim=(1, 3)) * (224.0 / 255.0) + 128.0
    cr = cr.reshape(h // 2, 2, w // 2, 2).mean(dim=(1, 3)) * (224.0 / 255.0) + 128.0
    uv = torch.stack((cb, cr), dim=-1).reshape(h // 2, w)
    out = torch.cat((y, uv), dim=0)
    return out.round_().clamp_(0, 255).to(torch.uint8)
