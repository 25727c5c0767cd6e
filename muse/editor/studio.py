"""The editor's Studio tab: profiles, one-click capture buttons, the pipeline
stages with progress bars read from the Studio's JSON-lines progress stream,
and the live model per profile. Works without `muse.studio` (says so instead)."""

from __future__ import annotations

import importlib
import inspect
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

_DEFAULT_STAGES = ("plate", "record", "analyze", "label", "filter", "train", "export")


def pipeline_stages() -> tuple[str, ...]:
    """The Studio's own stage list when it is installed (so new stages show up), else the known one."""
    try:
        return tuple(importlib.import_module("muse.studio.pipeline").STAGES)
    except (ImportError, AttributeError):
        return _DEFAULT_STAGES
_CAPTURE_FUNCS = {  # button -> function names tried in muse.studio.capture, first found wins
    "plate": ("capture_plate",),
    "record": ("record", "record_person"),
}


@dataclass
class StageProgress:
    stage: str
    fraction: float | None = None  # None: running, amount unknown
    text: str = ""
    state: str = ""  # running | done | failed | paused | ...


def _fraction(rec: dict[str, Any]) -> float | None:
    for key in ("fraction", "progress"):
        v = rec.get(key)
        if isinstance(v, (int, float)):
            return max(0.0, min(1.0, v / 100.0 if v > 1 else float(v)))
    for done, total in (("step", "steps"), ("step", "total"), ("done", "total"), ("current", "total"),
                        ("frame", "frames"), ("epoch", "epochs")):
        a, b = rec.get(done), rec.get(total)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
            return max(0.0, min(1.0, a / b))
    return None


def parse_record(rec: dict[str, Any], default_stage: str = "train") -> StageProgress:
    """One progress line -> StageProgress. Knows the trainer's events (start/step/checkpoint/done/paused)."""
    stage = str(rec.get("stage") or rec.get("phase") or default_stage)
    event = str(rec.get("event") or rec.get("status") or rec.get("state") or "")
    frac = _fraction(rec)
    state = {"done": "done", "finished": "done", "failed": "failed", "error": "failed", "paused": "paused",
             "skipped": "skipped"}.get(event, "running")
    if state == "done":
        frac = 1.0
    parts = []
    if "step" in rec and "steps" in rec:
        parts.append(f"step {rec['step']}/{rec['steps']}")
    for key, fmt in (("loss", "loss {:.4f}"), ("val_iou", "IoU {:.3f}"), ("eta_s", "ETA {:.0f} s")):
        if isinstance(rec.get(key), (int, float)):
            parts.append(fmt.format(rec[key]))
    if rec.get("message") or rec.get("error"):
        parts.append(str(rec.get("message") or rec.get("error")))
    if state != "running":
        parts.insert(0, state)
    return StageProgress(stage, frac, "  ".join(parts), state)


class ProgressReader:
    """Tails a JSON-lines progress file: reads only new complete lines, skips bad ones."""

    def __init__(self, path: Path, default_stage: str = "train") -> None:
        self.path = path
        self.default_stage = default_stage
        self.offset = 0
        self._partial = b""
        self.stages: dict[str, StageProgress] = {}

    def poll(self) -> dict[str, StageProgress]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return self.stages
        if size < self.offset:  # the file was replaced (a new run): start over
            self.offset, self._partial, self.stages = 0, b"", {}
        if size == self.offset:
            return self.stages
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(size - self.offset)
        self.offset = size
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # a line still being written
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                p = parse_record(rec, self.default_stage)
                self.stages[p.stage] = p
        return self.stages


def studio_module() -> Any:
    """muse.studio.profiles, or None when the Studio isn't part of this build."""
    try:
        return importlib.import_module("muse.studio.profiles")
    except ImportError:
        return None


def capture_function(kind: str) -> Callable[..., Any] | None:
    try:
        mod = importlib.import_module("muse.studio.capture")
    except ImportError:
        return None
    for name in _CAPTURE_FUNCS[kind]:
        fn = getattr(mod, name, None)
        if callable(fn):
            return fn
    return None


def stage_states(summary: dict[str, Any]) -> dict[str, StageProgress]:
    """Stage states from a profile summary's `stages` (state.json), as progress."""
    out: dict[str, StageProgress] = {}
    for stage, raw in (summary.get("stages") or {}).items():
        rec = raw if isinstance(raw, dict) else {"status": raw}
        out[stage] = parse_record({"stage": stage, **rec}, stage)
    return out


class StudioPage:
    """Draws into a parent container (a tab); `tick()` refreshes once a second."""

    def __init__(self, parent: Any, status: Callable[..., None], root: str | Path | None = None) -> None:
        self.parent = parent
        self.status = status
        self.root = root
        self.profiles_mod = studio_module()
        self.profile: Any = None
        self.reader: ProgressReader | None = None
        self.bars: dict[str, tuple[int, int]] = {}
        self._due = 0.0
        self._job: threading.Thread | None = None
        self._job_result: str | None = None
        self._last_log = ""

    def build(self) -> None:
        import dearpygui.dearpygui as dpg

        with dpg.group(parent=self.parent):
            if self.profiles_mod is None:
                dpg.add_text("MUSE Studio (muse.studio) is not part of this build:\nprofiles and training are unavailable.", wrap=330)
                return
            with dpg.group(horizontal=True):
                dpg.add_text("Profiles")
                dpg.add_button(label="Refresh", small=True, callback=lambda: self.refresh())
            self.list = dpg.add_listbox([], num_items=4, width=-1, callback=lambda s, a: self.select(a))
            self.summary = dpg.add_text("", wrap=330)
            with dpg.group(horizontal=True):
                self.plate_button = dpg.add_button(label="Capture clean plate", callback=lambda: self.capture("plate"))
                self.record_button = dpg.add_button(label="Record", callback=lambda: self.capture("record"))
                self.seconds = dpg.add_input_int(default_value=60, width=70, min_value=1, min_clamped=True, label="s")
            for kind, button in (("plate", self.plate_button), ("record", self.record_button)):
                if capture_function(kind) is None:
                    dpg.configure_item(button, enabled=False)
                    with dpg.tooltip(button):
                        dpg.add_text("muse.studio.capture is not in this build yet; use `muse studio plate|record`", wrap=300)
            dpg.add_text("Pipeline", color=(150, 156, 168))
            for stage in pipeline_stages():
                with dpg.group(horizontal=True):
                    dpg.add_text(f"{stage:<8}")
                    bar = dpg.add_progress_bar(default_value=0.0, width=150, overlay="")
                    txt = dpg.add_text("", color=(150, 156, 168))
                self.bars[stage] = (bar, txt)
        self.refresh()

    def refresh(self) -> list[str]:
        import dearpygui.dearpygui as dpg

        if self.profiles_mod is None:
            return []
        names = self.profiles_mod.list_profiles(self.root)
        dpg.configure_item(self.list, items=names)
        if names and (self.profile is None or self.profile.name not in names):
            self.select(names[0])
        if not names:
            dpg.set_value(self.summary, f"no profiles yet in {self.profiles_mod.studio_home(self.root)}; create one with `muse studio new NAME`")
        return names

    def select(self, name: str) -> None:
        import dearpygui.dearpygui as dpg

        try:
            self.profile = self.profiles_mod.load_profile(name, self.root)
        except Exception as exc:  # a broken profile.yaml: show why, keep the page
            self.profile = None
            dpg.set_value(self.summary, str(exc))
            return
        dpg.set_value(self.list, name)
        self.reader = ProgressReader(self.profile.progress_path)
        self._due = 0.0
        self.tick()

    def capture(self, kind: str) -> None:
        """Run a capture step of the Studio in the background (it talks to the camera for seconds)."""
        import dearpygui.dearpygui as dpg

        fn = capture_function(kind)
        if fn is None or self.profile is None:
            self.status("capture needs a profile and muse.studio.capture", error=True)
            return
        if self._job is not None and self._job.is_alive():
            self.status("a capture is already running", error=True)
            return
        kwargs: dict[str, Any] = {"seconds": dpg.get_value(self.seconds)} if kind == "record" else {}
        if "log" in inspect.signature(fn).parameters:
            kwargs["log"] = self._log  # the Studio's messages go to the status bar, not the terminal
        profile = self.profile

        def job() -> None:
            try:
                fn(profile, **kwargs)
                self._job_result = f"{kind} done for {profile.name}"
            except Exception as exc:  # the Studio's messages say what to do
                self._job_result = f"{kind} failed: {exc}"

        self._job_result = None
        self._job = threading.Thread(target=job, name=f"studio-{kind}", daemon=True)
        self._job.start()
        self.status(f"{kind}: capturing for {profile.name}...")

    def _log(self, message: str) -> None:
        self._last_log = message  # called on the capture thread: shown by tick() on the UI thread

    def progress(self) -> dict[str, StageProgress]:
        if self.profile is None:
            return {}
        stages = stage_states(self.profile.summary())
        if self.reader is not None:
            stages.update(self.reader.poll())  # the live stream is newer than state.json
        return stages

    def tick(self) -> None:
        import dearpygui.dearpygui as dpg

        if self._last_log:
            self.status(self._last_log)
            self._last_log = ""
        if self._job_result is not None and self._job is not None and not self._job.is_alive():
            self.status(self._job_result, error="failed" in self._job_result)
            self._job_result = None
        now = time.monotonic()
        if self.profile is None or now < self._due:
            return
        self._due = now + 1.0
        s = self.profile.summary()
        dpg.set_value(self.summary, (
            f"{s['path']}\nclean plate: {'yes' if s['clean_plate'] else 'no'}   recordings: {len(s['recordings'])}"
            f"   labelled frames: {s['labelled_frames']}\nlive model: {s['live_model'] or 'none (base model)'}"
            + ("   (rollback available)" if s.get("rollback_available") else "")
        ))
        stages = self.progress()
        for stage, (bar, txt) in self.bars.items():
            p = stages.get(stage)
            dpg.set_value(bar, p.fraction if p and p.fraction is not None else 0.0)
            dpg.configure_item(bar, overlay=f"{(p.fraction or 0) * 100:.0f}%" if p and p.fraction is not None else "")
            dpg.set_value(txt, p.text if p else "")
