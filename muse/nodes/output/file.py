"""`output.file`: records frames or masks with PyAV: H.264/HEVC for small
files, FFV1 or a PNG sequence for lossless. Never overwrites an existing file
unless told; the container is written so a recording cut short (Ctrl-C, a
crash, even kill -9) still plays: MKV clusters and fragmented MP4 are flushed
about every second, and `close` flushes the encoder."""

from __future__ import annotations

import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from muse.files import hold_temp, is_held
from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams
from muse.graph.paths import graph_dir, resolve_output_path
from muse.graph.payloads import Frame, Mask
from muse.graph.transfer import Downloader
from muse.nodes.capture.live import apply_live
from muse.nodes.output.picture import one_picture

Codec = Literal["h264", "hevc", "ffv1", "png"]

ENCODERS = {"h264": "libx264", "hevc": "libx265", "ffv1": "ffv1"}
CONTAINERS = {".mkv": "matroska", ".mp4": "mp4", ".mov": "mov", ".ts": "mpegts", ".avi": "avi", ".nut": "nut"}
# Lossless codecs need a container that can hold them.
ALLOWED = {"h264": set(CONTAINERS), "hevc": {".mkv", ".mp4", ".mov", ".ts", ".nut"}, "ffv1": {".mkv", ".avi", ".nut"}}
# Options that make the file decodable when the process dies mid-recording.
# Short clusters/fragments (250 ms) so a kill -9 loses little, even in the first second.
CRASH_SAFE = {
    "matroska": {"cluster_time_limit": "250", "flush_packets": "1"},
    "mp4": {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "250000", "flush_packets": "1"},
    "mov": {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "250000", "flush_packets": "1"},
    "mpegts": {"flush_packets": "1"},
    "nut": {"flush_packets": "1"},
    "avi": {"flush_packets": "1"},
}


PARTIAL = ".partial"  # a recording's hidden temp name until it holds a frame: ".<name>.<8 random chars>.partial"


def _decodes(path: Path | None) -> bool:
    """Does the file at `path` hold at least one frame that decodes (checked once per recording)?"""
    import av

    if path is None:
        return False
    try:
        with av.open(str(path)) as c:
            for _ in c.decode(video=0):
                return True
    except (av.FFmpegError, OSError, IndexError, ValueError):
        pass
    return False


def clean_stray_partials(folder: Path, min_age_s: float = 5.0) -> None:
    """Remove the temp files of recordings killed before their first frame (they hold no picture);
    one a live recording holds, or a fresh one, is left alone."""
    now = time.time()
    try:
        entries = list(folder.glob(f".*{PARTIAL}"))
    except OSError:
        return
    for p in entries:
        try:
            if p.is_file() and now - p.stat().st_mtime >= min_age_s and not is_held(p) and not _decodes(p):
                p.unlink()
        except OSError:
            continue


def expand_path(template: str, graph_file: str | None = None, default_name: str = "muse_%Y%m%d_%H%M%S.mkv") -> Path:
    """`~` and strftime fields (`%Y%m%d_%H%M%S`) in a recording path; a relative path is relative
    to the graph file's folder (muse.graph.paths, which validation also checks it against); an empty
    path is `default_name` in the user's recordings folder (`muse.files.recordings_dir`)."""
    if not template.strip():
        from muse.files import recordings_dir

        return recordings_dir() / time.strftime(default_name)
    return resolve_output_path(template, graph_dir(graph_file))


class FileOutput(Node):
    node_type = "output.file"
    display_name = "Record to file"
    description = (
        "Records a frame or a mask (as grey) with FFmpeg: h264/hevc, lossless ffv1 (.mkv) or a PNG sequence; "
        "refuses to overwrite; stays playable when cut short."
    )

    output_paths = {"path": True}  # checked at validation: allowed folders, one writer per file

    frame: In[Frame] = In(optional=True, description="Connect this or `mask`")
    mask: In[Mask] = In(optional=True, description="Connect this or `frame`; written as grey")

    class Params(NodeParams):
        path: str = Field("", description="File (or folder, for png) to write; strftime fields allowed; empty = "
                          "muse_DATE_TIME.mkv in your recordings folder ($MUSE_RECORDINGS_DIR, else ~/.local/share/muse/recordings)")
        codec: Codec = Field("h264", description="h264/hevc: small files; ffv1: lossless (.mkv/.avi); png: lossless picture folder")
        overwrite: bool = Field(False, description="Replace an existing file (off: an existing file is an error)")
        fps: float = Field(0.0, ge=0, le=240, description="Frame rate stored in the file; 0 = the graph's fps")
        crf: int = Field(20, ge=0, le=51, description="h264/hevc quality: lower is better and bigger (18-23 is typical)")
        preset: str = Field("veryfast", description="x264/x265 speed preset (ultrafast ... veryslow)")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        self.path = expand_path(p.path, ctx.graph_file)
        self.count = 0
        self._index: int | None = None  # source index of the last frame written
        self._first_index: int | None = None
        self._container: Any = None
        self._fileobj: Any = None
        self._stream: Any = None
        self._tmp: Path | None = None  # the recording's hidden name until it holds a frame (video codecs)
        self._hold: Any = None
        self._published = False
        self._checked_bytes = 0
        self._download = Downloader()
        self._fps = p.fps or ctx.fps or 30.0
        if p.codec == "png":
            self._check_png_folder()
        else:
            suffix = self.path.suffix.lower()
            if suffix not in CONTAINERS:
                raise NodeError(
                    f"node {self.name!r}: cannot tell the container from {str(self.path)!r} (field `path`); "
                    f"end it with one of {', '.join(CONTAINERS)} (.mkv is the safest)"
                )
            if suffix not in ALLOWED[p.codec]:
                raise NodeError(
                    f"node {self.name!r}: codec {p.codec} cannot go in a {suffix} file (fields `codec`, `path`); "
                    f"use one of {', '.join(sorted(ALLOWED[p.codec]))}"
                )
            if self.path.exists() and not p.overwrite:
                raise NodeError(
                    f"node {self.name!r}: {str(self.path)!r} already exists and would be overwritten; "
                    "choose another `path` (strftime fields like %Y%m%d_%H%M%S make unique names) or set `overwrite: true`"
                )
        ctx.report("path", str(self.path))

    def _check_png_folder(self) -> None:
        folder = self.path
        if folder.suffix.lower() == ".png":
            raise NodeError(f"node {self.name!r}: for codec png, `path` is a folder, got {str(folder)!r}")
        if folder.exists() and not folder.is_dir():
            raise NodeError(f"node {self.name!r}: {str(folder)!r} exists and is not a folder (field `path`)")
        if folder.is_dir() and any(folder.glob("frame_*.png")) and not self.params.overwrite:
            raise NodeError(
                f"node {self.name!r}: folder {str(folder)!r} already holds frame_*.png pictures that would be overwritten; "
                "choose another `path` or set `overwrite: true`"
            )
        folder.mkdir(parents=True, exist_ok=True)

    # -- video -----------------------------------------------------------
    def _start_video(self, width: int, height: int, grey: bool) -> None:
        import av

        p = self.params
        fmt = CONTAINERS[self.path.suffix.lower()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not p.overwrite:
            raise NodeError(f"node {self.name!r}: {str(self.path)!r} appeared meanwhile; not overwriting it")
        # The file is written under a hidden temp name and linked in as soon as it holds a frame that decodes
        # (`_publish`), so a recording killed in its first moments is absent, never a header without a picture.
        clean_stray_partials(self.path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=PARTIAL, dir=self.path.parent)
        os.close(fd)
        os.chmod(tmp, 0o644)
        self._tmp = Path(tmp)
        self._hold = hold_temp(self._tmp)  # a live recording's temp is never cleaned by another MUSE
        self._fileobj = open(self._tmp, "r+b", buffering=0)  # unbuffered: what FFmpeg flushes reaches the disk
        self._container = av.open(self._fileobj, mode="w", format=fmt, options=CRASH_SAFE.get(fmt, {}))
        rate = Fraction(self._fps).limit_denominator(1001)
        stream = self._container.add_stream(ENCODERS[p.codec], rate=rate)
        stream.width, stream.height = width, height
        stream.time_base = 1 / rate
        if p.codec == "ffv1":
            stream.pix_fmt = "gray" if grey else "bgr0"  # both lossless from 8-bit input
            stream.options = {"g": "1"}  # every frame a keyframe: any cut is clean
        else:
            stream.pix_fmt = "yuv420p"
            gop = str(max(1, round(self._fps)))  # a keyframe a second: a cut recording loses at most that
            stream.options = {"crf": str(p.crf), "preset": p.preset, "g": gop}
            # Bound the frames an encoder holds before its first packet (lookahead, frame threads),
            # so a recording killed early already has frames on disk.
            if p.codec == "hevc":
                stream.options["x265-params"] = "log-level=error:rc-lookahead=8:lookahead-slices=0"
            else:
                stream.options["x264-params"] = "rc-lookahead=8:sync-lookahead=0:sliced-threads=1"
        self._stream = stream
        self._container.start_encoding()  # the header goes to disk now, not with the first packet
        self._checked_bytes = os.fstat(self._fileobj.fileno()).st_size  # the header alone
        self._grey = grey
        self._size = (width, height)

    def _encode(self, pixels: np.ndarray) -> None:
        import av

        fmt = "gray" if pixels.ndim == 2 else "rgb24"
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format=fmt)
        vf.pts = self._index - self._first_index  # frames a live graph dropped leave their time in the file
        for packet in self._stream.encode(vf):
            self._container.mux(packet)

    def process(self, frame: Frame | None = None, mask: Mask | None = None) -> None:
        img, is_mask = one_picture(self.name, frame, mask)
        h, w = int(img.shape[0]), int(img.shape[1])
        # Frames are named (png) and timed (video) by their source frame index, so a saved mask can be
        # matched to the frame it came from; a source that repeats or lacks indices still gets rising numbers.
        src = frame if frame is not None else mask
        index = int(getattr(src, "index", 0) or 0)
        self._index = index if self._index is None or index > self._index else self._index + 1
        if self._first_index is None:
            self._first_index = self._index
        if self.params.codec == "png":
            self._write_png(self._download(img))
            self.count += 1
            self.report("frames", self.count)
            return None
        if self.params.codec in ("h264", "hevc"):
            w, h = w - w % 2, h - h % 2  # 4:2:0 needs even sizes; drop the odd edge pixel
            img = img[:h, :w]
        if self._container is None:
            self._start_video(w, h, is_mask)
        if (w, h) != self._size or is_mask != self._grey:
            raise NodeError(
                f"node {self.name!r}: the input changed from {self._size[0]}x{self._size[1]} to {w}x{h} mid-recording; "
                "a file holds one size (put a resize node before it)"
            )
        try:
            self._encode(self._download(img))
        except Exception as exc:
            raise NodeError(f"node {self.name!r}: writing {str(self.path)!r} failed: {exc}") from exc
        if not self._published:
            size = os.fstat(self._fileobj.fileno()).st_size
            if size > self._checked_bytes:  # something new reached the disk: does a frame decode yet?
                self._checked_bytes = size
                if _decodes(self._tmp):
                    self._publish()
        self.count += 1
        self.report("frames", self.count)
        return None

    def _write_png(self, pixels: np.ndarray) -> None:
        import cv2

        target = self.path / f"frame_{self._index:06d}.png"
        tmp = target.with_name(f".{target.name}.tmp.png")
        bgr = pixels if pixels.ndim == 2 else pixels[:, :, ::-1]
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(bgr)):
            raise NodeError(f"node {self.name!r}: cannot write {str(tmp)!r}; is the disk full or the folder read-only?")
        os.replace(tmp, target)  # a picture is either whole or absent

    def close(self) -> None:
        if self._container is not None:
            try:
                for packet in self._stream.encode(None):  # frames still inside the encoder
                    self._container.mux(packet)
            except Exception as exc:
                if self.ctx:
                    self.logger.error("%s: flushing %s failed: %s", self.name, self.path, exc)
            finally:
                self._container.close()
                self._container = None
        if self._fileobj is not None:
            self._fileobj.close()
            self._fileobj = None
            if not self._published and self._tmp is not None and _decodes(self._tmp):
                try:
                    self._publish()
                except NodeError as exc:
                    self.logger.error("%s", exc)
            if self._tmp is not None and not self._published:
                if self.count and self._tmp.exists():  # frames went in, none came back out: keep the bytes, say where
                    self.logger.error("%s: the recording holds no frame that decodes; left as %s", self.name, self._tmp)
                else:
                    self._tmp.unlink(missing_ok=True)
            elif self._tmp is not None:
                self._tmp.unlink(missing_ok=True)  # where a link could not drop it while open (Windows)
            self._hold.close()
            self._tmp = None
        if self.ctx and self.count:
            self.logger.info("%s: wrote %d frames to %s", self.name, self.count, self.path)

    def _publish(self) -> None:
        """Give the temp file its real name (a hard link: never over a file that appeared meanwhile)."""
        assert self._tmp is not None
        try:
            os.link(self._tmp, self.path)
        except FileExistsError:
            if not self.params.overwrite:
                raise NodeError(f"node {self.name!r}: {str(self.path)!r} appeared meanwhile; not overwriting it "
                                f"(the recording is kept as {str(self._tmp)!r})") from None
            os.replace(self._tmp, self.path)
        except OSError:  # a file system without hard links (FAT, exFAT): a rename, checked first
            if self.path.exists() and not self.params.overwrite:
                raise NodeError(f"node {self.name!r}: {str(self.path)!r} appeared meanwhile; not overwriting it") from None
            os.replace(self._tmp, self.path)
        self._published = True
        try:
            self._tmp.unlink(missing_ok=True)
        except OSError:
            pass  # Windows keeps an open file's name: dropped at close

    def update_params(self, params: Params) -> bool:
        return apply_live(self, params, set())  # a recording keeps its settings; any change starts a new node
