"""`muse.models.backends.FusedChain`: a node's maths compiled in the background while the node runs them
unfused; the compiled code is used only once ready for the node's key; a failing compile leaves it unfused.
(torch.compile is replaced by a recording stand-in here: Inductor's own output is checked by the `cuda`
tests in test_segment_fused.py.)"""

from __future__ import annotations

import logging
import threading

import pytest
import torch

from muse.models import backends


def _maths(x: torch.Tensor, k: float) -> torch.Tensor:
    return (x * k).clamp(0.0, 1.0)


@pytest.fixture
def stand_in(monkeypatch):
    calls: list[str] = []
    gate = threading.Event()

    def fake_compile(fn, dynamic=False):
        def compiled(*args):
            calls.append(threading.current_thread().name)
            gate.wait(5)  # a compile that takes a while
            return fn(*args) + 0.0
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls, gate


def test_compiles_in_the_background_and_is_used_once_ready(stand_in, monkeypatch, tmp_path):
    calls, gate = stand_in
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # FusedChain only sets it where unset
    chain = backends.FusedChain(_maths, "test maths", "cpu", enabled=True)
    x = torch.linspace(0, 1, 16)
    key = ("size", 1)
    assert not chain.ready(None) and not chain.ready(key)  # nothing compiled yet, whatever the key
    chain.prepare(key, lambda: (lambda compiled: compiled(x, 2.0)))
    assert chain.busy() and not chain.ready(key)
    # meanwhile the stream runs the maths as they are, on its own thread
    assert torch.equal(chain.run(chain.ready(key), x, 2.0), _maths(x, 2.0))
    assert calls == [t for t in calls if t.startswith("fuse ")]
    gate.set()
    assert chain.wait(5) and chain.ready(key) and not chain.busy()
    assert calls and calls[0] == "fuse test maths"
    n = len(calls)
    assert torch.equal(chain.run(True, x, 2.0), _maths(x, 2.0))
    assert len(calls) == n + 1 and calls[-1] == threading.current_thread().name
    # a new key (an edited param): unfused until compiled again
    chain.prepare(("size", 2), lambda: (lambda compiled: compiled(x, 3.0)))
    assert not chain.ready(("size", 2))
    assert chain.wait(5) and chain.ready(("size", 2)) and not chain.ready(key)


def test_a_failing_compile_warns_and_leaves_the_maths_unfused(monkeypatch, caplog, tmp_path):
    def broken_compile(fn, dynamic=False):
        def compiled(*args):
            raise RuntimeError("no compiler on this machine")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    chain = backends.FusedChain(_maths, "test maths", "cpu", enabled=True)
    x = torch.linspace(0, 1, 16)
    with caplog.at_level(logging.WARNING, logger="muse.backends"):
        chain.prepare("k", lambda: (lambda compiled: compiled(x, 2.0)))
        assert chain.wait(5)
    assert chain.compiled is None and not chain.ready("k")
    assert "compiling test maths failed" in caplog.text and "no compiler on this machine" in caplog.text
    assert torch.equal(chain.run(True, x, 2.0), _maths(x, 2.0))  # asked for fused: runs unfused


def test_fusing_is_off_on_the_cpu_and_when_asked(monkeypatch):
    assert not backends.fuse_wanted("cpu")
    monkeypatch.setenv("MUSE_FUSE", "off")
    assert not backends.fuse_wanted("cuda")
    chain = backends.FusedChain(_maths, "test maths", "cpu")
    chain.prepare("k", lambda: pytest.fail("nothing is compiled on the CPU"))
    assert chain.compiled is None and not chain.busy()
