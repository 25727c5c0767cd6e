"""CUDA stream/event ordering and CUDA-graph capture (run on the GPU machine)."""

from __future__ import annotations

import gc

import pytest
import torch

from muse.graph.node import In, Node, Out
from muse.graph.payloads import Frame
from muse.graph.registry import Registry
from muse.graph.runtime import GraphRunner
from muse.graph.testing import registry_with
from muse.graph.validate import validate_text

pytestmark = pytest.mark.cuda


class SlowFill(Node):
    """Writes the frame index into a fresh tensor after a long GPU delay on its own stream."""

    node_type = "test.slow_fill"
    description = "test"
    frame: In[Frame]
    out: Out[Frame]

    def process(self, frame: Frame) -> dict[str, Frame]:
        img = torch.empty((3, 256, 256), device=self.ctx.device)
        torch.cuda._sleep(50_000_000)  # ~tens of ms of GPU time before the write lands
        img.fill_(float(frame.index % 200) / 255.0)
        return {"out": frame.with_image(img, layout="chw")}


class Check(Node):
    """Sink reading the value on its own stream; a missing event wait reads garbage."""

    node_type = "test.check"
    description = "test"
    frame: In[Frame]
    seen: list[tuple[int, float]] = []

    def process(self, frame: Frame) -> None:
        value = frame.image.float().mean().item()  # test-only host read
        Check.seen.append((frame.index, value))


def _registry() -> Registry:
    reg = registry_with(SlowFill, Check)
    return reg


def test_consumer_waits_for_producer_event() -> None:
    Check.seen.clear()
    g = validate_text(
        "version: 1\nsettings: {device: cuda}\nnodes:\n"
        "  src: {type: basic.test_pattern, params: {width: 64, height: 48, fps: 0, frames: 12}}\n"
        "  fill: {type: test.slow_fill, inputs: {frame: {from: src.frame, queue: 2}}}\n"
        "  inv: {type: basic.invert, params: {amount: 0.0}, inputs: {frame: fill.out}}\n"
        "  sink: {type: test.check, inputs: {frame: {from: inv.out, queue: 16}}}\n",
        "cuda.yaml", _registry())
    runner = GraphRunner(g)
    assert runner.slots == {}  # nothing opened before start
    runner.run()
    assert len(Check.seen) == 12
    for index, value in Check.seen:
        assert abs(value - (index % 200) / 255.0) < 1e-3, f"frame {index}: read {value} before the producer finished"
    assert runner.stats.nodes["fill"].gpu_ms, "GPU timings come from events"


def test_cuda_graph_chain_matches_eager() -> None:
    outputs: dict[bool, list[torch.Tensor]] = {}
    for use_graphs in (False, True):
        g = validate_text(
            f"version: 1\nsettings: {{device: cuda, capture: {'on' if use_graphs else 'off'}}}\nnodes:\n"
            "  src: {type: basic.test_pattern, params: {width: 320, height: 240, fps: 0, frames: 10}}\n"
            "  inv: {type: basic.invert, params: {amount: 0.7}, inputs: {frame: {from: src.frame, queue: 2}}}\n"
            "  seg: {type: basic.luma_mask, params: {threshold: 0.4}, inputs: {frame: inv.out}}\n"
            "  sink: {type: basic.null, inputs: {frame: {from: inv.out, queue: 16}}}\n",
            "graphs.yaml", _registry())
        runner = GraphRunner(g)
        seen: list[torch.Tensor] = []
        runner.tap("inv", "out", lambda f: seen.append(f.image.clone()))
        runner.run()
        outputs[use_graphs] = seen
        if use_graphs:
            assert runner.program is not None and runner.program.replays > 0, "invert is capturable: its frames are replayed"
    assert len(outputs[True]) == len(outputs[False]) == 10
    for a, b in zip(outputs[False], outputs[True]):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (run on the GPU machine)")
def test_new_streams_are_never_shared() -> None:
    """torch's streams come round-robin from a pool of 32 a device: a graph's node streams, its recordings and the
    background compiles must not end up on one CUDA stream (a compile's work landed in a frame's recording)."""
    from muse.graph.streams import new_stream

    pooled = {torch.cuda.Stream().cuda_stream for _ in range(40)}
    assert len(pooled) <= 32  # the pool wraps: why new_stream exists
    own = [new_stream("cuda") for _ in range(40)]
    handles = {s.cuda_stream for s in own}
    assert len(handles) == 40 and not handles & pooled
    x = torch.arange(1 << 20, device="cuda", dtype=torch.float32)
    with torch.cuda.stream(own[0]):
        y = x * 2
    own[0].synchronize()
    assert float(y[-1]) == 2.0 * ((1 << 20) - 1)
    # a stream whose holder is gone goes to the next asker, never to cudaStreamDestroy (a tensor tagged with
    # record_stream can outlive its node; freeing it records an event on the stream)
    from muse.graph.streams import _IDLE

    idle = _IDLE[torch.cuda.current_device()]
    gone_stream = own.pop()
    gone = gone_stream.cuda_stream
    del gone_stream
    gc.collect()  # the holder may sit in a reference cycle (seen under pytest-xdist): collected now
    assert gone in idle, "a stream whose holder is gone goes back to the idle list"
    # whatever the next asker gets comes from that list, never from a new cudaStreamCreate
    handed_back = set(idle)
    again = new_stream("cuda")
    assert again.cuda_stream in handed_back
    del y, x
