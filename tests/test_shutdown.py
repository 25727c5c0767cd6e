"""Ctrl-C during `muse run` stops cleanly: the recording is closed and playable,
and an existing file is never overwritten."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import av

ROOT = Path(__file__).parent.parent


def _graph(tmp: Path, out: Path) -> Path:
    g = tmp / "rec.yaml"
    g.write_text(
        "version: 1\nsettings: {device: cpu, fps: 30}\nnodes:\n"
        "  src: {type: capture.demo, params: {width: 160, height: 120, fps: 30}}\n"
        f"  rec: {{type: output.file, params: {{path: '{out}', codec: h264}}, inputs: {{frame: {{from: src.frame, queue: 30}}}}}}\n"
    )
    return g


def test_ctrl_c_leaves_a_playable_recording(tmp_path: Path) -> None:
    out = tmp_path / "take.mkv"
    proc = subprocess.Popen([sys.executable, "-m", "muse.cli", "run", str(_graph(tmp_path, out))], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 2000):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err
    assert "Ctrl-C" in err
    with av.open(str(out)) as f:
        frames = [fr for fr in f.decode(video=0)]
    assert len(frames) >= 10
    assert (frames[0].width, frames[0].height) == (160, 120)


def test_existing_recording_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "keep.mkv"
    out.write_bytes(b"the streamer's earlier take")
    run = subprocess.run([sys.executable, "-m", "muse.cli", "run", str(_graph(tmp_path, out)), "--frames", "5"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "keep.mkv" in run.stderr and "rec" in run.stderr
    assert out.read_bytes() == b"the streamer's earlier take"


SLOW_CLOSE_PLUGIN = '''
"""A pass-through node whose close() hangs, like a driver that will not let go (test fixture)."""
import time
from pathlib import Path

from pydantic import Field

from muse.graph.node import In, Node, NodeParams, Out
from muse.graph.payloads import Frame


class SlowClose(Node):
    node_type = "test.slow_close"
    description = "Passes frames through; close() takes 60 s."

    frame: In[Frame]
    out: Out[Frame]

    class Params(NodeParams):
        marker: str = Field("", description="file touched when close() starts")

    def process(self, frame: Frame) -> dict[str, Frame]:
        return {"out": frame}

    def close(self) -> None:
        if self.params.marker:
            Path(self.params.marker).touch()
        time.sleep(60)
'''


def _slow_graph(tmp: Path, out: Path, stats: Path | None = None) -> tuple[Path, Path]:
    plugins = tmp / "plugins"
    plugins.mkdir()
    (plugins / "slow_close.py").write_text(SLOW_CLOSE_PLUGIN)
    g = tmp / "slow.yaml"
    g.write_text(
        "version: 1\nsettings: {device: cpu, fps: 30}\nnodes:\n"
        "  src: {type: capture.demo, params: {width: 160, height: 120, fps: 30}}\n"
        f"  slow: {{type: test.slow_close, params: {{marker: '{tmp / 'closing'}'}}, inputs: {{frame: src.frame}}}}\n"
        f"  rec: {{type: output.file, params: {{path: '{out}', codec: h264}}, inputs: {{frame: {{from: src.frame, queue: 30}}}}}}\n"
        "  sink: {type: output.null, inputs: {frame: slow.out}}\n"
    )
    return g, plugins


def _start_recording(cmd: list[str], out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 2000):
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        time.sleep(0.2)
    time.sleep(1.0)
    return proc


def _playable_frames(out: Path) -> int:
    with av.open(str(out)) as f:
        return sum(1 for _ in f.decode(video=0))


def test_second_ctrl_c_quits_at_once_without_traceback(tmp_path: Path) -> None:
    """The first Ctrl-C starts a clean stop that hangs in a node's close(); the second quits within 2 s."""
    out = tmp_path / "take.mkv"
    graph, plugins = _slow_graph(tmp_path, out)
    proc = _start_recording([sys.executable, "-m", "muse.cli", "run", str(graph), "--plugins", str(plugins)], out)
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while not (tmp_path / "closing").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the stop closes sources, then sinks (the recorder), then the rest: it now hangs in test.slow_close
    assert (tmp_path / "closing").exists() and proc.poll() is None, "the clean stop should be waiting on the slow node"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert took < 2.0, f"second Ctrl-C took {took:.1f} s"
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "terminate called" not in err, err
    assert "again: quitting now" in err
    assert _playable_frames(out) >= 10  # the recording was closed: playable to the end


def test_sigterm_stops_like_ctrl_c_and_writes_stats(tmp_path: Path) -> None:
    out = tmp_path / "take.mkv"
    stats = tmp_path / "stats.json"
    proc = _start_recording([sys.executable, "-m", "muse.cli", "run", str(_graph(tmp_path, out)), "--stats", str(stats)], out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGTERM: stopping cleanly" in err and "Traceback" not in err
    import json

    data = json.loads(stats.read_text())
    assert data["nodes"]["rec"]["frames"] >= 10
    assert _playable_frames(out) == data["nodes"]["rec"]["frames"]
