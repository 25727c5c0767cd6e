"""The DearPyGui editor driven programmatically under Xvfb: build, save and
reload a graph; refused links; params in the YAML; run with the demo source and
read the preview back; live params and topology apply; screenshots as artifacts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.gui
pytest.importorskip("dearpygui")

GRAPHS = Path(__file__).parent.parent / "graphs"


def _accepts(number: str, proc: subprocess.Popen, timeout: float = 15.0) -> bool:
    """Wait until the X server takes connections (GLFW aborts the process if it can't open the display)."""
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(0.05)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(f"/tmp/.X11-unix/X{number}")
            return proc.poll() is None
        except OSError:
            pass
    return False


@pytest.fixture(scope="module")
def display() -> str:
    """A private X server for this module (DearPyGui aborts the process without one)."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    proc, number = None, None
    # A free display number picked here: under pytest, `-displayfd` made Xvfb die with
    # "Cannot write display number to fd N" in most runs, leaving GLFW to abort the process.
    for n in range(77 + os.getpid() % 50, 200):
        if Path(f"/tmp/.X{n}-lock").exists() or Path(f"/tmp/.X11-unix/X{n}").exists():
            continue
        proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1920x1080x24", "-nolisten", "tcp", "-noreset"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _accepts(str(n), proc):
            number = str(n)
            break
        proc.kill()
        proc.wait()
    if number is None:
        pytest.skip("Xvfb did not start")
    old = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{number}"
    yield os.environ["DISPLAY"]
    if old is None:
        os.environ.pop("DISPLAY", None)
    else:
        os.environ["DISPLAY"] = old
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def editor_app(display: str, tmp_path_factory: pytest.TempPathFactory):
    """One editor for the module: DearPyGui cannot create a second context in a process (it segfaults)."""
    from muse.editor.app import EditorApp

    app = EditorApp(width=1920, height=1080, studio_root=tmp_path_factory.mktemp("studio"))
    app.open()
    yield app
    app.close()


@pytest.fixture
def app(editor_app):
    """The editor with a fresh, empty graph."""
    editor_app.view.new_graph()
    for _ in range(2):
        editor_app.step()
    yield editor_app
    editor_app.view.stop()


def _step_until(app, done: Callable[[], bool], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.step()
        if done():
            return True
        time.sleep(0.01)
    return False


def _demo_chain(view) -> tuple[str, str, str]:
    src = view.add_node("capture.demo", params={"width": 192, "height": 108, "fps": 20, "motion": 0.0})
    inv = view.add_node("basic.invert")
    out = view.add_node("output.null")
    assert view.connect(src, "frame", inv, "frame")
    assert view.connect(inv, "out", out, "frame")
    return src, inv, out


def test_build_save_reload_through_the_editor(app, tmp_path: Path) -> None:
    import dearpygui.dearpygui as dpg

    view = app.view
    src, inv, out = _demo_chain(view)
    assert view.connect(src, "mask", out, "mask")
    view.select(inv)
    app.step()
    widgets = dpg.get_item_children(view.inspector, 1)
    assert view.set_param(inv, "amount", 0.4)
    app.step()
    assert dpg.get_item_children(view.inspector, 1) == widgets  # a slider drag is not interrupted by a redraw
    # The editor draws what the model holds: three nodes, three links.
    assert set(view.node_ids) == {src, inv, out} and len(view.link_ids) == 3
    path = view.save(tmp_path / "built.yaml")
    assert path is not None and path.exists()
    data = yaml.safe_load(path.read_text())
    assert data["nodes"][inv]["params"] == {"amount": 0.4}
    assert data["nodes"][out]["inputs"] == {"frame": f"{inv}.out", "mask": f"{src}.mask"}

    built = app.model.to_spec()
    view.new_graph()
    assert not view.link_ids
    assert view.open_graph(path)
    app.step()
    assert app.model.to_spec() == built
    assert len(view.link_ids) == 3 and set(view.node_ids) == {src, inv, out}
    assert view.validate_now().ok


def test_incompatible_link_refused_in_the_editor(app) -> None:
    view = app.view
    src, inv, out = _demo_chain(view)
    links_before = dict(view.link_ids)
    assert not view.connect(src, "mask", inv, "frame")
    assert "gives Mask" in view.status_message and "takes Frame" in view.status_message
    assert len(view.link_ids) == len(links_before)
    # The same refusal through DearPyGui's own link callback (attribute ids, as a drag produces).
    mask_attr = next(a for a, v in view.attrs.items() if v == (src, "mask", "out"))
    frame_attr = next(a for a, v in view.attrs.items() if v == (inv, "frame", "in"))
    view._on_link(view.editor, (mask_attr, frame_attr))
    assert "Mask" in view.status_message and inv not in [l.dst for l in app.model.links() if l.src_port == "mask"]


def test_shortcuts_undo_redo_duplicate_delete_save(app, tmp_path: Path) -> None:
    import dearpygui.dearpygui as dpg

    view = app.view
    src, inv, out = _demo_chain(view)
    view.select(inv)
    assert app.on_key(dpg.mvKey_D, ctrl=True) == "duplicate"
    assert len(app.model.nodes) == 4
    assert app.on_key(dpg.mvKey_Z, ctrl=True) == "undo"
    assert len(app.model.nodes) == 3
    assert app.on_key(dpg.mvKey_Y, ctrl=True) == "redo"
    assert len(app.model.nodes) == 4
    view.selected_nodes = lambda: ["invert_2"]  # DearPyGui cannot select nodes programmatically
    assert app.on_key(dpg.mvKey_Delete, ctrl=False) == "delete"
    assert "invert_2" not in app.model.nodes
    app.model.path = tmp_path / "keys.yaml"
    assert app.on_key(dpg.mvKey_S, ctrl=True) == "save"
    assert (tmp_path / "keys.yaml").exists() and not app.model.dirty


def test_validation_errors_show_on_their_nodes(app) -> None:
    import dearpygui.dearpygui as dpg

    view = app.view
    view.add_node("capture.demo")
    inv = view.add_node("basic.invert")  # its required input stays open
    check = view.validate_now()
    assert not check.ok
    text = dpg.get_value(view.error_text[inv])
    assert "frame" in text and dpg.is_item_shown(view.error_text[inv])
    assert dpg.get_item_children(view.errors_group, 1)  # listed under Problems too


def test_run_preview_live_params_and_apply(app, artifacts_dir: Path) -> None:
    view = app.view
    src, inv, out = _demo_chain(view)
    view.set_param(inv, "amount", 1.0)
    assert view.run(), view.status_message
    try:
        assert view.live.preview_target == (inv, "out")  # the output that feeds the sink
        assert _step_until(app, lambda: view.preview_frames >= 3), f"no preview: {view.status_message}"
        inverted = view.last_preview.astype(np.float32)
        # Read the preview back from the rendered window: the picture is there, not blank.
        import dearpygui.dearpygui as dpg

        shot = app.screenshot()
        x0, y0 = (int(v) for v in dpg.get_item_rect_min(view.preview_image))
        w, h = (int(v) for v in dpg.get_item_rect_size(view.preview_image))
        shown = shot[y0 : y0 + h, x0 : x0 + w, :3].astype(np.float32)
        assert w > 100 and h > 50 and shown.std() > 20 and shown.max() > 150

        # A param change reaches the running graph: amount 0 shows the original picture.
        seen = view.preview_frames
        view.set_param(inv, "amount", 0.0)
        assert "(live)" in view.status_message
        assert _step_until(app, lambda: view.preview_frames >= seen + 4)
        plain = view.last_preview.astype(np.float32)
        assert np.abs((255.0 - inverted) - plain).mean() < 12.0, "the live amount change did not reach the graph"

        # Timings appear on the nodes.
        assert _step_until(app, lambda: "ms" in dpg_value(view.stats_text[inv]))

        # A topology edit is applied without stopping: a mask branch, previewed.
        luma = view.add_node("basic.luma_mask")
        assert view.connect(src, "frame", luma, "frame")
        assert view.connect(luma, "mask", out, "mask")
        view.validate_now()
        assert view.live.needs_apply(view.check.graph)
        assert view.apply(), view.status_message
        view.set_preview(luma, "mask")
        assert _step_until(app, lambda: view.live.preview is not None and view.live.preview.received > 0
                           and view.last_preview is not None and view.last_preview.shape[:2] == (108, 192)
                           and (view.last_preview[..., 0] == view.last_preview[..., 1]).all())
        mask = view.last_preview[..., 0]
        assert 0.05 < (mask > 127).mean() < 0.95  # a real mask of the demo picture: both sides present
        assert view.live.running
        app.screenshot(artifacts_dir / "editor_running.png")
    finally:
        view.stop()
    assert not view.live.running


def dpg_value(item: int):
    import dearpygui.dearpygui as dpg

    return dpg.get_value(item)


def test_screenshot_of_a_real_graph(app, artifacts_dir: Path) -> None:
    view = app.view
    m = app.model
    kinds = {"camera": "capture.demo", "segment": "segment.clean_plate", "refine": "segment.refine",
             "background": "background.adaptive", "composite": "composite.over", "preview": "output.preview"}
    for name, type_id in kinds.items():
        if type_id not in m.catalog:
            pytest.skip(f"{type_id} is not registered in this build")
        assert view.add_node(type_id, name=name) == name
    for a, ap, b, bp in [("camera", "frame", "segment", "frame"), ("camera", "clean_plate", "segment", "plate"),
                         ("camera", "frame", "refine", "frame"), ("segment", "mask", "refine", "mask"),
                         ("camera", "frame", "background", "frame"), ("refine", "refined", "background", "mask"),
                         ("camera", "frame", "composite", "frame"), ("refine", "refined", "composite", "mask"),
                         ("background", "plate", "composite", "plate"), ("composite", "out", "preview", "frame")]:
        assert view.connect(a, ap, b, bp), view.status_message
    for _ in range(3):
        app.step()
    view.auto_layout()
    view.select("refine")
    view.validate_now()
    img = app.screenshot(artifacts_dir / "editor_graph.png")
    # The window asked for 1920x1080 is fitted inside the 1920x1080 screen's work area (frame included).
    from muse.editor.screen import fit_window, screen_area

    _, _, fit_w, fit_h = fit_window(1920, 1080, screen_area())
    assert img.shape[:2] == (fit_h, fit_w) and fit_w >= 1600 and fit_h >= 900
    assert img[..., :3].std() > 10  # not a blank window
    # Every node's title bar is drawn in its category colour somewhere on screen.
    from muse.editor.view import category_colour

    colours = {tuple(c) for c in img[..., :3].reshape(-1, 3)[::7]}
    seen = [cat for cat in {m.node_info(n).category for n in m.nodes} if tuple(category_colour(cat)) in colours]
    assert len(seen) >= 3, seen
    assert view.check.ok, [str(e) for e in view.check.errors]


def test_stream_4k_opens_laid_out(app, artifacts_dir: Path) -> None:
    path = GRAPHS / "stream_4k.yaml"
    if not path.exists():
        pytest.skip("graphs/stream_4k.yaml is not in the repo yet")
    import dearpygui.dearpygui as dpg

    view = app.view
    assert view.open_graph(path), view.status_message
    for _ in range(3):
        app.step()
    # The included hybrid sub-graphs are drawn too (read-only), with the switches and their branches.
    assert set(view.node_ids) == set(app.model.all_nodes()) > set(app.model.nodes)
    for name in ("segment/student", "segment/modnet", "segment/bundled", "segment/switch", "pose/switch", "camera", "preview"):
        assert name in view.node_ids, name
    texts = {name: _texts(nid) for name, nid in view.node_ids.items()}
    assert "1. personalized <- segment/student.mask" in texts["segment/switch"] and "3. bundled <- segment/person.out" in texts["segment/switch"]
    assert "1. webcam <- webcam.frame" in texts["camera"] and "2. demo <- demo.frame" in texts["camera"]
    assert any("include/segment_hybrid.yaml (read-only)" in t for t in texts["segment/modnet"])
    assert "stands in for virtualcam" in texts["preview"] and "stands in for webcam" in texts["demo"]
    rects = {n: (*dpg.get_item_rect_min(i), *dpg.get_item_rect_size(i)) for n, i in view.node_ids.items()}
    names = list(rects)
    for i, a in enumerate(names):  # no two nodes drawn on top of each other
        ax, ay, aw, ah = rects[a]
        assert aw > 50 and ah > 30
        for b in names[i + 1:]:
            bx, by, bw, bh = rects[b]
            assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay, f"{a} overlaps {b}"
    links = app.model.all_links()
    assert {("segment/switch", "matte"), ("camera", "segment/bundled"), ("pose/switch", "face")} <= {(l.src, l.dst) for l in links}
    for link in links:  # data flows left to right
        assert rects[link.src][0] < rects[link.dst][0]
    img = app.screenshot(artifacts_dir / "editor_stream_4k.png")
    # The included nodes are drawn in their category's colour, dimmed: they show on screen.
    from muse.editor.view import category_colour

    colours = {tuple(int(v) for v in c) for c in img[..., :3].reshape(-1, 3)[::3]}
    dimmed = tuple(int(v * 0.55) for v in category_colour("segment"))
    assert any(max(abs(a - b) for a, b in zip(c, dimmed)) <= 2 for c in colours), "no included (dimmed) node title on screen"


def _texts(item: int) -> list[str]:
    """Every text drawn inside a DearPyGui item (a node), depth first."""
    import dearpygui.dearpygui as dpg

    out = []
    for child in dpg.get_item_children(item, 1) or []:
        if dpg.get_item_type(child).endswith("mvText"):
            out.append(str(dpg.get_value(child)))
        out.extend(_texts(child))
    return out


def test_studio_tab_shows_profiles_and_training_progress(app) -> None:
    profiles = pytest.importorskip("muse.studio.profiles")
    import json

    import dearpygui.dearpygui as dpg

    prof = profiles.create_profile("front", root=app.studio_root)
    prof.progress_path.parent.mkdir(parents=True, exist_ok=True)
    prof.progress_path.write_text(json.dumps({"event": "step", "step": 30, "steps": 120, "loss": 0.3}) + "\n")
    studio = app.view.studio
    assert studio.refresh() == ["front"]
    studio._due = 0.0
    app.step()
    bar, text = studio.bars["train"]
    assert dpg.get_value(bar) == pytest.approx(0.25)
    assert "step 30/120" in dpg.get_value(text)
    assert "clean plate: no" in dpg.get_value(studio.summary)


@pytest.mark.slow  # a fresh process imports torch and every node family: about 12 s on 2 shared cores
def test_muse_edit_command_opens_a_graph(display: str, tmp_path: Path, artifacts_dir: Path) -> None:
    """`muse edit GRAPH --screenshot` end to end, in its own process (as a streamer would start it)."""
    import sys

    graph = GRAPHS / "stream_4k.yaml"
    if not graph.exists():
        pytest.skip("graphs/stream_4k.yaml is not in the repo yet")
    shot = tmp_path / "muse_edit.png"
    env = {**os.environ, "DISPLAY": display}
    run = subprocess.run([sys.executable, "-m", "muse.cli", "edit", str(graph), "--screenshot", str(shot)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    import cv2

    img = cv2.imread(str(shot))
    assert img is not None and img.shape[0] > 400 and img.std() > 10
    shutil.copy(shot, artifacts_dir / "muse_edit_stream_4k.png")
    from muse.editor.app import run_editor

    assert run_editor(str(graph), screenshot=str(shot)) == 2  # an existing picture is never replaced


def test_close_asks_when_there_are_unsaved_edits(app, tmp_path: Path) -> None:
    import dearpygui.dearpygui as dpg

    view = app.view
    view.add_node("capture.demo")
    assert not view.request_exit()  # unsaved: asks instead of quitting
    assert dpg.is_item_shown(view.exit_dialog)
    dpg.configure_item(view.exit_dialog, show=False)
    view.save(tmp_path / "exit.yaml")
    assert not app.model.dirty


def test_studio_record_button_records_through_the_studio(app) -> None:
    profiles = pytest.importorskip("muse.studio.profiles")
    from muse.editor.studio import capture_function

    if capture_function("record") is None:
        pytest.skip("muse.studio.capture is not in this build")
    import dearpygui.dearpygui as dpg

    prof = profiles.create_profile("desk", root=app.studio_root,
                                   camera={"type": "capture.demo", "params": {"width": 160, "height": 96, "fps": 10}})
    studio = app.view.studio
    studio.refresh()
    studio.select("desk")
    dpg.set_value(studio.seconds, 1)
    studio.capture("record")
    assert _step_until(app, lambda: studio._job is not None and not studio._job.is_alive() and studio._job_result is None, 60)
    assert "record done for desk" in app.view.status_message, app.view.status_message
    assert len(prof.recordings()) == 1 and prof.recordings()[0].stat().st_size > 0


def test_palette_search_and_click_adds_a_node(app) -> None:
    import dearpygui.dearpygui as dpg

    view = app.view
    assert view.fill_palette("luma") == ["basic.luma_mask"]
    headers = dpg.get_item_children(view.palette_group, 1)
    item = dpg.get_item_children(headers[0], 1)[0]
    assert dpg.get_item_label(item) == "Luma mask"
    view._on_palette_click(item, True, dpg.get_item_user_data(item))  # what a click on that entry calls
    assert [n.type for n in app.model.nodes.values()] == ["basic.luma_mask"]
    assert view.fill_palette("") and len(view.fill_palette("")) == len(app.model.catalog.types)


def test_save_as_over_another_file_asks_first(app, tmp_path: Path) -> None:
    import dearpygui.dearpygui as dpg

    view = app.view
    view.add_node("capture.demo")
    theirs = tmp_path / "theirs.yaml"
    theirs.write_text("# someone's graph\n")
    assert view.save(theirs) is None
    assert theirs.read_text() == "# someone's graph\n" and dpg.is_item_shown(view.confirm_dialog)
    view._answer(False)
    assert theirs.read_text() == "# someone's graph\n"
    view.save(theirs)
    view._answer(True)  # "Replace"
    assert "capture.demo" in theirs.read_text()


def test_a_node_that_cannot_open_is_named_and_the_editor_stays_up(app, tmp_path: Path) -> None:
    view = app.view
    src = view.add_node("capture.file", params={"path": str(tmp_path / "missing.mp4")})
    out = view.add_node("output.null")
    assert view.connect(src, "frame", out, "frame")
    assert view.run()  # valid graph: starts opening nodes in the background
    assert _step_until(app, lambda: "could not start" in view.status_message, 30), view.status_message
    assert "file" in view.status_message and "missing.mp4" in view.status_message
    assert not view.live.running and not view.live.starting


def test_triton_loads_after_the_editor_window_opened(display: str, tmp_path: Path) -> None:
    """Mesa's OpenGL (llvmpipe here, radeonsi on AMD) loads its LLVM when the window opens; Triton's LLVM,
    imported after it (torch does so lazily, e.g. when a recorded frame first touches torch._dynamo), crashed
    the process. The editor loads Triton first (muse/gl_preload.py); in a fresh process, as `muse edit` runs."""
    pytest.importorskip("triton")
    code = (
        "from muse.editor.app import EditorApp\n"
        "import dearpygui.dearpygui as dpg\n"
        "app = EditorApp(width=800, height=600)\n"
        "app.open()\n"
        "for _ in range(3): dpg.render_dearpygui_frame()\n"
        "import torch._dynamo\n"
        "dpg.render_dearpygui_frame()\n"
        "app.close()\n"
        "print('survived')\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "DISPLAY": display, "HOME": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "survived" in proc.stdout, (proc.returncode, proc.stderr[-2000:])
