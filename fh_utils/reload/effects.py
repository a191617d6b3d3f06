"""What project code changes outside its own namespace, and how to take it back.

Re-running a module repeats what its top level did to the rest of the process: a second
logging handler, a second background task, a second `atexit` callback. A cold start would
have one. While a project module executes (and in code it calls, including tasks it creates)
and while an app's lifespan runs, `Record` notes:

- handlers and filters added to or removed from loggers, logger levels, `logging.disable`;
- `atexit` callbacks and signal handlers installed;
- entries added to or removed from `sys.path`, `sys.meta_path` and the warnings filters;
- environment variables set, changed or removed (`os.environ`, `setdefault` included): taken
  back before the module runs again, it starts from the environment a cold start gives it;
- threads started and asyncio tasks created.

Before a module runs again its record is undone: what can be put back is put back, and its
tasks are cancelled once the new run is committed. A thread cannot be stopped from outside:
one that is still alive makes an in-place re-run unfaithful (`Record.alive_threads`).

Recording is done by wrappers installed once (`install`); they cost one context-variable
lookup per call when nothing is being recorded.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import logging
import operator
import os
import signal
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from fh_utils.reload import frames as _frames

__all__ = ["Record", "SignalChain", "adopt_threads", "detached", "install",
           "install_task_factory", "recording", "uninstall"]

_owner: contextvars.ContextVar[Record | None] = contextvars.ContextVar(
    "fh_utils_effects_owner", default=None
)
_LISTS = ("sys.path", "sys.meta_path", "warnings.filters")


@dataclass
class _Op:
    """One reversible change: `undo` takes it back, `redo` makes it again."""

    what: str
    undo: Callable[[], object]
    redo: Callable[[], object]


class Record:
    """The side effects of one run of one module, or of one app's lifespan."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._ops: list[_Op] = []
        self._threads: list[weakref.ref[threading.Thread]] = []
        self._tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._handlers: list[logging.Handler] = []  # added by this run: closed when dropped
        self._lists: tuple[list[Any], ...] | None = None  # snapshot while this run is innermost
        self._environ: dict[Any, Any] | None = None  # os.environ's, likewise

    def __repr__(self) -> str:
        return f"<Record {self.label}: {len(self._ops)} changes, {len(self._threads)} threads>"

    # -- what happened -------------------------------------------------------------------
    @property
    def empty(self) -> bool:
        return not (self._ops or self._threads or len(self._tasks))

    def alive_threads(self) -> list[threading.Thread]:
        """Threads this run started that are still running."""
        return [t for ref in self._threads if (t := ref()) is not None and t.is_alive()]

    def join_threads(self, timeout: float) -> list[threading.Thread]:
        """Give stopping threads up to `timeout` seconds; returns those still alive."""
        deadline = time.monotonic() + timeout
        for thread in self.alive_threads():
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.alive_threads()

    # -- taking it back --------------------------------------------------------------------
    def undo(self) -> None:
        """Put back what this run changed (newest first); tasks and threads are not touched."""
        for op in reversed(self._ops):
            _quietly(op.undo, op.what)

    def redo(self) -> None:
        """Make this run's changes again, after `undo` (a re-run that failed is rolled back)."""
        for op in self._ops:
            _quietly(op.redo, op.what)

    def cancel_tasks(self) -> int:
        """Cancel the tasks this run created that are still running; how many were."""
        count = 0
        for task in list(self._tasks):
            if not task.done():
                task.cancel()
                count += 1
        return count

    def close_handlers(self) -> None:
        """Close the handlers this run added that no logger uses any more (a dropped run)."""
        used = {id(h) for lg in _all_loggers() for h in lg.handlers}
        for handler in self._handlers:
            if id(handler) not in used:
                _quietly(handler.close, f"closing {handler!r}")

    def discard(self) -> None:
        """This run is over for good (replaced, or rolled back after `undo`)."""
        self.cancel_tasks()
        self.close_handlers()

    # -- recording (called by the wrappers) ------------------------------------------------
    def _add(self, what: str, undo: Callable[[], object], redo: Callable[[], object]) -> None:
        self._ops.append(_Op(what, undo, redo))

    def _open_interval(self) -> None:
        self._lists = _snapshot_lists()
        self._environ = _environ_data().copy()

    def _close_interval(self) -> None:
        before, self._lists = self._lists, None
        environ, self._environ = self._environ, None
        if environ is not None:
            _diff_environ(self, environ)
        if before is None:
            return
        for name, old, current in zip(_LISTS, before, _live_lists()):
            _diff_list(self, name, old, current)


def adopt_threads(records: dict[str, Record]) -> None:
    """Modules that ran before recording began (the script behind `python app.py`): give
    each the live threads whose code it defines (`target`, or a `Thread` subclass's `run`),
    keyed by the module's file."""
    for thread in threading.enumerate():
        if thread is threading.main_thread() or _pool_thread(thread):
            continue
        code = getattr(getattr(thread, "_target", None), "__code__", None)
        if code is None:
            run = type(thread).run
            code = None if run is threading.Thread.run else getattr(run, "__code__", None)
        record = records.get(getattr(code, "co_filename", ""))
        if record is not None:
            record._threads.append(weakref.ref(thread))


# -- attributing effects to a run --------------------------------------------------------------


@contextlib.contextmanager
def recording(record: Record) -> Iterator[Record]:
    """Attribute what runs in this block (and tasks it creates) to `record`.

    Blocks nest: the innermost record gets the effects made while it is innermost.
    """
    parent = _owner.get()
    if parent is not None:
        parent._close_interval()
    record._open_interval()
    token = _owner.set(record)
    try:
        yield record
    finally:
        _owner.reset(token)
        record._close_interval()
        if parent is not None:
            parent._open_interval()


@contextlib.contextmanager
def detached() -> Iterator[None]:
    """Record nothing in this block: what a `no_reload_cache` function does belongs to its
    value, which outlives the module run that computed it."""
    if _owner.get() is None:
        yield
        return
    with recording(Record("detached")):
        yield


def current() -> Record | None:
    return _owner.get()


_is_project: Callable[[str], bool] | None = None


def configure(is_project_file: Callable[[str], bool] | None) -> None:
    """Count a call as the running module's only when project code asked for it (see
    `fh_utils.reload.frames`); None counts every call (tests of this module)."""
    global _is_project
    _is_project = is_project_file


def _asking() -> Record | None:
    """The record a call made now belongs to: the running module's, unless an installed
    package made the call for its own purposes (lazy set-up on first use)."""
    record = _owner.get()
    if record is None or _is_project is None:
        return record
    return record if _frames.asked_by_project(_is_project, skip=2) else None


def context_for(record: Record) -> contextvars.Context:
    """A context in which tasks and threads started count as `record`'s (a lifespan's task)."""
    context = contextvars.copy_context()
    context.run(_owner.set, record)
    return context


# -- the wrappers ------------------------------------------------------------------------------

_installed: dict[tuple[object, str], Any] = {}


def install() -> None:
    """Wrap the functions whose effects are recorded (idempotent)."""
    if _installed:
        return
    _wrap(logging.Logger, "addHandler", _add_handler)
    _wrap(logging.Logger, "removeHandler", _remove_handler)
    _wrap(logging.Filterer, "addFilter", _add_filter)
    _wrap(logging.Filterer, "removeFilter", _remove_filter)
    _wrap(logging.Logger, "setLevel", _set_level)
    _wrap(logging, "disable", _disable)
    _wrap(atexit, "register", _atexit_register)
    _wrap(signal, "signal", _signal)
    _wrap(threading.Thread, "start", _thread_start)


def uninstall() -> None:
    for (owner, name), original in _installed.items():
        setattr(owner, name, original)
    _installed.clear()


def install_task_factory(loop: asyncio.AbstractEventLoop) -> None:
    """Note the tasks created on `loop` while a record is active."""
    previous = loop.get_task_factory()
    if getattr(previous, "_fh_utils", False):
        return

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        if previous is not None:
            task = previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        context = kwargs.get("context")
        record = context.get(_owner) if context is not None else _asking()
        if record is not None and isinstance(task, asyncio.Task):
            record._tasks.add(task)
        return task

    factory._fh_utils = True  # type: ignore[attr-defined]
    loop.set_task_factory(factory)


def _wrap(owner: object, name: str, make: Callable[[Any], Any]) -> None:
    original = getattr(owner, name)
    _installed[(owner, name)] = original
    wrapper = make(original)
    wrapper.__wrapped__ = original
    wrapper.__doc__ = original.__doc__
    wrapper.__name__ = getattr(original, "__name__", name)
    setattr(owner, name, wrapper)


def _original(owner: object, name: str) -> Any:
    return _installed.get((owner, name)) or getattr(owner, name)


def _add_handler(original: Callable[..., None]) -> Callable[..., None]:
    def addHandler(self: logging.Logger, hdlr: logging.Handler) -> None:  # noqa: N802
        record = _asking()
        new = record is not None and hdlr not in self.handlers
        original(self, hdlr)
        if new and record is not None:
            remove = _original(logging.Logger, "removeHandler")
            record._add(f"handler {hdlr!r} on {self.name!r}",
                        lambda: remove(self, hdlr), lambda: original(self, hdlr))
            record._handlers.append(hdlr)

    return addHandler


def _remove_handler(original: Callable[..., None]) -> Callable[..., None]:
    def removeHandler(self: logging.Logger, hdlr: logging.Handler) -> None:  # noqa: N802
        record = _asking()
        present = record is not None and hdlr in self.handlers
        original(self, hdlr)
        if present and record is not None:
            add = _original(logging.Logger, "addHandler")
            record._add(f"removal of {hdlr!r} from {self.name!r}",
                        lambda: add(self, hdlr), lambda: original(self, hdlr))

    return removeHandler


def _add_filter(original: Callable[..., None]) -> Callable[..., None]:
    def addFilter(self: logging.Filterer, filter: Any) -> None:  # noqa: N802, A002
        record = _asking()
        new = record is not None and filter not in self.filters
        original(self, filter)
        if new and record is not None:
            remove = _original(logging.Filterer, "removeFilter")
            record._add(f"filter {filter!r}", lambda: remove(self, filter),
                        lambda: original(self, filter))

    return addFilter


def _remove_filter(original: Callable[..., None]) -> Callable[..., None]:
    def removeFilter(self: logging.Filterer, filter: Any) -> None:  # noqa: N802, A002
        record = _asking()
        present = record is not None and filter in self.filters
        original(self, filter)
        if present and record is not None:
            add = _original(logging.Filterer, "addFilter")
            record._add(f"removal of filter {filter!r}", lambda: add(self, filter),
                        lambda: original(self, filter))

    return removeFilter


def _set_level(original: Callable[..., None]) -> Callable[..., None]:
    def setLevel(self: logging.Logger, level: int | str) -> None:  # noqa: N802
        record = _asking()
        before = self.level
        original(self, level)
        after = self.level
        if record is not None and after != before:

            def undo() -> None:
                if self.level == after:
                    original(self, before)

            record._add(f"level of {self.name!r}", undo, lambda: original(self, after))

    return setLevel


def _disable(original: Callable[..., None]) -> Callable[..., None]:
    def disable(level: int = logging.CRITICAL) -> None:
        record = _asking()
        before = logging.root.manager.disable
        original(level)
        after = logging.root.manager.disable
        if record is not None and after != before:
            record._add("logging.disable", lambda: original(before), lambda: original(after))

    return disable


def _atexit_register(original: Callable[..., Any]) -> Callable[..., Any]:
    def register(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        result = original(func, *args, **kwargs)
        record = _asking()
        if record is not None:
            record._add(f"atexit callback {func!r}", lambda: atexit.unregister(func),
                        lambda: original(func, *args, **kwargs))
        return result

    return register


class SignalChain:
    """Keep `first` as the handler of `sig`: a handler that code installs later with
    `signal.signal` runs after it instead of replacing it (Ctrl+C reaches both the server
    and the app). `close()` puts back the handler that was there before."""

    def __init__(self, sig: int, first: Callable[[int, Any], object]) -> None:
        self.sig = sig
        self.first = first
        self.handlers: list[Callable[[int, Any], object]] = []
        self._previous = _original(signal, "signal")(sig, self.dispatch)
        _chains[sig] = self

    def dispatch(self, sig: int, frame: Any) -> None:
        self.first(sig, frame)
        for handler in list(self.handlers):
            try:
                handler(sig, frame)
            except Exception:
                logging.getLogger("fh_utils").exception("The app's handler of signal %d failed",
                                                        sig)

    def add(self, handler: Callable[[int, Any], object]) -> Any:
        previous = self.handlers[-1] if self.handlers else self.dispatch
        self.handlers.append(handler)
        record = _asking()
        if record is not None:
            record._add(f"handler for signal {self.sig}", lambda: self._remove(handler),
                        lambda: self.handlers.append(handler))
        return previous

    def _remove(self, handler: Callable[[int, Any], object]) -> None:
        if handler in self.handlers:
            self.handlers.remove(handler)

    def close(self) -> None:
        if _chains.get(self.sig) is self:
            del _chains[self.sig]
        try:
            _original(signal, "signal")(self.sig, self._previous)
        except (ValueError, TypeError):  # not the main thread, or no handler to put back
            pass


_chains: dict[int, SignalChain] = {}


def _signal(original: Callable[..., Any]) -> Callable[..., Any]:
    def signal_(signalnum: int, handler: Any) -> Any:
        chain = _chains.get(signalnum)
        if chain is not None and signal.getsignal(signalnum) == chain.dispatch:
            if handler == chain.dispatch:
                chain.handlers.clear()  # putting back what `signal.signal` returned first
                return chain.dispatch
            if callable(handler):
                return chain.add(handler)
        previous = original(signalnum, handler)
        record = _asking()
        if record is not None:

            def undo() -> None:
                if signal.getsignal(signalnum) is handler:
                    original(signalnum, previous)

            record._add(f"handler for signal {signalnum}", undo,
                        lambda: original(signalnum, handler))
        return previous

    return signal_


def _thread_start(original: Callable[..., None]) -> Callable[..., None]:
    def start(self: threading.Thread) -> None:
        original(self)
        record = _asking() or _runs_project_code(self)
        if record is not None and not _pool_thread(self):
            record._threads.append(weakref.ref(self))

    return start


def _runs_project_code(thread: threading.Thread) -> Record | None:
    """The running module's record when `thread` runs the project's code, whoever started it
    (fastcore's `@threaded`, a scheduler given a project function): the project's thread."""
    record = _owner.get()
    if record is None or _is_project is None:
        return None
    run = type(thread).run
    runs = getattr(thread, "_target", None) if run is threading.Thread.run else run
    return record if _project_callable(runs, _is_project) else None


def _project_callable(obj: Any, is_project: Callable[[str], bool], depth: int = 3) -> bool:
    """Whether calling `obj` runs project code: a project function, or a wrapper around one
    (a bound method, `functools.partial`, `__wrapped__`, a closure such as fastcore's
    `threaded` makes), looked into `depth` levels deep."""
    if obj is None or depth == 0:
        return False
    code = getattr(obj, "__code__", None)
    if code is not None and is_project(code.co_filename):
        return True
    inner = [getattr(obj, name, None) for name in ("__func__", "func", "__wrapped__")]
    for cell in getattr(obj, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            inner.append(cell.cell_contents)
    return any(callable(x) and _project_callable(x, is_project, depth - 1) for x in inner)


def _pool_thread(thread: threading.Thread) -> bool:
    """Worker threads of a thread pool (asyncio's executor, anyio's) serve whoever calls them:
    they are not the module's own."""
    module = type(thread).__module__
    target = getattr(thread, "_target", None)
    return module.startswith("anyio.") or getattr(target, "__module__", "") in (
        "concurrent.futures.thread",
    )


# -- sys.path, sys.meta_path and warnings filters: compared before and after -------------------


def _live_lists() -> tuple[list[Any], ...]:
    return sys.path, cast("list[Any]", sys.meta_path), cast("list[Any]", warnings.filters)


def _environ_data() -> dict[Any, Any]:
    """os.environ's own mapping (encoded keys and values): copied per module run, so the
    cheapest copy there is; a plain dict of it where an interpreter has no such attribute."""
    data = getattr(os.environ, "_data", None)
    return data if isinstance(data, dict) else dict(os.environ)


def _diff_environ(record: Record, before: dict[Any, Any]) -> None:
    after = _environ_data()
    if after == before:
        return
    decode = getattr(os.environ, "decodekey", None)
    decode_value = getattr(os.environ, "decodevalue", None)

    def text(raw: Any, how: Callable[[Any], str] | None) -> Any:
        return how(raw) if how is not None and isinstance(raw, bytes) else raw

    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        name = text(key, decode)
        old_text = None if old is None else text(old, decode_value)
        new_text = None if new is None else text(new, decode_value)
        record._add(f"environment variable {name}", _env_setter(name, old_text),
                    _env_setter(name, new_text))


def _env_setter(name: str, value: str | None) -> Callable[[], None]:
    def apply() -> None:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    return apply


def _snapshot_lists() -> tuple[list[Any], ...]:
    return tuple(list(items) for items in _live_lists())


def _diff_list(record: Record, name: str, before: list[Any], after: list[Any]) -> None:
    if len(before) == len(after) and all(map(operator.is_, before, after)):
        return
    old_ids = {id(x) for x in before}
    new_ids = {id(x) for x in after}
    live = dict(zip(_LISTS, _live_lists()))[name]
    for index, item in enumerate(after):
        if id(item) not in old_ids:
            record._add(f"{name} entry {item!r}", _remover(live, item, name),
                        _inserter(live, item, index, name))
    for index, item in enumerate(before):
        if id(item) not in new_ids:
            record._add(f"removal of {name} entry {item!r}", _inserter(live, item, index, name),
                        _remover(live, item, name))


def _remover(items: list[Any], item: Any, name: str) -> Callable[[], None]:
    def remove() -> None:
        for i, x in enumerate(items):
            if x is item:
                del items[i]
                _list_changed(name)
                return

    return remove


def _inserter(items: list[Any], item: Any, index: int, name: str) -> Callable[[], None]:
    def insert() -> None:
        if not any(x is item for x in items):
            items.insert(min(index, len(items)), item)
            _list_changed(name)

    return insert


def _list_changed(name: str) -> None:
    if name == "warnings.filters":
        mutated = getattr(warnings, "_filters_mutated", None)  # clears the "once" caches
        if mutated is not None:
            mutated()


# -- helpers -----------------------------------------------------------------------------------


def _all_loggers() -> list[logging.Logger]:
    loggers = [v for v in list(logging.root.manager.loggerDict.values())
               if isinstance(v, logging.Logger)]
    return [logging.root, *loggers]


def _quietly(action: Callable[[], object], what: str) -> None:
    try:
        action()
    except Exception as exc:  # undoing one change must not stop the others
        logging.getLogger("fh_utils").debug("Could not undo %s: %r", what, exc)
