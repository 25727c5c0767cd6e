"""SideStreams (muse/graph/streams.py): no-ops on a CPU, and code torch.compile traces reads nothing of a node's own
side streams, so code compiled on the warm-up's spare engine fits the node's engine (on the H200 the compiled matte
was asked to compile again on every call when it read its engine's streams: the device objects differed)."""

from __future__ import annotations

import pytest
import torch

from muse.graph.streams import ONE_STREAM, SideStreams


class _Engine:
    def __init__(self, device: torch.device) -> None:
        self._side = SideStreams(device)


def _step(eng: _Engine, x: torch.Tensor) -> torch.Tensor:
    side = ONE_STREAM if torch.compiler.is_compiling() else eng._side  # as segment.fused's step does
    with side.branch(0):
        y = x * 2.0
    side.join(0, y)
    return y + 1.0


def _step_reading_own(eng: _Engine, x: torch.Tensor) -> torch.Tensor:
    side = eng._side
    with side.branch(0):
        y = x * 2.0
    side.join(0, y)
    return y + 1.0


def test_cpu_side_streams_are_no_ops() -> None:
    side = SideStreams("cpu")
    x = torch.arange(6.0)
    with side.branch(1):
        y = x.square()
    side.join(1, y)
    assert torch.equal(y, x.square()) and side._streams == []


def test_traced_code_fits_every_engine() -> None:
    x = torch.arange(4.0)
    compiled = torch.compile(_step, backend="eager")  # dynamo's guards only: no C++ compiler needed
    # the warm-up's spare engine and the node's own: CUDA devices written differently, never touched on a CPU
    torch.testing.assert_close(compiled(_Engine(torch.device("cuda", 0)), x), x * 2 + 1)
    with torch.compiler.set_stance("fail_on_recompile"):
        torch.testing.assert_close(compiled(_Engine(torch.device("cuda")), x), x * 2 + 1)


def test_reading_the_engines_streams_would_not_fit() -> None:
    """Why the pattern above: read through the engine, its device becomes a guard another engine fails."""
    x = torch.arange(4.0)
    compiled = torch.compile(_step_reading_own, backend="eager")
    compiled(_Engine(torch.device("cuda", 0)), x)
    with pytest.raises(RuntimeError, match="recompile"), torch.compiler.set_stance("fail_on_recompile"):
        compiled(_Engine(torch.device("cuda")), x)
