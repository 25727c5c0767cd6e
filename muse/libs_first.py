"""Put the packaged app's own NVIDIA libraries (libs/) first, before torch or CuPy load.

The packaged app must not depend on the user's CUDA install or on LD_LIBRARY_PATH / PATH:
- Linux: every library in libs/ is loaded by absolute path (RTLD_GLOBAL), in the dependency
  order `tools/collect_libs.py` wrote into libs/manifest.json. A library whose soname is already
  loaded is reused by the dynamic loader, so torch's own lookups (RUNPATH, LD_LIBRARY_PATH)
  never get the chance to pick another copy.
- Windows: `os.add_dll_directory(libs)` and libs/ first on PATH.

`put_libs_first()` is called by the frozen app's entry point (muse/__main__.py) before anything
imports torch; `muse doctor` reports what it did (`LOADED`, `PROBLEMS`). Only the standard library here.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

MANIFEST = "manifest.json"
LOADED: list[str] = []  # absolute paths loaded from libs/, in order
PROBLEMS: list[str] = []  # required libraries (torch loads them at import) that would not load, with the reason
SKIPPED: list[str] = []  # optional siblings that would not load (e.g. NVSHMEM's MPI transport without MPI)
STATE: dict[str, str] = {}  # "libs": the folder used; "mode": preload / dll-directory / none


def load_order(libs: Path) -> list[tuple[str, bool]]:
    """(file name, required) to load, dependencies first: the manifest's order, else every shared library."""
    try:
        manifest = json.loads((libs / MANIFEST).read_text())
        return [(entry["file"], bool(entry.get("required", True))) for entry in manifest["libraries"]]
    except (OSError, ValueError, KeyError, TypeError):
        return sorted((p.name, True) for p in libs.iterdir() if ".so" in p.name or p.suffix.lower() == ".dll")


def put_libs_first(libs: Path | None = None) -> bool:
    """Load/register libs/ (default: the app's libs/). False when there is no libs/ folder."""
    if libs is None:
        from muse.app_paths import libs_dir

        libs = libs_dir()
    if not libs.is_dir():
        STATE.update(libs=str(libs), mode="none")
        return False
    STATE["libs"] = str(libs)
    if sys.platform == "win32":
        os.add_dll_directory(str(libs))  # type: ignore[attr-defined]
        os.environ["PATH"] = str(libs) + os.pathsep + os.environ.get("PATH", "")
        STATE["mode"] = "dll-directory"
        return True
    STATE["mode"] = "preload"
    pending = load_order(libs)
    # Dependency order normally loads everything in one pass; a second pass covers a manifest
    # written without order (a library then finds its already-loaded dependency by soname).
    # Siblings are preloaded too so a lazy dlopen by soname (cuDNN's engines) finds the loaded copy.
    failed: list[tuple[str, bool, str]] = []
    for _ in range(2):
        failed = []
        for name, required in pending:
            path = libs / name
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                LOADED.append(str(path))
            except OSError as exc:
                failed.append((name, required, str(exc)))
        pending = [(name, required) for name, required, _ in failed]
        if not pending:
            break
    for name, required, why in failed:
        (PROBLEMS if required else SKIPPED).append(f"{name}: {why}")
    return True


def loaded_libraries(pattern: tuple[str, ...] = ("cuda", "cublas", "cudnn", "cufft", "curand", "cusolver",
                                                  "cusparse", "nccl", "nvrtc", "nvjitlink", "nvshmem", "cupti",
                                                  "cufile", "nvtoolsext", "nvtx", "nvinfer", "libtorch_cuda")) -> dict[str, list[str]]:
    """File name -> paths of every CUDA-related library this process has mapped (Linux; empty elsewhere).
    Two paths for one name mean two copies are loaded (the first one loaded serves soname lookups)."""
    found: dict[str, list[str]] = {}
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or ".so" not in parts[5]:
            continue
        path = parts[5].strip()
        name = os.path.basename(path)
        if any(p in name.lower() for p in pattern) and path not in found.get(name, []):
            found.setdefault(name, []).append(path)
    return found


def check_libs(libs: Path, *, hashes: bool = True) -> list[str]:
    """Problems with a libs/ folder against its manifest (empty list: it matches).
    `hashes=False` compares sizes only (fast enough for every `muse doctor`)."""
    import hashlib

    try:
        manifest = json.loads((libs / MANIFEST).read_text())
    except FileNotFoundError:
        return [f"{libs / MANIFEST} is missing; rebuild with tools/build_package.py"]
    except ValueError as exc:
        return [f"{libs / MANIFEST} is not valid JSON ({exc})"]
    problems = []
    listed = set()
    for e in manifest.get("libraries", []):
        f = libs / e["file"]
        listed.add(e["file"])
        if not f.is_file():
            problems.append(f"{f}: missing")
            continue
        if f.stat().st_size != e["size"]:
            problems.append(f"{f}: size differs from the manifest; the package was changed after the build")
            continue
        if hashes:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            if h.hexdigest() != e["sha256"]:
                problems.append(f"{f}: sha256 differs from the manifest; the package was changed after the build")
    extra = sorted(p.name for p in libs.iterdir() if p.name != MANIFEST and p.name not in listed)
    if extra:
        problems.append(f"{libs}: files not in the manifest: {', '.join(extra)}")
    if not manifest.get("libraries"):
        problems.append(f"{libs / MANIFEST}: lists no libraries")
    return problems
