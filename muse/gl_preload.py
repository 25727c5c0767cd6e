"""Load Triton's LLVM before a DearPyGui window opens its OpenGL context.

Mesa's OpenGL drivers (llvmpipe under Xvfb or in a VM, radeonsi on AMD graphics) load their own
LLVM into the process when a window's context is made. Triton (which torch imports lazily, e.g. the
first time `torch._dynamo` is touched, possibly minutes later on an engine thread) carries another
LLVM; loaded after Mesa's, its initialisers crashed the process with a segmentation fault
(reproduced: a DearPyGui viewport rendered under Xvfb, then `import triton`). Loaded before, both
work. So the editor and the preview window call `preload()` before they create a viewport.
"""

from __future__ import annotations

import importlib.util

_DONE = False


def preload() -> bool:
    """Import Triton now if it is installed (once per process); True when it is loaded."""
    global _DONE
    if _DONE:
        return True
    _DONE = True
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install must not keep the window from opening
        return False
    return True
