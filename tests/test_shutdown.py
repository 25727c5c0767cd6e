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
