"""Process-wide hooks that fill the module graph while project code runs.

Project modules (source files under the watched roots) are loaded by `ProjectLoader`, which
runs the source on disk (its cached bytecode only when that was certainly compiled from this
source: a stale `.pyc` never runs), records what the module changes outside its namespace
(`fh_utils.reload.effects`) and, while it executes, every project module it imports: `import x`,
`from x import y`, `importlib.import_module`, and imports made by code it calls at import time;
from `activate` on, imports that project code makes at request time (a handler's, a lazily made
client's) are recorded as the calling module's too.

`activate(graph)` also wraps `open`, `io.open`, `os.open`, `os.listdir` and `os.scandir` (and
the copy of `os.scandir` that Python 3.13's `pathlib` globs with): files under the roots opened
for reading and directories listed while a module executes (or a `no_reload_cache` function
computes) are what it read. `track_environ` does the same for environment variables.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import linecache
import marshal
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fh_utils.reload import effects
from fh_utils.reload.graph import ModuleGraph
from fh_utils.timing import CLOCK_SLACK

__all__ = ["ProjectFinder", "ProjectLoader", "RunObserver", "activate", "deactivate",
           "track_environ"]

RunObserver = Callable[[str, effects.Record, bool], None]


class ProjectLoader(importlib.machinery.SourceFileLoader):
    """Loads a project module from its source, recording what it imports and changes."""

    def __init__(self, fullname: str, path: str, finder: ProjectFinder) -> None:
        super().__init__(fullname, path)
        self.finder = finder

    def get_code(self, fullname: str) -> types.CodeType:
        graph = self.finder.graph
        filename = self.get_filename(fullname)
        path = Path(filename)
        cached = graph.compiled.get(path)
        stat = None
        if cached is None:  # the first load: its bytecode may be cached
            stat = os.stat(filename)
            code = read_bytecode(filename, stat, self.get_data)
            if code is not None:  # the source is not even read, as Python does
                graph.compiled[path] = (None, code)
                return code
        source = self.get_data(filename)
        if cached is not None and cached[0] == source:
            return cached[1]
        code = self.source_to_code(source, filename)
        if stat is not None:
            write_bytecode(filename, stat, code)
        graph.compiled[path] = (source, code)
        return code

    def exec_module(self, module: types.ModuleType) -> None:
        graph = self.finder.graph
        name = module.__name__
        file = self.get_filename(name)
        linecache.cache.pop(file, None)
        # A cleared namespace would otherwise fall back to ModuleType's own docstring.
        module.__dict__.setdefault("__doc__", None)
        code = self.get_code(name)
        previous = graph.begin(name, file)
        hooks = _ImportHooks.enter(graph)
        record = effects.Record(name)
        ok = False
        try:
            with effects.recording(record):
                exec(code, module.__dict__)
            graph.code[name] = code
            ok = True
        except BaseException:
            graph.undo_begin(name, previous)
            raise
        finally:
            hooks.exit()
            graph.end(name)
            self.finder.observe(name, record, ok)


# Bytecode of project modules is cached in `__pycache__` as Python caches it (the modification
# time and size of the source it was compiled from), so a start-up with thousands of modules
# reads it instead of compiling each; a reload always compiles. Python trusts a .pyc whose
# recorded time and size match the source, which misses a save made within the same second
# that keeps the size (`"e001"` for `"e000"`): here a .pyc also has to have been written after
# that second was over, so that no later save can share its recorded time. A hash-based .pyc
# (PEP 552) is checked against the source's hash. Nor is a .pyc written here for a source saved
# within the current second: plain Python, reading it later, would not see such a save either.
_MASK = 0xFFFFFFFF


def read_bytecode(path: str, stat: os.stat_result, read: Callable[[str], bytes]
                  ) -> types.CodeType | None:
    """The code in `path`'s cached .pyc if it was compiled from the source as it is at `stat`
    (`read(path)` reads the source, for a hash-based .pyc only)."""
    try:
        cache = importlib.util.cache_from_source(path)
        with io.open_code(cache) as file:  # not the wrapped `open`: no read to note
            data = file.read()
            written = os.fstat(file.fileno()).st_mtime
    except (OSError, NotImplementedError, ValueError):
        return None
    if len(data) < 16 or data[:4] != importlib.util.MAGIC_NUMBER:
        return None
    if int.from_bytes(data[4:8], "little") & 0b1:  # hash-based
        try:
            if data[8:16] != importlib.util.source_hash(read(path)):
                return None
        except OSError:
            return None
    else:
        second = int(stat.st_mtime)
        if (int.from_bytes(data[8:12], "little") != second & _MASK
                or int.from_bytes(data[12:16], "little") != stat.st_size & _MASK
                or written < second + 1):
            return None
    try:
        code = marshal.loads(memoryview(data)[16:])
    except (EOFError, ValueError, TypeError):
        return None
    return code if isinstance(code, types.CodeType) and code.co_filename == path else None


def write_bytecode(path: str, stat: os.stat_result, code: types.CodeType) -> None:
    """Cache `code`, compiled from the source as it was at `stat` (taken before reading it,
    so that a save meanwhile makes the .pyc look older than the file, never newer)."""
    if sys.dont_write_bytecode or time.time() < int(stat.st_mtime) + 1 + CLOCK_SLACK:
        # Saved within this second: a same-size save later in it would leave the .pyc looking
        # current to Python (a `fh_utils run` or `python app.py` next would run stale code).
        return
    try:
        cache = importlib.util.cache_from_source(path)
    except (NotImplementedError, ValueError):
        return
    data = b"".join([importlib.util.MAGIC_NUMBER, bytes(4),
                     (int(stat.st_mtime) & _MASK).to_bytes(4, "little"),
                     (stat.st_size & _MASK).to_bytes(4, "little"), marshal.dumps(code)])
    temporary = f"{cache}.{os.getpid()}.tmp"  # replaced whole: a reader never sees half
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with open(temporary, "wb") as file:
            file.write(data)
        os.replace(temporary, cache)
    except OSError:  # a read-only tree: compiled again next time
        with contextlib.suppress(OSError):
            os.unlink(temporary)


class ProjectFinder(importlib.abc.MetaPathFinder):
    """Hands project source files to `ProjectLoader`; everything else is left alone.

    `observer(name, record, ok)` hears about every execution of a project module, with the
    side effects it made.
    """

    def __init__(self, graph: ModuleGraph, observer: RunObserver | None = None) -> None:
        self.graph = graph
        self.observer = observer

    def observe(self, name: str, record: effects.Record, ok: bool) -> None:
        if self.observer is not None:
            self.observer(name, record, ok)
        elif not ok:
            record.undo()
            record.discard()

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
                and self.graph.is_project_file(origin)
            ):
                spec.loader = ProjectLoader(fullname, origin, self)
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
    """Wraps `__import__` and `importlib.import_module` while project module code runs, and
    from `activate` on (imports made at request time by project code count too).

    Imports answered from `sys.modules` never reach a finder or loader, so the only way to see
    `from helpers import CONST` in the second module that imports helpers is at the call. While
    a batch runs, an import of one of its stale modules runs that module first (`graph.stale`).
    Entering is counted (nesting); the wrappers go when the count is back to zero.
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


def _make_import(original: Callable[..., Any], graph: ModuleGraph) -> Callable[..., Any]:
    def __import__(  # noqa: A002
        name: str, globals: Any = None, locals: Any = None,  # noqa: A002
        fromlist: Sequence[str] = (), level: int = 0,
    ) -> Any:
        importer = graph.executing()
        if importer is None:  # at request time, or in another thread
            module = original(name, globals, locals, fromlist, level)
            caller = globals.get("__name__") if isinstance(globals, dict) else None
            if caller is not None and graph.is_project_module(caller):
                # A handler's (or a lazily made client's) import is a dependency as much as
                # one made at import time: an edit of what it imports runs it again.
                _record(graph, caller, module, name, fromlist)
            return module
        absolute = _absolute(name, globals, level)
        if graph.stale and absolute:
            _run_stale(graph, absolute, fromlist)
        if _loaded(absolute, fromlist):
            module = original(name, globals, locals, fromlist, level)  # a lookup: no effects
        else:
            with effects.detached():  # what importing a module does is that module's
                module = original(name, globals, locals, fromlist, level)
        _record(graph, importer, module, name, fromlist)
        return module

    return __import__


def _record(graph: ModuleGraph, importer: str, module: Any, name: str,
            fromlist: Sequence[str] | None) -> None:
    if fromlist:
        base = module.__name__
        graph.record_imports(importer, [base, *(f"{base}.{item}" for item in fromlist
                                                if isinstance(item, str))])
    elif "." not in name:
        graph.record_import(importer, name)
    else:
        parts = name.split(".")
        graph.record_imports(importer, [".".join(parts[: i + 1]) for i in range(len(parts))])


def _run_stale(graph: ModuleGraph, name: str, fromlist: Sequence[str] | None) -> None:
    """A batch is running: the stale modules this import reaches run now, parents first, as
    the import system runs them on a cold start (where they are not loaded yet)."""
    parts = name.split(".")
    wanted = [".".join(parts[: i + 1]) for i in range(len(parts))]
    wanted += [f"{name}.{item}" for item in fromlist or () if isinstance(item, str)]
    for module in wanted:
        if module in graph.stale:
            with effects.detached():  # what running a module does is that module's
                graph.rerun(module)


def _absolute(name: str, globals: Any, level: int) -> str | None:
    """The absolute name `__import__(name, globals, level=level)` imports, if cheap to tell."""
    if level == 0:
        return name
    package = globals.get("__package__") if isinstance(globals, dict) else None
    if not package:
        return None
    bits = package.rsplit(".", level - 1)
    if len(bits) < level:
        return None
    return f"{bits[0]}.{name}" if name else bits[0]


def _loaded(name: str | None, fromlist: Sequence[str]) -> bool:
    """Whether importing `name` (and `fromlist` from it) only looks up loaded modules."""
    module = sys.modules.get(name) if name else None
    if module is None:
        return False
    for item in fromlist or ():
        if item == "*" or not (hasattr(module, item) or f"{name}.{item}" in sys.modules):
            return False
    return True


def _make_import_module(original: Callable[..., Any], graph: ModuleGraph) -> Callable[..., Any]:
    def import_module(name: str, package: str | None = None) -> types.ModuleType:
        if graph.stale and graph.executing() is not None:
            _run_stale(graph, importlib.util.resolve_name(name, package), ())
        if name in sys.modules:
            module: types.ModuleType = original(name, package)
        else:
            with effects.detached():
                module = original(name, package)
        importer = graph.executing()
        if importer is None:  # at request time: the caller's module, if the project's
            caller = sys._getframe(1).f_globals.get("__name__")
            importer = caller if caller and graph.is_project_module(caller) else None
        if importer is not None:
            graph.record_imports(importer, (module.__name__,))
        return module

    import_module.__doc__ = original.__doc__
    return import_module


# -- reads: open(), directory listings, os.environ ----------------------------------------------

_active: ModuleGraph | None = None  # the graph file opens and environment reads go to
_saved: dict[str, Callable[..., Any]] = {}
_busy = threading.local()  # set while a wrapper reports, so the graph's own calls pass through


def activate(graph: ModuleGraph) -> None:
    """Start seeing which files are opened and which directories listed.

    Wrappers, not an audit hook: a hook runs on every audited event of the process (each
    `id()` call is one), which cost about 5% of the requests per second of a small page.
    """
    global _active
    if _active is not graph:  # from now on imports made at request time are recorded too
        _ImportHooks.enter(graph)
    _active = graph
    if not _saved:
        _saved.update(open=builtins.open, os_open=os.open, listdir=os.listdir,
                      scandir=os.scandir)
        builtins.open = io.open = _wrap_open(_saved["open"])
        os.open = _wrap_os_open(_saved["os_open"])
        os.listdir = _wrap_listing(_saved["listdir"])
        os.scandir = _wrap_listing(_saved["scandir"])
        _globber_scandir(os.scandir)


def _globber_scandir(scandir: Callable[..., Any]) -> None:
    """Python 3.13's `pathlib.Path.glob` lists directories through `glob._StringGlobber`, whose
    `scandir = staticmethod(os.scandir)` took `os.scandir` when `glob` was imported (by
    `pathlib`, long before `activate`): the wrapper is put there too, and the original back."""
    globber = getattr(sys.modules.get("glob"), "_StringGlobber", None)
    held = getattr(globber, "__dict__", {}).get("scandir")
    if isinstance(held, staticmethod) and held.__func__ in (_saved["scandir"], os.scandir):
        globber.scandir = staticmethod(scandir)  # type: ignore[union-attr]


def deactivate(graph: ModuleGraph) -> None:
    global _active
    if _active is graph:
        _active = None
        _ImportHooks.exit()
        if _saved:
            builtins.open = io.open = _saved["open"]
            os.open = _saved["os_open"]
            os.listdir = _saved["listdir"]
            _globber_scandir(_saved["scandir"])  # while os.scandir is still the wrapper
            os.scandir = _saved["scandir"]
            _saved.clear()
    track_environ(False)


def _report(action: Callable[[ModuleGraph], None]) -> None:
    # Never raise into the user's call: tracking is best effort.
    graph = _active
    if graph is None or getattr(_busy, "on", False):
        return
    _busy.on = True
    try:
        action(graph)
    except Exception:
        pass
    finally:
        _busy.on = False


def _wrap_open(original: Callable[..., Any]) -> Callable[..., Any]:
    def open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:  # noqa: A001
        flags = os.O_WRONLY if any(c in mode for c in "wax+") else os.O_RDONLY
        name = os.fspath(file) if isinstance(file, os.PathLike) else file
        _report(lambda graph: graph.opened(name, flags))
        return original(file, mode, *args, **kwargs)

    open.__doc__ = original.__doc__
    return open


def _wrap_os_open(original: Callable[..., Any]) -> Callable[..., Any]:
    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        name = os.fspath(path) if isinstance(path, os.PathLike) else path
        _report(lambda graph: graph.opened(name, flags))
        return original(path, flags, *args, **kwargs)  # type: ignore[no-any-return]

    os_open.__name__ = "open"
    os_open.__doc__ = original.__doc__
    return os_open


def _wrap_listing(original: Callable[..., Any]) -> Callable[..., Any]:
    def listing(path: Any = ".", *args: Any, **kwargs: Any) -> Any:
        result = original(path, *args, **kwargs)
        if path is not None:
            name = os.fspath(path) if isinstance(path, os.PathLike) else path
            _report(lambda graph: graph.listed(name))
        return result

    listing.__name__ = original.__name__
    listing.__doc__ = original.__doc__
    return listing


class _TrackedEnviron(os._Environ):  # type: ignore[type-arg]
    """`os.environ` while environment reads are tracked: each lookup is a read."""

    def __getitem__(self, key: str) -> str:
        graph = _active
        if graph is not None:
            graph.read(key)
        value: str = super().__getitem__(key)
        return value

    def __iter__(self) -> Any:
        graph = _active
        if graph is not None:
            graph.read("*")
        return super().__iter__()


def track_environ(on: bool) -> None:
    """Record which environment variables modules and cache entries read (for `--env-file`)."""
    os.environ.__class__ = _TrackedEnviron if on else os._Environ
