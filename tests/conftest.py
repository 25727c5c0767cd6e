"""Shared fixtures: markers for GPU tests, real test media, CPU thread limits."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP workers waste the shared CPU cores
# Models are compiled (torch.compile) only by the tests that ask for it: compiling every model in every
# cuda test would cost minutes; the benchmarks run with the default (auto).
os.environ.setdefault("MUSE_COMPILE", "off")
# The same for nodes' fused maths (MUSE_FUSE, compiled in the background on a GPU): only the tests that ask.
os.environ.setdefault("MUSE_FUSE", "off")

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `import media`

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Recordings a test makes without naming a path land in a throwaway folder, never in the
# user's recordings folder or the working directory (subprocesses inherit this).
if "MUSE_RECORDINGS_DIR" not in os.environ:
    import tempfile

    import atexit
    import shutil

    os.environ["MUSE_RECORDINGS_DIR"] = tempfile.mkdtemp(prefix="muse-test-recordings-")
    atexit.register(shutil.rmtree, os.environ["MUSE_RECORDINGS_DIR"], True)


def _installed(path: list[str]) -> dict[str, str]:
    from importlib.metadata import distributions

    return {(d.metadata["Name"] or "?").lower(): d.version for d in distributions(path=path)}


def pytest_sessionstart(session: pytest.Session) -> None:
    # The search path as the session started: importing setuptools later (Inductor does, to build C++) puts its
    # vendored packages on sys.path, which installs nothing.
    session.config._muse_path = list(sys.path)  # type: ignore[attr-defined]
    session.config._muse_installed = _installed(session.config._muse_path)  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tests must leave the environment as they found it: no package installed, removed or changed."""
    before = getattr(session.config, "_muse_installed", None)
    if before is None:
        return
    after = _installed(session.config._muse_path)  # type: ignore[attr-defined]
    changed = sorted(set(before.items()) ^ set(after.items()))
    if changed:
        names = sorted({name for name, _ in changed})
        print(f"\nERROR: the test run changed the installed packages: {', '.join(names)} (tests must install into temporary targets)")
        session.exitstatus = 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `package` tests build the frozen app (tens of minutes, several GB): only when asked for.
    want_package = "package" in (config.getoption("-m") or "") or os.environ.get("MUSE_PACKAGE_TESTS") == "1"
    skip_package = pytest.mark.skip(reason="builds the packaged app; run `python -m pytest -m package tests/test_package_build.py` (docs/package.md)")
    skip_cuda = pytest.mark.skip(reason="needs an NVIDIA GPU (run on the GPU machine)")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "package" in item.keywords and not want_package:
            item.add_marker(skip_package)
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def astronaut():
    import media

    return media.astronaut()


@pytest.fixture(scope="session")
def messi():
    import media

    return media.opencv_sample("messi5.jpg")


@pytest.fixture(scope="session")
def basketball():
    import media

    return media.opencv_sample("basketball1.png")


@pytest.fixture
def artifacts_dir() -> Path:
    """Where tests leave files for a person to look at (screenshots, previews)."""
    d = Path(__file__).parent.parent / "test-artifacts"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(autouse=True)
def _gpu_tests_compare_with_the_torch_code(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `cuda` test that compares the GPU with the CPU checks GPU precision: its CPU reference runs the
    same torch code, not the OpenCV/numpy CPU path (issue 13), which has its own parity tests."""
    if request.node.get_closest_marker("cuda") is not None:
        monkeypatch.setenv("MUSE_CPU_PATH", "torch")
