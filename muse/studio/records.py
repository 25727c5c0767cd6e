"""A profile's label records on disk: the per-rank JSON-lines files and the merged `labels.json`.

Labelling (`muse.studio.label`) appends records; filtering, training, export and the
gate read them. Kept apart from the labeller so readers do not import the teachers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from muse.studio.files import StudioError, read_json, write_json


def rank_world() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def done_ids(records_dir: Path) -> set[str]:
    """Frame ids already labelled (in any rank's records file): a resumed run skips them."""
    done = set()
    for p in records_dir.glob("*.jsonl"):
        for line in p.read_text(errors="replace").splitlines():  # damaged bytes: that line is skipped
            try:
                done.add(str(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a kill: that clip is relabelled
    return done


def merge_records(dataset_dir: Path) -> list[dict[str, Any]]:
    """Merge every rank's records into `labels.json`, in time order, one record per frame id."""
    by_id: dict[str, dict[str, Any]] = {}
    for p in sorted((dataset_dir / "records").glob("*.jsonl")):
        for line in p.read_text(errors="replace").splitlines():  # damaged bytes: that line is skipped
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if not (isinstance(r, dict) and isinstance(r.get("id"), str) and "recording" in r and isinstance(r.get("index"), int)):
                continue  # a torn or foreign line: that frame is labelled again
            by_id[r["id"]] = r
    records = sorted(by_id.values(), key=lambda r: (r["recording"], r["index"]))
    write_json(dataset_dir / "labels.json", {"frames": records})
    return records


def load_records(dataset_dir: Path) -> list[dict[str, Any]]:
    """The merged records (`labels.json`); a clear StudioError when missing or damaged."""
    p = dataset_dir / "labels.json"
    if not p.is_file():
        raise StudioError(f"{p} not found; label the recordings first (`muse studio label PROFILE`)")
    hint = "delete it and run `muse studio label PROFILE`: it is rebuilt from dataset/records, nothing is labelled twice"
    frames = read_json(p, {}, hint).get("frames")
    if not isinstance(frames, list):
        raise StudioError(f"{p} is damaged (no 'frames' list); {hint}")
    for i, r in enumerate(frames):
        if not (isinstance(r, dict) and isinstance(r.get("id"), str) and isinstance(r.get("mask"), str) and isinstance(r.get("index", 0), int)):
            raise StudioError(f"{p} is damaged (frame record {i} lacks an id, mask or index); {hint}")
    return frames
