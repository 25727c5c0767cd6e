"""The `muse` command line: run, validate, nodes, schema, bench, and the
subcommands of the model layer, the Studio and the editor (registered by
their own packages so this module stays light)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import muse

# Idle OpenMP workers spin by default and steal the cores the CPU path needs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXIT_INVALID_GRAPH = 2
# Packages that add their own subcommands through `register(subparsers)`.
_SUBCOMMAND_MODULES = ("muse.models.cli", "muse.studio.cli", "muse.editor.cli")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(level=level, format="muse: %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("PIL", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """`--set seg.threshold=0.4 warp.eyes=0.3` -> {"seg": {"threshold": 0.4}, ...} (values parsed as YAML)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        node, dot, param = key.partition(".")
        if not sep or not dot or not node or not param:
            raise SystemExit(f"muse: --set {item!r}: expected node.param=value, e.g. --set warp.eyes=0.3")
        value = yaml.safe_load(raw) if raw.strip() else ""
        target = out.setdefault(node, {})
        *path, last = param.split(".")
        for part in path:  # nested params: node.group.field=value
            target = target.setdefault(part, {})
        target[last] = value
    return out


def _registry(args: argparse.Namespace):
    from muse.graph.registry import load_registry

    reg = load_registry(getattr(args, "plugins", None) or [])
    for failure in reg.failures:
        print(f"muse: warning: could not load {failure.source}:\n{failure.error}", file=sys.stderr)
    return reg


def _print_invalid(exc: Any) -> None:
    print(f"muse: the graph is invalid ({len(exc.errors)} error{'s' if len(exc.errors) != 1 else ''}):", file=sys.stderr)
    for e in exc.errors:
        print(f"  {e}", file=sys.stderr)


# -- commands -------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from muse.graph.validate import GraphValidationError, load_graph

    reg = _registry(args)
    bad = 0
    for path in args.graphs:
        try:
            g = load_graph(path, reg)
        except GraphValidationError as exc:
            bad += 1
            _print_invalid(exc)
            continue
        for w in g.warnings:
            print(f"  warning: {w}", file=sys.stderr)
        print(f"ok: {path} ({len(g.nodes)} nodes)")
    return EXIT_INVALID_GRAPH if bad else 0


def cmd_nodes(args: argparse.Namespace) -> int:
    reg = _registry(args)
    info = [d for d in reg.describe() if not args.pattern or _match(d["id"], args.pattern)]
    if args.json:
        print(json.dumps({"nodes": info, "load_failures": [f.summary() for f in reg.failures]}, indent=2))
        return 0
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for d in info:
        by_cat.setdefault(d["category"] or "other", []).append(d)
    for cat in sorted(by_cat):
        print(f"{cat}:")
        for d in by_cat[cat]:
            ins = ", ".join(f"{n}: {p['type']}{'?' if p.get('optional') else ''}{'[]' if p.get('multiple') else ''}" for n, p in d["inputs"].items())
            outs = ", ".join(f"{n}: {p['type']}" for n, p in d["outputs"].items())
            print(f"  {d['id']:<24} ({ins}) -> ({outs})  {d['description']}")
    return 0


def _match(node_id: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(node_id, pattern) or pattern in node_id


def cmd_schema(args: argparse.Namespace) -> int:
    from muse.graph.spec import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from muse.graph.runtime import GraphRunError, GraphRunner
    from muse.graph.stats import Trace
    from muse.graph.validate import GraphValidationError, load_graph

    reg = _registry(args)
    overrides = _parse_sets(args.set or [])
    try:
        graph = load_graph(args.graph, reg, overrides)
    except GraphValidationError as exc:
        _print_invalid(exc)
        return EXIT_INVALID_GRAPH
    for w in graph.warnings:
        print(f"muse: warning: {w}", file=sys.stderr)
    trace = Trace() if args.trace else None
    try:
        runner = GraphRunner(graph, device=args.device, frames=args.frames, trace=trace)
    except GraphRunError as exc:
        print(f"muse: {exc}", file=sys.stderr)
        return 1
    print(f"muse: {args.graph}: {runner.device_note}", file=sys.stderr)
    code = 0
    interrupted = False
    try:
        runner.start()
        from muse.graph.cpu_pipeline import startup_note

        note = startup_note(runner)
        if note:
            print(f"muse: {note}", file=sys.stderr)
        _wait(runner, args, reg, overrides)
    except KeyboardInterrupt:
        interrupted = True
        print("muse: Ctrl-C: stopping cleanly (outputs flush and close their files)", file=sys.stderr)
    except GraphRunError as exc:
        print(f"muse: {exc}", file=sys.stderr)
        code = 1
    finally:
        runner.stop()
    if runner._error is not None and code == 0:
        print(f"muse: stopped on an error: {runner._error}", file=sys.stderr)
        code = 1
    stats = runner.stats
    fallbacks = _fallbacks(stats)
    for line in fallbacks:
        print(f"muse: fell back: {line}", file=sys.stderr)
    for line in stats.summary_lines():
        print(line, file=sys.stderr)
    if args.stats:
        stats.write(args.stats)
        print(f"muse: stats written to {args.stats}", file=sys.stderr)
    if trace is not None:
        trace.write(args.trace)
        print(f"muse: trace written to {args.trace} (open it in https://ui.perfetto.dev)", file=sys.stderr)
    return 130 if interrupted and code == 0 else code


def _fallbacks(stats: Any) -> list[str]:
    """Every node's reported fallback (camera -> demo, virtual camera -> preview, ...)."""
    out = []
    if "falling back" in str(stats.info.get("device_note", "")):
        out.append(str(stats.info["device_note"]))
    out.extend(stats.info.get("cpu_downscale", []))
    for name, ns in stats.nodes.items():
        for key, value in ns.info.items():
            if key == "fallback":
                reason = ns.info.get("fallback_reason")
                out.append(f"{name} -> {value}" + (f" ({reason})" if reason else ""))
    return out


def _wait(runner: Any, args: argparse.Namespace, reg: Any, overrides: dict[str, dict[str, Any]]) -> None:
    """Wait for the run to end; with --watch, apply edits of the graph file while it runs."""
    from muse.live_status import LiveStatus

    path = Path(args.graph)
    mtime = path.stat().st_mtime if args.watch else 0.0
    status = LiveStatus(runner, sys.stderr, enabled=not getattr(args, "no_status", False) and not args.quiet)
    try:
        _wait_loop(runner, args, reg, overrides, path, mtime, status)
    finally:
        status.end()


def _wait_loop(runner: Any, args: argparse.Namespace, reg: Any, overrides: dict[str, dict[str, Any]], path: Path,
               mtime: float, status: Any) -> None:
    while not runner.wait(0.25):
        status.tick()
        if not args.watch:
            continue
        try:
            now = path.stat().st_mtime
        except OSError:
            continue
        if now == mtime:
            continue
        mtime = now
        time.sleep(0.05)  # editors write in steps; read the finished file
        _apply_edit(runner, path, reg, overrides)


def _apply_edit(runner: Any, path: Path, reg: Any, overrides: dict[str, dict[str, Any]]) -> None:
    from muse.graph.validate import GraphValidationError, load_graph

    try:
        new = load_graph(path, reg, overrides)
    except GraphValidationError as exc:
        print("muse: --watch: the edited graph is invalid; the running graph keeps going:", file=sys.stderr)
        for e in exc.errors:
            print(f"  {e}", file=sys.stderr)
        return
    old = runner.graph
    if new.topology_key() == old.topology_key():
        changed = [n for n, rn in new.nodes.items() if rn.params != old.nodes[n].params]
        for name in changed:
            runner.update_params(name, new.nodes[name].params.model_dump())
        print(f"muse: --watch: parameters updated live ({', '.join(changed) or 'no change'})", file=sys.stderr)
    else:
        runner.replace(new)
        print("muse: --watch: graph changed; swapping in the new graph without stopping", file=sys.stderr)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a graph as fast as it goes and print per-node timings (JSON and a markdown table)."""
    from muse.graph.runtime import GraphRunner
    from muse.graph.validate import GraphValidationError, load_graph

    reg = _registry(args)
    try:
        graph = load_graph(args.graph, reg, _parse_sets(args.set or []))
    except GraphValidationError as exc:
        _print_invalid(exc)
        return EXIT_INVALID_GRAPH
    if args.cuda_graphs:
        graph.settings = graph.settings.model_copy(update={"cuda_graphs": True})
    runner = GraphRunner(graph, device=args.device, frames=args.frames)
    stats = runner.run().as_dict()
    import platform

    device = runner.device_note
    print(f"| node | type | p50 ms | p95 ms | p99 ms | frames |  ({args.graph}, {device}, {platform.node()}, {time.strftime('%Y-%m-%d')})")
    print("|---|---|---|---|---|---|")
    for name, s in stats["nodes"].items():
        t = s.get("gpu_ms") or s["host_ms"]
        print(f"| {name} | {s['type']} | {t['p50']:.2f} | {t['p95']:.2f} | {t['p99']:.2f} | {s['frames']} |")
    print(f"fps {stats['fps']}, latency p50 {stats['latency_ms']['p50']:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2))
    return 0


# -- parser -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="muse", description="MUSE real-time video engine")
    parser.add_argument("--version", action="version", version=f"muse {muse.__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def plugins(p: argparse.ArgumentParser) -> None:
        p.add_argument("--plugins", action="append", metavar="DIR", help="extra plugin folder (also MUSE_PLUGIN_PATH)")

    p = sub.add_parser("run", help="run a graph")
    p.add_argument("graph", help="graph YAML file, e.g. graphs/stream_4k.yaml")
    p.add_argument("--frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--set", action="append", metavar="NODE.PARAM=VALUE", help="override a parameter (repeatable)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="override the graph's device")
    p.add_argument("--stats", metavar="FILE.json", help="write per-node timings, drops and latency")
    p.add_argument("--trace", metavar="FILE.json", help="write a Chrome trace (open in Perfetto)")
    p.add_argument("--watch", action="store_true", help="apply edits of the graph file while running")
    p.add_argument("--no-status", action="store_true", help="no live status line (it is shown only on a terminal anyway)")
    plugins(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check graph files without running them")
    p.add_argument("graphs", nargs="+")
    plugins(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("nodes", help="list node types (built-ins and plugins)")
    p.add_argument("pattern", nargs="?", help="filter, e.g. 'segment.*'")
    p.add_argument("--json", action="store_true", help="machine-readable: ports with types, params JSON Schema")
    plugins(p)
    p.set_defaults(func=cmd_nodes)

    p = sub.add_parser("schema", help="print the graph file JSON Schema")
    p.add_argument("-o", "--output", help="write to this file (graphs/schema.json)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("bench", help="run a graph unpaced and print per-node timings")
    p.add_argument("graph")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--set", action="append", metavar="NODE.PARAM=VALUE")
    p.add_argument("--json", metavar="FILE", help="also write the stats JSON")
    p.add_argument("--cuda-graphs", action="store_true", help="capture cuda_graph_safe chains (settings.cuda_graphs)")
    plugins(p)
    p.set_defaults(func=cmd_bench)

    for module in _SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue  # that part of muse is not there
            print(f"muse: warning: {module} failed to load: {exc}", file=sys.stderr)
            continue
        except Exception as exc:  # one broken part must not take the CLI down
            print(f"muse: warning: {module} failed to load: {exc}", file=sys.stderr)
            continue
        register = getattr(mod, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    _setup_logging(-1 if args.quiet else args.verbose)
    if os.environ.get("MUSE_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["MUSE_THREADS"]))
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
