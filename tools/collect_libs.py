"""Collect the NVIDIA shared libraries torch and CuPy (and TensorRT, when installed) really load
into one folder, `libs/`, with a manifest of versions and hashes; `--check` verifies a copy.

    python tools/collect_libs.py --dest build/libs          # collect
    python tools/collect_libs.py --check dist/muse/libs     # verify a build (exit 1 on a problem)

What counts as "loaded": a fresh Python imports torch (and cupy / tensorrt when present) and reads
its own /proc/self/maps. Libraries load lazily too (cuDNN's engine libraries, NVRTC's builtins), so
every shared library beside a loaded one in the same NVIDIA package folder is taken as well.
The driver (libcuda.so.1, libnvidia-*) is never collected: it belongs to the user's driver.
The manifest lists the files in dependency order (from each file's DT_NEEDED), the order in which
the packaged app preloads them (muse/libs_first.py). Linux only for collecting; Windows would use the
DLLs under the same packages.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # muse.libs_first, from a checkout

MANIFEST = "manifest.json"
DRIVER_LIBS = re.compile(r"^(libcuda\.so|libnvidia-|libnvcuvid|libnvidia)")
CUDA_NAMES = re.compile(r"(cuda|cublas|cudnn|cufft|curand|cusolver|cusparse|nccl|nvrtc|nvjitlink|nvshmem|cupti|cufile|nvtx|nvtoolsext|nvinfer|nvonnxparser)", re.I)

_PROBE = r"""
import json, sys
loaded = {}
try:
    import torch  # noqa
    loaded["torch"] = torch.__version__ + " (CUDA " + str(torch.version.cuda) + ")"
except Exception as exc:
    loaded["torch"] = "not importable: " + str(exc)
for mod in ("cupy", "tensorrt"):
    try:
        m = __import__(mod)
        loaded[mod] = getattr(m, "__version__", "?")
        if mod == "cupy":
            try:  # CuPy loads its CUDA libraries when first used; without a GPU this fails, which is fine
                import cupy.cuda.runtime, cupy.cuda.nvrtc  # noqa
            except Exception:
                pass
    except Exception:
        pass
maps = sorted({l.split(None, 5)[5].strip() for l in open("/proc/self/maps") if len(l.split(None, 5)) == 6 and ".so" in l})
print(json.dumps({"versions": loaded, "maps": maps}))
"""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def probe(python: str = sys.executable) -> dict:
    """What a fresh interpreter maps after importing torch/cupy/tensorrt."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _owners() -> dict[str, tuple[str, str]]:
    """Resolved file path -> (distribution, version) for the nvidia-*/cupy/tensorrt wheels."""
    owners: dict[str, tuple[str, str]] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if not (name.startswith("nvidia-") or name.startswith("cupy") or name.startswith("tensorrt")):
            continue
        for f in dist.files or []:
            if ".so" in f.name or f.name.lower().endswith(".dll"):
                owners[str(Path(dist.locate_file(f)).resolve())] = (dist.metadata["Name"], dist.version)
    return owners


def needed(path: Path) -> list[str]:
    """DT_NEEDED entries of an ELF file (readelf from binutils)."""
    try:
        out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def soname(path: Path) -> str:
    try:
        out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return path.name
    m = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", out)
    return m.group(1) if m else path.name


def dependency_order(files: list[Path]) -> list[Path]:
    """Topological order over DT_NEEDED among `files` (dependencies first); ties by name."""
    by_name: dict[str, Path] = {}
    for f in files:
        by_name[f.name] = f
        by_name[soname(f)] = f
    deps = {f: {by_name[n] for n in needed(f) if n in by_name and by_name[n] != f} for f in files}
    order: list[Path] = []
    done: set[Path] = set()
    visiting: set[Path] = set()

    def visit(f: Path) -> None:
        if f in done or f in visiting:
            return
        visiting.add(f)
        for d in sorted(deps[f], key=lambda p: p.name):
            visit(d)
        visiting.discard(f)
        done.add(f)
        order.append(f)

    for f in sorted(files, key=lambda p: p.name):
        visit(f)
    return order


def find_libraries(info: dict) -> list[Path]:
    """The NVIDIA libraries to ship: the loaded ones plus their siblings in the same package folder."""
    loaded = [Path(p) for p in info["maps"] if Path(p).exists()]
    picked: set[Path] = set()
    for p in loaded:
        name = p.name
        if DRIVER_LIBS.match(name) or not CUDA_NAMES.search(name):
            continue
        parts = p.resolve().parts
        if "nvidia" in parts or "cupy" in " ".join(parts) or "tensorrt" in " ".join(parts).lower():
            for sib in p.parent.iterdir():
                if sib.is_file() and (".so" in sib.name) and not DRIVER_LIBS.match(sib.name):
                    picked.add(sib.resolve())
        elif "torch" not in parts:  # a system CUDA library (e.g. /usr/local/cuda): ship the loaded file
            picked.add(p.resolve())
    return sorted(picked)


def collect(dest: Path, python: str = sys.executable) -> dict:
    t0 = time.perf_counter()
    info = probe(python)
    libs = find_libraries(info)
    if not libs:
        raise SystemExit("collect_libs: torch/CuPy loaded no NVIDIA libraries (a CPU-only torch?); nothing to collect")
    names = [p.name for p in libs]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SystemExit(f"collect_libs: two different libraries share a file name: {sorted(dupes)}")
    if dest.exists():
        if not (dest / MANIFEST).exists() and any(dest.iterdir()):
            raise SystemExit(f"collect_libs: {dest} exists and is not a libs/ folder written by this tool; choose another --dest")
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    owners = _owners()
    mapped = {str(Path(m).resolve()) for m in info["maps"]}
    entries = []
    for src in dependency_order(libs):
        target = dest / src.name
        shutil.copy2(src, target)
        dist, version = owners.get(str(src), ("", ""))
        entries.append({"file": src.name, "soname": soname(src), "package": dist, "version": version,
                        "sha256": sha256(target), "size": target.stat().st_size, "source": str(src),
                        # loaded at import time when collected; the others are their lazily loaded siblings
                        "required": str(src) in mapped})
    manifest = {
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "versions": info["versions"],
        "libraries": entries,
        "total_bytes": sum(e["size"] for e in entries),
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    print(f"collect_libs: {len(entries)} libraries, {manifest['total_bytes'] / 2**20:.0f} MiB -> {dest} "
          f"in {time.perf_counter() - t0:.1f} s")
    return manifest


def check(libs: Path) -> list[str]:
    """Problems with a libs/ folder (empty list: it matches its manifest, sha256 included)."""
    from muse.libs_first import check_libs

    return check_libs(libs, hashes=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=Path("build/libs"), help="folder to write (replaced if it holds an earlier collection)")
    ap.add_argument("--check", type=Path, metavar="LIBS", help="verify a libs/ folder against its manifest instead")
    ap.add_argument("--python", default=sys.executable, help="the interpreter whose torch/CuPy to probe")
    args = ap.parse_args(argv)
    if args.check:
        problems = check(args.check)
        for p in problems:
            print(f"collect_libs --check: {p}", file=sys.stderr)
        if not problems:
            n = len(json.loads((args.check / MANIFEST).read_text())["libraries"])
            print(f"collect_libs --check: {args.check}: {n} libraries match the manifest")
        return 1 if problems else 0
    collect(args.dest, args.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
