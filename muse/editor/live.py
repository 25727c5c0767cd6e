"""The editor's link to a running graph, through the runtime's public API only
(GraphRunner start/stop/update_params/replace/tap/stats): run and stop, live
params, topology apply, one previewed output and per-node timings."""

from __future__ import annotations

import threading
from typing import Any, Callable

from muse.editor.preview import PreviewTap
from muse.graph.validate import ValidatedGraph


def _default_runner(graph: ValidatedGraph) -> Any:
    from muse.graph.runtime import GraphRunner  # imported on Run: opening the editor needs no runtime

    return GraphRunner(graph)


class LiveSession:
    def __init__(self, runner_factory: Callable[[ValidatedGraph], Any] | None = None,
                 preview_size: tuple[int, int] = (480, 270)) -> None:
        self.runner_factory = runner_factory or _default_runner
        self.preview_size = preview_size
        self.runner: Any = None
        self.graph: ValidatedGraph | None = None
        self.preview_target: tuple[str, str] | None = None
        self.preview: PreviewTap | None = None
        self._untap: Callable[[], None] | None = None
        self._starter: tuple[threading.Thread, Any, ValidatedGraph] | None = None
        self._start_error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self.runner is not None and not self.runner.wait(0)

    @property
    def ended(self) -> bool:
        """Started, then stopped by itself (end of stream or an error)."""
        return self.runner is not None and self.runner.wait(0)

    @property
    def starting(self) -> bool:
        return self._starter is not None

    def start(self, graph: ValidatedGraph, background: bool = False) -> None:
        """Open every node and start. In the background, the window stays responsive while
        models load; `poll_start()` then says when it is running or why it could not start."""
        self.stop()
        runner = self.runner_factory(graph)
        if not background:
            runner.start()  # raises GraphRunError naming the node that cannot start
            self._adopt(runner, graph)
            return
        self._start_error = None

        def go() -> None:
            try:
                runner.start()
            except BaseException as exc:  # reported on the UI thread by poll_start
                self._start_error = exc

        self._starter = (threading.Thread(target=go, name="muse-editor-start", daemon=True), runner, graph)
        self._starter[0].start()

    def poll_start(self) -> tuple[str, str] | None:
        """('started', '') once a background start finished, ('failed', message) if it raised, else None."""
        if self._starter is None or self._starter[0].is_alive():
            return None
        _, runner, graph = self._starter
        self._starter = None
        if self._start_error is not None:
            exc, self._start_error = self._start_error, None
            return ("failed", str(exc) or type(exc).__name__)
        self._adopt(runner, graph)
        return ("started", "")

    def _adopt(self, runner: Any, graph: ValidatedGraph) -> None:
        self.runner, self.graph = runner, graph
        if self.preview_target:
            self._tap(*self.preview_target)

    def stop(self) -> None:
        if self._starter is not None:  # Stop while models load: let the start finish, then stop it
            thread, runner, _ = self._starter
            thread.join()
            self._starter = None
            if self._start_error is None:
                runner.stop()
            self._start_error = None
        runner, self.runner = self.runner, None
        if self._untap:
            self._untap()
            self._untap = None
        if runner is not None:
            runner.stop()

    def needs_apply(self, graph: ValidatedGraph | None) -> bool:
        """True when the edited graph's topology differs from the running one's."""
        return self.running and graph is not None and self.graph is not None and graph.topology_key() != self.graph.topology_key()

    def apply(self, graph: ValidatedGraph) -> None:
        """Swap in an edited topology; kept nodes stay open, the stream goes on."""
        if not self.running:
            raise RuntimeError("the graph is not running; press Run first")
        self.runner.replace(graph)
        self.graph = graph
        if self.preview_target:
            self._tap(*self.preview_target)

    def update_params(self, node: str, params: dict[str, Any]) -> bool:
        """Send a node's params to the running graph; False when that node isn't running (apply first)."""
        if not self.running or self.graph is None or node not in self.graph.nodes:
            return False
        self.runner.update_params(node, params)
        return True

    def set_preview(self, node: str, port: str) -> None:
        self.preview_target = (node, port)
        if self.running:
            self._tap(node, port)

    def _tap(self, node: str, port: str) -> None:
        if self._untap:
            self._untap()
        self.preview = PreviewTap(*self.preview_size)
        untap = self.runner.tap(node, port, self.preview)
        self._untap = untap if callable(untap) else None

    def node_stats(self) -> dict[str, dict[str, Any]]:
        """Per node: p50/p99 ms (GPU time when measured, else host), frames, errors, info (the hybrid mode...)."""
        if self.runner is None:
            return {}
        d = self.runner.stats.as_dict()
        return d.get("nodes", d)

    def graph_stats(self) -> dict[str, Any]:
        if self.runner is None:
            return {}
        d = self.runner.stats.as_dict()
        return {k: v for k, v in d.items() if k != "nodes"}


def stats_line(s: dict[str, Any]) -> str:
    """Short enough for a node: '1.2 / 3.4 ms' (p50 / p99), then 'mode: personalized' on a line of its own."""
    info = s.get("info") or {}
    state = str(info.get("state", ""))
    if state and not state.startswith("live"):  # absent, failed, standby: it does not run, so no timings
        return state.split(":")[0] + (" (see tooltip)" if ":" in state else "")
    t = s.get("gpu_ms") or s.get("host_ms") or {}
    text = f"{t.get('p50', 0.0):.1f} / {t.get('p99', 0.0):.1f} ms"
    mode = info.get("mode")
    if mode is not None:
        text += f"\nmode: {mode}"  # own line: nodes must not grow wider than the layout left room for
    if "branches" in info and "live" in info:  # a switch: which branch is live
        text += f"\nlive: {info['live']}"
    faults = s.get("faults") or {"errors": s.get("errors", 0)}
    shown = [f"{label} {faults[k]}" for k, label in (("errors", "errors"), ("nan", "NaN"), ("stalls", "stalls"), ("oom", "OOM"))
             if faults.get(k)]
    if shown:
        text += "  " + " ".join(shown)
    if (s.get("info") or {}).get("stalled"):
        text += "\nSTALLED"
    return text


def stats_details(s: dict[str, Any]) -> str:
    """Everything the runtime says about a node, one item a line (the tooltip of its timings)."""
    lines = []
    for key in ("gpu_ms", "host_ms"):
        if s.get(key):
            t = s[key]
            lines.append(f"{key.replace('_ms', '')} time: p50 {t['p50']:.2f}  p95 {t['p95']:.2f}  p99 {t['p99']:.2f} ms")
    lines.append(f"frames {s.get('frames', 0)}  drops {s.get('drops', 0)}  errors {s.get('errors', 0)}")
    faults = s.get("faults") or {}
    if faults:
        counts = "  ".join(f"{k} {faults[k]}" for k in ("nan", "stalls", "oom") if faults.get(k))
        if counts:
            lines.append(counts + (f"  (slowest {faults['slowest_ms']:.0f} ms)" if faults.get("slowest_ms") else ""))
        if faults.get("handled"):
            lines.append(f"on_error {s.get('on_error', '?')}: " + ", ".join(f"{k} {v}" for k, v in faults["handled"].items()))
        for step in faults.get("stepped_down", []):
            lines.append(f"stepped down: {step}")
    for k, v in (s.get("info") or {}).items():
        if k == "branches" and isinstance(v, dict):  # a switch: each branch and its state on a line
            lines += [f"branch {label}: {state}" for label, state in v.items()]
        else:
            lines.append(f"{k}: {v}")
    if s.get("last_error"):
        lines.append(f"last error: {s['last_error']}")
    return "\n".join(lines)
