"""`muse` command line (filled in below)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("muse: CLI under construction", file=sys.stderr)
    return 1
