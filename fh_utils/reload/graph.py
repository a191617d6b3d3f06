"""Which project modules exist, where their files are, and what each imported and read.

The graph is filled while modules execute (by `fh_utils.reload.tracking`): the project modules a
module imports, the files under the watched roots it opens for reading, the directories it
lists, and (with `--env-file`) the environment variables it reads. Reads made while a
`no_reload_cache` function computes belong to that cache entry instead.

From it the reloader asks: which module is this file, which modules depend on these, in which
order do they run, who read this file or listed this directory. `snapshot()` and `restore()`
put it back as it was when a batch of re-runs is rolled back.
"""

from __future__ import annotations

import contextvars
import copy
import dis
import functools
import importlib.util
import itertools
import os
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fh_utils.reload.frames import asked_by_project, memoised_caller, project_code
from fh_utils.watch.filters import ignored_by_default

__all__ = ["HANDLING_REQUEST", "GraphState", "Listing", "ModuleGraph", "Resource"]


@dataclass(frozen=True)
class Listing:
    """A directory whose list of entries a module read (`os.listdir`, `glob`, `pkgutil`)."""

    path: Path


# What a module or a cache entry can read: a file (a resolved Path), a directory listing, or an
# environment variable (its name; "*" when the whole environment was listed).
Resource = Path | Listing | str

_CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so")  # imports, not reads

# True while the switch hands a request to the app (its task, and the threads it runs sync code
# in: anyio copies the context), so that files read then are known as read per request.
HANDLING_REQUEST: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "fh_utils_handling_request", default=False)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR


@dataclass
class GraphState:
    """A copy of what `ModuleGraph.restore` puts back."""

    data: dict[str, Any]


class ModuleGraph:
    """Project modules by name and file, and what each imported and read while it executed."""

    _SAVED = ("files", "imports", "_order", "code", "reads", "cache_reads", "cache_users",
              "listings")

    def __init__(
        self,
        roots: Sequence[Path],
        excludes: Sequence[Path] = (),
        ignore: Callable[[Path], bool] | None = None,
    ) -> None:
        self.roots = [r.resolve() for r in roots]
        self.excludes = [e.resolve() for e in excludes]
        self._ignore = ignore or (lambda path: ignored_by_default(path, self.roots))
        self.prefixes = _prefixes(self.roots)
        self._exclude_prefixes = _prefixes(self.excludes)
        self._system_prefixes = _prefixes(
            Path(p).resolve()
            for key in ("stdlib", "platstdlib", "purelib", "platlib")
            if (p := sysconfig.get_paths().get(key))
        )
        self._lock = threading.RLock()  # request threads record reads while a reload plans
        self._is_project_file = functools.lru_cache(maxsize=8192)(self._project_file)
        self._real_dirs: dict[str, str] = {}  # directory -> its real path (is_project_file)
        self._module_paths: dict[str, Path] = {}  # a module's file -> resolved (begin)
        self.files: dict[Path, str] = {}  # file -> module name
        self.imports: dict[str, set[str]] = {}  # module -> project modules it imported
        self._order: dict[str, int] = {}  # module -> when it first started executing
        self._counter = itertools.count()
        self._local = threading.local()
        # file -> source, code (source None: loaded from cached bytecode, compiled if re-run)
        self.compiled: dict[Path, tuple[bytes | None, types.CodeType]] = {}
        self.code: dict[str, types.CodeType] = {}  # module -> the code its last good run ran
        self.reads: dict[str, set[Resource]] = {}  # module -> what it read while it executed
        self.cache_reads: dict[object, set[Resource]] = {}  # cache entry -> what it read
        self.cache_users: dict[object, set[str]] = {}  # cache entry -> modules that computed it
        self.listings: dict[Path, frozenset[str]] = {}  # directory -> its entries when read
        # Files read while a request was handled (a template, a Markdown page): a change to one
        # re-runs nothing, but the pages that show it are refreshed (`--live`).
        self.request_reads: set[Path] = set()
        # Every file a module, a cache entry or a request read so far, and every one the app
        # opened for writing, as text (never emptied: see `was_read`).
        self._files_read: set[str] = set()
        self._files_written: set[str] = set()
        # Of those, the ones a memoised function read (functools.cache and the like): a change
        # empties its cache, so the next call reads the file again, as in a fresh process.
        self.memo_reads: dict[Path, set[tuple[str, str]]] = {}
        self._memo_asked: set[tuple[Path, types.CodeType | None]] = set()  # (file, reader)
        # Project files the app opened for writing that were there already (`_written` has
        # those it made too): a fresh process of the project writes them again.
        self.overwritten: set[Path] = set()
        self._written: set[Path] = set()  # files opened for writing since the reloader looked
        # The cache entry computing in this thread, if any (see fh_utils.reload.pinning.engine).
        self.computing: Callable[[], object | None] = _nothing
        # While a batch runs: the modules still to run again, and how to run one. An import of
        # a stale module runs it there and then (`fh_utils.reload.tracking`), as a cold start
        # would at that import: the import system, not this graph, orders the batch.
        self.stale: set[str] = set()
        self.rerun: Callable[[str], None] = _ignore_name

    # -- what belongs to the project ---------------------------------------------------------
    def is_project_file(self, path: Path | str) -> bool:
        """Whether `path` lies in the project: under a root, not excluded, not installed code,
        not ignored (cached: asked for every file opened and every change reported)."""
        return self._is_project_file(os.fspath(path))

    def _project_file(self, text: str) -> bool:
        # Strings, not Paths: asked once for each of thousands of modules at start-up.
        if not os.path.isabs(text):  # "<frozen os>", "<string>": not a file at all
            return False
        real = self._realpath(text)
        if not _under(real, self.prefixes) or _under(real, self._exclude_prefixes):
            return False
        if _under(real, self._system_prefixes):
            return False
        return not self._ignore(Path(real))

    def _realpath(self, text: str) -> str:
        """`os.path.realpath(text)`, resolving each directory once (one `lstat` per file)."""
        folder, name = os.path.split(text if os.path.isabs(text) else os.path.abspath(text))
        real = self._real_dirs.get(folder)
        if real is None:
            real = self._real_dirs[folder] = os.path.realpath(folder)
        path = os.path.join(real, name)
        return os.path.realpath(path) if os.path.islink(path) or name in ("", ".", "..") \
            else path

    def _resolved(self, file: str) -> Path:
        """A module's file, resolved (once: modules run again and again)."""
        path = self._module_paths.get(file)
        if path is None:
            path = self._module_paths[file] = Path(self._realpath(file))
        return path

    def is_project_module(self, name: str) -> bool:
        return name in self.imports

    def module_for(self, path: Path) -> str | None:
        return self.files.get(Path(self._realpath(str(path))))

    def modules(self) -> list[str]:
        """Every project module known, in the order they first ran."""
        return sorted(self.imports, key=lambda n: self._order.get(n, 0))

    # -- recording while modules execute -----------------------------------------------------
    @property
    def _stack(self) -> list[str]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def executing(self) -> str | None:
        """The project module whose top level is running in this thread, if any."""
        stack = getattr(self._local, "stack", None)
        return stack[-1] if stack else None

    def begin(self, name: str, file: Path | str) -> tuple[set[str] | None, set[Resource]]:
        """A project module starts executing; returns what `undo_begin` needs after a failure."""
        with self._lock:
            previous = self.imports.get(name), self.reads.pop(name, set())
            importer = self.executing()
            if importer is not None and importer != name:
                self.imports.setdefault(importer, set()).add(name)
            self.imports[name] = set()
            self.files[self._resolved(os.fspath(file))] = name
            self._order.setdefault(name, next(self._counter))
        self._stack.append(name)
        return previous

    def end(self, name: str) -> None:
        stack = self._stack
        if stack and stack[-1] == name:
            stack.pop()

    def undo_begin(self, name: str, previous: tuple[set[str] | None, set[Resource]]) -> None:
        """Undo `begin` after a failed execution.

        What it read stays recorded with what it read before: a fix to a file it read while it
        failed must retry it.
        """
        imports, reads = previous
        with self._lock:
            self.reads.setdefault(name, set()).update(reads)
            if imports is None:
                self._drop(name)
            else:
                self.imports[name] = imports

    def forget(self, name: str) -> None:
        """`name` is no longer a module (its file was deleted)."""
        with self._lock:
            self._drop(name)
            self.code.pop(name, None)
            self.reads.pop(name, None)
            for deps in self.imports.values():
                deps.discard(name)

    def _drop(self, name: str) -> None:
        self.imports.pop(name, None)
        self._order.pop(name, None)
        for file, module in list(self.files.items()):
            if module == name:
                del self.files[file]

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
                    or not file.endswith(".py") or not file.startswith(self.prefixes)):
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

    def record_imports(self, importer: str, names: Iterable[str]) -> None:
        """`importer`, running now, imported `names` (those that are project modules count)."""
        imports = self.imports
        with self._lock:
            edges = imports.setdefault(importer, set())
            for name in names:
                if name in imports and name != importer:
                    edges.add(name)

    def record_import(self, importer: str, name: str) -> None:
        """`record_imports` for one name (`import x`: the most common statement), without the
        lock when there is nothing to add."""
        imports = self.imports
        if name in imports and name != importer:
            edges = imports.get(importer)
            if edges is None or name not in edges:
                with self._lock:
                    imports.setdefault(importer, set()).add(name)

    def read(self, resource: Resource) -> None:
        """`resource` was read in this thread: note it for the executing module or cache entry.

        A read while a cache entry computes belongs to the entry; the module executing then (if
        any) depends on the entry, even on later executions that find its values cached.
        """
        entry = self.computing()
        module = self.executing()
        if entry is None and module is None:
            return
        with self._lock:
            if isinstance(resource, Path):
                self._files_read.add(str(resource))
            if entry is not None:
                self.cache_reads.setdefault(entry, set()).add(resource)
                if module is not None:
                    self.cache_users.setdefault(entry, set()).add(module)
            elif module is not None:
                self.reads.setdefault(module, set()).add(resource)

    def opened(self, file: object, flags: int) -> None:
        """A file was opened: one under the roots opened for reading is a read.

        Files project code opens for writing (at any time) are noted (`take_written`), so that
        the reloader can tell the app's own writes from the user's edits: a module that updates
        a file it reads would otherwise reload itself forever, and an app saving its data to a
        file it loads at import would reload on every save.
        """
        if isinstance(file, bytes):
            file = os.fsdecode(file)
        if not isinstance(file, str):  # a file descriptor
            return
        write = flags & _WRITE_FLAGS
        module_run = self.executing() is not None or self.computing() is not None
        if not write and not module_run and not HANDLING_REQUEST.get():
            return
        path = os.path.abspath(file)
        if not path.startswith(self.prefixes) or path.endswith(_CODE_SUFFIXES):
            return
        resolved = Path(path).resolve()
        if not self.is_project_file(resolved):
            return
        if write:
            existed = resolved.exists()
            with self._lock:
                self._written.add(resolved)
                self._files_written.add(str(resolved))
                if existed:  # changed, not made: a fresh process would change it again
                    self.overwritten.add(resolved)
        elif module_run:
            self.read(resolved)
        else:
            self._request_read(resolved)

    def _request_read(self, resolved: Path) -> None:
        key = (resolved, project_code(self.is_project_file))  # asked once per reading function
        if key in self._memo_asked:
            return
        memo = memoised_caller(self.is_project_file)
        with self._lock:
            self.request_reads.add(resolved)
            self._files_read.add(str(resolved))
            self._memo_asked.add(key)
            if memo is not None:
                self.memo_reads.setdefault(resolved, set()).add(memo)

    def was_read(self, path: str) -> bool:
        """Whether project code ever read the file at `path`, and never wrote it: the watcher
        holds a save of one until its writer closes it, but a file the app writes itself (a
        history it loads, then appends to through a handle it keeps open) holds nothing.

        Asked from the watcher's thread, for every change it sees: a lookup or two, and an
        `lstat` for a path not found as given."""
        if path not in self._files_read:
            path = self._realpath(path)
            if path not in self._files_read:
                return False
        return path not in self._files_written

    def listed(self, directory: object) -> None:
        """A directory's entries were listed: a module or cache entry that did depends on them.

        Only listings the project's own code asked for count (directly, or through the standard
        library: `glob`, `pathlib`, `pkgutil`): an installed package scanning `sys.path` (as
        `importlib.metadata` does) is not the project discovering its plugins.
        """
        if self.executing() is None and self.computing() is None:
            return
        if not asked_by_project(self.is_project_file):
            return
        if isinstance(directory, bytes):
            directory = os.fsdecode(directory)
        if not isinstance(directory, str):  # a file descriptor
            return
        path = os.path.abspath(directory)
        if not (path + os.sep).startswith(self.prefixes):
            return
        resolved = Path(path).resolve()
        if not self.is_project_file(resolved):
            return
        entries = self.entries(resolved)
        with self._lock:
            self.listings[resolved] = entries
        self.read(Listing(resolved))

    def entries(self, directory: Path) -> frozenset[str]:
        """The names in `directory` that can matter (editor swap files and the like left out)."""
        try:
            names = os.listdir(directory)
        except OSError:
            return frozenset()
        return frozenset(n for n in names if not self._ignore(directory / n))

    def changed_listings(self, paths: Iterable[Path]) -> list[Path]:
        """Listed directories holding one of `paths` whose entries are no longer those read."""
        found = []
        for directory in {p.parent.resolve() for p in paths}:
            recorded = self.listings.get(directory)
            if recorded is not None and self.entries(directory) != recorded:
                found.append(directory)
        return found

    def take_written(self) -> set[Path]:
        with self._lock:
            written, self._written = self._written, set()
        return written

    def readers(self, resources: Iterable[Resource]) -> tuple[set[str], list[object]]:
        """The modules and cache entries that read any of `resources` ("*" stands for every
        environment variable)."""
        wanted = set(resources)
        if any(isinstance(r, str) for r in wanted):
            wanted.add("*")
        with self._lock:
            modules = {m for m, read in self.reads.items() if read & wanted}
            entries = [e for e, read in self.cache_reads.items() if read & wanted]
            for entry in entries:
                modules |= self.cache_users.get(entry, set())
        return modules, entries

    # -- saving and putting back -------------------------------------------------------------
    def snapshot(self) -> GraphState:
        with self._lock:
            return GraphState({k: copy.copy(getattr(self, k)) for k in self._SAVED} | {
                "imports": {n: set(d) for n, d in self.imports.items()},
                "reads": {n: set(r) for n, r in self.reads.items()},
            })

    def restore(self, state: GraphState, keep_reads: bool = True) -> None:
        """Put the graph back as `snapshot` found it.

        With `keep_reads`, what modules read meanwhile stays recorded too: a fix to a file a
        failed run read must retry it.
        """
        with self._lock:
            reads = {n: set(r) for n, r in self.reads.items()} if keep_reads else {}
            for key, value in state.data.items():
                setattr(self, key, value)
            for name, read in reads.items():
                self.reads.setdefault(name, set()).update(read)

    # -- what to re-execute, in which order --------------------------------------------------
    def imported_by(self, names: Iterable[str]) -> set[str]:
        """The project modules that `names` imported (in their last runs)."""
        with self._lock:
            return {m for name in names for m in self.imports.get(name, ())}

    def imported(self) -> set[str]:
        """Every project module that some project module imports."""
        with self._lock:
            return {m for deps in self.imports.values() for m in deps}

    def dependents(self, names: Iterable[str]) -> set[str]:
        """`names` plus every project module that imports one of them, transitively.

        One pass over the modules per level of importers (a leaf's are few), rather than an
        index of every edge: an app.py importing 2,000 modules has 2,000 of them.
        """
        seen = set(names)
        frontier = set(seen)
        with self._lock:
            items = list(self.imports.items())
        while frontier:
            frontier = {m for m, deps in items if m not in seen and not deps.isdisjoint(frontier)}
            seen |= frontier
        return seen

    def ordered(self, names: Iterable[str]) -> list[str]:
        """Dependencies first; cycles (a package and its submodules) in first-load order."""
        wanted = set(names)
        order = self._order

        def key(name: str) -> int:
            return order.get(name, 0)

        def deps_of(name: str) -> Iterator[str]:
            return iter(sorted(self.imports.get(name, set()) & wanted, key=key))

        result: list[str] = []
        state: dict[str, int] = {}  # 1 = on the path, 2 = emitted
        for root in sorted(wanted, key=key):
            if root in state:
                continue
            state[root] = 1
            stack = [(root, deps_of(root))]
            while stack:
                name, deps = stack[-1]
                dep = next(deps, None)
                if dep is None:
                    stack.pop()
                    state[name] = 2
                    result.append(name)
                elif dep not in state:
                    state[dep] = 1
                    stack.append((dep, deps_of(dep)))
        return result


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


def _ignore_name(name: str) -> None:
    pass


def _nothing() -> None:
    return None


def _prefixes(dirs: Iterable[Path]) -> tuple[str, ...]:
    """Each directory as a string ending with a separator (for `_under`)."""
    return tuple(str(d).rstrip(os.sep) + os.sep for d in dirs)


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether the absolute, resolved `path` is one of the directories or lies below one."""
    return (path + os.sep).startswith(prefixes)
