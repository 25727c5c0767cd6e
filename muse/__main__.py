"""`python -m muse` and the packaged app's entry point: libs/ first, then the command line."""

from __future__ import annotations

import os
import sys


def main() -> int:
    from muse.app_paths import is_frozen

    # Before anything can import torch or CuPy. MUSE_LIBS_FIRST=0 skips it (to diagnose a library problem:
    # the app then finds CUDA libraries the way a plain program does).
    if is_frozen() and os.environ.get("MUSE_LIBS_FIRST", "1") != "0":
        from muse.libs_first import put_libs_first

        put_libs_first()
    from muse.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
