"""`muse edit [GRAPH]`: registered into muse's CLI through `register(subparsers)`.
Imports nothing heavy until the command runs (DearPyGui loads only then)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("edit", help="open the visual node editor on a graph (needs a desktop)",
                              description="Open the visual node editor. GRAPH is opened if it exists, else created on save.")
    p.add_argument("graph", nargs="?", help="graph YAML file, e.g. graphs/stream_4k.yaml")
    p.add_argument("--plugins", action="append", metavar="DIR", help="extra plugin folder (also MUSE_PLUGIN_PATH)")
    p.add_argument("--screenshot", metavar="FILE.png",
                   help="open, draw the graph, save a picture of the window and exit (docs, CI; refuses to overwrite)")
    p.set_defaults(func=cmd_edit)


def cmd_edit(args: argparse.Namespace) -> int:
    from muse.editor.app import run_editor

    return run_editor(args.graph, args.plugins, screenshot=args.screenshot)
