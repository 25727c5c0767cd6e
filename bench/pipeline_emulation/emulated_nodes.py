"""`emu.stage`: a node that sleeps its cost (GIL released, no CPU), for measuring the CPU path's scheduling
(`muse/graph/cpu_pipeline.py`) apart from the machine's load and the nodes' own speed.

    muse bench bench/pipeline_emulation/stream_4k.yaml --device cpu --frames 300 --latency-frames 300 \\
        --plugins bench/pipeline_emulation

The YAMLs next to this file copy a shipped graph's shape with each node's measured thread CPU time (stream_4k
and webcam_720p on the two-core machine, 1280x720) and a spread of +-jitter around it (seeded per node).
"""

from __future__ import annotations

import random
import time

from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeParams, Out
from muse.graph.payloads import Frame


class EmulatedStage(Node):
    node_type = "emu.stage"
    display_name = "Emulated stage"
    description = "Sleeps `ms` (+- jitter) and passes its first input on: a stand-in for a node's cost when measuring scheduling."

    a: In[Frame]
    b: In[Frame] = In(optional=True, description="A second input it waits for (not read)")
    c: In[Frame] = In(optional=True, description="A third input it waits for (not read)")
    out: Out[Frame]

    class Params(NodeParams):
        ms: float = Field(5.0, ge=0.0, description="Cost of one call in milliseconds")
        jitter: float = Field(0.0, ge=0.0, le=1.0, description="Relative spread of the cost (uniform, seeded per node)")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self._rng = random.Random(sum(map(ord, self.name)))

    def process(self, a: Frame, b: Frame | None = None, c: Frame | None = None) -> dict[str, Frame]:
        ms = self.params.ms * (1.0 + self.params.jitter * (2.0 * self._rng.random() - 1.0))
        time.sleep(ms / 1000.0)
        return {"out": a}
