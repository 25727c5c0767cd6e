"""Where a graph may write files.

Graphs are shared like workflows, so a downloaded graph must not drop files
anywhere the user can write (`../../.bashrc`, `/etc/...`). Output paths in a
graph (fields a node lists in `output_paths`) are resolved like this:

- `~` expands, strftime fields (`%Y%m%d_%H%M%S`) fill in;
- a relative path is relative to the graph file's folder (the working folder
  for a graph that has no file);
- the result, symlinks followed, must lie inside one of the allowed folders:
  the graph's folder, the Studio profiles folder ($MUSE_STUDIO_HOME or
  ~/.muse/profiles), the user data folder ($MUSE_DATA_DIR or ~/.muse), or a
  folder the user named in $MUSE_ALLOW_PATHS (os.pathsep-separated).

`muse run/validate --allow-paths` lifts the rule for graphs the user trusts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

DATA_ENV = "MUSE_DATA_DIR"
STUDIO_ENV = "MUSE_STUDIO_HOME"  # same variable as muse.studio.profiles (kept here so the framework needs no studio import)
ALLOW_ENV = "MUSE_ALLOW_PATHS"


def user_data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".muse").expanduser()


def studio_home() -> Path:
    return Path(os.environ.get(STUDIO_ENV) or Path.home() / ".muse" / "profiles").expanduser()


def graph_dir(graph_file: str | os.PathLike | None) -> Path:
    """The folder relative output paths of a graph start from."""
    if graph_file:
        parent = Path(graph_file).parent
        if str(parent) not in ("", "."):
            return parent.absolute()
    return Path.cwd()


def allowed_roots(base: Path) -> list[Path]:
    extra = [Path(p).expanduser() for p in os.environ.get(ALLOW_ENV, "").split(os.pathsep) if p.strip()]
    from muse.files import recordings_dir, user_data_dir as platform_data_dir

    # also the platform's data folder and its recordings folder, where recordings go when a graph names no path
    return [real_path(p) for p in (base, studio_home(), user_data_dir(), platform_data_dir(), recordings_dir(), *extra)]


def resolve_output_path(raw: str, base: Path, *, when: float | None = None) -> Path:
    """`raw` as the node will write it: strftime filled, `~` expanded, relative to `base`."""
    p = Path(time.strftime(raw, time.localtime(when)) if "%" in raw else raw).expanduser()
    return p if p.is_absolute() else base / p


def outside_allowed(path: Path, base: Path) -> bool:
    """True when `path` (symlinks followed) is inside none of the allowed folders."""
    real = real_path(path)
    return not any(real == root or root in real.parents for root in allowed_roots(base))


def real_path(p: Path) -> Path:
    """`p` with links resolved (absolute only, where the filesystem cannot say)."""
    try:
        return Path(os.path.realpath(p))
    except (OSError, ValueError):
        return Path(os.path.abspath(p))
