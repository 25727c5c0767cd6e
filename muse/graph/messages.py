"""Validation messages a person can act on: pydantic errors in one line, control characters
escaped, long values shortened, "did you mean" suggestions, hints for settings."""

from __future__ import annotations

import difflib
from typing import Any

from muse.graph.spec import Settings


def pydantic_message(e: dict[str, Any]) -> str:
    msg = e.get("msg", "invalid value")
    if "input" in e and e["type"] != "missing" and not isinstance(e["input"], dict):
        got = repr(e["input"])
        msg += f" (got {got if len(got) <= 120 else got[:100] + '...'})"  # a 5000-character value is not repeated
    return msg


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0b, 0x20), 0x7f, *range(0x80, 0xa0))}


def printable(text: str) -> str:
    """Control characters from a graph (a YAML "\\e" is an ESC) shown escaped: an error message must
    not carry terminal escape sequences into the user's terminal."""
    return text.translate(_CONTROL)


def setting_hint(e: dict[str, Any]) -> str:
    key = str(e["loc"][0]) if e["loc"] else ""
    f = Settings.model_fields.get(key)
    if e["type"] == "extra_forbidden":
        return f"settings are: {', '.join(Settings.model_fields)}" + did_you_mean(key, Settings.model_fields, prefix="; ")
    return f"{key}: {f.description}" if f and f.description else ""


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(word: str, options: Any, prefix: str = " ") -> str:
    if len(options) > 300:
        return ""  # fuzzy matching against thousands of names per error would make checking quadratic
    close = difflib.get_close_matches(word, [str(o) for o in options], n=2, cutoff=0.6)
    return f"{prefix}did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
