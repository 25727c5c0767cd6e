"""Cost of the editor's live preview on the runtime thread, on CUDA.

The editor taps one output per frame; the tap shrinks the picture on a side
stream and copies it to pinned memory without waiting for the GPU. This prints
how long the tap call blocks the runtime thread (host time, what matters for
the frame budget) and how long until the picture is on the host, for 1080p and
4K frames and masks. Run from the repo root:  python bench/editor_preview.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

import torch  # noqa: E402

from muse.editor.preview import PreviewTap  # noqa: E402
from muse.graph.payloads import Frame, Mask  # noqa: E402


def bench(kind: str, width: int, height: int, runs: int = 200) -> dict:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    if kind == "frame":
        payload = Frame(torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, device=dev, generator=g))
    else:
        payload = Mask(torch.rand((height, width), device=dev, generator=g, dtype=torch.float16))
    tap = PreviewTap(480, 270)
    call_ms, ready_ms = [], []
    for i in range(runs + 10):
        torch.cuda.synchronize()  # the bench measures one tap at a time; nodes never sync
        t0 = time.perf_counter()
        tap(payload)
        t1 = time.perf_counter()
        while tap.poll() is None:
            pass
        t2 = time.perf_counter()
        if i >= 10:
            call_ms.append((t1 - t0) * 1e3)
            ready_ms.append((t2 - t0) * 1e3)
    return {
        "payload": kind, "size": f"{width}x{height}",
        "tap_call_ms_p50": round(statistics.median(call_ms), 3),
        "tap_call_ms_p99": round(sorted(call_ms)[int(0.99 * (len(call_ms) - 1))], 3),
        "picture_ready_ms_p50": round(statistics.median(ready_ms), 3),
    }


def main() -> None:
    if not torch.cuda.is_available():
        print(json.dumps({"error": "needs a CUDA GPU"}))
        sys.exit(1)
    results = [bench(k, w, h) for k in ("frame", "mask") for (w, h) in ((1920, 1080), (3840, 2160))]
    print(json.dumps({"bench": "editor_preview", "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                      "results": results}))


if __name__ == "__main__":
    main()
