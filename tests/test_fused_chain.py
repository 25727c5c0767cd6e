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
    monkeypatch.delenv("MUSE_FUSE")  # the default: on a GPU wherever Triton is importable
    import importlib.util

    assert backends.fuse_wanted("cuda") == (importlib.util.find_spec("triton") is not None)
    chain = backends.FusedChain(_maths, "test maths", "cpu")
    chain.prepare("k", lambda: pytest.fail("nothing is compiled on the CPU"))
    assert chain.compiled is None and not chain.busy()


def test_calls_that_do_not_fit_the_compiled_code_ask_for_a_compile_for_them(monkeypatch, caplog, tmp_path):
    """Seen on the H200: code compiled on the background thread did not fit the stream's calls ("Detected
    recompile" under the fail_on_recompile stance). The call runs unfused, the node's next prepare() compiles
    again warmed like the stream's own call, and after RETRIES such misses the chain stays unfused."""
    misses = {"left": 1}
    warmed: list[float] = []

    def picky_compile(fn, dynamic=False):
        def compiled(*args):
            if threading.current_thread().name.startswith("fuse "):
                warmed.append(float(args[1]))
                return fn(*args)
            if misses["left"] > 0:
                misses["left"] -= 1
                raise RuntimeError("Detected recompile when torch.compile stance is 'fail_on_recompile'. filename: x")
            return fn(*args) + 0.0
        return compiled

    monkeypatch.setattr(torch, "compile", picky_compile)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    chain = backends.FusedChain(_maths, "test maths", "cpu", enabled=True)
    x = torch.linspace(0, 1, 16)
    chain.prepare("k", lambda: (lambda compiled: compiled(x, 2.0)))
    assert chain.wait(5) and chain.ready("k")
    with caplog.at_level(logging.INFO, logger="muse.backends"):
        out = chain.run(True, x, 2.0)  # does not fit: runs unfused, asks again
    assert torch.equal(out, _maths(x, 2.0)) and not chain.last_compiled
    assert not chain.ready("k") and chain.compiled is not None and chain.retries == 1
    assert "does not fit its compiled code" in caplog.text
    chain.prepare("k", lambda: (lambda compiled: compiled(x, 2.5)))  # the node's next frame
    assert chain.wait(5) and chain.ready("k") and warmed == [2.0, 2.5]
    assert torch.equal(chain.run(True, x, 2.0), _maths(x, 2.0)) and chain.last_compiled
    # misses beyond RETRIES: unfused for good, with one warning
    misses["left"] = 10
    for _ in range(backends.RETRIES):
        chain.run(True, x, 2.0)
        chain.prepare("k", lambda: (lambda compiled: compiled(x, 2.0)))
        assert chain.wait(5)
    with caplog.at_level(logging.WARNING, logger="muse.backends"):
        chain.run(True, x, 2.0)
    assert chain.compiled is None and "compiled test maths failed" in caplog.text


def test_a_compile_waits_for_a_recording_and_compiled_code_is_not_called_while_one_compiles(stand_in, monkeypatch, tmp_path):
    """GPU_CODE keeps compiling and CUDA graph recording apart (a compile's autotuning and synchronizes broke the
    frame's recording on the H200): a compile starts only once no recording runs; while it runs, the stream's
    calls run unfused; the recording thread may call compiled code inside its recording (re-entrant)."""
    from muse.graph.compiled import GPU_CODE

    calls, gate = stand_in
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    chain = backends.FusedChain(_maths, "test maths", "cpu", enabled=True)
    x = torch.linspace(0, 1, 16)
    gate.set()
    with GPU_CODE:  # a recording under way on this thread
        chain.prepare("k", lambda: (lambda compiled: compiled(x, 2.0)))
        assert not chain.wait(0.3) and calls == []  # the compile waits for the recording
    assert chain.wait(5) and chain.ready("k") and calls == ["fuse test maths"]
    with GPU_CODE:  # compiled code inside a recording: the same thread takes the lock again
        chain.run(True, x, 2.0)
        assert chain.last_compiled
    held, release = threading.Event(), threading.Event()

    def compiling() -> None:  # another thread holds the lock, as a compile under way does
        with GPU_CODE:
            held.set()
            release.wait(5)

    t = threading.Thread(target=compiling)
    t.start()
    assert held.wait(5)
    try:
        assert torch.equal(chain.run(True, x, 2.0), _maths(x, 2.0)) and not chain.last_compiled
    finally:
        release.set()
        t.join()


def test_the_warm_up_runs_in_the_callers_torch_state():
    """Compiled code is checked against torch's state where the call is made (grad and inference modes, the
    intra-op thread count): the warm-up on the compiling thread takes the caller's."""
    seen: list[tuple[bool, bool, int]] = []
    x = torch.ones(4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.inference_mode():
            warm = backends.warm_like([x], lambda compiled, xs: seen.append(
                (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), torch.get_num_threads())))
        t = threading.Thread(target=warm, args=(None,))
        t.start()
        t.join()
    finally:
        torch.set_num_threads(before)
    assert seen == [(False, True, 1)]


def test_compiled_code_fits_its_calls_inside_a_recording(monkeypatch, tmp_path):
    """The recording's host guards are modes on torch's stacks, which compiled code is checked against: on the
    H200 every compiled model and the matte "did not fit" at each recording. They come off for compiled calls.
    (Dynamo's guards with its eager backend: the same checks as Inductor's code, without a C++ compile.)"""
    from muse.graph.capture import EmulatedFrameGraph

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, dynamic=False: real(fn, dynamic=dynamic, backend="eager"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    x = torch.linspace(0, 1, 16)
    try:
        chain = backends.FusedChain(_maths, "test maths", "cpu", enabled=True)
        chain.prepare("k", lambda: backends.warm_like([x], lambda compiled, xs: compiled(xs[0], 2.0)))
        assert chain.wait(60) and chain.ready("k")
        graph = EmulatedFrameGraph()
        out = graph.record(lambda: chain.run(True, x, 2.0))
        assert chain.last_compiled and chain.retries == 0 and chain.compiled is not None
        assert torch.equal(out, _maths(x, 2.0))
        with pytest.raises(Exception, match="host"):  # the guards are back on after the compiled call
            graph.record(lambda: chain.run(True, x, 2.0).sum().item())
    finally:
        torch._dynamo.reset()
