"""Where MUSE finds what it ships besides code: `assets/` (models, manifests), in the packaged
app `libs/` (the NVIDIA libraries it was built with), and the demo pictures inside the package.

    assets_dir()            # <app>/assets in the packaged app, <repo>/assets from a checkout
    shipped_models_dir()    # assets/models: converted bundled models copied in at build time
    demo_media(name)        # muse/assets/<name>: the one home of the demo photos (see muse/pictures.py)

`MUSE_ASSETS` points somewhere else (tests, a custom install). Nothing here imports torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ASSETS_ENV = "MUSE_ASSETS"


def is_frozen() -> bool:
    """True inside the PyInstaller-built app (dist/muse/muse)."""
    return bool(getattr(sys, "frozen", False))


def app_root() -> Path:
    """The folder of the packaged app (holds the `muse` executable, assets/ and libs/);
    from a checkout, the repository root."""
    if is_frozen():
        return Path(sys.executable).resolve().parent
    return Path(__file__).resolve().parents[1]


def assets_dir() -> Path:
    env = os.environ.get(ASSETS_ENV)
    if env:
        return Path(env).expanduser()
    return app_root() / "assets"


def libs_dir() -> Path:
    """The packaged app's own NVIDIA libraries (absent from a checkout: there the venv's are used)."""
    return app_root() / "libs"


def shipped_models_dir() -> Path:
    return assets_dir() / "models"


def package_assets_dir() -> Path:
    """`muse/assets` inside the package: the demo photos' one home. pip installs it as package data,
    a checkout has it in place, and the packaged app carries it as PyInstaller data (`_internal/muse/assets`,
    which is where this module's `__file__` points there)."""
    return Path(__file__).resolve().parent / "assets"


def demo_media(name: str) -> Path:
    """A picture the demo source, the Studio's synthetic scenes and the models' reference checks use."""
    return package_assets_dir() / name
