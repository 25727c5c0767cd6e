"""Atomic file writing for everything MUSE saves: models, caches, graphs, stats.

A file is written beside its target under a temporary name, flushed to disk and
moved in with one `os.replace`, so a crash or Ctrl-C never leaves half a file
where the user's file (or a cache entry) was.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temp path beside `path` to write to (by name: torch.save, ONNX export,
    cv2.imwrite...); on success it is synced and replaces `path` in one step.

    The temp name keeps `path`'s suffix unless told otherwise, for writers that
    choose the format from it. `mode`: mkstemp makes 0600; saved files are ordinary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    hold = hold_temp(tmp_path)  # a cleaner in another process must not take it while it is written
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
        hold.close()


def hold_temp(path: Path) -> Any:
    """Lock a temp file for as long as it is being written (the returned handle holds a shared
    flock), so a stray-temp cleaner in another process leaves it alone. The lock dies with the
    process, kill -9 included, which is what marks a temp file as stray (`is_held`)."""
    fh = open(path, "rb")
    try:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except (ImportError, OSError):
        pass  # no flock (Windows) or a file system without it: cleaners then go by age alone
    return fh


def is_held(path: Path) -> bool:
    """Does a live writer hold this temp file (hold_temp)? A failed exclusive try-lock says yes."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        with open(path, "rb") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return False
    except OSError:
        return True


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


RECORDINGS_ENV = "MUSE_RECORDINGS_DIR"


def user_data_dir() -> Path:
    """The per-user MUSE data folder: $XDG_DATA_HOME/muse (~/.local/share/muse) on Linux,
    ~/Library/Application Support/MUSE on macOS, %LOCALAPPDATA%\\MUSE on Windows."""
    import sys

    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "MUSE"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "MUSE"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "muse"


def recordings_dir() -> Path:
    """Where recordings go when a graph names no path: $MUSE_RECORDINGS_DIR, else
    `recordings/` in the user data folder. Never the working directory, which may be a
    source checkout or a system folder."""
    env = os.environ.get(RECORDINGS_ENV)
    return Path(env).expanduser() if env else user_data_dir() / "recordings"
