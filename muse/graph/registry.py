"""One registry for built-in and plugin nodes.

Sources, in order: the entry-point group `muse.nodes` (the built-ins are one
entry point there, `builtin`), then plugin folders given on the command line
or in `MUSE_PLUGIN_PATH`. A plugin that fails to import is recorded with its
traceback and skipped; two classes with one id is a hard error naming both.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Sequence

from muse.graph.node import Node

ENTRY_POINT_GROUP = "muse.nodes"
PLUGIN_PATH_ENV = "MUSE_PLUGIN_PATH"


class RegistryError(RuntimeError):
    """A registry problem that must stop the program (duplicate node ids)."""


@dataclass(frozen=True)
class LoadFailure:
    source: str
    error: str  # full traceback text

    def summary(self) -> str:
        last = self.error.strip().splitlines()[-1] if self.error.strip() else "unknown error"
        return f"{self.source}: {last}"


@dataclass(frozen=True)
class Registered:
    cls: type[Node]
    source: str  # "builtin (muse.nodes.segment)", "entry point acme (muse-acme 0.1.0)", "plugin folder /x/y.py"


class Registry:
    def __init__(self) -> None:
        self._nodes: dict[str, Registered] = {}
        self.failures: list[LoadFailure] = []

    # -- registration ----------------------------------------------------
    def register(self, cls: type[Node], source: str) -> None:
        if not (inspect.isclass(cls) and issubclass(cls, Node)) or not cls.node_type:
            raise RegistryError(f"{source}: {cls!r} is not a Node subclass with a node_type")
        if "." not in cls.node_type:
            raise RegistryError(
                f"{source}: node id {cls.node_type!r} of {cls.__qualname__} is not namespaced "
                f"(use 'family.name', e.g. 'acme.{cls.node_type}')"
            )
        have = self._nodes.get(cls.node_type)
        if have is not None:
            if have.cls is cls:
                return
            raise RegistryError(
                f"node id {cls.node_type!r} is defined twice: by {have.cls.__module__}.{have.cls.__qualname__} "
                f"from {have.source}, and by {cls.__module__}.{cls.__qualname__} from {source}. "
                "Rename one of them (ids are namespaced: 'yourpackage.name')."
            )
        self._nodes[cls.node_type] = Registered(cls, source)

    def register_module(self, module: ModuleType, source: str) -> int:
        """Register every Node subclass defined in `module` or its submodules (not ones it imports from elsewhere)."""
        count = 0
        for _, obj in sorted(vars(module).items()):
            if (
                inspect.isclass(obj)
                and issubclass(obj, Node)
                and obj.node_type
                and (obj.__module__ == module.__name__ or obj.__module__.startswith(module.__name__ + "."))
            ):
                self.register(obj, source)
                count += 1
        return count

    def register_object(self, obj: Any, source: str) -> None:
        """An entry point may name a module, a Node class, or a callable returning either (or a list)."""
        if inspect.ismodule(obj):
            self.register_module(obj, source)
        elif inspect.isclass(obj) and issubclass(obj, Node):
            self.register(obj, source)
        elif hasattr(obj, "load") and hasattr(obj, "module"):  # a lazily named family
            self._guarded(f"{source} [{obj.module}]", lambda: self.register_object(obj.load(), f"{source} [{obj.module}]"))
        elif callable(obj):
            result = obj()
            items: Iterable[Any] = result if isinstance(result, (list, tuple)) else [result]
            for item in items:
                self.register_object(item, source)
        else:
            raise RegistryError(f"{source}: entry point gave {obj!r}; expected a module, a Node class or a callable")

    def _guarded(self, source: str, action: Any) -> None:
        try:
            action()
        except RegistryError:
            raise
        except BaseException as exc:  # a broken plugin must not take the rest down
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self.failures.append(LoadFailure(source, traceback.format_exc()))

    def load_entry_points(self) -> None:
        for ep in _entry_points():
            dist = f"{ep.dist.name} {ep.dist.version}" if getattr(ep, "dist", None) else "unknown distribution"
            source = f"entry point {ep.name} = {ep.value} ({dist})"
            self._guarded(source, lambda ep=ep, source=source: self.register_object(ep.load(), source))

    def load_builtins_direct(self) -> None:
        """Used when the package runs from a source tree that was never pip-installed."""
        from muse.nodes import builtin_nodes

        self._guarded("builtin", lambda: self.register_object(builtin_nodes, "builtin"))

    def load_plugin_paths(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        for raw in paths:
            path = Path(raw).expanduser()
            if not path.exists():
                self.failures.append(LoadFailure(f"plugin path {path}", f"FileNotFoundError: plugin path {path} does not exist"))
                continue
            files = [path] if path.is_file() else sorted(
                p for p in path.iterdir()
                if (p.suffix == ".py" and not p.name.startswith("_")) or (p.is_dir() and (p / "__init__.py").exists())
            )
            for file in files:
                source = f"plugin folder {file}"
                self._guarded(source, lambda file=file, source=source: self.register_module(_import_path(file), source))

    # -- queries ---------------------------------------------------------
    def get(self, node_type: str) -> type[Node]:
        try:
            return self._nodes[node_type].cls
        except KeyError:
            raise KeyError(self.unknown_message(node_type)) from None

    def __contains__(self, node_type: str) -> bool:
        return node_type in self._nodes

    def source_of(self, node_type: str) -> str:
        return self._nodes[node_type].source

    def ids(self, pattern: str = "*") -> list[str]:
        return sorted(i for i in self._nodes if fnmatch.fnmatch(i, pattern))

    def classes(self) -> list[type[Node]]:
        return [self._nodes[i].cls for i in self.ids()]

    def suggest(self, node_type: str) -> list[str]:
        ids = list(self._nodes)
        close = difflib.get_close_matches(node_type, ids, n=3, cutoff=0.8)
        # Also match the name without its family: "segmnet" -> "segment.modnet".
        tail = node_type.split(".")[-1]
        by_tail: dict[str, list[str]] = {}
        for i in ids:
            by_tail.setdefault(i.split(".")[-1], []).append(i)
        for t in difflib.get_close_matches(tail, list(by_tail), n=3, cutoff=0.6):
            close += [i for i in by_tail[t] if i not in close]
        return close[:3]

    def unknown_message(self, node_type: str) -> str:
        msg = f"unknown node type {node_type!r}"
        hint = self.suggest(node_type)
        if hint:
            msg += f", did you mean {' or '.join(repr(h) for h in hint)}?"
        related = [f.summary() for f in self.failures if node_type.split(".")[0] in f.source or node_type in f.error]
        if related:
            msg += " (a plugin that may define it failed to load: " + "; ".join(related) + ")"
        return msg

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for i in self.ids():
            d = self._nodes[i].cls.describe()
            d["source"] = self._nodes[i].source
            out.append(d)
        return out


def _entry_points() -> list[EntryPoint]:
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name != "builtin", ep.name))


def _import_path(file: Path) -> ModuleType:
    target = file / "__init__.py" if file.is_dir() else file
    mod_name = f"muse_plugin_{abs(hash(str(file.resolve()))):x}_{file.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, target, submodule_search_locations=[str(file)] if file.is_dir() else None)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import plugin file {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return module


def plugin_paths_from_env() -> list[str]:
    raw = os.environ.get(PLUGIN_PATH_ENV, "")
    return [p for p in raw.split(os.pathsep) if p.strip()]


_default: Registry | None = None
_default_key: tuple[str, ...] | None = None


def load_registry(plugin_paths: Sequence[str | os.PathLike[str]] = (), *, fresh: bool = False) -> Registry:
    """The registry for this process: entry points + env plugin path + `plugin_paths`.

    Cached per set of plugin paths (loading imports every family)."""
    global _default, _default_key
    paths = tuple(str(p) for p in [*plugin_paths_from_env(), *plugin_paths])
    if _default is not None and _default_key == paths and not fresh:
        return _default
    reg = Registry()
    reg.load_entry_points()
    if not any(ep.name == "builtin" for ep in _entry_points()):
        reg.load_builtins_direct()
    reg.load_plugin_paths(paths)
    _default, _default_key = reg, paths
    return reg
