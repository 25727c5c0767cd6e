"""`python -m muse` and the packaged app's entry point: libs/ first, then the command line."""

from __future__ import annotations

import sys


def main() -> int:
    from muse.app_paths import is_frozen

    if is_frozen():  # before anything can import torch or CuPy
        from muse.libs_first import put_libs_first

        put_libs_first()
    from muse.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
