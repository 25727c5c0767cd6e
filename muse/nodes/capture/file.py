"""`capture.file`: a video file or network stream through PyAV (FFmpeg).

Any container/codec FFmpeg reads, RTSP/SRT/HTTP URLs through the same node;
paced to the file's timestamps (like a camera) or as fast as possible; loops;
starts at a given time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from muse.graph.node import Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame
from muse.graph.transfer import Uploader
from muse.nodes.capture.live import apply_live


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


class VideoFile(Node):
    node_type = "capture.file"
    display_name = "Video file / URL"
    description = "Plays a video file or a network stream (RTSP, SRT, HTTP) through FFmpeg; real-time or fast; loop; start time."

    frame: Out[Frame]

    class Params(NodeParams):
        path: str = Field("", description="Video file path, or a URL (rtsp://, srt://, http://, udp://)")
        realtime: bool = Field(True, description="Pace frames to the file's timestamps (off = as fast as decoding goes)")
        loop: bool = Field(False, description="Start over at the end (files only)")
        start: float = Field(0.0, ge=0, description="Seek to this time in seconds before the first frame")
        frames: int = Field(0, ge=0, description="Stop after this many frames; 0 = until the end")
        options: dict[str, str] = Field(default_factory=dict, description="FFmpeg options, e.g. {rtsp_transport: tcp}")
        timeout_s: float = Field(10.0, ge=0.1, le=300, description="Network open/read timeout")

    params: Params

    @classmethod
    def lossless_by_default(cls, params: NodeParams) -> bool:
        """A file is not live: consumers get every frame unless a link says `policy: latest` (URLs stay live)."""
        return not is_url(getattr(params, "path", ""))

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        if not p.path:
            raise NodeError(f"node {self.name!r}: field `path` is empty; give a video file or a URL")
        self._url = is_url(p.path)
        if not self._url:
            local = Path(p.path.removeprefix("file://")).expanduser()
            if not local.is_file():
                raise NodeError(f"node {self.name!r}: video file {str(local)!r} (field `path`) does not exist")
        self._upload = Uploader(ctx.device)
        self._emitted = 0
        self._offset = 0.0  # added to timestamps after each loop so they keep rising
        self._container: Any = None
        self._open_container()
        self._clock: float | None = None

    def _open_container(self) -> None:
        import av

        p = self.params
        target = p.path.removeprefix("file://") if not self._url else p.path
        try:
            self._container = av.open(target, options=dict(p.options), timeout=p.timeout_s if self._url else None)
        except Exception as exc:  # FFmpeg's own text says what was wrong (codec, protocol, 404...)
            raise NodeError(f"node {self.name!r}: cannot open {p.path!r} (field `path`): {exc}") from exc
        if not self._container.streams.video:
            self._container.close()
            raise NodeError(f"node {self.name!r}: {p.path!r} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame+slice threads: 4K H.264 decodes in real time on few cores
        self._tb = float(self._stream.time_base or 0) or 1 / 30
        rate = self._stream.average_rate or self._stream.guessed_rate
        self._fps = float(rate) if rate else (self.ctx.fps if self.ctx else 30.0)
        if p.start > 0 and not self._url:
            self._container.seek(int(p.start / self._tb), stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._last_t = 0.0
        self.report("source", f"{p.path} {self._stream.codec_context.name} "
                        f"{self._stream.codec_context.width}x{self._stream.codec_context.height} @ {self._fps:.3g} fps")

    def _next_decoded(self) -> Any:
        """The next frame at or after `start`, or None at the end of the file."""
        p = self.params
        for vf in self._frames:
            t = float(vf.pts * self._tb) if vf.pts is not None else self._last_t + 1 / self._fps
            if t + 1e-6 < p.start and not self._url:
                continue  # frames between the keyframe we seeked to and the start time
            self._last_t = t
            return vf
        return None

    def process(self) -> dict[str, Frame] | None:
        p = self.params
        if p.frames and self._emitted >= p.frames:
            return None
        try:
            vf = self._next_decoded()
            if vf is None and p.loop and not self._url:
                self._offset += self._last_t - p.start + 1 / self._fps
                self._container.close()
                self._open_container()
                vf = self._next_decoded()
        except NodeError:
            raise
        except Exception as exc:
            raise NodeError(f"node {self.name!r}: decoding {p.path!r} failed: {exc}") from exc
        if vf is None:
            return None
        t = self._last_t - p.start + self._offset
        if p.realtime and not self._url:  # live URLs arrive at their own pace
            now = time.perf_counter()
            if self._clock is None:
                self._clock = now - t
            delay = self._clock + t - now
            if delay > 0:
                time.sleep(delay)
        rgb: np.ndarray = vf.to_ndarray(format="rgb24")
        frame = Frame(self._upload(rgb), timestamp=t, index=self._emitted)
        self._emitted += 1
        return {"frame": frame}

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def update_params(self, params: Params) -> bool:
        if apply_live(self, params, {"realtime", "loop", "frames"}):
            self._clock = None  # re-anchor pacing at the current frame
            return True
        return False
