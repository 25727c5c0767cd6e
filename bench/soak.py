"""Soak run of graphs/stream_4k.yaml on the demo source: memory slopes, fps drift, lost frames, as JSON.

    python bench/soak.py --seconds 540 --device cuda            # the 9-minute GPU soak
    nice -n 10 python bench/soak.py --seconds 1800 --device cpu  # 30 minutes on the CPU path

Prints one JSON object (and writes it to --json if given, never over an existing file unless
--force). See muse/graph/soak.py for what each figure means; docs/reliability.md for the limits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's muse, also when not installed

from muse.graph.registry import load_registry
from muse.graph.soak import REPO, soak_graph, stream_soak_text
from muse.graph.validate import validate_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="how long to run (default 120)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--size", default="3840x2160", help="demo source size, WxH (the CPU path captures at settings.cpu_resolution)")
    ap.add_argument("--fps", type=float, default=60.0, help="demo source rate (0 = as fast as it goes)")
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between samples (default: seconds/120, at least 1)")
    ap.add_argument("--graph", type=Path, default=None, help="another graph shaped like stream_4k.yaml (camera, composite, virtualcam)")
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    ap.add_argument("--force", action="store_true", help="replace an existing --json file")
    ap.add_argument("--samples", action="store_true", help="include every sample in the JSON")
    args = ap.parse_args(argv)
    if args.json is not None and args.json.exists() and not args.force:
        print(f"{args.json} exists; pass --force to replace it", file=sys.stderr)
        return 2
    w, h = (int(v) for v in args.size.lower().split("x"))
    text = stream_soak_text(w, h, args.fps, args.device, args.graph)
    graph = validate_text(text, str(args.graph or "graphs/stream_4k.yaml"), load_registry(), base_dir=(args.graph or REPO / "graphs" / "stream_4k.yaml").parent)
    interval = args.interval or max(1.0, args.seconds / 120.0)

    def progress(s):  # one line per sample on stderr: a long run shows it is alive
        print(f"t={s.t:7.1f}s frames={s.frames} rss={s.rss_mib:.1f}MiB gpu_reserved={s.gpu_reserved_mib:.1f}MiB",
              file=sys.stderr, flush=True)

    report = soak_graph(graph, args.seconds, device=None if args.device == "auto" else args.device,
                        interval=interval, progress=progress)
    out = report.as_dict()
    if args.samples:
        out["sample_series"] = [vars(s) for s in report.samples]
    out["node_p50_ms"] = {n: (s.get("gpu_ms") or s["host_ms"])["p50"] for n, s in report.stats["nodes"].items()}
    text_out = json.dumps(out, indent=2)
    print(text_out)
    if args.json is not None:
        args.json.write_text(text_out + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
