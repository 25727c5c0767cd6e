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
_SUBCOMMAND_MODULES = ("muse.doctor", "muse.models.cli", "muse.studio.cli", "muse.editor.cli", "muse.nodes.capture.cameras_cli")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(level=level, format="muse: %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("PIL", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class SetError(ValueError):
    """A `--set` item that cannot be used; the message names it and says what to write."""


def _parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """`--set seg.threshold=0.4 warp.eyes=0.3` -> {"seg": {"threshold": 0.4}, ...} (values parsed as YAML,
    within the graph loader's limits). Raises SetError; the commands print it and exit 2."""
    import yaml

    from muse.graph.spec import GraphFileError, check_yaml_limits

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        node, dot, param = key.partition(".")
        if not sep or not dot or not node or not param or "" in param.split("."):
            raise SetError(f"--set {item!r}: expected node.param=value, e.g. --set warp.eyes=0.3")
        try:
            check_yaml_limits(raw)
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, GraphFileError, ValueError, RecursionError) as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SetError(f"--set {item!r}: the value is not valid YAML ({problem}); "
                           "quote text, e.g. --set cam.device='\"0\"', or write a list as [1, 2]") from None
        target: Any = out.setdefault(node, {})
        *path, last = param.split(".")
        for part in path:  # nested params: node.group.field=value
            nxt = target.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise SetError(f"--set {item!r}: {node}.{part} was already set to a value, so it has no field {last!r}")
            target = nxt
        target[last] = value
    return out


def _new_name(path: str, force: bool) -> Path:
    """Where to write a report the user asked for (--stats, --trace, schema -o): never over an existing
    file (the graph itself, a recording, an earlier report) unless --force; else the first free name-N."""
    target = Path(path)
    if force or not target.exists():
        return target
    for n in range(1, 10_000):
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        if not candidate.exists():
            print(f"muse: {target} already exists; writing {candidate} instead (--force replaces it)", file=sys.stderr)
            return candidate
    raise SystemExit(f"muse: {target} and 9999 numbered copies exist; pass --force or choose another name")


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
            g = load_graph(path, reg, allow_paths=args.allow_paths, allow_network=args.allow_network)
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
        from muse.files import write_text

        target = _new_name(args.output, args.force)
        write_text(target, text)
        print(f"wrote {target}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from muse.graph.runtime import GraphRunError, GraphRunner
    from muse.graph.stats import Trace
    from muse.graph.validate import GraphValidationError, load_graph

    reg = _registry(args)
    try:
        overrides = _parse_sets(args.set or [])
    except SetError as exc:
        print(f"muse: {exc}", file=sys.stderr)
        return EXIT_INVALID_GRAPH
    # --watch compares against the file as it was *loaded*: an edit saved while the run starts
    # (models load, the first frame) is applied too, not silently taken as the baseline.
    loaded_mtime = _mtime(Path(args.graph)) if args.watch else 0.0
    try:
        graph = load_graph(args.graph, reg, overrides, allow_paths=args.allow_paths, allow_network=args.allow_network)
    except GraphValidationError as exc:
        _print_invalid(exc)
        return EXIT_INVALID_GRAPH
    for w in graph.warnings:
        print(f"muse: warning: {w}", file=sys.stderr)
    trace = Trace() if args.trace else None
    try:
        faults = _parse_faults(args.fault or [], graph)
    except ValueError as exc:
        print(f"muse: {exc}", file=sys.stderr)
        return EXIT_INVALID_GRAPH
    try:
        runner = GraphRunner(graph, device=args.device, frames=args.frames, trace=trace, faults=faults)
    except GraphRunError as exc:
        print(f"muse: {exc}", file=sys.stderr)
        return 1
    print(f"muse: {args.graph}: {runner.device_note}", file=sys.stderr)
    code = 0
    interrupted = False
    stopper = _Stopper(runner)
    stopper.install()
    try:
        runner.start()
        from muse.graph.cpu_pipeline import startup_note

        note = startup_note(runner)
        if note:
            print(f"muse: {note}", file=sys.stderr)
        _wait(runner, args, reg, overrides, loaded_mtime)
    except KeyboardInterrupt:
        interrupted = True
        print(f"muse: {stopper.name()}: stopping cleanly (outputs flush and close their files; "
              "press Ctrl-C again to quit at once)", file=sys.stderr)
    except GraphRunError as exc:
        print(f"muse: {exc}", file=sys.stderr)
        code = 1
    finally:
        try:
            runner.stop()
        finally:
            stopper.restore()
        stopper.stopped()
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
        target = _new_name(args.stats, args.force)
        stats.write(target)
        print(f"muse: stats written to {target}", file=sys.stderr)
    if trace is not None:
        target = _new_name(args.trace, args.force)
        trace.write(target)
        print(f"muse: trace written to {target} (open it in https://ui.perfetto.dev)", file=sys.stderr)
    return stopper.exit_code() if interrupted and code == 0 else code


class _Stopper:
    """Ctrl-C (SIGINT) and SIGTERM during `muse run`: the first stops cleanly (sinks flush and close
    their files, stats are written); a second one quits at once, without a traceback: sinks stop
    draining their queues, and whatever is still closing gets `QUIT_GRACE_S` before the process exits."""

    QUIT_GRACE_S = 1.5

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.signum: int | None = None
        self.count = 0
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (tests may call main() elsewhere)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def name(self) -> str:
        import signal

        return "SIGTERM" if self.signum == signal.SIGTERM else "Ctrl-C"

    def exit_code(self) -> int:
        return 128 + (self.signum or 2)  # 130 after Ctrl-C, 143 after SIGTERM, as shells expect

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            self.signum = signum
            raise KeyboardInterrupt  # unwinds the wait in the main thread; `finally` stops the runner
        if self.count == 2:
            self._quit_soon()
            return
        self._exit()  # a third: no more waiting at all

    def _quit_soon(self) -> None:
        import threading

        # os.write, not print: the signal may land while the main thread is inside a print to stderr,
        # and a reentrant buffered write would raise (a traceback is what this path must never show).
        try:
            os.write(2, f"muse: {self.name()} again: quitting now (files already being closed get {self.QUIT_GRACE_S:g} s)\n".encode())
        except OSError:
            pass
        # Sinks stop draining queued frames (dropped here); their files are closed by the stop already under way.
        for slot in list(getattr(self.runner, "slots", {}).values()):
            try:
                if slot.rn.cls.is_sink() and slot.channel is not None:
                    slot.channel.close()
                    for _ in range(10_000):
                        slot.channel.get_nowait()
            except Exception:  # ChannelClosed once empty: done
                pass
        threading.Thread(target=self._exit_when_files_closed, name="muse-quit", daemon=True).start()

    def _exit_when_files_closed(self) -> None:
        """Exit as soon as no sink (a recording, a stream) is still open, or after QUIT_GRACE_S."""
        import threading

        deadline = time.monotonic() + self.QUIT_GRACE_S
        main = threading.main_thread().ident
        try:
            while time.monotonic() < deadline:
                if not self._sink_open(sys._current_frames().get(main)):
                    break
                time.sleep(0.02)
        except Exception:  # a runner without these internals: the grace period alone decides
            time.sleep(max(0.0, deadline - time.monotonic()))
        finally:
            self._exit()

    def _sink_open(self, frame: Any) -> bool:
        """Is the stop under way in the main thread still before or inside closing a sink?"""
        while frame is not None:  # the runner closes sources, then sinks, then the rest (GraphRunner._close_all)
            if frame.f_code.co_name == "_close_slot":
                slot = frame.f_locals.get("slot")
                if slot is not None and slot.rn.cls.is_sink():
                    return True
                break
            frame = frame.f_back
        slots = list(getattr(self.runner, "slots", {}).values())
        return any(s.rn.cls.is_sink() and s.thread is not None for s in slots)

    def stopped(self) -> None:
        """Called when the runner has stopped: after a second signal, leave now (no stats, no teardown of native threads)."""
        if self.count >= 2:
            self._exit()

    def _exit(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(self.exit_code())


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


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _wait(runner: Any, args: argparse.Namespace, reg: Any, overrides: dict[str, dict[str, Any]],
          loaded_mtime: float = 0.0) -> None:
    """Wait for the run to end; with --watch, apply edits of the graph file saved since it was loaded."""
    from muse.live_status import LiveStatus

    path = Path(args.graph)
    mtime = loaded_mtime
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
        _apply_edit(runner, path, reg, overrides, args.allow_paths, args.allow_network)


def _parse_faults(specs: list[str], graph: Any) -> list[Any]:
    """`--fault NODE:KIND[=MS][@FRAME][/EVERY]` (muse.testing.faults), each naming a node of the graph."""
    from muse.testing.faults import Fault

    faults = [Fault.parse(s) for s in specs]
    for f in faults:
        if f.node not in graph.nodes:
            raise ValueError(f"--fault names node {f.node!r}, which is not in the graph (nodes: {', '.join(graph.nodes)})")
    return faults


def _apply_edit(runner: Any, path: Path, reg: Any, overrides: dict[str, dict[str, Any]], allow_paths: bool = False,
                allow_network: bool = False) -> None:
    """Apply one edit of the watched file. Nothing an edit does may end the live stream: every
    failure (invalid graph, a node refusing new params, a swap that fails) is reported, and the
    running graph keeps going."""
    from muse.graph.validate import GraphValidationError, load_graph

    try:
        new = load_graph(path, reg, overrides, allow_paths=allow_paths, allow_network=allow_network)
    except GraphValidationError as exc:
        print("muse: --watch: the edited graph is invalid; the running graph keeps going:", file=sys.stderr)
        for e in exc.errors:
            print(f"  {e}", file=sys.stderr)
        return
    except Exception as exc:  # load_graph reports everything as GraphValidationError; this is a belt for the braces
        print(f"muse: --watch: could not read the edit ({type(exc).__name__}: {exc}); the running graph keeps going", file=sys.stderr)
        return
    try:
        _swap_in(runner, new)
    except Exception as exc:
        print(f"muse: --watch: could not apply the edit ({type(exc).__name__}: {exc}); the running graph keeps going", file=sys.stderr)


def _swap_in(runner: Any, new: Any) -> None:
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
    """Run a graph as fast as it goes and print per-node timings, frame GPU/host cost and latency."""
    from muse.graph.bench import bench_graph
    from muse.graph.validate import GraphValidationError, load_graph

    reg = _registry(args)
    try:
        graph = load_graph(args.graph, reg, _parse_sets(args.set or []), allow_paths=args.allow_paths,
                           allow_network=args.allow_network)
    except SetError as exc:
        print(f"muse: {exc}", file=sys.stderr)
        return EXIT_INVALID_GRAPH
    except GraphValidationError as exc:
        _print_invalid(exc)
        return EXIT_INVALID_GRAPH
    if args.cuda_graphs:
        graph.settings = graph.settings.model_copy(update={"capture": "on"})
    if args.capture:
        graph.settings = graph.settings.model_copy(update={"capture": args.capture})
    if args.no_check_finite:  # what the NaN/Inf guard costs: compare with and without
        graph.settings = graph.settings.model_copy(update={"check_finite": False})
    report = bench_graph(graph, device=args.device, frames=args.frames, latency_frames=args.latency_frames,
                         kernel_frames=args.kernel_frames)
    for line in report.lines(args.graph):
        print(line)
    if args.json:
        from muse.files import write_text

        write_text(_new_name(args.json, args.force), json.dumps(report.as_dict(), indent=2))
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

    def allow_paths(p: argparse.ArgumentParser) -> None:
        p.add_argument("--allow-paths", action="store_true",
                       help="let the graph write outside its folder, the Studio profiles and ~/.muse (only for graphs you trust)")
        p.add_argument("--allow-network", action="store_true",
                       help="let output.stream send video to other machines (default: this machine only; also MUSE_ALLOW_NETWORK=1)")

    def force(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--force", action="store_true", help=f"replace an existing {what} (default: write under a new name)")

    p = sub.add_parser("run", help="run a graph")
    p.add_argument("graph", help="graph YAML file, e.g. graphs/stream_4k.yaml")
    p.add_argument("--frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--set", action="append", metavar="NODE.PARAM=VALUE", help="override a parameter (repeatable)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="override the graph's device")
    p.add_argument("--stats", metavar="FILE.json", help="write per-node timings, drops and latency")
    p.add_argument("--trace", metavar="FILE.json", help="write a Chrome trace (open in Perfetto)")
    p.add_argument("--watch", action="store_true", help="apply edits of the graph file while running")
    p.add_argument("--fault", action="append", metavar="NODE:KIND[@FRAME][/EVERY]",
                   help="make a node fail on purpose to test on_error policies: raise, nan, stall[=MS], oom, die "
                        "(e.g. segment:die@30, pose:nan@10/5; see docs/reliability.md)")
    allow_paths(p)
    force(p, "--stats/--trace file")
    p.add_argument("--no-status", action="store_true", help="no live status line (it is shown only on a terminal anyway)")
    plugins(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check graph files without running them")
    p.add_argument("graphs", nargs="+")
    allow_paths(p)
    plugins(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("nodes", help="list node types (built-ins and plugins)")
    p.add_argument("pattern", nargs="?", help="filter, e.g. 'segment.*'")
    p.add_argument("--json", action="store_true", help="machine-readable: ports with types, params JSON Schema")
    plugins(p)
    p.set_defaults(func=cmd_nodes)

    p = sub.add_parser("schema", help="print the graph file JSON Schema")
    p.add_argument("-o", "--output", help="write to this file (graphs/schema.json)")
    force(p, "output file")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("bench", help="run a graph unpaced and print per-node timings")
    p.add_argument("graph")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--set", action="append", metavar="NODE.PARAM=VALUE")
    p.add_argument("--json", metavar="FILE", help="also write the stats JSON")
    p.add_argument("--cuda-graphs", action="store_true", help="old name of --capture on")
    p.add_argument("--capture", choices=["auto", "on", "off", "emulate", "per_node"],
                   help="override settings.capture (frame capture; per_node: every node recorded alone and timed)")
    p.add_argument("--latency-frames", type=int, default=240, help="a second run paced at the graph's fps for latency (0 = skip)")
    p.add_argument("--kernel-frames", type=int, default=0, help="CUDA: count kernels per frame over N frames with the profiler (0 = skip)")
    p.add_argument("--no-check-finite", action="store_true", help="turn the NaN/Inf guard off (settings.check_finite: false), to measure its cost")
    allow_paths(p)
    force(p, "--json file")
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
