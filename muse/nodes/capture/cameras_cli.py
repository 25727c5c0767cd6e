"""`muse cameras`: list the cameras here with their names, indices and modes,
so a graph can pick one (`device: "1"` or `device: "Cam Link"`)."""

from __future__ import annotations

import argparse
import json

BACKENDS = ["auto", "dshow", "msmf", "v4l2", "avfoundation", "gstreamer"]


def cmd_cameras(args: argparse.Namespace) -> int:
    from muse.nodes.capture.cameras import describe_cameras

    try:
        cams = describe_cameras(args.backend, probe=args.probe)
    except NotImplementedError as exc:  # a backend this platform's enumerator does not know
        print(f"muse: cannot list cameras with backend {args.backend!r}: {exc}")
        return 1
    if args.json:
        print(json.dumps({"cameras": [c.as_dict() for c in cams]}, indent=2))
        return 0
    if not cams:
        print("no cameras found (graphs with `fallback: demo` still run, on the demo source)")
        return 0
    for cam in cams:
        extra = ", ".join(x for x in (cam.path, cam.usb_id and f"USB {cam.usb_id}", f"backend {cam.backend}") if x)
        print(f'{cam.index}: {cam.name}  ({extra})')
        for mode in cam.modes:
            print(f"     {mode}")
        if not cam.modes:
            print("     modes: unknown" + ("" if args.probe else " (try --probe: opens the camera and asks for common sizes)"))
    print('\nIn a graph: capture.camera params {device: "<index or part of the name>"}')
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cameras", help="list cameras with their names and modes")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="OpenCV backend whose indices to list (auto = the platform's usual one)")
    p.add_argument("--probe", action="store_true", help="where modes cannot be read, open each camera and try common sizes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_cameras)
