"""The editor window fits the screen it opens on: on a 1600x900 screen the
whole window (panels included) lies on the screen, not at +100+100 cut off."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from muse.editor.screen import MARGIN, TITLE_BAR, fit_window

ROOT = Path(__file__).parent.parent


def test_fit_window_keeps_the_window_on_the_screen() -> None:
    for screen in ((0, 0, 1600, 900), (0, 0, 1366, 768), (0, 0, 1280, 720), (0, 40, 1920, 1040)):
        x, y, w, h = fit_window(1600, 900, screen)
        sx, sy, sw, sh = screen
        assert sx <= x and x + w <= sx + sw, (screen, x, w)
        assert sy + TITLE_BAR <= y and y + h <= sy + sh, (screen, y, h)
    assert fit_window(1600, 900, (0, 0, 3840, 2160))[2:] == (1600, 900)  # room enough: the size asked for
    assert fit_window(1600, 900, None) == (100, 100, 1600, 900)  # unknown screen: as before
    x, y, w, h = fit_window(1600, 900, (0, 0, 1600, 900))
    assert w == 1600 - 2 * MARGIN and x == MARGIN  # centred


def _xvfb(size: str) -> tuple[subprocess.Popen, str]:
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    for n in range(120 + os.getpid() % 50, 260):
        if Path(f"/tmp/.X{n}-lock").exists() or Path(f"/tmp/.X11-unix/X{n}").exists():
            continue
        proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", f"{size}x24", "-nolisten", "tcp", "-noreset"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 15
        while time.monotonic() < end and proc.poll() is None:
            if Path(f"/tmp/.X11-unix/X{n}").exists():
                return proc, f":{n}"
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    pytest.skip("Xvfb did not start")


PROBE = """
import json
import dearpygui.dearpygui as dpg
from muse.editor.app import EditorApp
from muse.editor.screen import screen_area
app = EditorApp()  # the default 1600x900 window
app.open()
for _ in range(3):
    app.step()
print(json.dumps({"screen": screen_area(), "pos": dpg.get_viewport_pos(), "width": dpg.get_viewport_width(),
                  "height": dpg.get_viewport_height(), "view": [app.view.width, app.view.height]}))
app.close()
"""


@pytest.mark.gui
def test_editor_window_fits_a_1600x900_screen() -> None:
    pytest.importorskip("dearpygui")
    proc, display = _xvfb("1600x900")
    try:
        out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "DISPLAY": display})
    finally:
        proc.terminate()
        proc.wait(10)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["screen"] == [0, 0, 1600, 900]
    x, y = got["pos"]
    assert 0 <= x and x + got["width"] <= 1600
    assert 0 <= y and y + got["height"] <= 900
    assert got["view"] == [got["width"], got["height"]]  # the panels are laid out for the window that fits
