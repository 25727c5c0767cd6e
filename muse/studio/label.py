"""Label a profile's recordings with its teachers and write the dataset.

Frames go to `dataset/frames/*.jpg`, labels to `dataset/masks/*.png`, one JSON
record per frame to `dataset/records/<recording>.rank<R>.jsonl` (appended clip
by clip, so an interrupted run resumes where it stopped). Under torchrun each
rank labels every WORLD_SIZE-th clip; rank 0 merges `dataset/labels.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from muse.studio.files import StudioError, read_image, read_video, write_image
from muse.studio.records import done_ids, merge_records, rank_world


def label_profile(
    profile: Any,
    *,
    device: str = "cpu",
    clip: int = 32,
    limit: int | None = None,
    teachers: Any = None,
    offline_only: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Label every recording of `profile` (resumable, shardable); return a summary."""
    from muse.studio.teachers.combine import build_teachers, label_frames

    recordings = profile.recordings()
    if not recordings:
        raise StudioError(f"profile {profile.name!r} has no recordings; record one with `muse studio record {profile.name} --seconds 60`")
    plate = read_image(profile.plate_path) if profile.plate_path.is_file() else None
    ts = teachers or build_teachers(profile, device, plate, offline_only=offline_only)
    for name, why in ts.skipped.items():
        log(f"teacher {name} skipped: {why}")
    rank, world = rank_world()
    ds = profile.dataset_dir
    records_dir = ds / "records"
    records_dir.mkdir(parents=True, exist_ok=True)
    done = done_ids(records_dir)
    every = profile.config.teachers.every
    new = 0
    from muse.studio.files import video_info
    from muse.studio.progress import Progress, for_profile

    def count(path: Path) -> int:
        n = -(-int(video_info(path)["frames"] or 0) // every)
        return min(n, limit) if limit is not None else n

    total = sum(count(p) for p in recordings) or None
    # each rank labels its share of clips; rank 0 speaks for all (its count is its share)
    bar = for_profile(profile, "label", total) if rank == 0 else Progress("label", total, mode="off")
    for rec_path in recordings:
        rec = rec_path.stem
        out_path = records_dir / f"{rec}.rank{rank}.jsonl"
        buf: list[tuple[int, np.ndarray]] = []
        clip_no = 0

        def flush() -> int:
            nonlocal clip_no
            mine = clip_no % world == rank
            clip_no += 1
            batch = [(i, f) for i, f in buf if f"{rec}_{i:06d}" not in done]
            if not mine or not batch:
                return 0
            labels = label_frames(ts, [f for _, f in batch])
            return write_labelled_clip(ds, rec, batch, labels, out_path)

        for i, frame in read_video(rec_path, every=every, limit=limit):
            buf.append((i, frame))
            if len(buf) >= clip:
                new += flush()
                bar.update(len(buf), new=new)
                buf = []
        if buf:
            new += flush()
            bar.update(len(buf), new=new)
    bar.close(new=new)
    for t in ts.masks:
        getattr(t, "close", lambda: None)()
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
    summary = {"new_frames": new, "teachers": [t.name for t in ts.masks], "pose_teachers": [t.name for t in ts.poses], "skipped": ts.skipped}
    if rank == 0:
        records = merge_records(ds)
        summary["frames"] = len(records)
        log(f"labelled {new} new frames; dataset holds {len(records)} frames")
    return summary


def write_labelled_clip(ds: Path, rec: str, batch: list[tuple[int, np.ndarray]], labels: list[Any], out_path: Path) -> int:
    """Write a clip's frames, masks and records (one append per clip; a torn line is skipped on resume)."""
    from muse.studio.filter import measure

    lines = []
    for (i, frame), lab in zip(batch, labels):
        fid = f"{rec}_{i:06d}"
        write_image(ds / "frames" / f"{fid}.jpg", frame)
        write_image(ds / "masks" / f"{fid}.png", np.clip(lab.mask * 255 + 0.5, 0, 255).astype(np.uint8))
        stats = measure(frame, lab.mask, lab.keypoints, lab.agreement)
        lines.append(json.dumps({
            "id": fid, "recording": rec, "index": i,
            "frame": f"frames/{fid}.jpg", "mask": f"masks/{fid}.png",
            "teacher": lab.teacher, "ious": lab.ious,
            "keypoints": None if lab.keypoints is None else np.round(lab.keypoints, 2).tolist(),
            "skeleton": lab.skeleton, "stats": stats,
        }))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a") as fh:
        fh.write("\n".join(lines) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    """Under torchrun: `torchrun --nproc_per_node N -m muse.studio.label PROFILE` (each rank labels its share of clips)."""
    import argparse
    import sys

    from muse.studio.profiles import load_profile
    from muse.studio.distributed import setup_distributed

    ap = argparse.ArgumentParser(prog="muse.studio.label")
    ap.add_argument("profile")
    ap.add_argument("--root")
    ap.add_argument("--offline", action="store_true", help="only the offline teachers (clean plate, bundled models)")
    a = ap.parse_args(argv)
    _, _, dev = setup_distributed()
    try:
        label_profile(load_profile(a.profile, a.root), device=str(dev), offline_only=a.offline)
    except StudioError as exc:
        print(f"muse studio label: {exc}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
