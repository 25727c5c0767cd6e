"""The editor's GUI-free parts: graph model edits, type checks, undo/redo, YAML
round trips, layout, param widgets from schemas, preview images, Studio progress."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from muse.editor.catalog import Catalog
from muse.editor.layout import layered_positions
from muse.editor.model import EditError, EditorModel
from muse.editor.params import widget_for, widgets_for
from muse.editor.preview import PreviewTap, preview_image, to_texture
from muse.editor.studio import ProgressReader, parse_record, stage_states
from muse.graph.payloads import Frame, Mask
from muse.graph.spec import GraphSpec, Settings, load_yaml

GRAPHS = Path(__file__).parent.parent / "graphs"


@pytest.fixture
def model() -> EditorModel:
    return EditorModel()


def _spec(text: str) -> GraphSpec:
    return GraphSpec.model_validate(load_yaml(text)[0])


def _chain(m: EditorModel) -> tuple[str, str, str, str]:
    src = m.add_node("basic.test_pattern", params={"width": 160, "height": 96})
    inv = m.add_node("basic.invert")
    luma = m.add_node("basic.luma_mask")
    sink = m.add_node("basic.null")
    m.link(src, "frame", inv, "frame")
    m.link(inv, "out", sink, "frame")
    m.link(src, "frame", luma, "frame")
    return src, inv, luma, sink


def test_build_save_reload_gives_the_same_graph(model: EditorModel, tmp_path: Path) -> None:
    src, inv, luma, sink = _chain(model)
    model.set_param(inv, "amount", 0.3)
    model.move_node(sink, (900, 120))
    path = model.save(tmp_path / "g.yaml")
    again = EditorModel(model.catalog, model.registry)
    again.load(path)
    assert again.to_spec() == model.to_spec()
    assert {str(link) for link in again.links()} == {
        "test_pattern.frame -> invert.frame", "invert.out -> null_node.frame", "test_pattern.frame -> luma_mask.frame"}
    data = yaml.safe_load(path.read_text())
    assert data["nodes"]["invert"]["params"] == {"amount": 0.3}
    assert data["editor"]["positions"]["null_node"] == [900, 120]
    assert again.validate().ok  # what the editor writes is a valid graph


def test_incompatible_link_is_refused_naming_both_types(model: EditorModel) -> None:
    src, inv, luma, sink = _chain(model)
    before = model.to_spec()
    with pytest.raises(EditError) as exc:
        model.link(luma, "mask", inv, "frame")
    msg = str(exc.value)
    assert "Mask" in msg and "Frame" in msg and "luma_mask.mask" in msg and "invert.frame" in msg
    assert model.to_spec() == before  # nothing changed
    second = model.add_node("basic.invert", name="second")
    model.link(inv, "out", second, "frame")
    with pytest.raises(EditError, match="cycle"):
        model.link(second, "out", inv, "frame")
    with pytest.raises(EditError, match="itself"):
        model.link(inv, "out", inv, "frame")


def test_generic_input_binds_to_first_link_type(model: EditorModel) -> None:
    if "flow.switch" not in model.catalog:
        pytest.skip("flow.switch is not registered in this build")
    a = model.add_node("basic.test_pattern")
    b = model.add_node("basic.invert")
    mask = model.add_node("basic.luma_mask")
    model.link(a, "frame", b, "frame")
    model.link(a, "frame", mask, "frame")
    sw = model.add_node("flow.switch")
    model.link(b, "out", sw, "candidates")
    model.link(a, "frame", sw, "candidates")  # multiple: both Frames
    assert model.nodes[sw].inputs["candidates"].sources == ["invert.out", "test_pattern.frame"]
    assert model.output_type(sw, "selected") == "Frame"  # same_as binds through
    with pytest.raises(EditError, match="gives Mask.*takes Frame"):
        model.link(mask, "mask", sw, "candidates")


def test_param_edits_are_checked_and_saved(model: EditorModel, tmp_path: Path) -> None:
    src, inv, _, _ = _chain(model)
    with pytest.raises(EditError, match="node 'invert': field 'amount'"):
        model.set_param(inv, "amount", 3.0)
    with pytest.raises(EditError, match="no parameter 'amout'"):
        model.set_param(inv, "amout", 0.5)
    assert model.set_param(src, "width", "320") == 320  # coerced like the YAML loader would
    model.set_param(inv, "amount", 0.75)
    text = model.to_yaml()
    assert yaml.safe_load(text)["nodes"]["invert"]["params"]["amount"] == 0.75
    assert model.full_params(inv) == {"amount": 0.75}
    model.reset_param(inv, "amount")
    assert "params" not in yaml.safe_load(model.to_yaml())["nodes"]["invert"]
    assert model.param_value(inv, "amount") == 1.0  # the schema default is what runs


def test_undo_redo_and_slider_coalescing(model: EditorModel) -> None:
    src, inv, _, sink = _chain(model)
    start = model.to_spec()
    for v in (0.1, 0.2, 0.3, 0.4):  # one slider drag
        model.set_param(inv, "amount", v)
    assert model.undo() == "invert.amount = 0.1"
    assert model.to_spec() == start
    assert model.redo() is not None and model.param_value(inv, "amount") == 0.4
    model.remove_nodes([inv])
    assert inv not in model.nodes and all(l.src != inv and l.dst != inv for l in model.links())
    model.undo()
    assert model.nodes[inv].inputs["frame"].sources == ["test_pattern.frame"]
    assert model.nodes[sink].inputs["frame"].sources == ["invert.out"]


def test_duplicate_and_rename_keep_references(model: EditorModel) -> None:
    src, inv, _, sink = _chain(model)
    model.set_param(inv, "amount", 0.2)
    copies = model.duplicate_nodes([src, inv])
    assert len(copies) == 2
    new_src, new_inv = copies
    assert model.nodes[new_inv].params == {"amount": 0.2}
    assert model.nodes[new_inv].inputs["frame"].sources == [f"{new_src}.frame"]  # link between copies kept
    model.rename_node(inv, "look")
    assert model.nodes[sink].inputs["frame"].sources == ["look.out"]
    with pytest.raises(EditError, match="already exists"):
        model.rename_node("look", sink)


def test_input_policy_round_trips(model: EditorModel) -> None:
    _, inv, _, sink = _chain(model)
    model.set_input_policy(sink, "frame", "queue", 8)
    data = yaml.safe_load(model.to_yaml())
    written = data["nodes"]["null_node"]["inputs"]["frame"]
    assert written["from"] == "invert.out" and written["queue"] == 8
    again = EditorModel(model.catalog, model.registry)
    again.load_text(model.to_yaml())
    assert again.nodes[sink].inputs["frame"].queue == 8 and again.validate().ok


def test_save_never_clobbers_user_files(model: EditorModel, tmp_path: Path) -> None:
    _chain(model)
    other = tmp_path / "mine.yaml"
    other.write_text("precious: true\n")
    with pytest.raises(EditError, match="refusing to overwrite"):
        model.save(other)
    assert other.read_text() == "precious: true\n"
    model.save(other, overwrite=True)
    # Changed on disk since opened: refuse.
    model.load(other)
    os.utime(other, (1, 1))
    with pytest.raises(EditError, match="changed on disk"):
        model.save()
    assert not list(tmp_path.glob(".mine.yaml.*.tmp"))  # no temp files left behind


def test_hand_written_comments_are_backed_up_once(model: EditorModel, tmp_path: Path) -> None:
    path = tmp_path / "hand.yaml"
    text = "# my notes\nversion: 1\nnodes:\n  src: {type: basic.test_pattern}\n  out: {type: basic.null, inputs: {frame: src.frame}}\n"
    path.write_text(text)
    model.load(path)
    model.set_param("src", "width", 320)
    model.save()
    backups = list(tmp_path.glob("hand.yaml.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == text
    assert yaml.safe_load(path.read_text())["nodes"]["src"]["params"] == {"width": 320}


@pytest.mark.parametrize("name", ["stream_4k.yaml", "webcam_720p.yaml", "record.yaml"])
def test_project_graphs_round_trip(model: EditorModel, tmp_path: Path, name: str) -> None:
    path = GRAPHS / name
    if not path.exists():
        pytest.skip(f"{path} not in the repo")
    original = _spec(path.read_text())
    model.load(path)
    saved = model.to_spec()
    assert saved.nodes == original.nodes and saved.settings == original.settings
    assert set(saved.editor.positions) == set(original.nodes)  # laid out when the file had no positions
    out = tmp_path / name
    model.save(out)
    assert _spec(out.read_text()).nodes == original.nodes


def test_layout_puts_producers_left_and_never_overlaps(model: EditorModel) -> None:
    _chain(model)
    extra = model.add_node("basic.invert")
    model.link("invert", "out", extra, "frame")
    model.auto_layout()
    pos = {n: model.nodes[n].pos for n in model.nodes}
    for link in model.links():
        assert pos[link.src][0] < pos[link.dst][0]
    boxes = [(n, *pos[n], *model.estimated_size(n)) for n in model.nodes]
    for i, (a, ax, ay, aw, ah) in enumerate(boxes):
        for b, bx, by, bw, bh in boxes[i + 1:]:
            assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay, f"{a} overlaps {b}"


def test_layout_survives_a_cycle() -> None:
    pos = layered_positions(["a", "b", "c"], [("a", "b"), ("b", "c"), ("c", "b")])
    assert set(pos) == {"a", "b", "c"} and pos["a"][0] < pos["b"][0]


def test_unknown_node_type_opens_with_error_on_that_node(model: EditorModel) -> None:
    model.load_text(
        "version: 1\nnodes:\n  src: {type: basic.test_pattern}\n"
        "  beauty: {type: acme.not_written_yet, inputs: {frame: src.frame}}\n"
        "  out: {type: basic.null, inputs: {frame: beauty.out}}\n"
    )
    info = model.node_info("beauty")
    assert not info.known and list(info.inputs) == ["frame"] and list(info.outputs) == ["out"]
    check = model.validate()
    assert not check.ok
    errs = check.for_node("beauty")
    assert errs and errs[0].code == "unknown_node_type"


def test_missing_required_input_is_reported_on_its_node(model: EditorModel) -> None:
    model.add_node("basic.test_pattern")
    inv = model.add_node("basic.invert")
    assert model.open_required_inputs(inv) == ["frame"]
    check = model.validate()
    assert any(e.code == "missing_input" and e.port == "frame" for e in check.for_node(inv))


def test_palette_search_groups_by_category() -> None:
    cat = Catalog.from_registry()
    hits = cat.search("invert")
    assert "basic" in hits and [t.id for t in hits["basic"]] == ["basic.invert"]
    assert cat.search("zzzz-no-such-node") == {}
    assert sum(len(v) for v in cat.search("").values()) == len(cat.types)


def test_param_widgets_follow_the_schema() -> None:
    kinds = {w.name: w for w in widgets_for(Settings.model_json_schema())}
    assert kinds["device"].kind == "combo" and kinds["device"].items == ["auto", "cuda", "cpu"]
    assert kinds["fps"].kind == "slider_float" and (kinds["fps"].minimum, kinds["fps"].maximum) == (0, 240)
    assert kinds["resolution"].kind == "vector_int" and kinds["resolution"].size == 2
    assert kinds["cuda_graphs"].kind == "checkbox"
    assert "frames per second" in kinds["fps"].tooltip.lower()
    assert widget_for("plate_file", {"type": "string"}).kind == "file"
    assert widget_for("profile", {"type": "string"}).kind == "text"
    opt = widget_for("checkpoint", {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None})
    assert opt.kind == "file" and opt.from_widget("") is None
    js = widget_for("labels", {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]})
    assert js.kind == "json" and js.from_widget('["a", "b"]') == ["a", "b"]


def test_preview_image_of_frame_and_mask(astronaut: np.ndarray) -> None:
    frame = Frame(torch.from_numpy(astronaut))
    img = preview_image(frame, 128, 72)
    assert img.shape == (72, 72, 3) and img.dtype == torch.uint8  # square photo fits the height
    small = torch.nn.functional.interpolate(torch.from_numpy(astronaut).permute(2, 0, 1)[None].float(), size=(72, 72), mode="area")[0]
    assert (img.permute(2, 0, 1).float() - small).abs().mean() < 1.5
    alpha = torch.zeros(90, 160)
    alpha[20:70, 60:100] = 1.0
    m = preview_image(Mask(alpha), 80, 80)
    assert m.shape == (45, 80, 3) and m[22, 40].tolist() == [255, 255, 255] and m[2, 2].tolist() == [0, 0, 0]
    tex = to_texture(img.numpy(), 128, 72).reshape(72, 128, 4)
    assert tex[:, :28, :3].max() == 0 and tex[:, 28:100, :3].std() > 0.1  # letterboxed, centred


def test_preview_tap_keeps_one_picture_in_flight(astronaut: np.ndarray) -> None:
    tap = PreviewTap(64, 64)
    img = torch.from_numpy(astronaut)
    tap(Frame(img))
    tap(Frame(255 - img))  # dropped: the first wasn't shown yet
    first = tap.poll()
    assert first is not None and abs(float(first.mean()) - float(astronaut.mean())) < 3
    assert tap.poll() is None and tap.received == 1


def test_progress_reader_tails_the_training_stream(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "train_progress.jsonl"
    path.parent.mkdir()
    reader = ProgressReader(path)
    assert reader.poll() == {}
    with open(path, "w") as fh:
        fh.write(json.dumps({"event": "start", "step": 0, "steps": 300}) + "\n")
        fh.write(json.dumps({"event": "step", "step": 150, "steps": 300, "loss": 0.25, "val_iou": 0.9}) + "\n")
        fh.write('{"event": "step", "step": 1')  # being written
    p = reader.poll()["train"]
    assert p.fraction == 0.5 and "loss 0.2500" in p.text and "IoU 0.900" in p.text
    with open(path, "a") as fh:
        fh.write('80, "steps": 300}\nnot json\n')
    assert reader.poll()["train"].fraction == pytest.approx(0.6)
    with open(path, "a") as fh:
        fh.write(json.dumps({"event": "done", "steps": 300}) + "\n")
    done = reader.poll()["train"]
    assert done.fraction == 1.0 and done.state == "done"
    assert parse_record({"stage": "label", "done": 3, "total": 12}).fraction == 0.25
    states = stage_states({"stages": {"plate": "done", "label": {"status": "failed", "error": "no GPU"}}})
    assert states["plate"].fraction == 1.0 and states["label"].state == "failed" and "no GPU" in states["label"].text


def test_muse_edit_without_display_explains(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import argparse

    from muse.editor.cli import register

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["edit", "graphs/stream_4k.yaml"])
    assert args.func(args) == 2  # returns instead of letting DearPyGui abort the process
    err = capsys.readouterr().err
    assert "DISPLAY" in err and "xvfb-run" in err


@pytest.mark.cuda
def test_preview_tap_on_cuda_matches_the_cpu_picture(astronaut: np.ndarray) -> None:
    frame = Frame(torch.from_numpy(astronaut).cuda())
    tap = PreviewTap(128, 72)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # as the runtime: the payload was made on a node's stream
        tap(frame)
    deadline = time.monotonic() + 5
    img = None
    while img is None and time.monotonic() < deadline:
        img = tap.poll()
    assert img is not None and img.shape == (72, 72, 3)
    cpu = preview_image(Frame(torch.from_numpy(astronaut)), 128, 72).numpy()
    assert np.abs(img.astype(np.int16) - cpu.astype(np.int16)).max() <= 1
    alpha = torch.zeros(90, 160, device="cuda")
    alpha[20:70, 60:100] = 1
    tap(Mask(alpha))
    deadline = time.monotonic() + 5
    m = None
    while m is None and time.monotonic() < deadline:
        m = tap.poll()
    assert m is not None and m.shape == (72, 128, 3) and m[36, 64].tolist() == [255, 255, 255]


def test_node_timings_text_shows_the_hybrid_mode() -> None:
    from muse.editor.live import stats_details, stats_line

    s = {"frames": 90, "drops": 2, "errors": 0, "host_ms": {"p50": 1.25, "p95": 2.0, "p99": 3.5, "mean": 1.4},
         "gpu_ms": {"p50": 0.8, "p95": 0.9, "p99": 1.1, "mean": 0.85}, "info": {"mode": "personalized", "switches": 1}}
    assert stats_line(s) == "0.8 / 1.1 ms\nmode: personalized"  # GPU time when measured
    details = stats_details(s)
    assert "gpu time: p50 0.80" in details and "host time: p50 1.25" in details and "switches: 1" in details
    assert stats_line({"host_ms": {"p50": 2.0, "p99": 4.0}, "errors": 3}) == "2.0 / 4.0 ms  errors 3"
    # Fault counts on the node's badge and in its tooltip (issue 19).
    faulty = {"host_ms": {"p50": 2.0, "p95": 3.0, "p99": 4.0}, "errors": 3, "on_error": "hold_last", "info": {"stalled": "running 4.0 s"},
              "faults": {"errors": 3, "nan": 1, "stalls": 2, "slowest_ms": 5000.0, "oom": 1, "handled": {"held": 4},
                         "stepped_down": ["working_height 288 -> 208"]}}
    assert stats_line(faulty) == "2.0 / 4.0 ms  errors 3 NaN 1 stalls 2 OOM 1\nSTALLED"
    details = stats_details(faulty)
    assert "nan 1  stalls 2  oom 1  (slowest 5000 ms)" in details and "on_error hold_last: held 4" in details
    assert "stepped down: working_height 288 -> 208" in details and "stalled: running 4.0 s" in details


def test_node_timings_text_shows_switch_branches_and_absent_nodes() -> None:
    """While running: a switch says which branch is live; a branch that does not run says why, not a time."""
    from muse.editor.live import stats_details, stats_line

    switch = {"host_ms": {"p50": 0.1, "p95": 0.15, "p99": 0.2}, "info": {"live": "bundled", "branches": {
        "personalized": "absent: node 'segment/student': set field 'profile'", "bundled": "live"}}}
    assert stats_line(switch) == "0.1 / 0.2 ms\nlive: bundled"
    assert "branch personalized: absent: node 'segment/student'" in stats_details(switch)
    assert "branch bundled: live" in stats_details(switch)
    absent = {"host_ms": {}, "info": {"state": "absent: node 'segment/modnet': field 'checkpoint' is empty"}}
    assert stats_line(absent) == "absent (see tooltip)"
    assert "field 'checkpoint' is empty" in stats_details(absent)
    assert stats_line({"host_ms": {}, "info": {"state": "standby: for virtualcam"}}) == "standby (see tooltip)"
    assert stats_line({"host_ms": {"p50": 1.0, "p99": 2.0}, "info": {"state": "live: standing in for virtualcam"}}) == "1.0 / 2.0 ms"


def test_included_sub_graph_nodes_are_drawn_read_only(model: EditorModel, tmp_path: Path) -> None:
    """stream_4k's hybrid sub-graphs: their nodes and links are in the model's drawing, not in its edits."""
    path = GRAPHS / "stream_4k.yaml"
    model.load(path)
    assert {"segment/switch", "segment/bundled", "pose/switch"} <= set(model.included)
    assert not set(model.included) & set(model.nodes)
    assert model.included_from["segment/modnet"] == "include/segment_hybrid.yaml"
    assert model.branches("segment/switch") == [("personalized", "segment/student.mask"), ("base", "segment/modnet.mask"),
                                                ("bundled", "segment/person.out")]
    assert model.branches("camera") == [("webcam", "webcam.frame"), ("demo", "demo.frame")] and model.branches("matte") == []
    assert model.output_type("segment/switch", "selected") == "Mask" and model.external_inputs("matte") == {}
    assert all(n.pos for n in model.all_nodes().values()), "laid out with the rest"
    model.move_node("segment/switch", (900, 40))
    out = tmp_path / "stream_4k.yaml"
    (tmp_path / "include").mkdir()
    for f in (GRAPHS / "include").glob("*.yaml"):
        (tmp_path / "include" / f.name).write_text(f.read_text())
    model.save(out)
    again = EditorModel(registry=model.registry)
    again.load(out)
    assert again.included["segment/switch"].pos == (900, 40), "where an included node was put is kept"
    assert set(again.to_spec().nodes) == set(model.nodes), "included nodes are not copied into the file"
