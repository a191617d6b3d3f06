"""Keep values and objects across hot reloads: `no_reload_cache`, `no_reload`, `on_reload`.

`fh_utils dev` re-executes an edited module in place, which would run every loader again.
These decorators keep what they guard in a registry owned by this module, keyed by module and
qualified name, that no reload touches. Outside dev mode (plain `python`, tests importing the
app) `no_reload_cache` is `functools.lru_cache`, `no_reload` returns its argument unchanged and
`on_reload` registers nothing.
"""

from __future__ import annotations

import ast
import functools
import logging
import sys
import threading
import time
import types
import weakref
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from fh_utils.reload import effects
from fh_utils.reload.compare import same_code, same_function

if TYPE_CHECKING:
    from functools import _lru_cache_wrapper

__all__ = ["CacheInfo", "Engine", "engine", "no_reload", "no_reload_cache", "on_reload"]

logger = logging.getLogger("fh_utils")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
R = TypeVar("R")

CacheInfo = namedtuple("CacheInfo", ["hits", "misses", "maxsize", "currsize"])

_dev = False
_lock = threading.Lock()  # guards the registries below, never held while user code runs
_entries: dict[tuple[str, str, int], _Entry] = {}
_pins: dict[tuple[str, str, int], _Pin] = {}
_callbacks: dict[str, list[Callable[[], object]]] = {}
# How often each (kind, qualname) was decorated during the current execution of a module, so
# that FastHTML-style handlers that all share one name (`def get(): ...`) get separate entries.
_occurrences: dict[str, _Execution] = {}
_KWARGS = object()
_slowest: tuple[float, str] = (0.0, "")  # the longest computation of a cached value: (s, name)
_computing = threading.local()  # `entries`: the entries computing in this thread, innermost last


@overload
def no_reload_cache(maxsize: Callable[..., R], /) -> _lru_cache_wrapper[R]: ...
@overload
def no_reload_cache(
    maxsize: int | None = 128,
    typed: bool = False,
    *,
    cleanup: Callable[[Any], object] | None = None,
) -> Callable[[Callable[..., R]], _lru_cache_wrapper[R]]: ...
def no_reload_cache(
    maxsize: int | None | Callable[..., Any] = 128,
    typed: bool = False,
    *,
    cleanup: Callable[[Any], object] | None = None,
) -> Any:
    """`functools.lru_cache` whose values survive reloads while the function's code is unchanged.

    Arguments, keys, `cache_info()` and `cache_clear()` are those of `lru_cache`. The values are
    dropped, and the next call recomputes, when the function's own bytecode, constants,
    defaults or decorator arguments change (line numbers do not count). Concurrent first calls
    with the same arguments compute once: the others wait for that result or its exception
    (not cached; a later call retries) and count as hits. `cleanup(value)` runs for each value
    the cache drops: code changed, `cache_clear()` or LRU eviction (dev mode only). Functions
    defined inside a function are new objects on each call and get a plain `lru_cache`.

        @no_reload_cache
        def load_model(name: str = "small") -> Model: ...

        @no_reload_cache(maxsize=4, cleanup=lambda conn: conn.close())
        def connect(url: str) -> Connection: ...
    """
    if callable(maxsize) and isinstance(typed, bool):
        return _decorate(maxsize, 128, typed, cleanup)
    if isinstance(maxsize, int):
        maxsize = max(maxsize, 0)
    elif maxsize is not None:
        raise TypeError(f"no_reload_cache: maxsize must be an int or None, not {maxsize!r}")
    if cleanup is not None and not callable(cleanup):
        raise TypeError(f"no_reload_cache: cleanup must be callable, not {cleanup!r}")
    return functools.partial(_decorate, maxsize=maxsize, typed=typed, cleanup=cleanup)


def no_reload(obj: T) -> T:
    """Keep the function or class its module's first execution created, with its state.

    Later executions of the module get that first object back, so identity, attributes and
    class-level state survive; edits to its body are ignored (and logged) until a restart.

        @no_reload
        class Registry:
            items: list[str] = []
    """
    if not isinstance(getattr(obj, "__qualname__", None), str):
        raise TypeError(f"@no_reload expects a function or a class, not {obj!r}")
    if not _active(obj.__module__):
        return obj
    qualname: str = getattr(obj, "__qualname__", "?")
    if getattr(obj, "_fh_utils_cache", False):
        raise TypeError(
            f"@no_reload above @no_reload_cache on {qualname}(): put @no_reload below it"
        )
    key = _registry_key("pin", obj)
    if key is None:
        return obj
    body = _class_body(obj, sys._getframe(1)) if isinstance(obj, type) else _unwrap(obj)
    module = _module_ref(key[0])
    with _lock:
        pin = _pins.get(key)
        # A pin made by an import that failed belongs to a module object nobody uses any more:
        # its globals may lack names defined after the failure. The new import pins afresh.
        if pin is None or not (pin.committed or pin.module() is module()):
            _pins[key] = _Pin(obj, body, module)
            return obj
    if not pin.warned and not _same_body(pin.body, body):
        pin.warned = True
        logger.warning("%s is pinned by @no_reload: edits ignored until restart", key[1])
    return pin.obj  # type: ignore[no-any-return]


def on_reload(callback: F, module: str | types.ModuleType | None = None) -> F:
    """Run `callback()` once, just before `module` (default: the caller's module) re-executes.

    Use it to release what the module's previous execution opened. Callbacks run last
    registered first; an exception in one is logged and does not stop the others. They run
    even if the re-execution then fails: the module's previous version keeps serving, with
    what the callbacks released, until a fix is saved (the failed run's own callbacks run
    before that next execution). Keep what must survive a failed edit in `no_reload_cache`.

        conn = sqlite3.connect("app.db")
        on_reload(conn.close)
    """
    if module is None:
        name = sys._getframe(1).f_globals["__name__"]
    else:
        name = module if isinstance(module, str) else module.__name__
    if not _active(name):
        return callback
    with _lock:
        _callbacks.setdefault(name, []).append(callback)
    return callback


# --- the reload engine's side: one named interface ------------------------------------------


def _active(module: object) -> bool:
    """Dev mode, or the `__main__` script of `python app.py` when it calls `fh_utils.serve()`:
    serve() turns it into the importable app module (`engine.rename_module`), values kept."""
    return _dev or (module == "__main__" and _main_calls_serve())


@functools.cache
def _main_calls_serve() -> bool:
    """Whether the running script imports `serve` from fh_utils (parsed once, at first use)."""
    file = getattr(sys.modules.get("__main__"), "__file__", None)
    if not file or not file.endswith(".py"):
        return False
    try:
        tree = ast.parse(Path(file).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return False
    return any(
        (isinstance(node, ast.ImportFrom) and node.module == "fh_utils"
         and any(alias.name in ("serve", "*") for alias in node.names))
        or (isinstance(node, ast.Attribute) and node.attr == "serve"
            and isinstance(node.value, ast.Name) and node.value.id == "fh_utils")
        for node in ast.walk(tree)
    )


class Engine:
    """What the reload engine (`fh_utils.reload.engine`) asks of the registries: the only way in.

    The engine tells it when a module is about to run again, when a run succeeded, and when a
    batch of runs is over; it asks which cache entry is computing (to attribute file reads) and
    whether an object is pinned.
    """

    def activate(self) -> None:
        """Enter dev mode: decorators applied from now on keep their values across reloads."""
        global _dev
        _dev = True

    def computing_entry(self) -> object | None:
        """The cache entry whose function is computing in this thread, if any: the engine
        attributes the files and environment variables read meanwhile to it."""
        entries = getattr(_computing, "entries", None)
        return entries[-1] if entries else None

    def before_rerun(self, module_name: str) -> int:
        """Run and forget the `on_reload` callbacks of a module about to run again; how many.

        Call it before every re-execution: it also restarts the count that tells apart functions
        defined twice under one name in a module.
        """
        with _lock:
            callbacks = _callbacks.pop(module_name, [])
            _occurrences.pop(module_name, None)
        _run_callbacks(module_name, callbacks)
        return len(callbacks)

    def executed(self, module_name: str) -> None:
        """`module_name` ran to the end: what it pinned is the module's from now on, also for a
        new module object (the project re-imported)."""
        with _lock:
            for key, pin in _pins.items():
                if key[0] == module_name:
                    pin.committed = True

    def release_stale(self, module_names: list[str], gone: bool = False) -> list[str]:
        """After a successful batch: forget the cached values and pins of functions these
        modules no longer define (renamed, deleted), running `cleanup` for each value.

        With `gone`, the modules themselves are gone: everything of theirs goes, and their
        `on_reload` callbacks run. Returns the qualified names released.
        """
        released: list[tuple[_Version, list[Any]]] = []
        names: list[str] = []
        callbacks: list[tuple[str, list[Callable[[], object]]]] = []
        with _lock:
            wanted = set(module_names)
            for key in [k for k in _entries if k[0] in wanted]:
                if gone or not _defined(key, "cache"):
                    entry = _entries.pop(key)
                    with entry.lock:
                        released.append((entry.version, entry.clear()))
                    names.append(key[1])
            for key in [k for k in _pins if k[0] in wanted]:
                if gone or not _defined(key, "pin"):
                    del _pins[key]
                    names.append(key[1])
            if gone:
                for name in module_names:
                    callbacks.append((name, _callbacks.pop(name, [])))
                    _occurrences.pop(name, None)
        for version, values in released:
            _run_cleanup(version, values)
        for name, pending in callbacks:
            _run_callbacks(name, pending)
        return names

    def batch_done(self) -> None:
        """End of a reload batch: pinned objects may warn about edits again."""
        with _lock:
            for pin in _pins.values():
                pin.warned = False

    def invalidate(self, entry: object, what: str) -> None:
        """`what` (a file, an environment variable) that `entry`'s function read has changed."""
        assert isinstance(entry, _Entry)
        with entry.lock:
            dropped = entry.clear()
            version = entry.version
        logger.info("%s() read %s, which changed: cache cleared", version.fn.__qualname__, what)
        _run_cleanup(version, dropped)

    def slowest(self) -> tuple[float, str]:
        """The longest a cached value took to compute in this process, and whose it was:
        what a fresh process would spend again."""
        return _slowest

    def is_pinned(self, obj: object) -> bool:
        """Whether `obj` is the object a `@no_reload` pin hands back."""
        with _lock:
            return any(pin.obj is obj for pin in _pins.values())

    def rename_module(self, old: str, new: str) -> None:
        """The module registered as `old` is now imported as `new` (`serve()` from `__main__`)."""
        with _lock:
            for key in [k for k in _entries if k[0] == old]:
                _entries[(new, key[1], key[2])] = _entries.pop(key)
            for key in [k for k in _pins if k[0] == old]:
                _pins[(new, key[1], key[2])] = _pins.pop(key)
            if old in _callbacks:
                _callbacks[new] = _callbacks.pop(old)
            if old in _occurrences:
                _occurrences[new] = _occurrences.pop(old)

    def release_all(self) -> None:
        """The process stops serving this project (a new worker took over): run every
        `cleanup` and `on_reload` callback, and forget every value."""
        with _lock:
            modules = {k[0] for k in (*_entries, *_pins)} | set(_callbacks)
        self.release_stale(sorted(modules), gone=True)

    def reset_for_tests(self) -> None:
        """Leave dev mode and forget every cached value, pinned object and callback."""
        global _dev, _slowest
        _dev = False
        _slowest = (0.0, "")
        with _lock:
            _entries.clear()
            _pins.clear()
            _callbacks.clear()
            _occurrences.clear()


engine = Engine()


def _defined(key: tuple[str, str, int], kind: str) -> bool:
    """Whether the last run of key's module decorated key's function (its `index`-th time)."""
    execution = _occurrences.get(key[0])
    return execution is not None and execution.counts.get((kind, key[1]), 0) > key[2]


def _run_callbacks(module_name: str, callbacks: list[Callable[[], object]]) -> None:
    for callback in reversed(callbacks):
        try:
            callback()
        except Exception:
            name = getattr(callback, "__qualname__", callback)
            logger.exception("on_reload callback %s of %s failed", name, module_name)


# --- internals -------------------------------------------------------------------------------


class _Version:
    """One decoration: the function, its decorator arguments and the values it may share."""

    __slots__ = ("cleanup", "fn", "generation", "maxsize", "typed")

    def __init__(self, fn: types.FunctionType, maxsize: int | None, typed: bool, cleanup: Any):
        self.fn, self.maxsize, self.typed, self.cleanup = fn, maxsize, typed, cleanup
        self.generation = -1  # equal to its entry's generation once it may use the entry's values

    def same_as(self, other: _Version) -> bool:
        return (self.maxsize, self.typed) == (other.maxsize, other.typed) and same_function(
            self.fn, other.fn
        )


class _Call:
    """One computation in progress; callers with the same arguments wait on it."""

    __slots__ = ("done", "error", "thread", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.thread = threading.get_ident()
        self.value: Any = None
        self.error: BaseException | None = None


class _Entry:
    """The values of one cached function, shared by every execution of its module."""

    def __init__(self, version: _Version) -> None:
        self.lock = threading.Lock()  # held for dictionary updates only, never while computing
        self.version = version
        self.generation = version.generation = 0
        self.values: OrderedDict[Hashable, Any] = OrderedDict()
        self.pending: dict[Hashable, _Call] = {}
        self.hits = self.misses = 0

    def clear(self) -> list[Any]:
        """Forget values, statistics and computations in progress; return the dropped values."""
        dropped = list(self.values.values())
        self.values.clear()
        self.pending.clear()
        self.hits = self.misses = 0
        return dropped


class _Pin:
    __slots__ = ("body", "committed", "module", "obj", "warned")

    def __init__(self, obj: Any, body: Any, module: Callable[[], Any]) -> None:
        self.obj, self.body, self.module, self.warned = obj, body, module, False
        self.committed = False  # its module's run went to the end


class _Execution:
    """Decorations counted during one execution of one module object."""

    __slots__ = ("counts", "module")

    def __init__(self, module: Callable[[], Any]) -> None:
        self.module = module
        self.counts: dict[tuple[str, str], int] = {}


def _module_ref(name: str) -> Callable[[], Any]:
    """A weak reference to the module object now in sys.modules under `name` (or to None)."""
    module = sys.modules.get(name)
    try:
        return weakref.ref(module)
    except TypeError:  # None, or an object that takes no weak reference
        return lambda: module


def _decorate(fn: Any, maxsize: int | None, typed: bool, cleanup: Any) -> Any:
    if not isinstance(fn, types.FunctionType) or not _active(fn.__module__):
        return functools.lru_cache(maxsize, typed)(fn)
    key = _registry_key("cache", fn)
    if key is None:  # defined inside a function: a new object per call, nothing to keep
        return functools.lru_cache(maxsize, typed)(fn)
    version = _Version(fn, maxsize, typed, cleanup)
    with _lock:
        entry = _entries.get(key) or _entries.setdefault(key, _Entry(version))

    # A plain function, not a callable object: the reload engine patches old references with
    # the new generation's code and closure cells (entry, version).
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if version.generation != entry.generation:
            _switch(entry, version)
        return _call(entry, version, args, kwargs)

    functools.update_wrapper(wrapper, fn)
    wrapper.cache_clear = functools.partial(_cache_clear, entry)  # type: ignore[attr-defined]
    wrapper.cache_info = functools.partial(_cache_info, entry)  # type: ignore[attr-defined]
    wrapper.cache_parameters = lambda: {"maxsize": maxsize, "typed": typed}  # type: ignore[attr-defined]
    wrapper._fh_utils_cache = True  # type: ignore[attr-defined]
    return wrapper


def _switch(entry: _Entry, version: _Version) -> None:
    """Let `version` use the entry's values, dropping them first if its code differs."""
    with entry.lock:
        if version.generation == entry.generation:
            return
        old, entry.version = entry.version, version
        if old.same_as(version):
            version.generation = entry.generation
            return
        entry.generation += 1
        version.generation = entry.generation
        dropped = entry.clear()
    logger.info("%s() changed: cache cleared", version.fn.__qualname__)
    _run_cleanup(old, dropped)


def _call(entry: _Entry, version: _Version, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    key = _make_key(args, kwargs, version.typed)
    with entry.lock:
        if key in entry.values:
            entry.values.move_to_end(key)
            entry.hits += 1
            return entry.values[key]
        waiting = entry.pending.get(key)
        owner = waiting is None
        if waiting is None:
            call = entry.pending[key] = _Call()
            entry.misses += 1
        else:
            call = waiting
            entry.hits += 1
    if not owner:
        if call.thread == threading.get_ident():
            raise RecursionError(f"{version.fn.__qualname__}() called itself with the same args")
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.value
    dropped: list[Any] = []
    try:
        _computing.__dict__.setdefault("entries", []).append(entry)
        started = time.perf_counter()
        try:
            with effects.detached():  # what the value holds outlives the module's run
                call.value = version.fn(*args, **kwargs)
        finally:
            _computing.entries.pop()
            _note_duration(time.perf_counter() - started, version.fn)
    except BaseException as error:
        call.error = error
        raise
    else:
        with entry.lock:
            # Not stored when cache_clear() or a code change forgot this computation meanwhile.
            if entry.pending.get(key) is call and version.maxsize != 0:
                entry.values[key] = call.value
                while version.maxsize is not None and len(entry.values) > version.maxsize:
                    dropped.append(entry.values.popitem(last=False)[1])
    finally:
        with entry.lock:
            if entry.pending.get(key) is call:
                del entry.pending[key]
        call.done.set()
    _run_cleanup(version, dropped)
    return call.value


def _note_duration(seconds: float, fn: Callable[..., Any]) -> None:
    global _slowest
    if seconds > _slowest[0]:
        _slowest = (seconds, f"{fn.__qualname__}()")


def _make_key(args: tuple[Any, ...], kwargs: dict[str, Any], typed: bool) -> Hashable:
    if not kwargs and not typed and len(args) == 1 and type(args[0]) in (int, str):
        single: Hashable = args[0]  # as lru_cache does: f(1) and f(1.0) are different keys
        return single
    key = args
    if kwargs:
        key += (_KWARGS, *kwargs.items())
    if typed:
        key += tuple(type(arg) for arg in args) + tuple(type(v) for v in kwargs.values())
    return key


def _cache_clear(entry: _Entry) -> None:
    with entry.lock:
        dropped = entry.clear()
        version = entry.version
    _run_cleanup(version, dropped)


def _cache_info(entry: _Entry) -> CacheInfo:
    with entry.lock:
        return CacheInfo(entry.hits, entry.misses, entry.version.maxsize, len(entry.values))


def _run_cleanup(version: _Version, values: list[Any]) -> None:
    if version.cleanup is None:
        return
    for value in values:
        try:
            version.cleanup(value)
        except Exception:
            logger.exception("cleanup of a %s() value failed", version.fn.__qualname__)


def _registry_key(kind: str, obj: Any) -> tuple[str, str, int] | None:
    module, qualname = getattr(obj, "__module__", None), obj.__qualname__
    if not isinstance(module, str) or "<locals>" in qualname:
        return None
    ref = _module_ref(module)
    with _lock:
        execution = _occurrences.get(module)
        # A re-execution starts with engine.before_rerun; a fresh import (after one that failed, or
        # a module deleted from sys.modules) is a new module object: count from zero again.
        if execution is None or execution.module() is not ref():
            execution = _occurrences[module] = _Execution(ref)
        counts = execution.counts
        index = counts.get((kind, qualname), 0)
        counts[(kind, qualname)] = index + 1
    return module, qualname, index


def _class_body(cls: type, frame: types.FrameType) -> types.CodeType | None:
    """The code of the class statement, found among the constants of the defining frame."""
    bodies = [
        const
        for const in frame.f_code.co_consts
        if isinstance(const, types.CodeType) and const.co_qualname == cls.__qualname__
    ]
    return bodies[0] if len(bodies) == 1 else None


def _unwrap(fn: Any) -> Any:
    for _ in range(100):  # bounded: a __wrapped__ cycle must not hang a reload
        fn = getattr(fn, "__wrapped__", fn)
    return fn


def _same_body(a: Any, b: Any) -> bool:
    if a is None or b is None:  # a class whose statement we could not find: assume unchanged
        return True
    if isinstance(a, types.CodeType) and isinstance(b, types.CodeType):
        return same_code(a, b)
    return same_function(a, b)
