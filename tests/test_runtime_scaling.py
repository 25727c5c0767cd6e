"""The runtime's start-up is linear in the graph's size (issue 19).

Asking every source for its consumers scanned the whole graph each time (quadratic start-up). No
timing asserts: the test counts how often the start-up walks a node's inputs on a big generated
graph (many sources, a long chain, many outputs) and holds it to a small multiple of the node count.
"""

from __future__ import annotations

import yaml

from muse.graph.registry import load_registry
from muse.graph.runtime import GraphRunner
from muse.graph.validate import validate_text


class CountingInputs(dict):
    """A node's resolved inputs that count how often they are walked."""

    walks = 0

    def items(self):  # type: ignore[override]
        CountingInputs.walks += 1
        return super().items()

    def values(self):  # type: ignore[override]
        CountingInputs.walks += 1
        return super().values()


def big_graph(chain: int, sources: int) -> str:
    nodes: dict[str, dict] = {}
    for s in range(sources):
        nodes[f"src{s}"] = {"type": "basic.test_pattern", "params": {"width": 32, "height": 16, "fps": 0, "frames": 2}}
    prev = "src0.frame"
    for i in range(chain):
        nodes[f"inv{i}"] = {"type": "basic.invert", "inputs": {"frame": prev}}
        prev = f"inv{i}.out"
        if i % 4 == 0:
            nodes[f"tap{i}"] = {"type": "basic.null", "inputs": {"frame": f"src{i % sources}.frame"}}
    nodes["end"] = {"type": "basic.null", "inputs": {"frame": prev}}
    return yaml.safe_dump({"version": 1, "settings": {"device": "cpu", "resolution": [32, 16]}, "nodes": nodes})


def test_consumers_match_a_full_scan() -> None:
    g = validate_text(big_graph(40, 10), "big.yaml", load_registry())
    for name in g.nodes:
        scan = [(n.name, p) for n in g.nodes.values() for p, ri in n.inputs.items() if any(s.node == name for s in ri.sources)]
        assert g.consumers(name) == scan, name


def test_start_up_walks_each_node_a_bounded_number_of_times() -> None:
    chain, sources = 800, 200  # 1201 nodes: 200 sources, an 800-node chain, 201 outputs
    g = validate_text(big_graph(chain, sources), "big.yaml", load_registry())
    for rn in g.nodes.values():
        rn.inputs = CountingInputs(rn.inputs)
    n = len(g.nodes)
    runner = GraphRunner(g, frames=0)  # open every node, start the source/sink threads, run no frame
    CountingInputs.walks = 0
    runner._open_all(runner.graph)
    walks = CountingInputs.walks
    runner.stop()
    print(f"\n{n} nodes ({sources} sources): start-up walked node inputs {walks} times ({walks / n:.1f} per node)")
    # Linear: a few walks per node. The quadratic start-up walked every node once per source (>= 240,000 here).
    assert walks <= 10 * n, f"{walks} walks of node inputs for {n} nodes"
