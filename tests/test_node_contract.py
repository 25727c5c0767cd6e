"""A contract every registered node keeps (timm-style: parametrized over the registry)."""

from __future__ import annotations

import json

import pytest

from muse.graph.node import Node
from muse.graph.payloads import PAYLOAD_TYPES, Payload
from muse.graph.registry import load_registry

REGISTRY = load_registry()
IDS = REGISTRY.ids()


def test_registry_loaded_without_failures() -> None:
    assert not REGISTRY.failures, "\n".join(f.error for f in REGISTRY.failures)


@pytest.mark.parametrize("node_id", IDS)
def test_node_contract(node_id: str) -> None:
    cls = REGISTRY.get(node_id)
    assert issubclass(cls, Node)
    family, _, name = node_id.partition(".")
    assert family and name, "ids are namespaced"
    assert cls.display_name and cls.category and cls.description, "metadata: display name, category, description"
    assert cls.inputs_spec or cls.outputs_spec, "a node has at least one port"
    for port in [*cls.inputs_spec.values(), *cls.outputs_spec.values()]:
        assert port.type is Payload or port.type in PAYLOAD_TYPES.values(), f"{port.name}: not a payload type"
        if port.type is Payload and port.direction == "out":
            assert port.same_as in cls.inputs_spec, f"generic output {port.name} must say same_as an input"
    assert cls.Params.model_config.get("extra") == "forbid", "Params must reject unknown keys"
    schema = cls.Params.model_json_schema()
    json.dumps(schema)
    for field, info in schema.get("properties", {}).items():
        assert info.get("description"), f"param {field!r} needs a description (editor tooltip)"
    describe = cls.describe()
    assert describe["id"] == node_id and set(describe["inputs"]) == set(cls.inputs_spec)


@pytest.mark.parametrize("node_id", IDS)
def test_constructor_does_no_work(node_id: str) -> None:
    cls = REGISTRY.get(node_id)
    try:
        params = cls.Params()
    except Exception:
        pytest.skip("params have required fields (no defaults)")
    node = cls("probe", params)
    assert node.ctx is None and node.name == "probe"
