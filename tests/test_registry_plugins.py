"""Registry: built-ins and plugins through the `muse.nodes` entry point, plugin
folders, failure isolation, duplicate ids, "did you mean"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from muse.graph.registry import Registry, RegistryError, load_registry

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def acme_installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """pip-install the fixture plugin package as a plugin author's users would, but into a temporary
    target folder: the environment running the tests is left as it was (`pip list` unchanged).
    Returns the environment a `muse` subprocess needs to see it (the target on PYTHONPATH)."""
    import shutil

    src = tmp_path_factory.mktemp("acme") / "muse_acme"  # build outside the repo: no build/ left in tests/
    shutil.copytree(FIXTURES / "muse_acme", src)
    target = tmp_path_factory.mktemp("acme-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-compile",
                    "--target", str(target), str(src)], check=True)
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def _muse(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "muse.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_builtins_come_through_the_entry_point() -> None:
    reg = load_registry(fresh=True)
    assert "basic.invert" in reg and "flow.switch" in reg
    assert reg.source_of("basic.invert").startswith("entry point builtin")


def test_plugin_package_is_discovered_listed_and_runs(acme_installed: dict[str, str], tmp_path: Path) -> None:
    out = _muse("nodes", "--json", env=acme_installed)
    assert out.returncode == 0, out.stderr
    nodes = {n["id"]: n for n in json.loads(out.stdout)["nodes"]}
    assert "acme.invert" in nodes
    assert "entry point acme" in nodes["acme.invert"]["source"] and "muse-acme 0.1.0" in nodes["acme.invert"]["source"]
    assert nodes["acme.invert"]["inputs"]["frame"]["type"] == "Frame"
    graph = tmp_path / "acme.yaml"
    graph.write_text(
        "version: 1\nsettings: {device: cpu}\nnodes:\n"
        "  src: {type: basic.test_pattern, params: {width: 64, height: 48, fps: 0, frames: 6}}\n"
        "  inv: {type: acme.invert, params: {gain: 1.0}, inputs: {frame: {from: src.frame, queue: 2}}}\n"
        "  seg: {type: basic.luma_mask, inputs: {frame: inv.out}}\n"
        "  out: {type: acme.coverage, inputs: {mask: {from: seg.mask, queue: 8}}}\n"
    )
    stats = tmp_path / "stats.json"
    run = _muse("run", str(graph), "--stats", str(stats), env=acme_installed)
    assert run.returncode == 0, run.stderr
    data = json.loads(stats.read_text())
    assert data["nodes"]["inv"]["frames"] == 6 and data["nodes"]["out"]["frames"] == 6


def test_plugin_folder_from_env_and_flag(tmp_path: Path) -> None:
    out = _muse("nodes", "--json", env={"MUSE_PLUGIN_PATH": str(FIXTURES / "plugin_dirs" / "good")})
    ids = [n["id"] for n in json.loads(out.stdout)["nodes"]]
    assert "folder.brighten" in ids
    out = _muse("nodes", "folder.*", "--plugins", str(FIXTURES / "plugin_dirs" / "good"))
    assert "folder.brighten" in out.stdout


def test_broken_plugin_is_reported_and_the_rest_loads() -> None:
    reg = Registry()
    reg.load_builtins_direct()
    reg.load_plugin_paths([FIXTURES / "plugin_dirs" / "broken"])
    assert "folder.still_works" in reg and "basic.invert" in reg
    assert len(reg.failures) == 1
    failure = reg.failures[0]
    assert "explodes.py" in failure.source
    assert "this_module_does_not_exist" in failure.error and "Traceback" in failure.error
    out = _muse("nodes", "--plugins", str(FIXTURES / "plugin_dirs" / "broken"))
    assert out.returncode == 0 and "explodes.py" in out.stderr


def test_duplicate_id_is_a_hard_error_naming_both() -> None:
    reg = Registry()
    reg.load_builtins_direct()
    with pytest.raises(RegistryError) as info:
        reg.load_plugin_paths([FIXTURES / "plugin_dirs" / "duplicate"])
    msg = str(info.value)
    assert "basic.invert" in msg and "muse.nodes.basic" in msg and "clash.py" in msg


def test_unknown_type_suggests() -> None:
    reg = load_registry()
    assert "did you mean 'basic.invert'" in reg.unknown_message("basic.invrt")
    assert "basic.test_pattern" in reg.unknown_message("test_patern")


def test_cli_version_schema_and_invalid_exit_code(tmp_path: Path) -> None:
    assert _muse("--version").stdout.startswith("muse ")
    schema = json.loads(_muse("schema").stdout)
    assert schema["title"] == "MUSE graph" and "nodes" in schema["properties"]
    bad = _muse("validate", str(Path(__file__).parent / "graphs" / "invalid" / "type_mismatch.yaml"))
    assert bad.returncode == 2 and "type_mismatch" in bad.stderr and "node 'out'" in bad.stderr
    bad_run = _muse("run", str(Path(__file__).parent / "graphs" / "invalid" / "cycle.yaml"))
    assert bad_run.returncode == 2
