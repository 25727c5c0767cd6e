"""`capture.images`: a folder or glob of pictures played as a video, in name order.

Names sort naturally (frame2.png before frame10.png). Pictures of another size
than the first are resized to it, so downstream nodes see one size. A picture
that cannot be read is skipped with a warning and counted (`skipped_pictures`);
a frame's index is its picture's place in the sequence."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from muse.graph.node import Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame
from muse.graph.transfer import Uploader
from muse.nodes.capture.live import apply_live
from muse.nodes.capture.pacing import Pacer

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def natural_key(path: str) -> list[Any]:
    """Sort key that orders digits by value: frame2 < frame10."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", os.path.basename(path))]


def list_images(pattern: str) -> list[str]:
    """Image files of a folder, or those matching a glob, in natural name order."""
    p = Path(pattern).expanduser()
    if p.is_dir():
        names = [str(f) for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    else:
        names = [f for f in glob.glob(str(p)) if Path(f).is_file()]
    return sorted(names, key=natural_key)


class Images(Node):
    node_type = "capture.images"
    display_name = "Image sequence"
    description = "A folder or glob of pictures in name order, played at `fps`; optional loop."

    frame: Out[Frame]

    class Params(NodeParams):
        path: str = Field("", description="A folder of pictures, or a glob such as shots/*.png")
        fps: float = Field(30.0, ge=0, le=240, description="Frames per second; 0 = as fast as possible")
        loop: bool = Field(False, description="Start over after the last picture")
        frames: int = Field(0, ge=0, description="Stop after this many frames; 0 = all")

    params: Params

    @classmethod
    def lossless_by_default(cls, params: NodeParams) -> bool:
        """Pictures on disk are not live: consumers get every one unless a link says `policy: latest`."""
        return True

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        if not p.path:
            raise NodeError(f"node {self.name!r}: field `path` is empty; give a folder or a glob like 'shots/*.png'")
        self._files = list_images(p.path)
        if not self._files:
            raise NodeError(
                f"node {self.name!r}: no pictures found at {p.path!r} (field `path`); "
                f"a folder is searched for {', '.join(sorted(IMAGE_SUFFIXES))}"
            )
        ctx.report("pictures", len(self._files))
        self._upload = Uploader(ctx.device)
        self._pacer = Pacer(p.fps)
        self._emitted = 0
        self._pos = 0  # pictures taken from the list (read or skipped), across loops
        self._skipped = 0
        self._warned: set[str] = set()
        self._size: tuple[int, int] | None = None

    def _read(self, path: str) -> np.ndarray | None:
        """The picture as RGB at the sequence's size, or None if it cannot be read (skipped)."""
        import cv2

        try:
            bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        except cv2.error:  # e.g. a picture over OpenCV's pixel limit
            bgr = None
        if bgr is None:
            return None
        if self._size is None:
            self._size = (bgr.shape[1], bgr.shape[0])
        elif (bgr.shape[1], bgr.shape[0]) != self._size:
            bgr = cv2.resize(bgr, self._size, interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def process(self) -> dict[str, Frame] | None:
        p = self.params
        n = len(self._files)
        if p.frames and self._emitted >= p.frames:
            return None
        if self._emitted >= n and not p.loop:
            return None
        rgb = None
        for _ in range(n):  # one bad picture (truncated, not an image) is skipped, not the end of the run
            if self._pos >= n and not p.loop:
                return None
            path = self._files[self._pos % n]
            rgb = self._read(path)
            self._pos += 1
            if rgb is not None:
                break
            self._skipped += 1
            self.report("skipped_pictures", self._skipped)
            if path not in self._warned:
                self._warned.add(path)
                self.logger.warning("%s: cannot read picture %s (not an image, or damaged); skipped", self.name, path)
        if rgb is None:
            raise NodeError(f"node {self.name!r}: none of the {n} pictures at {p.path!r} (field `path`) can be read")
        self._pacer.wait(self._emitted)
        # The index is the picture's place in the sequence (skips leave a gap), so outputs can be matched to their source.
        index = self._pos - 1
        frame = Frame(self._upload(rgb), timestamp=index / (p.fps or 30.0), index=index)
        self._emitted += 1
        return {"frame": frame}

    def update_params(self, params: Params) -> bool:
        return apply_live(self, params, {"loop", "frames"})
