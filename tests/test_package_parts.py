"""The pieces of the self-contained package that run without building it: assets lookup,
models read from the package's assets/models, libs/ collection order and checks, the libs/
preload winning over a misleading LD_LIBRARY_PATH, and `muse doctor`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import collect_libs  # noqa: E402

from muse import app_paths, libs_first  # noqa: E402
from muse.models import bundled  # noqa: E402

NVIDIA = Path(__import__("torch").__file__).resolve().parents[1] / "nvidia"
CUDART = sorted(NVIDIA.glob("*/lib/libcudart.so.*"))


@pytest.fixture()
def shipped(tmp_path, monkeypatch):
    """An assets/ folder with one bundled model copied in (as the build does), and an empty user cache."""
    src = bundled.cache_model_dir("selfie_segmentation")
    if not (src / "manifest.json").exists():
        pytest.skip("selfie_segmentation is not imported here (`muse models import`)")
    assets = tmp_path / "assets"
    shutil.copytree(src, assets / "models" / "selfie_segmentation")
    monkeypatch.setenv("MUSE_ASSETS", str(assets))
    monkeypatch.setenv("MUSE_CACHE", str(tmp_path / "empty-cache"))
    return assets


def test_assets_folder_holds_the_demo_media():
    # The demo photos have one home, the package's muse/assets (a checkout, pip and the packaged app alike);
    # MUSE_ASSETS (models) does not move them.
    demo = app_paths.demo_media("astronaut.png")
    assert demo.is_file() and demo.parent == ROOT / "muse" / "assets"
    assert not (ROOT / "assets" / "demo").exists(), "a second copy of the demo photos"
    import cv2
    from skimage import data

    from muse.nodes.capture.demo import _photo

    assert cv2.imread(str(demo)) is not None
    assert (_photo("astronaut") == data.astronaut()).all()  # the shipped copy is the same photo, losslessly


def test_models_are_read_from_the_package_assets(shipped, astronaut):
    import torch

    assert bundled.model_dir("selfie_segmentation") == shipped / "models" / "selfie_segmentation"
    assert bundled.is_imported("selfie_segmentation")
    bundled._loaded.clear()
    model = bundled.load_model("selfie_segmentation")
    x = torch.from_numpy(astronaut).permute(2, 0, 1)[None].float() / 255
    (mask,) = model(torch.nn.functional.interpolate(x, size=(256, 256), mode="area"))
    assert 0.2 < float(mask.mean()) < 0.8  # the astronaut is found, not an empty or full mask
    rows = bundled.verify_models(["selfie_segmentation"], parity=False)
    assert rows[0]["ok"], rows
    # A user import goes to the user's cache, never into the package.
    assert bundled.cache_model_dir("selfie_segmentation").is_relative_to(Path(os.environ["MUSE_CACHE"]))


def test_a_changed_shipped_model_is_reported_by_doctor(shipped):
    from muse import doctor

    pt = shipped / "models" / "selfie_segmentation" / "selfie_segmentation.pt"
    pt.write_bytes(pt.read_bytes()[:-10] + b"0123456789")
    check = doctor._models()
    assert check.status == doctor.ERROR
    assert any("selfie_segmentation" in d and "changed since import" in d for d in check.details)
    assert "muse models import" in check.fix


@pytest.mark.skipif(not CUDART, reason="no pip NVIDIA libraries here")
def test_dependency_order_puts_dependencies_first():
    lib = CUDART[0].parent
    files = [lib / n for n in ("libcublas.so.13", "libcublasLt.so.13", "libcudart.so.13") if (lib / n).exists()]
    if len(files) < 3:
        pytest.skip("cuBLAS not beside cudart here")
    order = [p.name for p in collect_libs.dependency_order(files)]
    assert order.index("libcublasLt.so.13") < order.index("libcublas.so.13")  # libcublas needs libcublasLt


def _small_libs(tmp_path: Path) -> Path:
    """A libs/ folder with the real libcudart (under 1 MB) and a manifest, as collect_libs writes it."""
    libs = tmp_path / "libs"
    libs.mkdir()
    shutil.copy2(CUDART[0], libs / CUDART[0].name)
    f = libs / CUDART[0].name
    entry = {"file": f.name, "soname": collect_libs.soname(f), "package": "nvidia-cuda-runtime", "version": "",
             "sha256": collect_libs.sha256(f), "size": f.stat().st_size, "source": str(CUDART[0]), "required": True}
    (libs / "manifest.json").write_text(json.dumps({"libraries": [entry]}))
    return libs


@pytest.mark.skipif(not CUDART, reason="no pip NVIDIA libraries here")
def test_check_finds_changed_missing_and_extra_libraries(tmp_path):
    libs = _small_libs(tmp_path)
    assert collect_libs.check(libs) == []
    lib = libs / CUDART[0].name
    data = bytearray(lib.read_bytes())
    data[-1] ^= 0xFF  # same size, different content: only the hash sees it
    lib.write_bytes(bytes(data))
    assert libs_first.check_libs(libs, hashes=False) == []
    assert any("sha256 differs" in p for p in collect_libs.check(libs))
    (libs / "libstray.so.1").write_bytes(b"x")
    assert any("libstray.so.1" in p for p in collect_libs.check(libs))
    lib.unlink()
    assert any("missing" in p for p in collect_libs.check(libs))
    assert collect_libs.main(["--check", str(libs)]) == 1


_PROBE = r"""
import ctypes, json, sys
sys.path.insert(0, {root!r})
from pathlib import Path
if sys.argv[1] == "preload":
    from muse import libs_first
    libs_first.put_libs_first(Path({libs!r}))
try:
    ctypes.CDLL({soname!r})  # how torch's libraries find it: by soname
    err = None
except OSError as exc:
    err = str(exc)
maps = [l.split(None, 5)[5].strip() for l in open("/proc/self/maps") if "libcudart" in l and len(l.split(None, 5)) == 6]
print(json.dumps({{"error": err, "paths": sorted(set(maps))}}))
"""


@pytest.mark.skipif(not CUDART or not sys.platform.startswith("linux"), reason="Linux with pip NVIDIA libraries")
def test_libs_folder_wins_over_a_misleading_ld_library_path(tmp_path):
    libs = _small_libs(tmp_path)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / CUDART[0].name).write_bytes(b"not a library: whoever loads this was misled by LD_LIBRARY_PATH")
    code = _PROBE.format(root=str(ROOT), libs=str(libs), soname=CUDART[0].name)
    env = {**os.environ, "LD_LIBRARY_PATH": str(decoy)}

    def run(mode: str) -> dict:
        out = subprocess.run([sys.executable, "-c", code, mode], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    misled = run("plain")  # control: without the preload the decoy is what the loader picks
    assert misled["error"] and "decoy" in misled["error"]
    kept = run("preload")
    assert kept["error"] is None
    assert kept["paths"] == [str(libs / CUDART[0].name)]


def test_doctor_reports_every_section_and_what_to_do(capsys):
    from muse.cli import main

    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    checks = {c["section"]: c for c in report["checks"]}
    assert list(checks) == ["app", "libs", "gpu", "cuda", "cameras", "virtualcam", "models", "disk"]
    assert checks["models"]["status"] == "ok" and len(checks["models"]["details"]) == len(bundled.list_models())
    for c in checks.values():
        assert c["status"] in ("ok", "warning", "problem")
        if c["status"] != "ok":
            assert c["fix"], f"{c['section']}: a warning without what to do"
    import torch

    if not torch.cuda.is_available():
        assert checks["gpu"]["status"] == "warning" and "CPU path" in checks["gpu"]["summary"]


def test_every_demo_background_is_shipped():
    """The packaged app has no scikit-image data files: every background the demo source offers is in muse/assets."""
    import typing

    from skimage import data

    from muse.nodes.capture.demo import Demo, _photo

    names = typing.get_args(Demo.Params.model_fields["background"].annotation)
    assert "room" in names
    for name in [n for n in names if n != "room"] + ["astronaut", "brick"]:
        assert app_paths.demo_media(f"{name}.png").is_file(), name
        assert (_photo(name) == getattr(data, name)()).all(), name
