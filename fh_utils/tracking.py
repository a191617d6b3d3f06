"""Which project modules exist, where their files are, and which imports which.

Project modules (source files under the watched roots) are loaded by `ProjectLoader`, which
always compiles from the source on disk (a stale `.pyc` can never run) and records, while a
module executes, every project module it imports: `import x`, `from x import y`,
`importlib.import_module`, and imports made by code it calls at import time.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import itertools
import linecache
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ModuleGraph", "ProjectFinder", "ProjectLoader"]

_EXCLUDED_DIR_NAMES = frozenset(
    {".venv", "venv", ".git", "__pycache__", "node_modules", "site-packages", "dist-packages",
     ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
)


class ModuleGraph:
    """Project modules by name and file, and the import edges recorded while they executed."""

    def __init__(self, roots: Sequence[Path], excludes: Sequence[Path] = ()) -> None:
        self.roots = [r.resolve() for r in roots]
        self.excludes = [e.resolve() for e in excludes]
        self._system = {
            Path(p).resolve()
            for key in ("stdlib", "platstdlib", "purelib", "platlib")
            if (p := sysconfig.get_paths().get(key))
        }
        self.files: dict[Path, str] = {}  # file -> module name
        self.imports: dict[str, set[str]] = {}  # module -> project modules it imported
        self._order: dict[str, int] = {}  # module -> when it first started executing
        self._counter = itertools.count()
        self._local = threading.local()
        self.compiled: dict[Path, tuple[bytes, types.CodeType]] = {}  # file -> source, code
        self.code: dict[str, types.CodeType] = {}  # module -> the code its last good run ran

    # -- what belongs to the project ---------------------------------------------------------
    def is_project_file(self, path: Path) -> bool:
        path = path.resolve()
        if not any(path.is_relative_to(r) for r in self.roots):
            return False
        if any(path.is_relative_to(e) for e in self.excludes):
            return False
        if any(path.is_relative_to(s) for s in self._system):
            return False
        return not any(part in _EXCLUDED_DIR_NAMES for part in path.parts)

    def is_project_module(self, name: str) -> bool:
        return name in self.imports

    def module_for(self, path: Path) -> str | None:
        return self.files.get(path.resolve())

    # -- recording while modules execute -----------------------------------------------------
    @property
    def _stack(self) -> list[str]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def executing(self) -> str | None:
        """The project module whose top level is running in this thread, if any."""
        stack = self._stack
        return stack[-1] if stack else None

    def begin(self, name: str, file: Path) -> set[str] | None:
        """A project module starts executing; returns its previous imports for `abort`."""
        previous = self.imports.get(name)
        importer = self.executing()
        if importer is not None and importer != name:
            self.imports.setdefault(importer, set()).add(name)
        self.imports[name] = set()
        self.files[file.resolve()] = name
        self._order.setdefault(name, next(self._counter))
        self._stack.append(name)
        return previous

    def end(self, name: str) -> None:
        stack = self._stack
        if stack and stack[-1] == name:
            stack.pop()

    def restore(self, name: str, previous: set[str] | None) -> None:
        """Undo `begin` after a failed execution."""
        if previous is None:
            self.imports.pop(name, None)
            self._order.pop(name, None)
            for file, module in list(self.files.items()):
                if module == name:
                    del self.files[file]
        else:
            self.imports[name] = previous

    def record(self, names: Iterable[str]) -> None:
        importer = self.executing()
        if importer is None:
            return
        edges = self.imports.setdefault(importer, set())
        for name in names:
            if name != importer and name in self.imports:
                edges.add(name)

    # -- what to re-execute, in which order --------------------------------------------------
    def dependents(self, names: Iterable[str]) -> set[str]:
        """`names` plus every project module that imports one of them, transitively."""
        reverse: dict[str, set[str]] = {}
        for module, deps in self.imports.items():
            for dep in deps:
                reverse.setdefault(dep, set()).add(module)
        seen = set(names)
        todo = list(seen)
        while todo:
            for module in reverse.get(todo.pop(), ()):
                if module not in seen:
                    seen.add(module)
                    todo.append(module)
        return seen

    def ordered(self, names: Iterable[str]) -> list[str]:
        """Dependencies first; cycles (a package and its submodules) in first-load order."""
        wanted = set(names)
        key = self._order.get
        result: list[str] = []
        state: dict[str, int] = {}  # 1 = on the path, 2 = emitted
        for root in sorted(wanted, key=lambda n: key(n, 0)):
            if root in state:
                continue
            state[root] = 1
            stack = [(root, iter(sorted(self.imports.get(root, ()) & wanted, key=key)))]
            while stack:
                name, deps = stack[-1]
                dep = next(deps, None)
                if dep is None:
                    stack.pop()
                    state[name] = 2
                    result.append(name)
                elif dep not in state:
                    state[dep] = 1
                    stack.append((dep, iter(sorted(self.imports.get(dep, ()) & wanted, key=key))))
        return result


class ProjectLoader(importlib.machinery.SourceFileLoader):
    """Loads a project module from its source, recording what it imports while it runs."""

    def __init__(self, fullname: str, path: str, graph: ModuleGraph) -> None:
        super().__init__(fullname, path)
        self.graph = graph

    def get_code(self, fullname: str) -> types.CodeType:
        path = Path(self.get_filename(fullname))
        source = self.get_data(str(path))
        cached = self.graph.compiled.get(path)
        if cached is not None and cached[0] == source:
            return cached[1]
        code = self.source_to_code(source, str(path))
        self.graph.compiled[path] = (source, code)
        return code

    def exec_module(self, module: types.ModuleType) -> None:
        file = Path(self.get_filename(module.__name__))
        linecache.cache.pop(str(file), None)
        # A cleared namespace would otherwise fall back to ModuleType's own docstring.
        module.__dict__.setdefault("__doc__", None)
        code = self.get_code(module.__name__)
        previous = self.graph.begin(module.__name__, file)
        hooks = _ImportHooks.enter(self.graph)
        try:
            exec(code, module.__dict__)
            self.graph.code[module.__name__] = code
        except BaseException:
            self.graph.restore(module.__name__, previous)
            raise
        finally:
            hooks.exit()
            self.graph.end(module.__name__)


class ProjectFinder(importlib.abc.MetaPathFinder):
    """Hands project source files to `ProjectLoader`; everything else is left alone."""

    def __init__(self, graph: ModuleGraph) -> None:
        self.graph = graph

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            origin = spec.origin
            if (
                origin
                and origin.endswith(".py")
                and isinstance(spec.loader, importlib.machinery.SourceFileLoader)
                and self.graph.is_project_file(Path(origin))
            ):
                spec.loader = ProjectLoader(fullname, origin, self.graph)
                spec.cached = None
            return spec
        return None

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)
            importlib.invalidate_caches()

    def uninstall(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


class _ImportHooks:
    """Wraps `__import__` and `importlib.import_module` while project module code runs.

    Imports answered from `sys.modules` never reach a finder or loader, so the only way to see
    `from helpers import CONST` in the second module that imports helpers is at the call.
    The wrappers stay in place only while a project module executes (nesting counted).
    """

    _depth = 0
    _lock = threading.Lock()
    _saved: tuple[Callable[..., Any], Callable[..., Any]] | None = None
    _graph: ModuleGraph | None = None

    @classmethod
    def enter(cls, graph: ModuleGraph) -> type[_ImportHooks]:
        with cls._lock:
            if cls._depth == 0:
                cls._graph = graph
                cls._saved = (builtins.__import__, importlib.import_module)
                builtins.__import__ = _make_import(cls._saved[0], graph)
                importlib.import_module = _make_import_module(cls._saved[1], graph)
            cls._depth += 1
        return cls

    @classmethod
    def exit(cls) -> None:
        with cls._lock:
            cls._depth -= 1
            if cls._depth == 0 and cls._saved is not None:
                builtins.__import__, importlib.import_module = cls._saved
                cls._saved = None


def _make_import(original: Callable[..., Any], graph: ModuleGraph) -> Callable[..., Any]:
    def __import__(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
        module = original(name, globals, locals, fromlist, level)
        if graph.executing() is None:
            return module
        if fromlist:
            base = module.__name__
            names = [base, *(f"{base}.{item}" for item in fromlist if isinstance(item, str))]
        else:
            parts = name.split(".")
            names = [".".join(parts[: i + 1]) for i in range(len(parts))]
        graph.record(names)
        return module

    return __import__


def _make_import_module(original: Callable[..., Any], graph: ModuleGraph) -> Callable[..., Any]:
    def import_module(name: str, package: str | None = None) -> types.ModuleType:
        module = original(name, package)
        if graph.executing() is not None:
            graph.record([module.__name__])
        return module

    import_module.__doc__ = original.__doc__
    return import_module
