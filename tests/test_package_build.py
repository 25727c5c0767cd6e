"""The self-contained package, end to end: build dist/muse/ with tools/build_package.py, then run it
the way a streamer's machine would: `env -i` with only PATH=/usr/bin:/bin, HOME an empty temporary
folder, no venv, no network settings, and check --version, validate, doctor and a 60-frame run of
the main graph on the CPU path (demo source, preview), with the models from the package's assets/.

Marked `package`: it takes tens of minutes and several GB, so it runs only when asked for:

    python -m pytest -m package tests/test_package_build.py             # builds into a temp folder
    MUSE_PACKAGE_DIST=dist/muse python -m pytest -m package tests/test_package_build.py  # checks a build

(CI's 20-minute budget does not fit a torch freeze on 2 cores; see bench/RESULTS.md.)
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.package

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app():
    given = os.environ.get("MUSE_PACKAGE_DIST")
    if given:
        yield Path(given).resolve()
        return
    out = Path(tempfile.mkdtemp(prefix="muse-package-"))
    try:
        subprocess.run([sys.executable, str(ROOT / "tools" / "build_package.py"), "--out", str(out)],
                       check=True, timeout=3 * 3600)
        yield out / "muse"
    finally:
        shutil.rmtree(out, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def no_network_prefix() -> tuple[str, ...]:
    """`unshare -rn` + loopback up: a network namespace with only 127.0.0.1 (the preview still binds),
    where the user namespaces allow it; else () (then only the environment is clean)."""
    ip = shutil.which("ip") or ("/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else None)
    if not shutil.which("unshare") or not ip:
        return ()
    prefix = ["unshare", "-rn", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh"]
    try:
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return tuple(prefix) if ok else ()


def clean_run(app: Path, *args: str, timeout: float = 600, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """The app in a bare environment: `env -i` with only the system PATH, an empty HOME, no venv,
    and (where possible) no network."""
    home = tempfile.mkdtemp(prefix="muse-home-")
    try:
        env = [f"{k}={v}" for k, v in {"PATH": "/usr/bin:/bin", "HOME": home, **(extra_env or {})}.items()]
        cmd = [*no_network_prefix(), "env", "-i", *env, str(app / "muse"), *args]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        return out
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_the_check_runs_without_network():
    if not no_network_prefix():
        pytest.skip("no user/network namespaces here: the app runs with the network present")
    out = subprocess.run([*no_network_prefix(), "env", "-i", "PATH=/usr/bin:/bin", "python3", "-c",
                          "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0  # the namespace has no route out


def test_version(app):
    out = clean_run(app, "--version")
    assert out.returncode == 0, out.stderr
    import muse

    assert out.stdout.strip() == f"muse {muse.__version__}"


def test_validate_every_graph(app):
    graphs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "graphs").glob("*.yaml"))
    out = clean_run(app, "validate", *graphs)
    assert out.returncode == 0, out.stdout + out.stderr


def test_doctor_finds_models_in_the_package_and_libs_first(app):
    out = clean_run(app, "doctor", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    checks = {c["section"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["app"]["summary"].endswith("(packaged app)")
    assert checks["models"]["status"] == "ok"
    assert all(" assets/ " in d for d in checks["models"]["details"]), checks["models"]["details"]
    assert checks["libs"]["status"] == "ok", checks["libs"]
    assert checks["cuda"]["status"] == "ok", checks["cuda"]
    libs = str(app / "libs")
    cudart = [d for d in checks["cuda"]["details"] if d.startswith("libcudart")]
    assert cudart and libs in cudart[0]


def test_a_misleading_ld_library_path_does_not_win(app, tmp_path):
    """Decoys named like the CUDA libraries, first on LD_LIBRARY_PATH: the app still loads libs/."""
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    manifest = json.loads((app / "libs" / "manifest.json").read_text())
    for entry in manifest["libraries"]:
        (decoy / entry["soname"]).write_bytes(b"not a library: loading this means LD_LIBRARY_PATH won")
    out = clean_run(app, "doctor", "--json", extra_env={"LD_LIBRARY_PATH": str(decoy)})
    assert out.returncode == 0, out.stdout + out.stderr
    cuda = {c["section"]: c for c in json.loads(out.stdout)["checks"]}["cuda"]
    assert cuda["status"] == "ok", cuda
    assert not any(str(decoy) in d for d in cuda["details"])


def test_without_the_preload_the_decoys_would_win(app, tmp_path):
    """Control for the test above: with MUSE_LIBS_FIRST=0 the same decoys break torch's import."""
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    for entry in json.loads((app / "libs" / "manifest.json").read_text())["libraries"]:
        (decoy / entry["soname"]).write_bytes(b"not a library")
    out = clean_run(app, "doctor", "--json", extra_env={"LD_LIBRARY_PATH": str(decoy), "MUSE_LIBS_FIRST": "0"})
    cuda = {c["section"]: c for c in json.loads(out.stdout)["checks"]}["cuda"]
    assert out.returncode == 1 and cuda["status"] == "problem", cuda


def test_no_dangling_links_and_torchvision_ops_are_shipped(app):
    internal = app / "_internal"
    assert not [p for p in internal.rglob("*") if p.is_symlink() and not p.exists()]
    assert list((internal / "torchvision").glob("_C*.so")), "torchvision's ops library (nvJPEG decode) is missing"
    assert not (internal / "nvidia").exists()  # libs/ replaces the pip NVIDIA wheels: one copy only


def test_libs_match_their_manifest(app):
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "collect_libs.py"), "--check", str(app / "libs")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr


def test_main_graph_runs_60_frames_on_the_cpu_path(app):
    out = clean_run(app, "run", "graphs/stream_4k.yaml", "--frames", "60", "--no-status", timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "demo" in log  # no camera here: the demo source stood in, and said so
    assert "downloading" not in log.lower() and "importing it once" not in log  # models came from assets/


@pytest.mark.cuda
def test_on_the_gpu_the_app_uses_its_own_libraries(app, tmp_path):
    """GPU machine: the frozen app finds the GPU, runs the main graph on CUDA, and with a system
    CUDA (or decoys) first on LD_LIBRARY_PATH still maps every CUDA library from libs/."""
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    for entry in json.loads((app / "libs" / "manifest.json").read_text())["libraries"]:
        (decoy / entry["soname"]).write_bytes(b"not a library")
    misleading = os.pathsep.join([str(decoy), "/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu"])
    out = clean_run(app, "doctor", "--json", extra_env={"LD_LIBRARY_PATH": misleading})
    assert out.returncode == 0, out.stdout + out.stderr
    checks = {c["section"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["gpu"]["status"] == "ok", checks["gpu"]
    assert checks["cuda"]["status"] == "ok", checks["cuda"]
    run = clean_run(app, "run", "graphs/stream_4k.yaml", "--frames", "60", "--device", "cuda", "--no-status",
                    extra_env={"LD_LIBRARY_PATH": misleading}, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "frames in" in run.stdout + run.stderr
