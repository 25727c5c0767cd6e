"""The size of the screen the editor opens on, and a window that fits it.

DearPyGui places a new viewport at +100+100 with the size asked for, so a
1600x900 window on a 1600x900 screen loses its right and bottom panels. The
editor asks the desktop for its work area first (X11 through libX11, Windows
through user32; no extra packages) and shrinks and centres the window to fit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

Area = tuple[int, int, int, int]  # x, y, width, height

# Room left for the window's title bar and frame, and for panels/docks the query cannot see.
MARGIN = 24
TITLE_BAR = 32
MIN_SIZE = (800, 500)


def screen_area() -> Area | None:
    """The usable desktop area of the default screen, or None when it cannot be asked."""
    try:
        if sys.platform == "win32":
            return _windows_work_area()
        if os.environ.get("DISPLAY"):
            return _x11_screen()
    except Exception:  # an odd desktop must not keep the editor from opening
        return None
    return None


def _x11_screen() -> Area | None:
    name = ctypes.util.find_library("X11")
    if not name:
        return None
    x11 = ctypes.cdll.LoadLibrary(name)
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XDefaultScreen.argtypes = [ctypes.c_void_p]
    x11.XDisplayWidth.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x11.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    dpy = x11.XOpenDisplay(None)
    if not dpy:
        return None
    try:
        screen = x11.XDefaultScreen(dpy)
        return 0, 0, int(x11.XDisplayWidth(dpy, screen)), int(x11.XDisplayHeight(dpy, screen))
    finally:
        x11.XCloseDisplay(dpy)


def _windows_work_area() -> Area | None:
    class RECT(ctypes.Structure):
        _fields_ = [("left", ctypes.c_long), ("top", ctypes.c_long), ("right", ctypes.c_long), ("bottom", ctypes.c_long)]

    r = RECT()
    SPI_GETWORKAREA = 0x0030  # the desktop without the taskbar
    user32 = getattr(ctypes, "windll").user32  # Windows only (this function runs only there)
    if not user32.SystemParametersInfoW(SPI_GETWORKAREA, 0, ctypes.byref(r), 0):
        return None
    return r.left, r.top, r.right - r.left, r.bottom - r.top


def fit_window(width: int, height: int, area: Area | None) -> Area:
    """(x, y, width, height) of a window of at most width x height that lies wholly inside `area`
    (frame and title bar included), centred; unchanged at +100+100 when the area is unknown."""
    if area is None:
        return 100, 100, width, height
    ax, ay, aw, ah = area
    w = max(min(MIN_SIZE[0], aw), min(width, aw - 2 * MARGIN))
    h = max(min(MIN_SIZE[1], ah), min(height, ah - 2 * MARGIN - TITLE_BAR))
    x = ax + max(0, (aw - w) // 2)
    y = ay + max(0, (ah - h - TITLE_BAR) // 2 + TITLE_BAR)
    return x, y, w, h
