"""Which project modules exist, where their files are, and which imports which.

Project modules (source files under the watched roots) are loaded by `ProjectLoader`, which
always compiles from the source on disk (a stale `.pyc` can never run) and records, while a
module executes, every project module it imports: `import x`, `from x import y`,
`importlib.import_module`, and imports made by code it calls at import time.

It also records what a module reads while it executes: files opened for reading under the
watched roots (an audit hook on `open`) and, once `track_environ` is on, environment variables.
Reads made while a `no_reload_cache` function computes belong to that cache entry instead.
"""

from __future__ import annotations

import builtins
import dis
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import itertools
import linecache
import os
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from fh_utils.watch import ignored_by_default

__all__ = ["ModuleGraph", "ProjectFinder", "ProjectLoader", "Resource"]

# What a module or a cache entry can read: a file (a resolved Path), or an environment variable
# (its name; "*" when the whole environment was listed).
Resource = Path | str

_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so")  # imports, not reads
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR


class ModuleGraph:
    """Project modules by name and file, and what each imported and read while it executed."""

    def __init__(
        self,
        roots: Sequence[Path],
        excludes: Sequence[Path] = (),
        ignore: Callable[[Path], bool] | None = None,
    ) -> None:
        self.roots = [r.resolve() for r in roots]
        self.excludes = [e.resolve() for e in excludes]
        self._ignore = ignore or (lambda path: ignored_by_default(path, self.roots))
        self._prefixes = tuple(str(r).rstrip(os.sep) + os.sep for r in self.roots)
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
        self.reads: dict[str, set[Resource]] = {}  # module -> what it read while it executed
        self.cache_reads: dict[object, set[Resource]] = {}  # cache entry -> what it read
        self.cache_users: dict[object, set[str]] = {}  # cache entry -> modules that computed it
        self.written: set[Path] = set()  # files opened for writing since the reloader looked
        # The cache entry computing in this thread, if any (`fh_utils.cache._computing_entry`).
        self.computing: Callable[[], object | None] = _nothing

    # -- what belongs to the project ---------------------------------------------------------
    def is_project_file(self, path: Path) -> bool:
        if not path.is_absolute():  # "<frozen os>", "<string>": not a file at all
            return False
        path = path.resolve()
        if not any(path.is_relative_to(r) for r in self.roots):
            return False
        if any(path.is_relative_to(e) for e in self.excludes):
            return False
        if any(path.is_relative_to(s) for s in self._system):
            return False
        return not self._ignore(path)

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

    def begin(self, name: str, file: Path) -> tuple[set[str] | None, set[Resource]]:
        """A project module starts executing; returns what `restore` needs after a failure."""
        previous = self.imports.get(name), self.reads.pop(name, set())
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

    def restore(self, name: str, previous: tuple[set[str] | None, set[Resource]]) -> None:
        """Undo `begin` after a failed execution.

        What it read stays recorded with what it read before: a fix to a file it read while it
        failed must retry it.
        """
        imports, reads = previous
        self.reads.setdefault(name, set()).update(reads)
        if imports is None:
            self.imports.pop(name, None)
            self._order.pop(name, None)
            for file, module in list(self.files.items()):
                if module == name:
                    del self.files[file]
        else:
            self.imports[name] = imports

    def adopt_loaded(self) -> list[str]:
        """Take in project modules imported before tracking began (the script behind
        `python app.py` and what it imported before calling `fh_utils.serve()`).

        They did not run under `ProjectLoader`, so what they import is read from their code
        instead (every import statement, also inside functions: a superset is safe). They are
        re-executed by `ProjectLoader` on their first reload, and tracked at run time from then.
        """
        found: dict[str, Path] = {}
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            # Aliases (`__main__`, multiprocessing's `__mp_main__`) are not the module's name.
            if (getattr(module, "__name__", None) != name or name in self.imports
                    or not isinstance(file, str)
                    or not file.endswith(".py") or not file.startswith(self._prefixes)):
                continue
            if self.is_project_file(Path(file)):
                found[name] = Path(file).resolve()
        for name, file in found.items():
            try:
                code = compile(file.read_bytes(), str(file), "exec", dont_inherit=True)
            except (OSError, SyntaxError, ValueError):
                continue
            package = getattr(sys.modules[name], "__package__", None) or ""
            self.imports[name] = {n for n in _imported_names(code, package) if n in found}
            self.files[file] = name
            self.code[name] = code
            self._order.setdefault(name, next(self._counter))
        return list(found)

    def record(self, names: Iterable[str]) -> None:
        importer = self.executing()
        if importer is None:
            return
        edges = self.imports.setdefault(importer, set())
        for name in names:
            if name != importer and name in self.imports:
                edges.add(name)

    def read(self, resource: Resource) -> None:
        """`resource` was read in this thread: note it for the executing module or cache entry.

        A read while a cache entry computes belongs to the entry; the module executing then (if
        any) depends on the entry, even on later executions that find its values cached.
        """
        entry = self.computing()
        module = self.executing()
        if entry is not None:
            self.cache_reads.setdefault(entry, set()).add(resource)
            if module is not None:
                self.cache_users.setdefault(entry, set()).add(module)
        elif module is not None:
            self.reads.setdefault(module, set()).add(resource)

    def opened(self, file: object, flags: int) -> None:
        """A file was opened: one under the roots opened for reading is a read.

        Files project code opens for writing (at any time) go to `written`, so that the reloader
        can tell the app's own writes from the user's edits: a module that updates a file it
        reads would otherwise reload itself forever, and an app saving its data to a file it
        loads at import would reload on every save.
        """
        if isinstance(file, bytes):
            file = os.fsdecode(file)
        if not isinstance(file, str):  # a file descriptor
            return
        write = flags & _WRITE_FLAGS
        if not write and self.executing() is None and self.computing() is None:
            return
        path = os.path.abspath(file)
        if not path.startswith(self._prefixes) or path.endswith(_CODE_SUFFIXES):
            return
        resolved = Path(path).resolve()
        if not self.is_project_file(resolved):
            return
        if write:
            self.written.add(resolved)
        else:
            self.read(resolved)

    def readers(self, resources: Iterable[Resource]) -> tuple[set[str], list[object]]:
        """The modules and cache entries that read any of `resources` ("*" stands for every
        environment variable)."""
        wanted = set(resources)
        if any(isinstance(r, str) for r in wanted):
            wanted.add("*")
        modules = {m for m, read in list(self.reads.items()) if read & wanted}
        entries = [e for e, read in list(self.cache_reads.items()) if read & wanted]
        for entry in entries:
            modules |= self.cache_users.get(entry, set())
        return modules, entries

    def activate(self) -> None:
        """Start seeing which files are opened: `open`, `io.open` and `os.open` are wrapped.

        Wrappers, not an audit hook: a hook runs on every audited event of the process (each
        `id()` call is one), which cost about 5% of the requests per second of a small page.
        """
        global _active, _saved_opens
        _active = self
        if _saved_opens is None:
            _saved_opens = builtins.open, os.open
            builtins.open = io.open = _wrap_open(_saved_opens[0])
            os.open = _wrap_os_open(_saved_opens[1])

    def deactivate(self) -> None:
        global _active, _saved_opens
        if _active is self:
            _active = None
            if _saved_opens is not None:
                builtins.open = io.open = _saved_opens[0]
                os.open = _saved_opens[1]
                _saved_opens = None
        track_environ(False)

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

    @classmethod
    def enter(cls, graph: ModuleGraph) -> type[_ImportHooks]:
        with cls._lock:
            if cls._depth == 0:
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


def _imported_names(code: types.CodeType, package: str) -> set[str]:
    """Absolute names of the modules an import statement in `code` may bring in."""
    names: set[str] = set()
    todo = [code]
    while todo:
        current = todo.pop()
        instructions = list(dis.get_instructions(current))
        for i, ins in enumerate(instructions):
            if ins.opname != "IMPORT_NAME" or i < 2:
                continue
            level, fromlist = instructions[i - 2].argval, instructions[i - 1].argval
            if not isinstance(level, int):
                continue
            try:
                base = (importlib.util.resolve_name("." * level + ins.argval, package)
                        if level else ins.argval)
            except (ImportError, ValueError, TypeError):
                continue
            parts = base.split(".")
            names.update(".".join(parts[: j + 1]) for j in range(len(parts)))
            names.update(f"{base}.{item}" for item in fromlist or () if isinstance(item, str))
        todo.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return names


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


def _nothing() -> None:
    return None


_active: ModuleGraph | None = None  # the graph file opens and environment reads go to
_saved_opens: tuple[Callable[..., Any], Callable[..., Any]] | None = None


def _note_open(file: Any, flags: int) -> None:
    # Never raise into the user's open(): tracking is best effort.
    graph = _active
    if graph is not None:
        try:
            graph.opened(os.fspath(file) if isinstance(file, os.PathLike) else file, flags)
        except Exception:
            pass


def _wrap_open(original: Callable[..., Any]) -> Callable[..., Any]:
    def open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:  # noqa: A001
        _note_open(file, os.O_WRONLY if any(c in mode for c in "wax+") else os.O_RDONLY)
        return original(file, mode, *args, **kwargs)

    open.__doc__ = original.__doc__
    return open


def _wrap_os_open(original: Callable[..., Any]) -> Callable[..., Any]:
    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        _note_open(path, flags)
        return original(path, flags, *args, **kwargs)

    os_open.__name__ = "open"
    os_open.__doc__ = original.__doc__
    return os_open


class _TrackedEnviron(os._Environ):  # type: ignore[type-arg]
    """`os.environ` while environment reads are tracked: each lookup is a read."""

    def __getitem__(self, key: str) -> str:
        graph = _active
        if graph is not None:
            graph.read(key)
        return super().__getitem__(key)

    def __iter__(self) -> Any:
        graph = _active
        if graph is not None:
            graph.read("*")
        return super().__iter__()


def track_environ(on: bool) -> None:
    """Record which environment variables modules and cache entries read (for `--env-file`)."""
    os.environ.__class__ = _TrackedEnviron if on else os._Environ
