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


def clean_stray_temps(folders: list[Path], min_age_s: float = 5.0) -> list[Path]:
    """Remove temp files left by a killed writer (a take, a checkpoint, a label file) in `folders`
    (not recursive). A temp file some process still holds (hold_temp) or one younger than
    `min_age_s` is kept. Returns what was removed."""
    import time

    removed: list[Path] = []
    now = time.time()
    for folder in folders:
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for p in entries:
            if not _TEMP_NAME.match(p.name):
                continue
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
        return {
            "width": s.codec_context.width,
            "height": s.codec_context.height,
            "fps": float(s.average_rate or 30),
            "frames": int(s.frames or 0),
        }


class VideoWriter:
    """H.264 (near-lossless, crf 12) writer that lands at `path` only when closed cleanly."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float, crf: int = 12) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=self.path.suffix or ".mp4", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._hold = hold_temp(self._tmp)  # marks the take as being written (see clean_stray_temps)
        self._container = av.open(str(self._tmp), mode="w")
        from fractions import Fraction

        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv444p" if width % 2 or height % 2 else "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast"}
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
        os.replace(self._tmp, self.path)
        self._hold.close()
        return self.path

    def abort(self) -> None:
        try:
            self._container.close()
        finally:
            self._tmp.unlink(missing_ok=True)
            self._hold.close()
