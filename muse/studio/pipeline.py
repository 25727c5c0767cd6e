"""`muse studio run PROFILE`: plate -> record -> analyze -> label -> filter ->
train -> export, each stage skippable and resumable. Stage status lives in
`state.json`; a failed stage leaves every earlier result as it was (each one is
written atomically) and the error says how to resume.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable

from muse.studio.files import StudioError, read_json, write_json

STAGES = ["plate", "record", "analyze", "label", "filter", "train", "export"]


def _state(profile: Any) -> dict[str, Any]:
    hint = "delete it: finished stages are then found again from the files on disk"
    state = read_json(profile.state_path, {"stages": {}}, hint)
    if not isinstance(state.get("stages"), dict) or not all(isinstance(v, dict) for v in state["stages"].values()):
        raise StudioError(f"{profile.state_path} is damaged ('stages' is not a mapping of stage -> status); {hint}")
    return state


def mark(profile: Any, stage: str, status: str, **info: Any) -> None:
    state = _state(profile)
    state["stages"][stage] = {"status": status, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    write_json(profile.state_path, state)


def _already_done(profile: Any, stage: str) -> bool:
    """Stages whose result is on disk are not repeated (the capture ones would need the person again)."""
    if stage == "plate":
        return profile.plate_path.is_file()
    if stage == "record":
        return bool(profile.recordings())
    return _state(profile)["stages"].get(stage, {}).get("status") == "done"


def run_stage(profile: Any, stage: str, opts: dict[str, Any], log: Callable[[str], None]) -> Any:
    if stage == "plate":
        from muse.studio.capture import capture_plate

        return str(capture_plate(profile, frames=opts.get("plate_frames"), log=log))
    if stage == "record":
        from muse.studio.capture import record

        return str(record(profile, seconds=opts.get("seconds"), log=log))
    if stage == "analyze":
        from muse.studio.analyze import analyze_profile

        return {"warnings": analyze_profile(profile, device=opts.get("device", "cpu"), offline_only=opts.get("offline", False), log=log)["warnings"]}
    if stage == "label":
        from muse.studio.label import label_profile

        return label_profile(profile, device=opts.get("device", "cpu"), offline_only=opts.get("offline", False), limit=opts.get("limit"), log=log)
    if stage == "filter":
        from muse.studio.filter import filter_profile

        return filter_profile(profile, log=log).counts()
    if stage == "train":
        from muse.studio.train import split_budget, train_student

        seg_s, pose_s = split_budget(profile, opts.get("max_minutes"))
        res = train_student(profile, steps=opts.get("steps"), batch=opts.get("batch"), max_seconds=opts.get("max_seconds"),
                            time_budget=seg_s, log=log, progress_bar=opts.get("progress_bar", True))
        if not res["finished"]:
            raise StudioError(f"training paused at step {res['step']}/{res['steps']} (time limit)")
        from muse.studio.train_pose import train_pose

        pose = train_pose(profile, steps=opts.get("steps"), batch=opts.get("batch"), time_budget=pose_s, log=log)
        if pose is not None:
            res["pose"] = pose
        return res
    if stage == "export":
        from muse.studio.export import export_student

        info = export_student(profile, tensorrt=opts.get("tensorrt", True), force=opts.get("force", False), log=log)
        return {"version": info["version"], "live": info["live"], "gate": info["gate"], "tensorrt": info["tensorrt"], "verify": info["verify"]}
    raise StudioError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")


def run_pipeline(
    profile: Any,
    *,
    skip: list[str] | None = None,
    redo: list[str] | None = None,
    options: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage not skipped and not already done; stop at the first failure with resume advice."""
    skip, redo, opts = set(skip or []), set(redo or []), options or {}
    for s in skip | redo:
        if s not in STAGES:
            raise StudioError(f"unknown stage {s!r}; stages are {', '.join(STAGES)}")
    results: dict[str, Any] = {}
    last_good = None
    for stage in STAGES:
        if stage in skip:
            log(f"[{stage}] skipped")
            results[stage] = "skipped"
            continue
        if stage not in redo and _already_done(profile, stage):
            log(f"[{stage}] done earlier")
            results[stage] = "done earlier"
            last_good = stage
            continue
        log(f"[{stage}] running")
        mark(profile, stage, "running")
        try:
            results[stage] = run_stage(profile, stage, opts, log)
        except BaseException as exc:
            mark(profile, stage, "failed", error=str(exc), traceback=traceback.format_exc(limit=8))
            interrupted = isinstance(exc, KeyboardInterrupt)
            msg = (
                f"stage '{stage}' {'was interrupted' if interrupted else 'failed'}: {exc}\n"
                f"The profile keeps its last good state{f' (through {last_good!r})' if last_good else ''}; the live model is unchanged. "
                f"Fix the cause and run `muse studio run {profile.name}` to resume at '{stage}'"
                + (" (training resumes from its last checkpoint)" if stage == "train" else "")
                + f", or skip it with `--skip {stage}`."
            )
            if interrupted:
                raise
            raise StudioError(msg) from exc
        mark(profile, stage, "done", result=results[stage])
        # A newer dataset makes later results stale: they run again next time.
        later = STAGES[STAGES.index(stage) + 1 :]
        state = _state(profile)
        for s in later:
            if s in ("filter", "train", "export") and stage in ("label", "filter", "train") and s not in results:
                state["stages"].pop(s, None)
        write_json(profile.state_path, state)
        last_good = stage
    return results
