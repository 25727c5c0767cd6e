"""What the editor knows about node types: ports, params schema and metadata,
read from the registry's `describe()` (so plugins show up like built-ins),
plus search for the palette and the pin colour of each payload type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from muse.graph.payloads import PAYLOAD_TYPES

GENERIC = "Payload"  # a port typed Payload binds to the type of its first link
UNKNOWN = "?"  # a port of a node type the registry does not know (yet)

_GENERIC_COLOUR = (200, 200, 200)
_UNKNOWN_COLOUR = (130, 130, 130)


def type_colour(type_name: str) -> tuple[int, int, int]:
    """Pin and link colour of a payload type."""
    cls = PAYLOAD_TYPES.get(type_name)
    if cls is not None:
        r, g, b = cls.colour
        return (int(r), int(g), int(b))
    return _GENERIC_COLOUR if type_name == GENERIC else _UNKNOWN_COLOUR


@dataclass(frozen=True)
class PortInfo:
    name: str
    type: str
    optional: bool = False
    multiple: bool = False
    same_as: str | None = None
    description: str = ""


@dataclass
class NodeTypeInfo:
    id: str
    display_name: str
    category: str
    description: str
    inputs: dict[str, PortInfo]
    outputs: dict[str, PortInfo]
    params_schema: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    known: bool = True  # False: the graph names a type the registry lacks
    selects_inputs: bool = False  # a switch: one of its candidates is live (the editor lists its branches)

    @classmethod
    def from_describe(cls, d: dict[str, Any]) -> "NodeTypeInfo":
        def ports(raw: dict[str, Any]) -> dict[str, PortInfo]:
            return {
                n: PortInfo(n, p.get("type", UNKNOWN), bool(p.get("optional")), bool(p.get("multiple")),
                            p.get("same_as"), p.get("description", ""))
                for n, p in raw.items()
            }

        return cls(
            id=d["id"],
            display_name=d.get("display_name") or d["id"],
            category=d.get("category") or d["id"].split(".")[0],
            description=d.get("description", ""),
            inputs=ports(d.get("inputs", {})),
            outputs=ports(d.get("outputs", {})),
            params_schema=d.get("params", {}) or {},
            source=d.get("source", ""),
            selects_inputs=bool((d.get("flags") or {}).get("selects_inputs")),
        )

    @classmethod
    def unknown(cls, type_id: str, inputs: list[str], outputs: list[str]) -> "NodeTypeInfo":
        """A stand-in for a type the registry lacks, with the ports the graph uses."""
        return cls(
            id=type_id,
            display_name=type_id,
            category="unknown",
            description=f"{type_id} is not a registered node type (a plugin not installed or not written yet)",
            inputs={p: PortInfo(p, UNKNOWN, optional=True) for p in inputs},
            outputs={p: PortInfo(p, UNKNOWN) for p in outputs},
            known=False,
        )

    @property
    def param_fields(self) -> dict[str, dict[str, Any]]:
        return dict(self.params_schema.get("properties", {}))

    def search_text(self) -> str:
        return " ".join([self.id, self.display_name, self.category, self.description]).lower()


class Catalog:
    """Every node type the palette offers, by id."""

    def __init__(self, types: list[NodeTypeInfo], failures: list[str] | None = None) -> None:
        self.types = {t.id: t for t in types}
        self.failures = failures or []  # plugins that failed to load, shown in the palette

    @classmethod
    def from_registry(cls, registry: Any = None) -> "Catalog":
        from muse.graph.registry import load_registry

        registry = registry or load_registry()
        return cls([NodeTypeInfo.from_describe(d) for d in registry.describe()], [f.summary() for f in registry.failures])

    def get(self, type_id: str) -> NodeTypeInfo | None:
        return self.types.get(type_id)

    def __contains__(self, type_id: str) -> bool:
        return type_id in self.types

    def search(self, query: str = "") -> dict[str, list[NodeTypeInfo]]:
        """Types whose id, name, category or description contain every word of `query`, grouped by category."""
        words = query.lower().split()
        groups: dict[str, list[NodeTypeInfo]] = {}
        for t in sorted(self.types.values(), key=lambda t: (t.category, t.display_name)):
            text = t.search_text()
            if all(w in text for w in words):
                groups.setdefault(t.category, []).append(t)
        return groups
