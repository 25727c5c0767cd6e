"""`muse run --watch`: param edits apply live, topology edits swap the graph,
an invalid edit is reported and the running graph keeps going."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent

GRAPH = """version: 1
settings: {device: cpu, fps: 30}
nodes:
  src: {type: basic.test_pattern, params: {width: 64, height: 48, fps: 30}}
  inv: {type: basic.invert, params: {amount: AMOUNT}, inputs: {frame: src.frame}}
  out: {type: basic.null, inputs: {frame: inv.out}}
"""


def _wait_for(proc_err: Path, text: str, timeout: float = 60.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        content = proc_err.read_text()
        if text in content:
            return content
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not seen; stderr was:\n{proc_err.read_text()}")


def _touch_newer(path: Path, text: str) -> None:
    before = path.stat().st_mtime
    path.write_text(text)
    if path.stat().st_mtime == before:  # coarse clocks: make sure the change is visible
        os.utime(path, (before + 1, before + 1))


def test_watch_applies_params_swaps_topology_and_survives_bad_edits(tmp_path: Path) -> None:
    graph = tmp_path / "live.yaml"
    graph.write_text(GRAPH.replace("AMOUNT", "0.2"))
    err = tmp_path / "err.txt"
    with err.open("w") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "muse.cli", "run", str(graph), "--watch"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err_file, text=True)
        try:
            _wait_for(err, "running on the CPU")
            time.sleep(0.5)
            _touch_newer(graph, GRAPH.replace("AMOUNT", "0.8"))
            _wait_for(err, "parameters updated live (inv)")
            _touch_newer(graph, GRAPH.replace("AMOUNT", "7"))  # out of range
            content = _wait_for(err, "the running graph keeps going")
            assert "field 'amount'" in content
            _touch_newer(graph, GRAPH.replace("AMOUNT", "0.5").replace("out: {type: basic.null, inputs: {frame: inv.out}}",
                                  "out: {type: basic.null, inputs: {frame: inv.out}}\n  out2: {type: basic.null, inputs: {frame: src.frame}}"))
            _wait_for(err, "swapping in the new graph without stopping")
            time.sleep(0.5)
            assert proc.poll() is None, "the process keeps running through every edit"
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    final = err.read_text()
    assert "graph replaced" in final
    assert "out2" in final  # the new sink ran and shows in the summary
