"""`muse doctor`: what MUSE found on this machine and what to do about each problem.

    muse doctor            # readable report; exit 1 when something blocks MUSE from running
    muse doctor --json     # the same, machine-readable
    muse doctor --full     # also hash every library in libs/ against its manifest (slower)

Sections: the app (packaged or checkout, assets), libs/ (the packaged NVIDIA libraries and whether
they were loaded first), GPU and driver, CUDA runtime (which CUDA libraries were loaded from where),
cameras, the virtual-camera driver, the bundled models and their hashes, free disk. A missing GPU,
camera or virtual camera is a warning: MUSE then runs on the CPU path, the demo source and the preview.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

OK, WARN, ERROR = "ok", "warning", "problem"
MIN_FREE_GB = 5.0  # a Studio recording session writes a few GB
CUDA_DRIVER_FOR = {"13": "580", "12": "525"}  # CUDA major -> the minimum Linux driver branch


@dataclass
class Check:
    section: str
    status: str
    summary: str
    details: list[str] = field(default_factory=list)
    fix: str = ""


def _app() -> Check:
    import muse
    from muse.app_paths import app_root, assets_dir, is_frozen

    kind = "packaged app" if is_frozen() else "Python install"
    details = [f"app folder: {app_root()}", f"assets: {assets_dir()}",
               f"Python {platform.python_version()} ({sys.executable})", f"platform: {platform.platform()}"]
    if not assets_dir().is_dir():
        return Check("app", WARN, f"muse {muse.__version__} ({kind}); no assets/ folder", details,
                     "the bundled models then come from the user cache (`muse models import`); set MUSE_ASSETS to an assets/ folder")
    return Check("app", OK, f"muse {muse.__version__} ({kind})", details)


def _libs(full: bool) -> Check:
    from muse import libs_first
    from muse.app_paths import is_frozen, libs_dir

    libs = libs_dir()
    if not libs.is_dir():
        if is_frozen():
            return Check("libs", WARN, "this build has no libs/ folder (built with --no-libs)", [],
                         "the GPU path then needs a CUDA install matching torch; or use a build with libs/")
        return Check("libs", OK, "not a packaged app: CUDA libraries come from the Python environment")
    problems = libs_first.check_libs(libs, hashes=full)
    details = [f"folder: {libs}", f"preloaded at start: {len(libs_first.LOADED)} libraries "
               f"({libs_first.STATE.get('mode', 'not started through the packaged entry point')})"]
    details += [f"optional, not loaded: {s}" for s in libs_first.SKIPPED]
    problems += [f"would not load: {p}" for p in libs_first.PROBLEMS]
    if problems:
        return Check("libs", ERROR, f"libs/ has {len(problems)} problem(s)", details + problems,
                     "the package was changed or damaged after the build: reinstall/re-extract it")
    return Check("libs", OK, f"libs/ matches its manifest{' (sha256 checked)' if full else ' (sizes; --full hashes)'}", details)


def _driver_version() -> tuple[str | None, str]:
    """(driver's CUDA version 'major.minor', detail) straight from libcuda, torch or no torch."""
    import ctypes

    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:  # (PyInstaller's wording blames the build; the driver library is never bundled)
        return None, f"{name} not found: it comes with the NVIDIA driver, which is not installed or not loadable"
    v = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
        return None, f"{name} loaded but cuDriverGetVersion failed"
    return f"{v.value // 1000}.{(v.value % 1000) // 10}", f"{name} supports CUDA {v.value // 1000}.{(v.value % 1000) // 10}"


def _gpu() -> Check:
    import torch

    need = CUDA_DRIVER_FOR.get(str(torch.version.cuda or "").split(".")[0], "a recent")
    driver_cuda, detail = _driver_version()
    details = [detail, f"torch {torch.__version__} built for CUDA {torch.version.cuda}"]
    if torch.version.cuda is None:
        return Check("gpu", WARN, "this torch has no CUDA support: CPU path only", details,
                     "use the CUDA build of the package (or `pip install torch==2.14.1` from the CUDA index)")
    if driver_cuda is None:
        return Check("gpu", WARN, "no NVIDIA driver found: MUSE runs on the CPU path", details,
                     f"on a machine with an NVIDIA GPU install the NVIDIA driver (branch {need} or newer for CUDA {torch.version.cuda})")
    if not torch.cuda.is_available():
        return Check("gpu", WARN, "NVIDIA driver present but no usable GPU: CPU path", details,
                     f"check `nvidia-smi`; this build needs driver branch {need}+ (driver supports CUDA {driver_cuda}, torch wants {torch.version.cuda})")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        details.append(f"cuda:{i} {p.name}, compute {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    return Check("gpu", OK, f"{torch.cuda.get_device_name(0)} (driver supports CUDA {driver_cuda})", details)


def _cuda_runtime() -> Check:
    import torch

    from muse.app_paths import is_frozen, libs_dir
    from muse.libs_first import loaded_libraries

    details = [f"torch CUDA {torch.version.cuda}"]
    try:
        details.append(f"cuDNN {torch.backends.cudnn.version()}")
    except Exception as exc:  # cuDNN missing from this torch or unloadable
        details.append(f"cuDNN: not loadable ({exc})")
    try:
        import cupy  # noqa: F401

        details.append(f"CuPy {cupy.__version__}")
    except Exception:
        details.append("CuPy: not installed (custom kernels use their torch fallbacks)")
    loaded = loaded_libraries()
    libs = str(libs_dir().resolve())
    outside, doubled = [], []
    for name, paths in sorted(loaded.items()):
        first = paths[0]
        mine = first.startswith(libs + os.sep)
        details.append(f"{name}: {first}" + (" (libs/)" if mine else ""))
        if len(paths) > 1:
            doubled.append(f"{name}: {', '.join(paths)}")
        is_driver = name.startswith("libcuda.so") or name.startswith("libnvidia")
        if is_frozen() and libs_dir().is_dir() and not mine and not is_driver and "torch" not in Path(first).parts:
            outside.append(f"{name} from {first}")
    if not loaded:
        return Check("cuda", WARN, "no CUDA libraries loaded (CPU-only torch or not Linux)", details)
    if outside or doubled:
        return Check("cuda", ERROR if outside else WARN,
                     f"{len(outside)} CUDA librar{'y' if len(outside) == 1 else 'ies'} from outside libs/, {len(doubled)} loaded twice",
                     details + [f"outside libs/: {o}" for o in outside] + [f"two copies: {d}" for d in doubled],
                     "something preloads other CUDA libraries (LD_PRELOAD?); start the app without LD_PRELOAD")
    return Check("cuda", OK, f"{len(loaded)} CUDA libraries loaded" + (" from libs/" if is_frozen() and libs_dir().is_dir() else ""), details)


def _cameras() -> Check:
    from muse.nodes.capture.cameras import describe_cameras

    cams = describe_cameras("auto")
    if not cams:
        hint = ("plug in a camera; on Linux check that your user is in the `video` group (`ls -l /dev/video*`)"
                if sys.platform.startswith("linux") else "plug in a camera and allow camera access for MUSE in the system settings")
        return Check("cameras", WARN, "no camera found: graphs with `fallback: demo` use the demo source", [], hint)
    return Check("cameras", OK, f"{len(cams)} camera(s)", [f"{c.index}: {c.name} ({c.path or c.backend})" for c in cams])


def _virtualcam() -> Check:
    from muse.nodes.output.virtualcam import open_camera, install_hint

    try:
        cam = open_camera(320, 240, 30.0, "rgb", "", "")
    except ImportError as exc:
        return Check("virtualcam", WARN, f"pyvirtualcam is missing ({exc})", [], "reinstall MUSE")
    except Exception as exc:  # pyvirtualcam lists each backend's reason
        return Check("virtualcam", WARN, "no virtual-camera driver: `output.virtualcam` falls back to the preview",
                     [line for line in str(exc).splitlines() if line.strip()][:4], install_hint())
    try:
        detail = f"{cam.device} via {cam.backend}"
    finally:
        cam.close()
    return Check("virtualcam", OK, f"virtual camera available: {detail}")


def _models() -> Check:
    from muse.models import bundled

    details, bad = [], []
    for row in bundled.verify_models(parity=False):
        name = row["name"]
        folder = bundled.model_dir(name)
        where = "assets/" if folder == bundled.shipped_model_dir(name) else "user cache"
        if row["ok"]:
            sha = bundled.read_manifest(name).get("torch_sha256", "")
            details.append(f"{name}: {where} {folder} (.pt sha256 {sha[:16]}..., matches its manifest)")
        else:
            bad.append(name)
            details.append(f"{name}: {'; '.join(row.get('problems') or ['not found'])}")
    if bad:
        return Check("models", ERROR, f"{len(bad)} of {len(details)} bundled models missing or changed", details,
                     f"run `muse models import --force {' '.join(bad)} --from /path/to/mediapipe-0.10.14-<platform>.whl` "
                     "(or reinstall the package, whose assets/ holds them)")
    return Check("models", OK, f"{len(details)} bundled models verified", details)


def _disk() -> Check:
    from muse.app_paths import app_root
    from muse.models.bundled import cache_root

    places = {"app": app_root(), "cache": cache_root(), "profiles and recordings": Path.home() / ".muse"}
    details, low, lowest = [], [], float("inf")
    for what, path in places.items():
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free / 2**30
        lowest = min(lowest, free)
        details.append(f"{what}: {path} ({free:.1f} GiB free)")
        if free < MIN_FREE_GB:
            low.append(what)
    if low:
        return Check("disk", ERROR if lowest < 1 else WARN, f"little free disk for {', '.join(low)} ({lowest:.1f} GiB)", details,
                     f"free at least {MIN_FREE_GB:g} GB (recordings and Studio training write several GB)")
    return Check("disk", OK, f"{lowest:.0f} GiB free or more", details)


CHECKS: list[tuple[str, Callable[..., Check]]] = [
    ("app", _app), ("libs", _libs), ("gpu", _gpu), ("cuda", _cuda_runtime), ("cameras", _cameras),
    ("virtualcam", _virtualcam), ("models", _models), ("disk", _disk),
]


def run_checks(full: bool = False) -> list[Check]:
    """Every check; a check that crashes is reported as a problem, never hides the others."""
    out = []
    for name, fn in CHECKS:
        try:
            out.append(fn(full) if name == "libs" else fn())
        except Exception as exc:
            out.append(Check(name, ERROR, f"the check itself failed: {type(exc).__name__}: {exc}", [],
                             "report this with the output of `muse doctor --json`"))
    return out


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_checks(full=args.full)
    if args.json:
        print(json.dumps({"checks": [asdict(c) for c in checks]}, indent=2))
    else:
        mark = {OK: "ok  ", WARN: "warn", ERROR: "FAIL"}
        for c in checks:
            print(f"[{mark[c.status]}] {c.section:<10} {c.summary}")
            if args.verbose or c.status != OK:
                for d in c.details:
                    print(f"              {d}")
            if c.fix:
                print(f"              what to do: {c.fix}")
        n_err = sum(c.status == ERROR for c in checks)
        n_warn = sum(c.status == WARN for c in checks)
        print(f"\n{n_err} problem(s), {n_warn} warning(s)" + ("" if args.verbose else "; `muse -v doctor` shows every detail"))
    return 1 if any(c.status == ERROR for c in checks) else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check GPU, CUDA libraries, cameras, virtual camera, models and disk; say what to fix")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--full", action="store_true", help="also hash every library in libs/ (slower)")
    p.set_defaults(func=cmd_doctor)
