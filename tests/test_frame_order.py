"""How a recorded frame is launched: the chain order that keeps every dependency, and the setting that picks it."""

from __future__ import annotations

import random

import pytest

from muse.graph.linear import chain_order
from muse.graph.program import frame_order


def test_chain_order_keeps_issue_order_where_dependencies_allow() -> None:
    # two branches forked from node 0 and joined at node 5: issued 0, 1, 2 (branch a), 3, 4 (branch b), 5
    edges = [(0, 1), (1, 2), (0, 3), (3, 4), (2, 5), (4, 5)]
    assert chain_order([0, 1, 2, 3, 4, 5], edges) == [0, 1, 2, 3, 4, 5]
    # a node listed before what it depends on moves after it, and nothing else moves
    assert chain_order(["b", "a", "c"], [("a", "b")]) == ["a", "b", "c"]


def test_chain_order_is_a_topological_order_of_random_dags() -> None:
    rng = random.Random(7)
    for _ in range(50):
        n = rng.randint(1, 60)
        rank = list(range(n))
        rng.shuffle(rank)  # a hidden order the edges respect
        edges = [(a, b) for a in range(n) for b in range(n) if rank[a] < rank[b] and rng.random() < 0.05]
        listed = list(range(n))
        rng.shuffle(listed)
        order = chain_order(listed, edges)
        pos = {v: i for i, v in enumerate(order)}
        assert sorted(order) == list(range(n))
        assert all(pos[a] < pos[b] for a, b in edges)


def test_chain_order_refuses_cycles_and_strangers() -> None:
    with pytest.raises(ValueError, match="cycle"):
        chain_order([1, 2], [(1, 2), (2, 1)])
    with pytest.raises(ValueError, match="not in the graph"):
        chain_order([1, 2], [(1, 3)])


def test_frame_order_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUSE_FRAME_ORDER", raising=False)
    assert frame_order() == "branches"
    monkeypatch.setenv("MUSE_FRAME_ORDER", " Linear ")
    assert frame_order() == "linear"
    monkeypatch.setenv("MUSE_FRAME_ORDER", "zigzag")
    with pytest.raises(ValueError, match="MUSE_FRAME_ORDER='zigzag'"):
        frame_order()


@pytest.mark.cuda
def test_a_linearized_graph_computes_what_the_branches_did() -> None:
    import torch

    from muse.graph.linear import graph_shape, linearize

    side = [torch.cuda.Stream() for _ in range(2)]
    x = torch.linspace(0, 1, 4096, device="cuda")
    a, b, out = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)

    def body() -> None:
        main = torch.cuda.current_stream()
        for s in side:
            s.wait_stream(main)
        with torch.cuda.stream(side[0]):
            torch.mul(x, 3.0, out=a)
            a.sin_()
        with torch.cuda.stream(side[1]):
            torch.add(x, 1.0, out=b)
            b.sqrt_()
        for s in side:
            main.wait_stream(s)
        torch.mul(a, b, out=out)

    rec = torch.cuda.Stream()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.stream(rec):
        g.capture_begin()
        body()
        g.capture_end()
    before = graph_shape(g.raw_cuda_graph())
    assert before["by_type"].get("kernel") == 5 and before["roots"] == 2  # two branches as recorded
    linearize(g.raw_cuda_graph())
    after = graph_shape(g.raw_cuda_graph())
    assert after["nodes"] == before["nodes"] and after["edges"] == after["nodes"] - 1 and after["max_fan_out"] == 1
    g.instantiate()
    for k in range(3):
        x.add_(0.5)  # new inputs each replay: the chain reads them as the branches did
        g.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, torch.sin(x * 3.0) * torch.sqrt(x + 1.0))
