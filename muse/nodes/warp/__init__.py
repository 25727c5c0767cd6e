"""Warp family: face and body reshaping fields and the fused full-resolution apply.

`warp.face` / `warp.body` make low-resolution Displacements; `warp.apply` sums
them and samples the frame once (CuPy kernel on CUDA, grid_sample on CPU).
"""

from muse.nodes.warp import apply, body, face, fields, kernels  # noqa: F401  (the registry walks submodules)
from muse.nodes.warp.apply import WarpApply
from muse.nodes.warp.body import BodyWarp
from muse.nodes.warp.face import FaceWarp

__all__ = ["BodyWarp", "FaceWarp", "WarpApply"]
