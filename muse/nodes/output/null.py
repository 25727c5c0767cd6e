"""`output.null`: consumes frames or masks and counts them (benchmarks, tests)."""

from __future__ import annotations

import time

import torch
from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeParams
from muse.graph.payloads import Frame, Mask


class NullOutput(Node):
    node_type = "output.null"
    display_name = "Null output"
    description = "Throws frames away and counts them; `wait: true` waits for each frame's GPU work, for honest benchmark timings."

    frame: In[Frame] = In(optional=True)
    mask: In[Mask] = In(optional=True)

    class Params(NodeParams):
        wait: bool = Field(False, description="Wait until each frame's GPU work is done (benchmarks)")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self.count = 0
        self._t0: float | None = None

    def process(self, frame: Frame | None = None, mask: Mask | None = None) -> None:
        payload = frame if frame is not None else mask
        if payload is None:
            return None
        if self.params.wait and payload.device.type == "cuda":
            # An event on this stream only: the sink thread waits for this frame, the device keeps running.
            ev = torch.cuda.Event(blocking=True)
            ev.record(torch.cuda.current_stream(payload.device))
            ev.synchronize()
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        self.count += 1
        assert self.ctx is not None
        self.report("frames", self.count)
        if self.count > 1:
            self.report("fps", round((self.count - 1) / max(now - self._t0, 1e-9), 2))
        return None
