"""`muse.models.compile_ahead`: a first compile in a process of its own (the streaming process keeps its Python
lock). The child runs only functions inside muse, from JSON; it reports a failure in one line; closing ends it;
`FusedChain` runs it before its own compile, holding no lock, and compiles here anyway when it fails. (That the
node's own compile then finds every graph in the cache is checked with Inductor itself in
tests/test_segment_fused.py::test_fused_maths_compile_in_the_background_and_match.)"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from muse.graph.compiled import GPU_CODE
from muse.models import backends
from muse.models import compile_ahead
from muse.models.compile_ahead import AheadJob, marker_path, run_ahead, tensor_like, tensor_spec, torch_state, torch_state_applied


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, tmp_path):
    """Markers of finished jobs go into Inductor's cache directory: a temporary one, not the user's."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))


def test_only_functions_inside_muse_run(tmp_path):
    marker = tmp_path / "ran"
    why = run_ahead(AheadJob("pathlib:Path.touch", {"self": str(marker)}), timeout_s=120)
    assert why is not None and "not a function inside muse" in why
    assert not marker.exists()


def test_a_failing_job_reports_its_one_line():
    bad = {"shape": [2, 3], "stride": [3, 1], "dtype": "no_such_dtype", "device": "cpu"}
    why = run_ahead(AheadJob("muse.models.compile_ahead:tensor_like", {"spec": bad}), timeout_s=120)
    assert why is not None and "AttributeError" in why and "no_such_dtype" in why


def test_a_job_that_works_reports_nothing():
    good = {"shape": [2, 3], "stride": [3, 1], "dtype": "float32", "device": "cpu"}
    assert run_ahead(AheadJob("muse.models.compile_ahead:tensor_like", {"spec": good}), timeout_s=120) is None


def test_a_finished_job_is_not_run_again_until_something_changes(monkeypatch, tmp_path):
    """The marker of a finished job skips the child next time (the warm start: no 20 s of tracing in a child);
    other arguments, or a cleared compile cache, run it again; a failed job leaves no marker."""
    good = AheadJob("muse.models.compile_ahead:tensor_like",
                    {"spec": {"shape": [2, 3], "stride": [3, 1], "dtype": "float32", "device": "cpu"}})
    mark = marker_path(good)
    assert mark is not None and str(mark).startswith(str(tmp_path / "inductor")) and not mark.exists()
    assert run_ahead(good, timeout_s=120) is None
    assert mark.is_file()

    started: list[object] = []

    class NoChild:
        def __init__(self, *args, **kwargs):
            started.append(args)
            raise OSError("no child expected")

    monkeypatch.setattr(compile_ahead.subprocess, "Popen", NoChild)
    assert run_ahead(good, timeout_s=120) is None and started == []

    other = AheadJob(good.target, {"spec": dict(good.args["spec"], shape=[3, 3])})
    assert marker_path(other) != mark
    assert "could not start" in (run_ahead(other, timeout_s=120) or "") and len(started) == 1
    assert marker_path(other) is not None and not marker_path(other).exists()

    mark.unlink()  # the compile cache cleared
    assert "could not start" in (run_ahead(good, timeout_s=120) or "") and len(started) == 2


@pytest.mark.slow
def test_closing_ends_a_child_at_once():
    """A real compile (the fused matte, a minute or more) is ended within seconds when the node closes."""
    from muse.nodes.segment.fused import FusedSegment

    x = torch.zeros(1, 3, 72, 128)
    job = AheadJob("muse.nodes.segment.fused:compile_ahead", {
        "settings": FusedSegment.Params(working_height=72).model_dump(mode="json"), "fps": 30.0, "device": "cpu",
        "x": tensor_spec(x), "prior": None, "step": 2, "dtype": "float32", "state": torch_state()})
    stop = threading.Event()
    threading.Timer(3.0, stop.set).start()
    t = time.monotonic()
    assert run_ahead(job, stop=stop) == "stopped (closing)"
    assert time.monotonic() - t < 20


def test_tensor_specs_and_torch_state_travel_as_json():
    import json

    x = torch.zeros(2, 3, 4, 5).permute(0, 2, 3, 1)  # strided, not contiguous
    back = tensor_like(json.loads(json.dumps(tensor_spec(x))))
    assert back.shape == x.shape and back.stride() == x.stride() and back.dtype == x.dtype
    assert float(back.min()) == float(back.max()) == 0.5
    with torch.no_grad():
        state = json.loads(json.dumps(torch_state()))
    assert state["grad"] is False and state["threads"] == torch.get_num_threads()
    with torch_state_applied(state):
        assert not torch.is_grad_enabled()
        assert torch_state() == state  # applying what is already set changes nothing (no explicit precision)
    assert torch.is_grad_enabled()


def _maths(x: torch.Tensor, k: float) -> torch.Tensor:
    return (x * k).clamp(0.0, 1.0)


def test_the_chain_compiles_ahead_first_without_its_lock_then_here(monkeypatch, tmp_path):
    """The child runs before the compile in this process, while nothing holds GPU_CODE (the stream records and
    replays meanwhile); a failed child only means compiling here as before; a key is never sent twice."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MUSE_FUSE_AHEAD", "on")
    order: list[str] = []
    lock_free: list[bool] = []

    def fake_ahead(job, stop=None, **_):
        order.append(f"ahead {job.args['k']}")
        free = []
        probe = threading.Thread(target=lambda: free.append(GPU_CODE.acquire(blocking=False) and (GPU_CODE.release() or True)))
        probe.start()
        probe.join()
        lock_free.append(free[0])
        return None if job.args["k"] == 2.0 else "the compiling process failed after 1 s: compile ahead: boom"

    def fake_compile(fn, dynamic=False):
        def compiled(*args):
            order.append(f"here {args[1]}")
            return fn(*args)
        return compiled

    monkeypatch.setattr(backends, "run_ahead", fake_ahead)
    monkeypatch.setattr(torch, "compile", fake_compile)
    chain = backends.FusedChain(_maths, "test maths", "cpu", enabled=True)
    x = torch.linspace(0, 1, 8)
    for k in (2.0, 3.0):
        chain.prepare(("k", k), lambda k=k: (lambda compiled: compiled(x, k)), lambda k=k: AheadJob("muse.x:y", {"k": k}))
        assert chain.wait(10) and chain.ready(("k", k))
    assert order == ["ahead 2.0", "here 2.0", "ahead 3.0", "here 3.0"]
    assert lock_free == [True, True]
    chain._ready = object()  # asked again for a key already sent ahead: compiled here only
    chain.prepare(("k", 2.0), lambda: (lambda compiled: compiled(x, 2.0)), lambda: AheadJob("muse.x:y", {"k": 2.0}))
    assert chain.wait(10) and order[-1] == "here 2.0" and order.count("ahead 2.0") == 1


def test_no_child_when_switched_off(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MUSE_FUSE_AHEAD", "off")
    monkeypatch.setattr(backends, "run_ahead", lambda *a, **k: pytest.fail("a child ran"))
    monkeypatch.setattr(torch, "compile", lambda fn, dynamic=False: fn)
    chain = backends.FusedChain(_maths, "test maths", "cpu", enabled=True)
    x = torch.linspace(0, 1, 8)
    chain.prepare("k", lambda: (lambda compiled: compiled(x, 2.0)), lambda: AheadJob("muse.x:y", {}))
    assert chain.wait(10) and chain.ready("k")


def test_a_marker_the_cache_does_not_back_is_forgotten(monkeypatch, tmp_path, caplog):
    """A marker skipped the child, yet the compile here took as long as a cold one (the cache was cleared in part):
    the marker goes, so the next start compiles in a process of its own again; a quick load keeps it."""
    monkeypatch.setenv("MUSE_FUSE_AHEAD", "on")
    job = AheadJob("muse.models.compile_ahead:tensor_like",
                   {"spec": {"shape": [2], "stride": [1], "dtype": "float32", "device": "cpu"}})
    assert run_ahead(job, timeout_s=120) is None and compile_ahead.marked(job)
    monkeypatch.setattr(backends, "STALE_MARKER_S", 0.3)
    took = [0.0]

    def fake_compile(fn, dynamic=False):
        def compiled(*args):
            time.sleep(took[0])  # the compile's own time
            return fn(*args)
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    x = torch.linspace(0, 1, 8)
    chain = backends.FusedChain(_maths, "test maths", "cpu", enabled=True)  # a quick load: the marker stays
    chain.prepare("k", lambda: (lambda compiled: compiled(x, 2.0)), lambda: job)
    assert chain.wait(10) and chain.ready("k") and compile_ahead.marked(job)
    took[0] = 0.6  # as long as a cold compile: the marker goes
    chain = backends.FusedChain(_maths, "test maths", "cpu", enabled=True)
    with caplog.at_level("WARNING", logger="muse.backends"):
        chain.prepare("k", lambda: (lambda compiled: compiled(x, 2.0)), lambda: job)
        assert chain.wait(10) and chain.ready("k")
    assert not compile_ahead.marked(job)
    assert "did not hold the code compiled ahead" in caplog.text


def test_gpu_code_is_built_once_never_while_the_lock_is_taken_and_a_failure_is_said_once(caplog) -> None:
    """`build_gpu_code`: made and kept; None (made later) while another thread holds GPU_CODE (a recording, a
    background compile); a failure said once, never tried again."""
    import logging
    import threading

    from muse.graph.compiled import GPU_CODE, build_gpu_code

    log = logging.getLogger("muse.test.gpu_code")
    cache: dict[str, int] = {}
    broken: list[str] = []
    calls: list[str] = []

    def make() -> int:
        calls.append("made")
        return 7

    held, release = threading.Event(), threading.Event()

    def other_thread() -> None:  # records a CUDA graph, say
        with GPU_CODE:
            held.set()
            release.wait(5)

    t = threading.Thread(target=other_thread)
    t.start()
    held.wait(5)
    assert build_gpu_code(cache, "k", make, broken, log, "kernel unavailable ({exc})") is None and not calls
    release.set()
    t.join()
    assert build_gpu_code(cache, "k", make, broken, log, "kernel unavailable ({exc})") == 7
    assert build_gpu_code(cache, "k", make, broken, log, "kernel unavailable ({exc})") == 7 and calls == ["made"]

    def fails() -> int:
        calls.append("failed")
        raise RuntimeError("nvrtc: error: invalid option")

    failing: list[str] = []
    with caplog.at_level(logging.INFO, logger="muse.test.gpu_code"):
        assert build_gpu_code({}, "k", fails, failing, log, "kernel unavailable ({exc}): plain steps") is None
        assert build_gpu_code({}, "k", fails, failing, log, "kernel unavailable ({exc}): plain steps") is None
    assert calls.count("failed") == 1 and failing == ["nvrtc: error: invalid option"]
    said = [r.getMessage() for r in caplog.records if r.name == "muse.test.gpu_code"]
    assert said == ["kernel unavailable (nvrtc: error: invalid option): plain steps"]
