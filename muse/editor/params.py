"""Which widget edits which parameter, read from a node's pydantic JSON Schema:
bounded numbers -> sliders, enums/Literals -> combos, bools -> checkboxes,
strings named *path*/*file* -> file pickers, descriptions -> tooltips."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

_SLIDER_INT_SPAN = 100_000  # wider int ranges get a typed box: a slider pixel would skip many values


@dataclass
class ParamWidget:
    name: str
    kind: str  # slider_int | slider_float | int | float | combo | checkbox | file | folder | text | vector_int | vector_float | json
    label: str
    tooltip: str = ""
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    items: list[Any] = field(default_factory=list)  # combo choices
    size: int = 0  # vectors
    nullable: bool = False

    def to_widget(self, value: Any) -> Any:
        """The model's value as the widget shows it."""
        if self.kind == "json":
            return json.dumps(value)
        if self.kind in ("text", "file", "folder"):
            return "" if value is None else str(value)
        if self.kind == "combo":
            return "" if value is None else str(value)
        if self.kind.startswith("vector"):
            return list(value or [0] * self.size) + [0] * (4 - self.size)
        return value

    def from_widget(self, raw: Any) -> Any:
        """The widget's value as the model stores it (the model then checks it against the schema)."""
        if self.kind == "json":
            return json.loads(raw)
        if self.kind in ("text", "file", "folder"):
            return None if (raw == "" and self.nullable) else raw
        if self.kind == "combo":
            for item in self.items:
                if str(item) == raw:
                    return item
            return raw
        if self.kind.startswith("vector"):
            return list(raw[: self.size])
        return raw


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Follow $ref and unwrap Optional (anyOf [X, null]); returns (schema, nullable)."""
    nullable = False
    if "anyOf" in prop:
        options = [p for p in prop["anyOf"] if p.get("type") != "null"]
        nullable = len(options) < len(prop["anyOf"])
        if len(options) == 1:
            prop = {**options[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
    if "$ref" in prop:
        ref = prop["$ref"].split("/")[-1]
        prop = {**defs.get(ref, {}), **{k: v for k, v in prop.items() if k != "$ref"}}
    if "allOf" in prop and len(prop["allOf"]) == 1:
        return _resolve({**prop["allOf"][0], **{k: v for k, v in prop.items() if k != "allOf"}}, defs)
    return prop, nullable


def widget_for(name: str, prop: dict[str, Any], schema: dict[str, Any] | None = None) -> ParamWidget:
    defs = (schema or {}).get("$defs", {})
    p, nullable = _resolve(prop, defs)
    label = prop.get("title") or name.replace("_", " ")
    tip = prop.get("description") or p.get("description") or ""
    default = prop.get("default", p.get("default"))
    lo = p.get("minimum", p.get("exclusiveMinimum"))
    hi = p.get("maximum", p.get("exclusiveMaximum"))
    w = ParamWidget(name, "json", label, tip, default, lo, hi, nullable=nullable)
    typ = p.get("type")
    if "enum" in p or "const" in p:
        w.kind, w.items = "combo", list(p.get("enum", [p.get("const")]))
    elif typ == "boolean":
        w.kind = "checkbox"
    elif typ == "integer":
        bounded = lo is not None and hi is not None and hi - lo <= _SLIDER_INT_SPAN
        w.kind = "slider_int" if bounded else "int"
    elif typ == "number":
        w.kind = "slider_float" if lo is not None and hi is not None else "float"
    elif typ == "string":
        words = set(name.lower().split("_"))
        if words & {"dir", "folder"}:
            w.kind = "folder"
        elif words & {"path", "file", "checkpoint"}:
            w.kind = "file"
        else:
            w.kind = "text"
    elif typ == "array" and "prefixItems" in p and 2 <= len(p["prefixItems"]) <= 4:
        kinds = {i.get("type") for i in p["prefixItems"]}
        if kinds <= {"integer"}:
            w.kind, w.size = "vector_int", len(p["prefixItems"])
        elif kinds <= {"integer", "number"}:
            w.kind, w.size = "vector_float", len(p["prefixItems"])
    if nullable and w.kind not in ("text", "file", "folder", "json"):
        w.kind = "json"  # "null" must stay expressible: edit as JSON text
    if tip and w.kind == "json":
        w.tooltip = tip + "  (JSON value)"
    return w


def widgets_for(schema: dict[str, Any]) -> list[ParamWidget]:
    return [widget_for(n, p, schema) for n, p in schema.get("properties", {}).items()]
