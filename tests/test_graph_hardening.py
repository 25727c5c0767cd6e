"""Hostile and clumsy graph files: every case probed in issue 19 is a validation
error naming the file (exit 2), never a traceback or a hang; includes only of
regular files without loops; output paths stay in the allowed folders; reports
never overwrite; `--set` mistakes are one line; `--watch` survives any edit."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from muse.cli import main
from muse.graph.validate import GraphValidationError, load_graph, validate_text

ROOT = Path(__file__).resolve().parent.parent
WEBCAM = (ROOT / "graphs" / "webcam_720p.yaml").read_text()
SMALL = """version: 1
settings: {device: cpu, fps: 30}
nodes:
  src: {type: basic.test_pattern, params: {width: 64, height: 48, fps: 30}}
  out: {type: basic.null, inputs: {frame: src.frame}}
"""


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            rc = main(list(args))
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 1
    text = out.getvalue()
    assert "Traceback" not in text, text
    return rc, text


def invalid(path: Path, *needles: str) -> str:
    t0 = time.perf_counter()
    rc, text = cli("validate", str(path))
    assert time.perf_counter() - t0 < 5
    assert rc == 2, text
    assert str(path) in text, text
    for n in needles:
        assert n in text, text
    return text


# -- text encodings ---------------------------------------------------------------

@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-8-sig", "utf-32"])
def test_graph_saved_with_a_bom_just_works(tmp_path, codec):
    shutil.copytree(ROOT / "graphs" / "include", tmp_path / "include")  # its included sub-graph
    p = tmp_path / "g.yaml"
    p.write_bytes(WEBCAM.encode(codec) if codec != "utf-16-be" else b"\xfe\xff" + WEBCAM.encode(codec))
    rc, text = cli("validate", str(p))
    assert rc == 0 and "ok:" in text, text


def test_undecodable_bytes_are_a_validation_error_with_the_line(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes(WEBCAM.replace("nodes:", "# café\nnodes:").encode("latin-1"))
    line = WEBCAM.split("nodes:")[0].count("\n") + 1
    invalid(p, f"latin1.yaml:{line}", "not valid UTF-8", "save the graph as UTF-8")


def test_binary_garbage(tmp_path):
    p = tmp_path / "bin.yaml"
    p.write_bytes(bytes(range(256)) * 8)
    invalid(p, "[file]")


# -- YAML shapes and limits ------------------------------------------------------------

@pytest.mark.parametrize("opener", ["[", "{a: "])
def test_deep_nesting_stops_before_parsing(tmp_path, opener):
    p = tmp_path / "deep.yaml"
    closer = "]" if opener == "[" else "}"
    p.write_text(f"version: 1\nnodes:\n  a: {opener * 2000}1{closer * 2000}\n")
    invalid(p, "deep.yaml:3", "nest")


@pytest.mark.parametrize("key", ["{a: 1}", "[1, 2]", "!!set {a}"])
def test_mapping_or_list_as_a_node_key(tmp_path, key):
    p = tmp_path / "key.yaml"
    p.write_text(f"version: 1\nnodes:\n  {key}: {{type: basic.null}}\n")
    invalid(p, "key.yaml:3", "a key must be a name or a number")


def test_billion_laughs_is_refused_quickly(tmp_path):
    p = tmp_path / "lol.yaml"
    block = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    block += "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))
    p.write_text("version: 1\neditor:\n" + "".join("  " + ln + "\n" for ln in block.splitlines()) + "nodes: {a: {type: basic.null}}\n")
    invalid(p, "expands to more than")


def test_merge_keys_work_and_duplicates_are_still_caught(tmp_path):
    p = tmp_path / "merge.yaml"
    p.write_text("version: 1\nsettings: {device: cpu}\neditor: {base: &b {type: basic.test_pattern, params: {width: 64}}}\n"
                 "nodes:\n  src: {<<: *b, params: {width: 32}}\n  out: {type: basic.null, inputs: {frame: src.frame}}\n")
    g = load_graph(p)
    assert g.nodes["src"].params.width == 32
    p.write_text("version: 1\nnodes:\n  a: {type: basic.null}\n  a: {type: basic.null}\n")
    invalid(p, "appears twice")


def test_oversized_file_is_refused_before_parsing(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text(SMALL + "# " + "x" * (3 * 1024 * 1024) + "\n")
    invalid(p, "MB")


def test_validation_is_linear_dense_switch_knot():
    """12 (and 150) switch nodes all feeding each other: one cycle error per knot, no loop enumeration."""
    def dense(n: int) -> str:
        lines = ["version: 1", "settings: {device: cpu}", "nodes:", "  src: {type: basic.test_pattern}"]
        for i in range(n):
            cands = ", ".join(["src.frame"] + [f"s{j}.selected" for j in range(n) if j != i])
            lines.append(f"  s{i}: {{type: flow.switch, inputs: {{candidates: [{cands}]}}}}")
        lines.append("  out: {type: basic.null, inputs: {frame: s0.selected}}")
        return "\n".join(lines)

    for n in (12, 150):
        t0 = time.perf_counter()
        with pytest.raises(GraphValidationError) as err:
            validate_text(dense(n), "dense.yaml")
        took = time.perf_counter() - t0
        cycles = [e for e in err.value.errors if e.code == "cycle"]
        assert len(cycles) == 1 and f"{n} nodes feed each other" in cycles[0].message
        assert took < 5, f"{n} switches took {took:.1f} s"


# -- includes ------------------------------------------------------------------

def _with_include(tmp_path: Path, target: str, name: str = "main.yaml") -> Path:
    p = tmp_path / name
    p.write_text(SMALL + f"include:\n  - {{file: {target}, prefix: sub}}\n")
    return p


def test_include_of_itself(tmp_path):
    invalid(_with_include(tmp_path, "main.yaml"), "includes itself", "include[0]")


def test_include_loop_through_two_files(tmp_path):
    (tmp_path / "b.yaml").write_text("version: 1\ninclude: [{file: main.yaml, prefix: m}]\nnodes: {n: {type: basic.null}}\n")
    invalid(_with_include(tmp_path, "b.yaml"), "loop", "main.yaml -> b.yaml -> main.yaml")


def test_include_of_a_fifo_a_folder_or_a_device_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    for target, needle in (("pipe", "not a regular file"), ("folder", "a folder"), ("/dev/zero", "not a regular file"),
                           ("missing.yaml", "No such file")):
        invalid(_with_include(tmp_path, target), needle, "cannot include")


def test_graph_path_that_is_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "g.yaml")
    invalid(tmp_path / "g.yaml", "not a regular file")


def test_errors_inside_an_included_file_name_it_and_its_line(tmp_path):
    (tmp_path / "sub.yaml").write_text("version: 1\nnodes:\n  n: {type: basic.null\n")
    text = invalid(_with_include(tmp_path, "sub.yaml"), "cannot include sub.yaml")
    assert f"{tmp_path / 'sub.yaml'}:" in text


def test_nested_includes_expand(tmp_path):
    (tmp_path / "leaf.yaml").write_text("version: 1\nnodes:\n  inv: {type: basic.invert, inputs: {frame: outer.frame}}\n")
    (tmp_path / "mid.yaml").write_text("version: 1\ninclude: [{file: leaf.yaml, prefix: leaf}]\nnodes:\n  n: {type: basic.null, inputs: {frame: leaf/inv.out}}\n")
    p = tmp_path / "top.yaml"
    p.write_text(SMALL + "include:\n  - {file: mid.yaml, prefix: mid, inputs: {leaf/inv.frame: src.frame}}\n")
    g = load_graph(p)
    assert {"mid/leaf/inv", "mid/n"} <= set(g.nodes)


# -- output paths --------------------------------------------------------------------

def _recorder(path: str, name: str = "rec", extra: str = "") -> str:
    return f"  {name}: {{type: output.file, params: {{path: '{path}'{extra}}}, inputs: {{frame: src.frame}}}}\n"


def test_duplicate_output_paths_are_rejected(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text(SMALL + _recorder("recordings/take_%Y%m%d_%H%M%S.mkv", "rec1") + _recorder("recordings/take_%Y%m%d_%H%M%S.mkv", "rec2"))
    invalid(p, "node 'rec2'", "field 'path'", "same file as node 'rec1'")


@pytest.mark.parametrize("bad", ["../../escape.mkv", "/tmp/muse_elsewhere/x.mkv", "~/../../etc/x.mkv"])
def test_output_paths_stay_inside_the_allowed_folders(tmp_path, bad, monkeypatch):
    monkeypatch.setenv("MUSE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MUSE_STUDIO_HOME", str(tmp_path / "profiles"))
    graphs = tmp_path / "downloads" / "graph"
    graphs.mkdir(parents=True)
    p = graphs / "g.yaml"
    p.write_text(SMALL + _recorder(bad))
    invalid(p, "node 'rec'", "field 'path'", "outside the folders a graph may write to", "--allow-paths")
    rc, text = cli("validate", "--allow-paths", str(p))
    assert rc == 0, text


def test_allowed_output_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MUSE_STUDIO_HOME", str(tmp_path / "profiles"))
    monkeypatch.setenv("MUSE_ALLOW_PATHS", str(tmp_path / "videos"))
    g = tmp_path / "graphs"
    g.mkdir()
    p = g / "g.yaml"
    for i, ok in enumerate(["recordings/a.mkv", str(tmp_path / "data" / "b.mkv"), str(tmp_path / "profiles" / "front" / "c.mkv"),
                            str(tmp_path / "videos" / "d.mkv")]):
        p.write_text(SMALL + _recorder(ok))
        rc, text = cli("validate", str(p))
        assert rc == 0, (ok, text)
    (g / "link").symlink_to("/tmp")  # a symlink out of the graph folder does not count as inside it
    p.write_text(SMALL + _recorder("link/x.mkv"))
    invalid(p, "outside the folders")


def test_dataset_writer_profile_outside_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MUSE_STUDIO_HOME", str(tmp_path / "profiles"))
    (tmp_path / "g").mkdir()
    p = tmp_path / "g" / "label.yaml"
    p.write_text((ROOT / "graphs" / "studio_label.yaml").read_text().replace("profile: \"~/.muse/profiles/front\"", "profile: \"/srv/other\""))
    invalid(p, "node 'dataset'", "field 'profile'", "outside the folders")


def test_relative_recording_lands_in_the_graph_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working folder is not where a graph's relative paths go
    g = tmp_path / "graphs"
    g.mkdir()
    p = g / "rec.yaml"
    p.write_text(SMALL.replace("basic.null, inputs: {frame: src.frame}", "output.file, params: {path: out/take.mkv, codec: ffv1}, inputs: {frame: src.frame}"))
    rc, text = cli("-q", "run", str(p), "--frames", "3")
    assert rc == 0, text
    assert (g / "out" / "take.mkv").is_file() and not (tmp_path / "out").exists()


# -- CLI values and reports -----------------------------------------------------------------

@pytest.mark.parametrize("item", ["src.width=[unclosed", "src.width={a: ", "src.width=" + "[" * 500, "nodot=1", "src.=1", "src.a..b=1"])
def test_bad_set_values_are_one_line_exit_2(tmp_path, item):
    p = tmp_path / "g.yaml"
    p.write_text(SMALL)
    rc, text = cli("run", str(p), "--frames", "1", "--set", item)
    assert rc == 2
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--set" in lines[0], text


def test_reports_never_overwrite_the_graph_or_earlier_files(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(SMALL)
    before = p.read_bytes()
    rc, text = cli("run", str(p), "--frames", "3", "--stats", str(p), "--trace", str(p))
    assert rc == 0, text
    assert p.read_bytes() == before  # `--stats victim.yaml` used to overwrite the graph itself
    assert json.loads((tmp_path / "g-1.yaml").read_text())["frames_out"] >= 1
    assert "traceEvents" in (tmp_path / "g-2.yaml").read_text()
    assert "already exists; writing" in text
    schema = tmp_path / "schema.json"
    schema.write_text("mine")
    assert cli("schema", "-o", str(schema))[0] == 0
    assert schema.read_text() == "mine" and json.loads((tmp_path / "schema-1.json").read_text())["title"] == "MUSE graph"
    assert cli("schema", "-o", str(schema), "--force")[0] == 0
    assert json.loads(schema.read_text())["title"] == "MUSE graph"


# -- --watch -----------------------------------------------------------------------------------

def test_watch_survives_every_kind_of_broken_edit(tmp_path):
    """Saving a broken file while live (bad bytes, unhashable key, 2000 levels, a FIFO include,
    a bad --set-like value) is reported; the stream keeps running and a good edit still applies."""
    graph = tmp_path / "live.yaml"
    good = SMALL.replace("out: {type: basic.null, inputs: {frame: src.frame}}",
                         "inv: {type: basic.invert, params: {amount: 0.2}, inputs: {frame: src.frame}}\n  out: {type: basic.null, inputs: {frame: inv.out}}")
    graph.write_text(good)
    os.mkfifo(tmp_path / "pipe")
    broken = [
        good.replace("amount: 0.2", "amount: 0.3 # caf\xe9").encode("latin-1"),
        good.replace("nodes:\n", "nodes:\n  {a: 1}: {type: basic.null}\n").encode(),
        (good + "deep: " + "[" * 2000 + "]" * 2000 + "\n").encode(),
        (good + "include: [{file: pipe, prefix: p}]\n").encode(),
        bytes(range(256)),
        good.replace("amount: 0.2", "amount: 0.9").encode(),  # finally a good one
    ]
    err = tmp_path / "err.txt"
    with err.open("w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "muse.cli", "run", str(graph), "--watch"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err_file)
        try:
            _wait_for(err, "running on the CPU", proc)
            for i, content in enumerate(broken):
                mtime = graph.stat().st_mtime
                tmp = tmp_path / "next.yaml"  # swapped in whole, so the watcher never reads half a file
                tmp.write_bytes(content)
                os.utime(tmp, (mtime + 1, mtime + 1))
                os.replace(tmp, graph)
                want = "parameters updated live (inv)" if i == len(broken) - 1 else "the running graph keeps going"
                _wait_for(err, want, proc, count=i + 1 if i < len(broken) - 1 else 1)
                assert proc.poll() is None, err.read_text()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    text = err.read_text()
    assert "Traceback" not in text, text
    assert text.count("the running graph keeps going") == len(broken) - 1


def test_watch_applies_an_edit_saved_while_the_run_starts(tmp_path, monkeypatch):
    """An edit saved between loading the graph and the watcher's first look (models loading,
    the first frame) is applied, not taken as the baseline and lost."""
    from muse.graph.runtime import GraphRunner

    graph = tmp_path / "live.yaml"
    good = SMALL.replace("out: {type: basic.null, inputs: {frame: src.frame}}",
                         "inv: {type: basic.invert, params: {amount: 0.2}, inputs: {frame: src.frame}}\n  out: {type: basic.null, inputs: {frame: inv.out}}")
    graph.write_text(good)
    start = GraphRunner.start

    def start_while_the_user_saves(self: GraphRunner) -> None:
        mtime = graph.stat().st_mtime
        graph.write_text(good.replace("amount: 0.2", "amount: 0.7"))
        os.utime(graph, (mtime + 1, mtime + 1))
        start(self)

    monkeypatch.setattr(GraphRunner, "start", start_while_the_user_saves)
    rc, out = cli("run", str(graph), "--watch", "--frames", "45")
    assert rc == 0, out
    assert "parameters updated live (inv)" in out, out


def _wait_for(path: Path, needle: str, proc: subprocess.Popen, count: int = 1, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.read_text(errors="replace").count(needle) >= count:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} x{count} not seen (exit {proc.poll()}); stderr:\n{path.read_text(errors='replace')}")


def test_the_editor_opens_graphs_with_the_same_reader(tmp_path):
    from muse.editor.model import EditError, EditorModel

    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "latin1.yaml").write_bytes(SMALL.replace("nodes:", "# caf\xe9\nnodes:").encode("latin-1"))
    (tmp_path / "utf16.yaml").write_bytes(SMALL.encode("utf-16"))
    model = EditorModel()
    for name, needle in (("pipe.yaml", "not a regular file"), ("latin1.yaml", "not valid UTF-8")):
        with pytest.raises(EditError, match=needle):
            model.load(tmp_path / name)
    model.load(tmp_path / "utf16.yaml")
    assert set(model.nodes) == {"src", "out"}


def test_set_of_a_nested_field_keeps_the_group(tmp_path):
    from muse.cli import _parse_sets

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    p = tmp_path / "g.yaml"
    p.write_text(f"version: 1\nsettings: {{device: cpu}}\nnodes:\n  src: {{type: capture.file, params: {{path: '{clip}', "
                 "options: {probesize: '32', analyzeduration: '0'}}}\n  out: {type: basic.null, inputs: {frame: src.frame}}\n")
    g = load_graph(p, overrides=_parse_sets(["src.options.probesize='64'"]))
    assert g.nodes["src"].params.options == {"probesize": "64", "analyzeduration": "0"}


def test_the_editor_keeps_a_utf16_original_byte_for_byte(tmp_path):
    from muse.editor.model import EditorModel

    p = tmp_path / "g.yaml"
    original = ("# hand-written, saved by a Windows editor\n" + SMALL).encode("utf-16")
    p.write_bytes(original)
    model = EditorModel()
    model.load(p)
    model.save(p)
    backups = list(tmp_path.glob("g.yaml.*.bak"))
    assert len(backups) == 1 and backups[0].read_bytes() == original
    assert load_graph(p).nodes.keys() == {"src", "out"}  # saved as UTF-8


def test_error_messages_carry_no_terminal_escapes(tmp_path):
    """YAML's "\\e" makes an ESC: a hostile graph must not drive the user's terminal through an error message."""
    p = tmp_path / "esc.yaml"
    p.write_text('version: 1\nnodes:\n  a: {type: "x\\e]0;pwned\\a", inputs: {frame: "b\\e[2J.frame"}}\n'
                 '  out: {type: basic.null, inputs: {frame: "\\e[31m.x"}}\n')
    text = invalid(p)
    assert "\x1b" not in text and "\x07" not in text and "\\x1b" in text


def test_the_real_command_exits_2_without_a_traceback(tmp_path):
    """The same answers from a real `muse validate` process (several hostile files in one call)."""
    files = {
        "latin1.yaml": WEBCAM.replace("nodes:", "# caf\xe9\nnodes:").encode("latin-1"),
        "deep.yaml": ("version: 1\nnodes:\n  a: " + "[" * 3000 + "]" * 3000 + "\n").encode(),
        "key.yaml": b"version: 1\nnodes:\n  {a: 1}: {type: basic.null}\n",
        "self.yaml": (SMALL + "include: [{file: self.yaml, prefix: me}]\n").encode(),
        "good.yaml": SMALL.encode("utf-16"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    proc = subprocess.run([sys.executable, "-m", "muse.cli", "validate", *sorted(str(tmp_path / n) for n in files)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("the graph is invalid") == 4 and f"ok: {tmp_path / 'good.yaml'}" in proc.stdout
