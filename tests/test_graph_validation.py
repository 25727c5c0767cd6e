"""Every broken graph in tests/graphs/invalid/ is rejected with the exact node,
port/field and line named in its `# expect:` header; valid graphs load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from muse.graph.spec import dump_yaml, json_schema, load_yaml
from muse.graph.validate import GraphValidationError, load_graph, validate_text

HERE = Path(__file__).parent / "graphs"
INVALID = sorted((HERE / "invalid").glob("*.yaml"))
VALID = sorted((HERE / "valid").glob("*.yaml"))


def _expectation(path: Path) -> dict[str, str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect:"), f"{path.name} needs an '# expect:' header"
    out: dict[str, str] = {}
    for token in re.findall(r"(\w+~?=(?:[^=]+?))(?=\s+\w+~?=|$)", first[len("# expect:"):].strip()):
        key, _, value = token.partition("=")
        out[key] = value.strip()
    return out


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_graph_names_the_exact_place(path: Path) -> None:
    expect = _expectation(path)
    with pytest.raises(GraphValidationError) as info:
        load_graph(path)
    errors = info.value.errors
    matching = [e for e in errors if e.code == expect["code"]]
    assert matching, f"expected a {expect['code']} error, got {[str(e) for e in errors]}"
    for e in matching:
        if all(
            (k not in expect or str(getattr(e, k)) == expect[k])
            for k in ("node", "port", "field", "line")
        ) and all(expect[k].strip("'\"") in getattr(e, k.rstrip("~")) for k in expect if k.endswith("~")):
            assert e.file == str(path)
            assert str(path) in str(e)  # the message itself names the file
            return
    pytest.fail(f"no {expect['code']} error matched {expect}: {[e.as_dict() for e in matching]}")


def test_all_errors_are_reported_at_once() -> None:
    text = (HERE / "invalid" / "type_mismatch.yaml").read_text().replace("basic.luma_mask", "basic.luma_mask\n    params: {threshold: 9}")
    text += "  extra:\n    type: nope.nothing\n"
    with pytest.raises(GraphValidationError) as info:
        validate_text(text, "multi.yaml")
    codes = {e.code for e in info.value.errors}
    assert {"bad_param", "unknown_node_type"} <= codes


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_graphs_load(path: Path) -> None:
    g = load_graph(path)
    assert g.order and all(n in g.nodes for n in g.order)


def test_include_prefixes_and_wires_subgraph() -> None:
    g = load_graph(HERE / "valid" / "with_include.yaml")
    assert "fx/inv" in g.nodes and "fx/out" in g.nodes
    assert [str(s) for s in g.nodes["fx/inv"].inputs["frame"].sources] == ["src.frame"]
    assert g.order.index("src") < g.order.index("fx/inv") < g.order.index("tail")


def test_shipped_graphs_validate() -> None:
    shipped = sorted((Path(__file__).parent.parent / "graphs").glob("*.yaml"))
    assert shipped, "graphs/ must hold the shipped graphs"
    for path in shipped:
        load_graph(path)


def test_schema_file_is_current() -> None:
    import json

    schema_path = Path(__file__).parent.parent / "graphs" / "schema.json"
    assert json.loads(schema_path.read_text()) == json_schema(), "regenerate with: muse schema -o graphs/schema.json --force"


def test_round_trip_dump_keeps_graph() -> None:
    path = HERE / "valid" / "basic_chain.yaml"
    g = load_graph(path)
    again = validate_text(dump_yaml(g.spec), "again.yaml")
    assert again.topology_key() == g.topology_key()
    assert {n: r.params for n, r in again.nodes.items()} == {n: r.params for n, r in g.nodes.items()}


def test_set_override_applies_and_is_validated() -> None:
    path = HERE / "valid" / "basic_chain.yaml"
    g = load_graph(path, overrides={"inv": {"amount": 0.25}})
    assert g.nodes["inv"].params.amount == 0.25
    with pytest.raises(GraphValidationError) as info:
        load_graph(path, overrides={"inv": {"amount": 7}})
    assert info.value.errors[0].node == "inv" and info.value.errors[0].field == "amount"
    with pytest.raises(GraphValidationError) as info:
        load_graph(path, overrides={"invv": {"amount": 0.1}})
    assert "did you mean 'inv'" in info.value.errors[0].hint


def test_yaml_loader_records_lines() -> None:
    data, smap = load_yaml("version: 1\nnodes:\n  a:\n    type: x.y\n    params:\n      k: 1\n", "f.yaml")
    assert smap.line("nodes", "a", "params", "k") == 6
    assert smap.line("nodes", "a", "params", "missing") == 5
