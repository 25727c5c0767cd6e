"""Code structure the project holds itself to: small framework modules, typed params
(few `type: ignore`s), no import cycles inside the Studio."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx
import pytest

MUSE = Path(__file__).resolve().parent.parent / "muse"


def test_no_framework_module_over_400_lines() -> None:
    long = {p.name: n for p in sorted((MUSE / "graph").glob("*.py")) if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"muse/graph modules over 400 lines (split them by job): {long}"


def _imports(path: Path, package: str) -> set[str]:
    """Modules of `package` that `path` imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(package))
    return found


@pytest.mark.parametrize("package", ["studio", "editor"])
def test_no_import_cycle(package: str) -> None:
    """Deferred imports included: a cycle through a function-level import still couples the modules."""
    root = MUSE / package
    modules = {(f"muse.{package}." + ".".join(p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    g = nx.DiGraph()
    for name, path in modules.items():
        for target in _imports(path, f"muse.{package}"):
            if target in modules and target != name:
                g.add_edge(name, target)
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import cycles in muse.{package}: {cycles}"


def test_no_private_helpers_imported_across_modules() -> None:
    """A helper another module needs is public (no `from muse.x import _helper`)."""
    bad = []
    for path in MUSE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("muse"):
                bad += [f"{path.relative_to(MUSE.parent)}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_package_code_reads_no_repository_folder() -> None:
    """What the package needs at run time ships inside it (muse/assets), not in bench/ or tests/."""
    bad = [str(p.relative_to(MUSE.parent)) for p in MUSE.rglob("*.py")
           if re.search(r"""["'](bench|tests)["']\s*/|parents\[\d\]\s*/\s*["'](bench|tests)""", p.read_text())]
    assert not bad, f"package code reaching into the repository: {bad}"


def test_few_type_ignores() -> None:
    """Params are typed per node (`params: Params`), so `self.params.<field>` needs no `type: ignore`."""
    hits = [f"{p.relative_to(MUSE.parent)}:{i}" for p in MUSE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if "type: ignore" in line]
    assert len(hits) <= 5, "type: ignore comments:\n" + "\n".join(hits)


def test_every_node_with_params_declares_their_type() -> None:
    from muse.graph.registry import load_registry

    reg = load_registry()
    untyped = [i for i in reg.ids() if reg.get(i).__module__.startswith("muse.") and "Params" in vars(reg.get(i)) and "params" not in vars(reg.get(i)).get("__annotations__", {})]
    assert not untyped, f"nodes whose `params` is not annotated with their own Params: {untyped}"
