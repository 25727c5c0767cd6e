"""Safe file writing and video reading for MUSE Studio.

Every user file (plate, recording, dataset, model) is written to a temp file
beside its target and moved in with os.replace, so a crash never leaves half a
file; `refuse_overwrite` guards recordings the user may care about.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


from muse.files import atomic_path, hold_temp, is_held, write_text  # noqa: F401  (re-exported: studio modules import them from here)


class StudioError(RuntimeError):
    """A studio step failed in a way the user can act on; the message says how."""


def refuse_overwrite(path: Path, what: str, hint: str = "pass --force to replace it") -> None:
    if path.exists():
        raise StudioError(f"{what} {path} already exists; refusing to overwrite it ({hint})")


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike, default: Any = None, hint: str = "delete it or restore a good copy") -> Any:
    """A JSON file of a profile; `default` if absent. Damage (torn write, foreign bytes, the wrong
    shape: not the type of `default`) is a StudioError naming the file and what to do, not a traceback."""
    p = Path(path)
    if not p.is_file():
        return default
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise StudioError(f"{p} is damaged (not valid JSON: {reason}); {hint}") from None
    except OSError as exc:
        raise StudioError(f"{p} cannot be read ({exc.strerror or exc}); {hint}") from None
    if default is not None and not isinstance(data, type(default)):
        raise StudioError(f"{p} is damaged (holds a {type(data).__name__}, not a {type(default).__name__}); {hint}")
    return data


# -- stray temp files ---------------------------------------------------------

# mkstemp names of atomic_path / VideoWriter: ".<name>.<8 random chars><suffix>"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}(\.[A-Za-z0-9]{1,8})?$")
# A take being recorded (VideoWriter): ".<take name>.take.<8 random chars>.mp4"
_TAKE_TEMP = re.compile(r"^\.(?P<stem>.+)\.take\.[a-z0-9_]{8}\.mp4$")


def clean_stray_temps(folders: list[Path], min_age_s: float = 5.0) -> list[Path]:
    """Remove temp files left by a killed writer (a checkpoint, a label file, a dataset picture) in
    `folders` (not recursive); a killed take's temp file is `salvage_takes`' to keep. A temp file
    some process still holds (hold_temp) or one younger than `min_age_s` is kept. Returns what was
    removed."""
    import time

    removed: list[Path] = []
    now = time.time()
    for folder in folders:
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for p in entries:
            if not _TEMP_NAME.match(p.name) or _TAKE_TEMP.match(p.name):
                continue  # a take's temp file is salvage_takes' to keep or remove
            try:
                st = p.lstat()
                if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < min_age_s:
                    continue
                if is_held(p):
                    continue  # a live writer (a take still recording, a checkpoint being saved)
                p.unlink()
                removed.append(p)
            except OSError:
                continue
    return removed


STAGING_LOCK = ".lock"  # inside a folder being built (an export's `.staging-*`), held while it is built


def clean_stray_staging(folder: Path, min_age_s: float = 5.0) -> list[Path]:
    """Remove `.staging-*` folders in `folder` that a killed step left (an export killed before its
    version landed); one whose lock a live process holds, or one touched in the last `min_age_s`
    (a step that has not taken its lock yet), is kept. Returns what was removed."""
    import shutil
    import time

    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(folder.glob(".staging-*"))
    except OSError:
        return removed
    for d in entries:
        try:
            if d.is_symlink() or not d.is_dir():
                continue
            lock = d / STAGING_LOCK
            if lock.exists() and is_held(lock):
                continue
            newest = max([d.lstat().st_mtime] + [p.lstat().st_mtime for p in d.iterdir()])
            if now - newest < min_age_s:
                continue
            shutil.rmtree(d)
            removed.append(d)
        except OSError:
            continue
    return removed


def write_image(path: str | os.PathLike, rgb_or_gray: np.ndarray) -> None:
    """PNG/JPEG from an RGB (H,W,3) or gray (H,W) uint8 array, atomically."""
    import cv2

    img = rgb_or_gray
    if img.ndim == 3:
        img = np.ascontiguousarray(img[:, :, ::-1])
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), img):
            raise StudioError(f"could not write image {path} (disk full or unsupported extension?)")


def read_image(path: str | os.PathLike, gray: bool = False) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None:
        raise StudioError(f"cannot read image {path}; is it a PNG/JPEG that exists?")
    return img if gray else np.ascontiguousarray(img[:, :, ::-1])


def read_video(path: str | os.PathLike, every: int = 1, limit: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, RGB uint8 frame) from a video file through PyAV."""
    import av

    path = Path(path)
    if not path.is_file():
        raise StudioError(f"recording {path} not found; record one with `muse studio record PROFILE`")
    n = 0
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every:
                continue
            yield i, frame.to_ndarray(format="rgb24")
            n += 1
            if limit is not None and n >= limit:
                return


def video_info(path: str | os.PathLike) -> dict[str, Any]:
    import av

    with av.open(str(path)) as container:
        s = container.streams.video[0]
        fps = float(s.average_rate or 30)
        frames = int(s.frames or 0)
        if not frames and container.duration:  # fragmented MP4 (takes) keeps no frame count: from the duration
            frames = int(round(container.duration / 1_000_000 * fps))
        return {"width": s.codec_context.width, "height": s.codec_context.height, "fps": fps, "frames": frames}


# A take is recorded as fragmented MP4 (a header at once, then a fragment every 250 ms and a keyframe
# every second, flushed unbuffered), so a take cut short by kill -9 or a power cut plays up to its
# last fragment: `salvage_takes` keeps it at the next start instead of deleting it.
TAKE_FORMAT_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "frag_duration": "250000", "flush_packets": "1"}


class VideoWriter:
    """H.264 (near-lossless, crf 12) take writer, always MP4: a temp file beside `path` (fragmented,
    playable when cut short), moved to `path` only when closed cleanly; a killed take's temp file is
    salvaged by `salvage_takes` at the next start."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float, crf: int = 12) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.take.", suffix=".mp4", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._hold = hold_temp(self._tmp)  # marks the take as being written (see clean_stray_temps)
        # Unbuffered: what FFmpeg flushes (header, each fragment) is on disk, not in this process's buffer.
        self._file = open(self._tmp, "r+b", buffering=0)
        self._container = av.open(self._file, mode="w", format="mp4", options=dict(TAKE_FORMAT_OPTIONS))
        from fractions import Fraction

        rate = Fraction(fps).limit_denominator(1000)
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv444p" if width % 2 or height % 2 else "yuv420p"
        # A keyframe a second and a short lookahead: a cut take loses at most its last second.
        self._stream.options = {"crf": str(crf), "preset": "veryfast", "g": str(max(1, round(fps))),
                                "x264-params": "rc-lookahead=8:sync-lookahead=0:sliced-threads=1"}
        self._container.start_encoding()  # the header is on disk before the first frame
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        self._hold.close()
        return self.path

    def abort(self) -> None:
        try:
            self._container.close()
        finally:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._hold.close()


def decodable_frames(path: Path) -> int:
    """How many frames of a (possibly truncated) video decode; 0 for no video at all."""
    import av

    n = 0
    try:
        with av.open(str(path)) as c:
            for _ in c.decode(video=0):
                n += 1
    except (av.FFmpegError, OSError, IndexError, ValueError):
        pass  # the torn tail of a killed take: the frames before it count
    return n


def _remux(src_path: Path, target: Path) -> None:
    """Copy the packets that read back from a torn take into a whole MP4 at `target` (atomic)."""
    import av

    with av.open(str(src_path)) as src, atomic_path(target) as tmp:
        vs = src.streams.video[0]
        with av.open(str(tmp), mode="w", format="mp4") as dst:
            out = dst.add_stream_from_template(vs)
            try:
                for packet in src.demux(vs):
                    if packet.dts is None or packet.size == 0:
                        continue  # the demuxer's end-of-stream marker
                    packet.stream = out
                    dst.mux(packet)
            except (av.FFmpegError, OSError):
                pass  # the torn last fragment: everything before it is kept


def _free_name(folder: Path, stem: str) -> Path:
    path = folder / f"{stem}-recovered.mp4"
    n = 2
    while path.exists():
        path = folder / f"{stem}-recovered-{n}.mp4"
        n += 1
    return path


def salvage_takes(folder: Path, min_age_s: float = 5.0, log: Any = None) -> list[tuple[Path, int]]:
    """Keep the takes a killed `muse studio record` left as temp files in `folder` (never delete a
    recording): each becomes `<name>-recovered.mp4` holding every frame that decodes, the temp file
    goes only once the recovered file is in place and plays. A temp that holds no frame at all (killed
    before its first fragment) is left to `clean_stray_temps`. A take still being written (held, or
    touched in the last `min_age_s`) is left alone. Returns [(recovered file, frames)]."""
    import time

    out: list[tuple[Path, int]] = []
    now = time.time()
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return out
    for tmp in entries:
        m = _TAKE_TEMP.match(tmp.name)
        if m is None:
            continue
        try:
            st = tmp.lstat()
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < min_age_s or is_held(tmp):
                continue
        except OSError:
            continue
        frames = decodable_frames(tmp)
        if frames == 0:
            if st.st_size <= 64 * 1024:  # a header and no whole fragment: killed before its first frame landed
                tmp.unlink(missing_ok=True)
            elif log is not None:  # unreadable, but too big to be nothing: never deleted
                log(f"{tmp}: a take that was cut short and cannot be read back; left as it is")
            continue
        target = _free_name(folder, m["stem"])
        try:
            _remux(tmp, target)
            kept = decodable_frames(target)
        except Exception:  # remuxing failed: keep the take as it is, under a name that is not a temp file
            kept = 0
            target.unlink(missing_ok=True)
        if kept < frames:
            target.unlink(missing_ok=True)
            os.replace(tmp, target)  # the torn take itself still plays `frames` frames
            kept = frames
        else:
            tmp.unlink()
        if log is not None:
            log(f"{target}: recovered {kept} frames of a take that was cut short (muse studio record was killed)")
        out.append((target, kept))
    return out
