"""Launching a recorded frame's CUDA graph with the least host time (`muse.graph.capture.CudaFrameGraph.replay`)."""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from muse.graph.devices import device_index

__all__ = ["default_generator", "direct_launch"]


def default_generator(device: torch.device) -> Any:
    try:
        index = device_index(device)
        return torch.cuda.default_generators[index]
    except Exception:  # no generator to read: the first replay cannot tell, so torch's replay stays
        return None


def direct_launch(graph: "torch.cuda.CUDAGraph", device: torch.device, uses_rng: bool) -> Callable[[], None] | None:
    """The recorded graph's launch on the current stream without torch's `replay()` wrapper, or None to keep that.

    torch's replay costs ~37 us of host time more than `cudaGraphLaunch` of the same frame-like graph (H200, torch
    2.11, `bench/host_ops.py`: 81 against 44 us). What it adds that a frame needs is the random-number offset of
    graphs that draw random numbers: a graph whose first replay moved the default generator's offset keeps torch's
    replay (`uses_rng`), as does a machine without CuPy or `MUSE_GRAPH_LAUNCH=torch`."""
    if uses_rng or os.environ.get("MUSE_GRAPH_LAUNCH", "direct") == "torch":
        return None
    try:
        import cupy

        run = cupy.cuda.runtime.graphLaunch
        exe = int(graph.raw_cuda_graph_exec())
        get_raw = torch._C._cuda_getCurrentRawStream
    except Exception:  # no CuPy, or a torch without these: its own replay
        return None
    index = device_index(device)

    def launch() -> None:
        run(exe, get_raw(index))

    return launch
