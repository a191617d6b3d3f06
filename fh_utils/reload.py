"""The reload engine: changed files in, the next app (or an error) out.

One reload is a batch: the changed project modules and every module that imports them are
re-executed, dependencies first, each through IPython's `superreload`. The batch is atomic:
files are compiled before any module is touched, and if a module raises (anything, including
`SystemExit`) or the app can no longer be found, every module of the batch gets back its exact
previous namespace and no old object has been patched. Only a batch that fully succeeds moves
old functions, classes and instances onto the new code (`fh_utils.patch`).

Besides Python files, a batch starts from files that modules read while they executed (their
readers re-run; a `no_reload_cache` function that read one only loses its values), from the
`--env-file` (its variables are updated in `os.environ` and the modules and caches that read
them re-run or are cleared), and notes the changes no reload can apply (`needs_restart`).

This module imports IPython; only `fh_utils dev` imports it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import types
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from IPython.extensions.autoreload import superreload

from fh_utils._code import same_code
from fh_utils.cache import engine as cache_engine
from fh_utils.errors import Failure, describe, display_path
from fh_utils.patch import Patcher
from fh_utils.target import AppTarget
from fh_utils.tracking import ModuleGraph, ProjectFinder, Resource, track_environ

__all__ = ["AppNotFound", "Outcome", "Plan", "Reloader"]

ASGIApp = Callable[..., Any]

# Project metadata and dependency lists: what they change needs a new process.
_RESTART_FILES = frozenset(
    {"pyproject.toml", "setup.cfg", "Pipfile", "Pipfile.lock", "poetry.lock", "uv.lock"}
)
_EXTENSION_SUFFIXES = (".so", ".pyd")


@dataclass
class Outcome:
    """The result of a load or a reload."""

    app: ASGIApp | None = None
    failure: Failure | None = None
    changed: list[str] = field(default_factory=list)  # files that triggered it, for the log
    reran: list[str] = field(default_factory=list)  # modules re-executed, in order
    notes: list[str] = field(default_factory=list)  # things worth a log line
    needs_restart: str | None = None  # why only a new process can apply this change

    @property
    def dependents(self) -> int:
        return max(0, len(self.reran) - len(self.changed))


@dataclass
class Plan:
    """The modules to re-execute, in order; `outcome` already holds any early failure."""

    order: list[str]
    needs_import: bool
    outcome: Outcome
    caches: list[tuple[object, str]] = field(default_factory=list)  # entry, what it read

    @property
    def runnable(self) -> bool:
        return self.outcome.failure is None and bool(
            self.order or self.needs_import or self.caches
        )


class _ModuleFailed(Exception):
    def __init__(self, module: str, error: BaseException) -> None:
        super().__init__(module)
        self.error = error


class Reloader:
    """Loads the app's module, then re-executes project modules as their files change.

    `ignore(path)` tells paths under the roots that are not part of the project (the
    `WatchSpec`'s excludes); `env_file` is the file uvicorn loads into `os.environ`.
    """

    def __init__(
        self,
        target: AppTarget,
        roots: Iterable[Path],
        excludes: Iterable[Path] = (),
        *,
        ignore: Callable[[Path], bool] | None = None,
        env_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.target = target
        own = Path(__file__).resolve().parent  # fh_utils itself is never a project module
        self.graph = ModuleGraph(list(roots), [*excludes, own], ignore)
        self.graph.computing = cache_engine.computing_entry
        self._finder = ProjectFinder(self.graph)
        self.env_file = Path(env_file).resolve() if env_file is not None else None
        self._env_owned: set[str] = set()  # variables whose value comes from the env file
        # Set in the real environment with another value: they win, as with load_dotenv.
        self._env_kept: set[str] = set()
        if self.env_file is not None:
            values = _read_env(self.env_file)
            self._env_kept = {k for k, v in os.environ.items() if values.get(k) != v}
        self._retry: set[str] = set()  # the modules of a batch that failed while running
        self._own_writes: dict[Path, tuple[int, int, int]] = {}  # see _remember_writes
        self._restart_noted: set[Path] = set()
        # Objects of earlier runs, by module and name: all of them follow each new run.
        self._old: dict[str, dict[str, list[weakref.ref[Any]]]] = {}
        self._scratch: dict[tuple[str, str], list[weakref.ref[Any]]] = {}  # superreload's
        self._pending: dict[tuple[str, str], list[weakref.ref[Any]]] = {}  # this batch's
        self.app: ASGIApp | None = None
        self.last_patch: Patcher | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Outcome:
        """Make project modules reloadable, then import the app for the first time."""
        app_dir = str(self.target.app_dir)
        if app_dir not in sys.path:
            sys.path.insert(0, app_dir)
        self._finder.install()
        cache_engine.activate()
        self.graph.activate()
        self.graph.adopt_loaded()
        outcome = Outcome()
        if self.env_file is not None:
            self._reload_env()
            track_environ(True)
            if not self.graph.is_project_file(self.env_file):
                outcome.notes.append(
                    f"{display_path(self.env_file)} is outside the watched directories: "
                    "restart fh_utils dev after editing it"
                )
        try:
            importlib.import_module(self.target.module)
            outcome.app = self.app = self._resolve_app(fresh=True)
        except BaseException as exc:  # the server stays up and shows the error instead
            outcome.failure = self._describe(exc)
        finally:
            self._remember_writes()
        return outcome

    def stop(self) -> None:
        self._finder.uninstall()
        self.graph.deactivate()

    # -- reloading -----------------------------------------------------------------------
    def plan(self, paths: Iterable[Path]) -> Plan | None:
        """Work out what `paths` affect, and compile them; None when nothing loaded is affected.

        Nothing is executed here: a syntax error gives a plan that is already failed.
        """
        self._remember_writes()
        outcome = Outcome()
        changed: set[str] = set()  # modules whose source changed
        read: dict[Resource, str] = {}  # files (and variables) that changed -> log name
        for path in sorted(set(paths)):
            if self.env_file is not None and path.resolve() == self.env_file:
                variables = self._env_changes(outcome)
                read.update(variables)  # and a module that reads the file itself re-runs:
                read[self.env_file] = next(iter(variables.values()), display_path(path))
                continue
            if not self.graph.is_project_file(path):
                continue
            if path.suffix != ".py":
                resolved = path.resolve()
                if resolved in self._own_writes and self._own_writes[resolved] == _state(path):
                    continue  # the app's own write, not the user's edit
                self._note_restart(path, outcome)
                read[resolved] = display_path(path)
                continue
            name = self.graph.module_for(path)
            if not path.exists():
                if name is not None:
                    outcome.notes.append(
                        f"{display_path(path)} was deleted: its last good version keeps "
                        "serving until the file comes back"
                    )
                continue
            outcome.changed.append(display_path(path))
            if name is not None and name in sys.modules:
                changed.add(name)

        readers: set[str] = set()
        caches: dict[object, str] = {}
        for resource, label in read.items():
            modules, entries = self.graph.readers([resource])
            if modules or entries:
                if label not in outcome.changed:
                    outcome.changed.append(label)
                readers |= modules
                for entry in entries:
                    caches.setdefault(entry, label)
        if self._retry and outcome.changed:  # what failed last time may work now
            readers |= self._retry
        readers = {name for name in readers if name in sys.modules}
        needs_import = self.target.module not in sys.modules
        if not changed and not readers and not caches and not (needs_import and outcome.changed):
            return Plan([], False, outcome) if outcome.notes else None

        for name in sorted(changed):  # a syntax error must change nothing
            try:
                self._compile(Path(sys.modules[name].__file__ or ""))
            except BaseException as exc:
                outcome.failure = self._describe(exc)
                return Plan([], False, outcome)

        order = [
            n for n in self.graph.ordered(self.graph.dependents(changed | readers))
            if n in sys.modules
        ]
        return Plan(order, needs_import, outcome, list(caches.items()))

    def run(self, plan: Plan) -> Outcome:
        """Execute a plan: the whole batch succeeds, or nothing of it stays."""
        if not plan.runnable:
            return plan.outcome
        for entry, what in plan.caches:  # before the modules that may call them re-run
            cache_engine.invalidate(entry, what)
        if plan.order or plan.needs_import:
            self._run(plan.order, plan.outcome, plan.needs_import)
        else:
            plan.outcome.app = self.app
        return plan.outcome

    def _run(self, order: list[str], outcome: Outcome, needs_import: bool) -> None:
        graph = self.graph
        saved = ({n: set(d) for n, d in graph.imports.items()}, dict(graph.code))
        reads = {n: set(r) for n, r in list(graph.reads.items())}
        before = {name: _code_by_qualname(graph.code.get(name)) for name in order}
        done: list[tuple[types.ModuleType, dict[str, Any]]] = []
        self._pending.clear()
        try:
            for name in order:
                module = sys.modules[name]
                cache_engine.before_rerun(name)
                snapshot = dict(module.__dict__)
                superreload(module, self._reexec(snapshot), self._scratch)
                done.append((module, snapshot))
                _reattach_submodules(module)
                outcome.reran.append(name)
            if needs_import:
                importlib.import_module(self.target.module)
            fresh = needs_import or self.target.module in outcome.reran or self.app is None
            app = self._resolve_app(fresh=fresh)
        except BaseException as exc:
            error = exc.error if isinstance(exc, _ModuleFailed) else exc
            for module, snapshot in reversed(done):
                module.__dict__.clear()
                module.__dict__.update(snapshot)
            graph.imports, graph.code = saved
            for name, read in reads.items():  # keep what the failed run read, too
                graph.reads.setdefault(name, set()).update(read)
            self._retry = set(order) | ({self.target.module} if needs_import else set())
            outcome.failure = self._describe(error)
            return
        finally:
            cache_engine.batch_done()
            self._remember_writes()
        self._retry = set()
        self._patch([m for m, _ in done], before)
        outcome.app = self.app = app

    def _reexec(self, snapshot: dict[str, Any]) -> Callable[[types.ModuleType], Any]:
        """The `reload` that superreload calls: run the module, or put it back as it was."""

        def reexec(module: types.ModuleType) -> types.ModuleType:
            try:
                return importlib.reload(module)
            except BaseException as exc:
                module.__dict__.clear()
                module.__dict__.update(snapshot)
                raise _ModuleFailed(module.__name__, exc) from None
            finally:
                # superreload has just collected the module's old objects and would patch
                # them now, module by module; we take them and patch once the whole batch
                # has succeeded (see _patch), so its own update step finds nothing to do.
                for key, refs in self._scratch.items():
                    self._pending.setdefault(key, []).extend(refs)
                self._scratch.clear()

        return reexec

    def _patch(
        self, modules: list[types.ModuleType], before: dict[str, dict[str, types.CodeType]]
    ) -> None:
        after = {m.__name__: _code_by_qualname(self.graph.code.get(m.__name__)) for m in modules}

        def class_changed(old: type) -> bool | None:
            a = before.get(old.__module__, {}).get(old.__qualname__)
            b = after.get(old.__module__, {}).get(old.__qualname__)
            return None if a is None or b is None else not same_code(a, b)

        patcher = Patcher(class_changed)
        for (module_name, name), refs in self._pending.items():
            self._old.setdefault(module_name, {}).setdefault(name, []).extend(refs)
        self._pending.clear()
        for module in modules:
            olds = self._old.get(module.__name__, {})
            for name in list(olds):
                new = module.__dict__.get(name)
                alive = _alive(olds[name])
                if new is None or not alive:
                    del olds[name]
                    continue
                olds[name] = [weakref.ref(o) for o in alive]
                for old in alive:
                    if old is not new:
                        patcher.update(old, new)
        patcher.finish()
        self.last_patch = patcher

    # -- what is not Python source ----------------------------------------------------------
    def _reload_env(self) -> set[str]:
        """Read the env file into `os.environ`; the names of the variables that changed."""
        assert self.env_file is not None
        values = {
            k: v for k, v in _read_env(self.env_file).items()
            if v is not None and k not in self._env_kept
        }
        changed = {
            k for k in self._env_owned - values.keys() if os.environ.pop(k, None) is not None
        }
        for key, value in values.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
                changed.add(key)
        self._env_owned = set(values)
        return changed

    def _env_changes(self, outcome: Outcome) -> dict[Resource, str]:
        assert self.env_file is not None
        label = display_path(self.env_file)
        if not self.env_file.exists():
            outcome.notes.append(f"{label} was deleted: its variables keep their values")
            return {}
        names = sorted(self._reload_env())
        if not names:
            return {}
        modules, entries = self.graph.readers(names)
        if not modules and not entries:
            outcome.notes.append(
                f"{label}: {', '.join(names)} changed in os.environ; no project module read "
                f"{'them' if len(names) > 1 else 'it'} while it ran, so nothing re-runs (code "
                "that reads it from now on sees the new value; a library that read it at "
                "import keeps the old one until fh_utils dev restarts)"
            )
            return {}
        label = f"{label} ({', '.join(names)})"
        return dict.fromkeys(names, label)

    def _remember_writes(self) -> None:
        """What the app itself wrote, as it is now: a change event that finds a file in this
        state is the app's write, not the user's edit."""
        written, self.graph.written = self.graph.written, set()
        for path in written:
            self._own_writes[path] = _state(path)

    def _note_restart(self, path: Path, outcome: Outcome) -> None:
        """Say once per file that a change to it needs a restart."""
        name = path.name
        if name in _RESTART_FILES or (
            name.startswith("requirements") and path.suffix in (".txt", ".in")
        ):
            why = "the project's settings and dependencies are not reloaded in place"
        elif path.suffix in _EXTENSION_SUFFIXES and any(
            getattr(m, "__file__", None) == str(path) for m in list(sys.modules.values())
        ):
            why = "a compiled extension module cannot be reloaded in place"
        else:
            return
        if path in self._restart_noted:
            return
        self._restart_noted.add(path)
        outcome.needs_restart = f"{display_path(path)} changed: {why}"
        outcome.notes.append(f"{outcome.needs_restart}; restart fh_utils dev to apply it")

    # -- helpers ---------------------------------------------------------------------------
    def _compile(self, path: Path) -> None:
        source = path.read_bytes()
        cached = self.graph.compiled.get(path)
        if cached is None or cached[0] != source:
            code = compile(source, str(path), "exec", dont_inherit=True)
            self.graph.compiled[path] = (source, code)

    def _resolve_app(self, fresh: bool) -> ASGIApp:
        if not fresh and self.app is not None:
            return self.app
        module = sys.modules[self.target.module]
        try:
            app = getattr(module, self.target.attr)
        except AttributeError:
            raise AppNotFound(
                f"module {self.target.module!r} has no attribute {self.target.attr!r}"
            ) from None
        if self.target.factory:
            app = app()
        if app is None or inspect.ismodule(app) or not callable(app):
            raise AppNotFound(
                f"{self.target.label} is {type(app).__name__}, not an ASGI application"
            )
        return app  # fh_utils.dev adapts ASGI 2 and WSGI apps (--interface)

    def _describe(self, exc: BaseException) -> Failure:
        if isinstance(exc, AppNotFound):
            module = sys.modules.get(self.target.module)
            file = getattr(module, "__file__", None)
            return Failure(display_path(file) if file else None, None, "AppNotFound", str(exc),
                           "")
        return describe(exc, self.graph.is_project_file)


class AppNotFound(Exception):
    """The app module ran but does not give a usable app."""


def _state(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _read_env(path: Path) -> dict[str, str | None]:
    from dotenv import dotenv_values  # installed with uvicorn[standard]

    return dict(dotenv_values(path)) if path.is_file() else {}


def _reattach_submodules(module: types.ModuleType) -> None:
    """A package's cleared namespace loses its submodule attributes: put them back."""
    if not hasattr(module, "__path__"):
        return
    prefix = module.__name__ + "."
    for name, sub in list(sys.modules.items()):
        if name.startswith(prefix) and "." not in name[len(prefix):] and sub is not None:
            module.__dict__.setdefault(name[len(prefix):], sub)


def _alive(refs: list[weakref.ref[Any]]) -> list[Any]:
    seen: set[int] = set()
    out = []
    for ref in refs:
        obj = ref()
        if obj is not None and id(obj) not in seen:
            seen.add(id(obj))
            out.append(obj)
    return out


def _code_by_qualname(code: types.CodeType | None) -> dict[str, types.CodeType]:
    """Every function and class body compiled into a module's code, by qualified name."""
    found: dict[str, types.CodeType] = {}
    todo = [code] if code is not None else []
    while todo:
        for const in todo.pop().co_consts:
            if isinstance(const, types.CodeType):
                found.setdefault(const.co_qualname, const)
                todo.append(const)
    return found
