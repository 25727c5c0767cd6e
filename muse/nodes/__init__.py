"""Built-in node families; each module here is one family (capture, segment, pose, ...).

The built-ins reach the registry through the same entry-point group as plugins
(`muse.nodes`, see pyproject.toml), whose target is :func:`builtin_nodes`.
Each family is imported on its own so one broken family cannot hide the rest.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Any


def builtin_modules() -> list[str]:
    """Names of every node-family module shipped in this package, in name order."""
    return sorted(
        f"{__name__}.{info.name}"
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    )


def builtin_nodes() -> list[Any]:
    """Entry-point target: the family modules, as lazy stand-ins (the registry imports each, isolating failures)."""
    return [_LazyFamily(name) for name in builtin_modules()]


class _LazyFamily:
    """A family module named but not yet imported, so the registry can catch its import error."""

    def __init__(self, module: str) -> None:
        self.module = module

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)
