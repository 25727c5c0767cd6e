"""The VMC avatar link's cost per frame on the CPU: the shared avatar solve
(bones from 33 body keypoints with depth, head, gaze, blendshapes from the
478-point face mesh), the smoothing, and building the OSC bundle of one frame
(21 bones + 15 VRM blendshapes), plus sending it over UDP to 127.0.0.1.

This runs in output.vmc's own thread, never in the frame's path; the figure says
how much CPU the link takes from the rest of the graph.

Run:  python bench/bench_vmc.py [--iterations 2000]
Keypoints come from the bundled pose and face models on real photos (messi5.jpg
turned so an arm is raised; the astronaut's face), run once before timing.
Prints one JSON line and a markdown row (with the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=2000)
    args = ap.parse_args()

    import numpy as np
    import torch

    import avatar_media
    from muse.nodes.face.tracker import FaceTracker
    from muse.nodes.motion.solve import AvatarSolver, Smoother
    from muse.nodes.motion.vmc import vmc_messages
    from muse.nodes.pose.tracker import BlazePoseTracker
    from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
    from pythonosc.osc_message_builder import OscMessageBuilder

    cpu = torch.device("cpu")
    body_img = torch.from_numpy(avatar_media.raised_arm()).permute(2, 0, 1).float() / 255
    face_img = torch.from_numpy(np.ascontiguousarray(avatar_media.face_crop())).permute(2, 0, 1).float() / 255
    pose = BlazePoseTracker("bench", cpu, torch.float32)
    face = FaceTracker("bench", cpu, torch.float32)
    for _ in range(2):
        r = pose(body_img)
        f = face(face_img)
    body, conf, mesh = r["points"].numpy(), r["visibility"].numpy(), f["points"].numpy()

    solver, smoother = AvatarSolver(), Smoother(0.5, 0.2)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = ("127.0.0.1", 9)  # discard port: nothing listens, UDP does not wait
    solve_ms, build_ms, send_ms = [], [], []
    rng = np.random.default_rng(0)
    for i in range(args.iterations):
        jitter = rng.normal(0, 1.0, body.shape)  # a live stream never repeats the exact numbers
        t0 = time.perf_counter()
        s = smoother(solver.solve(body + jitter, conf, mesh, 1.0), i / 30)
        t1 = time.perf_counter()
        bundle = OscBundleBuilder(IMMEDIATELY)
        for address, values in vmc_messages(s, t=i / 30):
            m = OscMessageBuilder(address=address)
            for v in values:
                m.add_arg(v)
            bundle.add_content(m.build())
        data = bundle.build().dgram
        t2 = time.perf_counter()
        try:
            sock.sendto(data, target)
        except OSError:
            pass
        t3 = time.perf_counter()
        solve_ms.append((t1 - t0) * 1000)
        build_ms.append((t2 - t1) * 1000)
        send_ms.append((t3 - t2) * 1000)

    def p(xs: list[float], q: float) -> float:
        return round(statistics.quantiles(xs, n=100)[int(q) - 1], 3)

    total = [a + b + c for a, b, c in zip(solve_ms, build_ms, send_ms)]
    load = [round(x, 2) for x in os.getloadavg()]
    out = {
        "bench": "vmc", "iterations": args.iterations, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_1_5_15": load, "bundle_bytes": len(data),
        "solve_ms_p50": p(solve_ms, 50), "solve_ms_p95": p(solve_ms, 95),
        "osc_build_ms_p50": p(build_ms, 50), "send_ms_p50": p(send_ms, 50),
        "total_ms_p50": p(total, 50), "total_ms_p95": p(total, 95),
    }  # fmt: skip
    print(json.dumps(out))
    print(f"| solve + smooth | {out['solve_ms_p50']} ms p50, {out['solve_ms_p95']} p95 |")
    print(f"| OSC bundle build ({len(data)} bytes) | {out['osc_build_ms_p50']} ms p50 |")
    print(f"| UDP send | {out['send_ms_p50']} ms p50 |")
    print(f"| whole frame | {out['total_ms_p50']} ms p50, {out['total_ms_p95']} p95 (load average {load[0]}, {load[1]}, {load[2]} on {os.cpu_count()} cores) |")


if __name__ == "__main__":
    main()
