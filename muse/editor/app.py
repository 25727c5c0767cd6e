"""`muse edit`: opens the editor window, drives DearPyGui's frame loop with
manual callback management (callbacks run on this thread, between frames),
maps keyboard shortcuts, and takes screenshots for tests and docs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from muse.editor.live import LiveSession
from muse.editor.model import EditorModel


def display_problem() -> str | None:
    """Why no window can open here (DearPyGui aborts the process without a display), or None."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return ("muse edit needs a desktop session: neither DISPLAY nor WAYLAND_DISPLAY is set. "
                "Run it from your desktop, or over SSH with X forwarding (ssh -X), "
                "or headless under Xvfb: xvfb-run -s '-screen 0 1600x900x24' muse edit GRAPH")
    return None


class EditorApp:
    def __init__(self, graph: str | Path | None = None, *, registry: Any = None, width: int = 1600, height: int = 900,
                 runner_factory: Callable[..., Any] | None = None, studio_root: str | Path | None = None) -> None:
        self.model = EditorModel(registry=registry)
        if graph is not None:
            self.model.load(graph)  # EditError with the validator's messages when the file can't be read
        self.live = LiveSession(runner_factory)
        self.width, self.height = width, height
        self.studio_root = studio_root
        self.view: Any = None
        self._open = False

    def open(self, title: str = "MUSE editor") -> None:
        import dearpygui.dearpygui as dpg

        from muse.editor.view import EditorView

        problem = display_problem()
        if problem:
            raise RuntimeError(problem)
        from muse.editor.screen import fit_window, screen_area

        # The window (and the panels laid out for its size) fits the screen it opens on.
        x, y, self.width, self.height = fit_window(self.width, self.height, screen_area())
        from muse.gl_preload import preload

        preload()  # Triton's LLVM before Mesa's (muse/gl_preload.py: loaded after, it crashed the process)
        dpg.create_context()
        self._open = True
        dpg.configure_app(manual_callback_management=True)  # callbacks run in step(), on this thread
        self.view = EditorView(self.model, self.live, width=self.width, height=self.height, studio_root=self.studio_root)
        self.view.build()
        self._keys()
        # The close button asks first when there are unsaved edits (see EditorView.request_exit).
        dpg.create_viewport(title=title, width=self.width, height=self.height, x_pos=x, y_pos=y, disable_close=True)
        dpg.set_exit_callback(lambda: self.view.request_exit())
        dpg.setup_dearpygui()
        dpg.show_viewport()
        self.view.validate_now()
        self.view._update_title()

    def _keys(self) -> None:
        import dearpygui.dearpygui as dpg

        with dpg.handler_registry():
            for key in (dpg.mvKey_Delete, dpg.mvKey_D, dpg.mvKey_S, dpg.mvKey_F5, dpg.mvKey_Z, dpg.mvKey_Y):
                dpg.add_key_press_handler(key, callback=lambda s, a, u: self.on_key(u), user_data=key)

    def on_key(self, key: int, ctrl: bool | None = None) -> str | None:
        """Run the shortcut for `key`; returns the action's name (tests call this directly)."""
        import dearpygui.dearpygui as dpg

        if ctrl is None:
            ctrl = any(dpg.is_key_down(k) for k in (dpg.mvKey_LControl, dpg.mvKey_RControl, dpg.mvKey_ModCtrl))
        v = self.view
        typing = self._typing()
        if key == dpg.mvKey_F5:
            v.run_or_stop()
            return "run_or_stop"
        if ctrl and key == dpg.mvKey_S:
            v.save()
            return "save"
        if typing:
            return None  # Delete, Ctrl+D/Z/Y belong to the text field being edited
        if key == dpg.mvKey_Delete and not ctrl:
            v.delete_selected()
            return "delete"
        if ctrl and key == dpg.mvKey_D:
            v.duplicate_selected()
            return "duplicate"
        if ctrl and key == dpg.mvKey_Z:
            v.undo()
            return "undo"
        if ctrl and key == dpg.mvKey_Y:
            v.redo()
            return "redo"
        return None

    def _typing(self) -> bool:
        import dearpygui.dearpygui as dpg

        item = dpg.get_focused_item()
        try:
            return bool(item) and "Input" in dpg.get_item_type(item) and dpg.is_item_active(item)
        except Exception:  # the focused item went away between frames
            return False

    def step(self) -> None:
        """Render one frame, then run the callbacks it produced and the per-frame work."""
        import dearpygui.dearpygui as dpg

        dpg.render_dearpygui_frame()
        dpg.run_callbacks(dpg.get_callback_queue())
        self.view.tick()

    def run(self) -> None:
        import dearpygui.dearpygui as dpg

        while dpg.is_dearpygui_running():
            t0 = time.perf_counter()
            self.step()
            # Without vsync (remote desktops, Xvfb) the loop would spin a core; 120 fps is plenty for an editor.
            time.sleep(max(0.0, 1 / 120 - (time.perf_counter() - t0)))

    def screenshot(self, path: str | Path | None = None, max_frames: int = 120) -> np.ndarray:
        """The window as (H, W, 4) uint8 RGBA, via DearPyGui's frame buffer (converted here, never on its callback thread)."""
        import dearpygui.dearpygui as dpg

        box: dict[str, Any] = {}
        for _ in range(2):  # let the latest edits and texture updates reach the screen first
            self.step()
        dpg.output_frame_buffer(callback=lambda s, a: box.setdefault("buffer", a))
        for _ in range(max_frames):
            self.step()
            if "buffer" in box:
                break
        if "buffer" not in box:
            raise RuntimeError(f"DearPyGui gave no frame buffer within {max_frames} frames")
        buf = box["buffer"]
        w, h = buf.get_width(), buf.get_height()
        img = np.frombuffer(memoryview(buf), dtype=np.float32, count=w * h * 4).reshape(h, w, 4)
        rgba = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        if path is not None:
            import cv2

            from muse.files import atomic_path

            with atomic_path(path, suffix=".png") as tmp:  # cv2 picks the format from the suffix
                cv2.imwrite(str(tmp), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        return rgba

    def close(self) -> None:
        self.live.stop()
        if self._open:
            import dearpygui.dearpygui as dpg

            dpg.destroy_context()
            self._open = False


def run_editor(graph: str | None = None, plugins: list[str] | None = None, screenshot: str | None = None) -> int:
    """Entry of `muse edit [GRAPH]`; returns the exit code."""
    problem = display_problem()
    if problem:
        print(f"muse edit: {problem}", file=sys.stderr)
        return 2
    if screenshot and Path(screenshot).exists():
        print(f"muse edit: {screenshot} already exists; refusing to overwrite it (pick another name)", file=sys.stderr)
        return 2
    from muse.editor.model import EditError
    from muse.graph.registry import load_registry

    registry = load_registry(plugins or [])
    if graph is not None and not Path(graph).exists():
        print(f"muse edit: {graph} does not exist; it will be created when you save", file=sys.stderr)
    try:
        app = EditorApp(graph if graph and Path(graph).exists() else None, registry=registry)
    except EditError as exc:
        print(f"muse edit: {exc}", file=sys.stderr)
        return 2
    if graph is not None and app.model.path is None:
        app.model.path = Path(graph)
    try:
        app.open(title=f"MUSE editor - {graph or 'untitled'}")
        if not screenshot:
            import dearpygui.dearpygui as dpg

            dpg.maximize_viewport()
        if screenshot:
            for _ in range(5):  # nodes get their real sizes on the first frames
                app.step()
            app.screenshot(screenshot)
            print(f"muse edit: saved {screenshot}")
        else:
            app.run()
    finally:
        app.close()
    return 0
