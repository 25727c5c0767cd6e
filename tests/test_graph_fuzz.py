"""Property: whatever is done to a shipped graph (keys, types, links, nesting,
aliases, includes, encodings, raw bytes), `muse validate` answers exit 0 (valid)
or 2 (errors naming the file), never a traceback, never over 5 s.

CI runs MUSE_FUZZ_EXAMPLES (default 1000) mutations; the counts are printed
(`pytest -s`). Hypothesis keeps no database and its caches live in a temp
folder (no files left behind); it is derandomized so a failure reproduces on
the next run.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import io
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

# Hypothesis caches (constants, unicode tables) go to a temp folder, not .hypothesis/ in the working folder.
_HOME = tempfile.mkdtemp(prefix="muse-hypothesis-")
set_hypothesis_home_dir(_HOME)
atexit.register(shutil.rmtree, _HOME, True)

from muse.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p for p in (ROOT / "graphs").glob("*.yaml"))
EXAMPLES = int(os.environ.get("MUSE_FUZZ_EXAMPLES", "1000"))
LIMIT_S = 5.0

ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.just("x" * 5000), st.just([]), st.just({}), st.just([1, [2, [3]]]),
    st.just({"from": "camera.frame", "queue": 0}), st.just({"from": ["a.b"] * 50}), st.just("%Y/../../../etc/x.mkv"),
    st.just("/etc/muse_fuzz.mkv"), st.just("\x00nul"), st.just("camera.frame"), st.just(["camera.frame", "camera.frame"]),
).map(copy.deepcopy)  # st.just hands out one shared object; a mutation must not reach the next example


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path into the parsed graph."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


@st.composite
def structural(draw: Any, data: Any) -> tuple[str, Any]:
    """A change to the parsed graph: rename/drop/add a key, change a value's type, relink an input."""
    paths = _paths(data)
    path = draw(st.sampled_from(paths))
    kind = draw(st.sampled_from(["rename", "drop", "add", "retype", "relink", "swap_node"]))
    if not path:
        return "noop", data
    parent = _get(data, path[:-1])
    key = path[-1]
    if kind == "rename" and isinstance(parent, dict):
        new = draw(st.one_of(st.text(max_size=12), st.integers(), st.none(), st.booleans(), st.just("nodes"), st.just("type")))
        parent[new] = parent.pop(key)
    elif kind == "drop":
        parent.pop(key) if isinstance(parent, dict) else parent.pop(key)
    elif kind == "add" and isinstance(_get(data, path), dict):
        _get(data, path)[draw(st.text(max_size=10))] = draw(ODD_VALUES)
    elif kind == "relink":
        nodes = list(data.get("nodes", {}) or {}) if isinstance(data, dict) else []
        ports = ["frame", "mask", "out", "selected", "keypoints", "live", "nope"]
        refs = st.builds(lambda n, p: f"{n}.{p}", st.sampled_from(nodes + ["ghost", "a/b"]), st.sampled_from(ports)) if nodes else st.just("x.y")
        parent[key] = draw(st.one_of(refs, st.lists(refs, max_size=6), st.builds(lambda r, q: {"from": r, "queue": q}, refs, st.integers(-3, 2000))))
    elif kind == "swap_node" and isinstance(data, dict) and isinstance(data.get("nodes"), dict) and data["nodes"]:
        name = draw(st.sampled_from(list(data["nodes"])))
        data["nodes"][name] = {"type": draw(st.sampled_from(["output.file", "flow.switch", "basic.null", "capture.images", "nope.nope"])),
                               "params": {"path": draw(ODD_VALUES)}, "inputs": {"frame": f"{name}.frame"}}
    else:
        parent[key] = draw(ODD_VALUES)
    return kind, data


def _nest(depth: int, opener: str) -> str:
    return ("[" * depth + "1" + "]" * depth) if opener == "[" else ("{a: " * depth + "1" + "}" * depth)


@st.composite
def textual(draw: Any, text: str) -> tuple[str, str | bytes]:
    """A change to the file's text or bytes: deep nesting, aliases, odd keys, includes, encodings, byte noise."""
    kind = draw(st.sampled_from(["nest", "laughs", "alias_merge", "unhashable_key", "include", "encoding", "bytes", "truncate", "tabs"]))
    lines = text.splitlines()
    at = draw(st.integers(0, max(0, len(lines) - 1)))
    if kind == "nest":
        depth = draw(st.sampled_from([10, 63, 65, 500, 3000]))
        lines.insert(at, f"deep_{at}: {_nest(depth, draw(st.sampled_from('[{')))}")
        return kind, "\n".join(lines)
    if kind == "laughs":
        levels = draw(st.integers(2, 12))
        block = ["l0: &l0 [ha, ha, ha, ha, ha, ha, ha, ha, ha, ha]"]
        block += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
        return kind, "\n".join(block) + "\n" + text
    if kind == "alias_merge":
        return kind, text.replace("nodes:", "base: &b {type: basic.null, params: {}}\nnodes:\n  extra: {<<: *b}", 1)
    if kind == "unhashable_key":
        key = draw(st.sampled_from(["{a: 1}", "[1, 2]", "? [x]\n  ", "!!set {a}"]))
        return kind, text.replace("nodes:\n", f"nodes:\n  {key}: {{type: basic.null}}\n", 1)
    if kind == "include":
        target = draw(st.sampled_from(["self", "fifo", ".", "/dev/zero", "missing.yaml", "loop_a.yaml", "../graphs_x.yaml"]))
        return kind, text + f"\ninclude:\n  - {{file: {'graph.yaml' if target == 'self' else target}, prefix: inc}}\n"
    if kind == "encoding":
        codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "latin-1", "cp1252"]))
        return kind, (text + "\n# café\n").encode(codec, errors="replace")
    raw = text.encode()
    if kind == "truncate":
        return kind, raw[: draw(st.integers(0, len(raw)))]
    if kind == "tabs":
        return kind, text.replace("  ", "\t", draw(st.integers(1, 5)))
    noise = draw(st.binary(min_size=1, max_size=16))
    pos = draw(st.integers(0, len(raw)))
    cut = draw(st.integers(0, 8))
    return kind, raw[:pos] + noise + raw[pos + cut:]


class _TooSlow(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _TooSlow(f"validation ran over {LIMIT_S} s")


def _validate(path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, LIMIT_S + 1)  # a hang fails the test instead of stalling CI
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["validate", str(path)])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return rc, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    os.mkfifo(d / "fifo")
    (d / "loop_a.yaml").write_text("version: 1\ninclude: [{file: loop_b.yaml, prefix: b}]\nnodes: {n: {type: basic.null}}\n")
    (d / "loop_b.yaml").write_text("version: 1\ninclude: [{file: loop_a.yaml, prefix: a}]\nnodes: {n: {type: basic.null}}\n")
    return d


def test_mutated_shipped_graphs_validate_cleanly_and_fast(workdir: Path) -> None:
    assert len(SHIPPED) >= 4
    originals = {p.name: p.read_text() for p in SHIPPED}
    tally: Counter[str] = Counter()
    slowest = [0.0, ""]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: Any) -> None:
        name = data.draw(st.sampled_from(sorted(originals)), label="graph")
        text = originals[name]
        changes = []
        # Structure first (on the parsed original), then text and bytes: the test never walks a
        # text it has already made hostile (a billion laughs would blow up the test itself).
        n_struct = data.draw(st.integers(0, 2), label="structure changes")
        n_text = data.draw(st.integers(0 if n_struct else 1, 2), label="text changes")
        if n_struct:
            parsed = yaml.safe_load(text)
            for _ in range(n_struct):
                kind, parsed = data.draw(structural(parsed), label="structure change")
                changes.append(kind)
            try:
                text = yaml.safe_dump(parsed, sort_keys=False, allow_unicode=True)
            except Exception:  # the test's own dump refused (e.g. a surrogate): keep the original text
                changes.append("noop")
        for _ in range(n_text):
            if isinstance(text, bytes):
                break  # bytes are the last step
            kind, text = data.draw(textual(text), label="text change")
            changes.append(kind)
        path = workdir / "graph.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", errors="surrogatepass"))
        t0 = time.perf_counter()
        rc, output = _validate(path)
        took = time.perf_counter() - t0
        if took > slowest[0]:
            slowest[:] = [took, f"{name} {changes}"]
        assert "Traceback" not in output, output
        assert "could not be checked" not in output, output  # the validator's last-resort catch must not be what answers
        assert rc in (0, 2), (rc, output)
        assert took < LIMIT_S, f"{took:.1f} s for {name} after {changes}"
        if rc == 2:
            assert str(path) in output  # every error names the file
        tally["valid" if rc == 0 else "rejected"] += 1
        tally.update(changes)

    check()
    total = tally["valid"] + tally["rejected"]
    print(f"\nfuzz: {total} mutated graphs: {tally['valid']} valid, {tally['rejected']} rejected (exit 2), 0 tracebacks, 0 hangs; "
          f"slowest {slowest[0]:.2f} s ({slowest[1]}); mutation kinds: {dict(sorted((k, v) for k, v in tally.items() if k not in ('valid', 'rejected')))}")
    assert total >= EXAMPLES
