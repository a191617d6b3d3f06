"""The reload engine: changed files in, the next app (or an error) out, as a transaction.

A reload is a `Batch`: the changed project modules and every module that imports them are
re-executed in the order a cold start runs them (the app module first, each other module at
the import that reaches it), each through IPython's `superreload`; modules outside the batch
whose state it wrote run again too (`fh_utils.reload.ownership`). Nothing of a batch is
final until `Batch.commit()`: files are compiled before any module is touched, and if a module
raises (anything, including `SystemExit`), the app can no longer be found, or the new app's
lifespan startup fails, `Batch.rollback()` gives every module its exact previous namespace,
its classes and its side effects back (`fh_utils.reload.effects`), and no old object has been
patched.
Only a committed batch moves old functions and instances onto the new code, cancels the tasks
of the runs it replaced and releases cached values whose function is gone.

Two tiers exist in this process: `run` re-executes in place (fast); `reimport` imports the
whole project afresh (every project module leaves `sys.modules`; installed packages and
`no_reload_cache` values stay) for what in place cannot do faithfully. A batch says which
tier it needs (`Batch.escalation`); the session decides (`fh_utils.serve.session`).

Changes that failed are not lost: every path of a batch that did not commit is planned again
with the next save.

This module imports IPython; only `fh_utils dev` imports it.
"""

from __future__ import annotations

import atexit
import enum
import importlib
import inspect
import logging
import os
import sys
import time
import types
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from IPython.extensions import autoreload

from fh_utils.reload import effects
from fh_utils.reload.classes import ClassKeeper
from fh_utils.reload.envfile import Changes, EnvFile
from fh_utils.reload.errors import Failure, describe, display_path
from fh_utils.reload.frames import clear_memo
from fh_utils.reload.graph import GraphState, Listing, ModuleGraph, Resource
from fh_utils.reload.ownership import Fingerprints
from fh_utils.reload.patch import Patcher
from fh_utils.reload.pinning import engine as cache_engine
from fh_utils.reload.tracking import ProjectFinder, activate, deactivate, track_environ
from fh_utils.target import AppTarget
from fh_utils.timing import THREAD_STOP

logger = logging.getLogger("fh_utils")

__all__ = ["AppNotFound", "Batch", "Escalation", "Outcome", "Plan", "Reloader"]

ASGIApp = Callable[..., Any]

# Project metadata and dependency lists: what they change needs a new process.
_RESTART_FILES = frozenset(
    {"pyproject.toml", "setup.cfg", "Pipfile", "Pipfile.lock", "poetry.lock", "uv.lock"}
)
_EXTENSION_SUFFIXES = (".so", ".pyd")
_superreload: Callable[..., Any] = autoreload.superreload  # untyped in IPython

Tier = Literal["in place", "re-import", "restart"]


@dataclass(frozen=True)
class Escalation:
    """In-place reloading cannot be faithful here: go up to `tier`, because of `cause`."""

    tier: Tier
    cause: str


@dataclass
class Outcome:
    """The result of a load or a reload."""

    app: ASGIApp | None = None
    failure: Failure | None = None
    changed: list[str] = field(default_factory=list)  # files that triggered it, for the log
    reran: list[str] = field(default_factory=list)  # modules re-executed, in order
    notes: list[str] = field(default_factory=list)  # things worth a log line
    tier: Tier = "in place"
    cause: str | None = None  # why a higher tier ran
    released: list[str] = field(default_factory=list)  # cached functions gone, values released
    module_seconds: float = 0.0  # spent running the modules' own code (the floor of a reload)

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
    removed: list[str] = field(default_factory=list)  # modules whose file is gone
    env: Changes = field(default_factory=dict)  # variables the env file changes
    paths: set[Path] = field(default_factory=set)  # every change this plan covers
    pages: list[Path] = field(default_factory=list)  # files only requests read: refresh pages

    @property
    def runnable(self) -> bool:
        return self.outcome.failure is None and bool(
            self.order or self.needs_import or self.caches or self.removed or self.env
        )


@dataclass
class _Found:
    """What a set of changed paths affects."""

    changed: set[str] = field(default_factory=set)  # modules whose source changed
    removed: set[str] = field(default_factory=set)  # modules whose file is gone
    readers: set[str] = field(default_factory=set)  # modules that read a changed resource
    caches: dict[object, str] = field(default_factory=dict)  # cache entries that did
    env: Changes = field(default_factory=dict)
    pages: list[Path] = field(default_factory=list)  # read by requests only: refresh pages

    @property
    def relevant(self) -> bool:
        return bool(self.changed or self.removed or self.readers or self.caches or self.env)


class _ModuleFailed(Exception):
    def __init__(self, module: str, error: BaseException) -> None:
        super().__init__(module)
        self.error = error


# A batch that writes into modules outside it runs again with them, at most this many times
# (each time with more of the project); then the project is re-imported.
_WIDENINGS = 2


class _Unfaithful(Exception):
    def __init__(self, escalation: Escalation) -> None:
        super().__init__(escalation.cause)
        self.escalation = escalation


class Reloader:
    """Loads the app's module, then re-executes project modules as their files change.

    `ignore(path)` tells paths under the roots that are not part of the project (the
    `WatchSpec`'s excludes); `env_file` is uvicorn's `--env-file`, loaded into `os.environ`
    here (and again, as it changes, on each reload).
    """

    def __init__(
        self,
        target: AppTarget,
        roots: Iterable[Path],
        excludes: Iterable[Path] = (),
        *,
        ignore: Callable[[Path], bool] | None = None,
        env_file: str | os.PathLike[str] | None = None,
        escalate: bool = True,
    ) -> None:
        self.target = target
        self.escalate = escalate
        own = Path(__file__).resolve().parent  # fh_utils itself is never a project module
        self.graph = ModuleGraph(list(roots), [*excludes, own], ignore)
        self.graph.computing = cache_engine.computing_entry
        self._finder = ProjectFinder(self.graph, self._observed)
        self.env = EnvFile(env_file) if env_file is not None else None
        self._pending: set[Path] = set()  # changes not yet applied (a failed batch keeps them)
        self._own_writes: dict[Path, tuple[int, int, int]] = {}  # see _remember_writes
        self._restart_noted: set[Path] = set()
        self._records: dict[str, effects.Record] = {}  # each module's last committed run
        self._batch: Batch | None = None  # the batch not yet committed or rolled back
        # Objects of earlier runs, by module and name: all of them follow each new run.
        self._old: dict[str, dict[str, list[weakref.ref[Any]]]] = {}
        self._scratch: dict[tuple[str, str], list[weakref.ref[Any]]] = {}  # superreload's
        self.app: ASGIApp | None = None
        self.last_patch: Patcher | None = None
        self.start_path: list[str] = list(sys.path)  # set again by start()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Outcome:
        """Make project modules reloadable, then import the app for the first time."""
        app_dir = str(self.target.app_dir)
        if app_dir not in sys.path:
            sys.path.insert(0, app_dir)
        # What a cold start of the project begins with: entries the project adds as it runs
        # (sys.path.insert at import) are its own, made again by each fresh process.
        self.start_path = list(sys.path)
        effects.install()
        effects.configure(self.graph.is_project_file)
        self._finder.install()
        cache_engine.activate()
        activate(self.graph)
        adopted = {str(sys.modules[name].__file__): effects.Record(name)
                   for name in self.graph.adopt_loaded()}
        effects.adopt_threads(adopted)
        for record in adopted.values():
            self._records[record.label] = record
        outcome = Outcome()
        if self.env is not None:
            logger.info("Loading environment from '%s'", display_path(self.env.path))
            self.env.load()
            track_environ(True)
            if not self.graph.is_project_file(self.env.path):
                outcome.notes.append(
                    f"{display_path(self.env.path)} is outside the watched directories: "
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
        deactivate(self.graph)

    def release(self) -> None:
        """This process stops serving the project (a new worker took over): run every
        `cleanup` and `on_reload` callback, take back every side effect, forget the modules."""
        cache_engine.release_all()
        for record in reversed(list(self._records.values())):
            record.undo()
            record.discard()
        self._records.clear()
        for name in self.graph.modules():
            sys.modules.pop(name, None)
        self.app = None

    def exit(self) -> None:
        """This process ends because a new worker serves the project (the restart tier): run
        what the app's process would run at its end, once: every pinned value's `cleanup`,
        every `on_reload` callback, then the `atexit` callbacks (a replaced worker leaves
        through `os._exit` or `exec`, which skip them)."""
        # atexit._run_exitfuncs is CPython's own exit step; it clears what it ran.
        for step in (cache_engine.release_all, atexit._run_exitfuncs):
            try:
                step()
            except BaseException:  # the process ends all the same: say why, go on
                logger.exception("A clean-up of the replaced worker failed")

    def loaded_packages(self) -> list[str]:
        """Top-level names of the modules loaded that are not the project's (to preload)."""
        project = set(self.graph.modules())
        names = set()
        for name, module in list(sys.modules.items()):
            top = name.partition(".")[0]
            file = getattr(module, "__file__", None)
            if (name in project or top in project or top.startswith("_") or top == "__main__"
                    or (isinstance(file, str) and self.graph.is_project_file(file))):
                continue
            names.add(name)
        return sorted(names)

    # -- planning --------------------------------------------------------------------------
    def plan(self, paths: Iterable[Path]) -> Plan | None:
        """Work out what `paths` (and changes not applied yet) affect, and compile them.

        Nothing is executed here: a syntax error gives a plan that is already failed. None
        when nothing loaded is affected. Changes of a batch that did not commit are planned
        again with the next relevant change.
        """
        self._remember_writes()
        new = {Path(p) for p in paths}
        if self._pending:
            probe = Outcome()
            if not (self._analyze(new, probe, probe=True).relevant or probe.changed):
                return None  # e.g. a log file the app writes: do not retry a failed batch
        paths = self._pending | new
        outcome = Outcome()
        found = self._analyze(paths, outcome)
        needs_import = self.target.module not in sys.modules
        self._pending = set(paths)
        if not (found.relevant or (needs_import and outcome.changed)):
            self._pending = set()
            if found.pages:
                return Plan([], False, outcome, pages=found.pages)
            return Plan([], False, outcome) if outcome.notes else None

        for name in sorted(found.changed):  # a syntax error must change nothing
            try:
                self._compile(Path(sys.modules[name].__file__ or ""))
            except BaseException as exc:
                outcome.failure = self._describe(exc)
                return Plan([], False, outcome, paths=paths)

        removed = found.removed
        affected = self.graph.dependents(found.changed | found.readers | removed) - removed
        order = [n for n in self.graph.ordered(affected) if n in sys.modules]
        return Plan(order, needs_import, outcome, list(found.caches.items()), sorted(removed),
                    found.env, paths, found.pages)

    def _analyze(self, paths: set[Path], outcome: Outcome, probe: bool = False) -> _Found:
        """Which loaded modules, readers and caches `paths` affect."""
        found = _Found()
        read: dict[Resource, str] = {}  # files, listings and variables that changed -> label
        for path in sorted(paths):
            if self.env is not None and path.resolve() == self.env.path:
                found.env = self._env_changes(outcome, probe)
                read.update(dict.fromkeys(found.env, self._env_label(found.env)))
                read[self.env.path] = display_path(path)  # a module that reads the file itself
                continue
            if not self.graph.is_project_file(path):
                continue
            if path.suffix != ".py":
                resolved = path.resolve()
                if resolved in self._own_writes and self._own_writes[resolved] == _state(path):
                    continue  # the app's own write, not the user's edit
                if not probe:
                    self._note_restart(path, outcome)
                read[resolved] = display_path(path)
                continue
            name = self.graph.module_for(path)
            if not path.exists():
                if name is not None and name in sys.modules:
                    found.removed |= self._gone(name, path)
                    outcome.changed.append(f"{display_path(path)} (deleted)")
                continue
            outcome.changed.append(display_path(path))
            if name is not None and name in sys.modules:
                found.changed.add(name)
        for directory in self.graph.changed_listings(paths):
            read[Listing(directory)] = f"{display_path(directory)}{os.sep} (listing changed)"
        for resource, label in read.items():
            modules, entries = self.graph.readers([resource])
            if modules or entries:
                if label not in outcome.changed:
                    outcome.changed.append(label)
                found.readers |= modules
                for entry in entries:
                    found.caches.setdefault(entry, label)
            elif isinstance(resource, Path) and resource in self.graph.request_reads:
                found.pages.append(resource)
                if not probe:  # a memoised function read it: the next call reads it again
                    for module, name in self.graph.memo_reads.get(resource, ()):
                        if clear_memo(module, name):
                            logger.debug("%s changed: emptied the cache of %s.%s",
                                         display_path(resource), module, name)
        found.readers = {name for name in found.readers if name in sys.modules}
        return found

    def reads(self, path: str) -> bool:
        """Whether a reload reads the file at `path` other than as a module's source: a file
        project code read (a template, a model's weights), or the `--env-file`. Asked from the
        watcher's thread: a save of one is held until its writer closes it."""
        return self.graph.was_read(path) or (self.env is not None
                                             and path == os.fspath(self.env.path))

    def relevant(self, paths: Iterable[Path]) -> bool:
        """Whether a reload would act on these changed paths (nothing is planned or run)."""
        probe = Outcome()
        return self._analyze({Path(p) for p in paths}, probe, probe=True).relevant or any(
            p.suffix == ".py" and self.graph.is_project_file(p) for p in paths
        )

    def _gone(self, name: str, path: Path) -> set[str]:
        """The modules a deleted file takes with it (a package takes its submodules)."""
        if path.name != "__init__.py":
            return {name}
        return {name} | {m for m in self.graph.modules() if m.startswith(name + ".")}

    # -- running ---------------------------------------------------------------------------
    def run(self, plan: Plan) -> Batch:
        """Re-execute the plan's modules in place; commit or roll back the batch it returns.

        If the batch wrote into the state of project modules outside it (their owners), it is
        rolled back and run again with them and everything that imports them: each owner
        starts from empty state and runs before the modules that write into it, as on a cold
        start (`fh_utils.reload.ownership`)."""
        for attempt in range(_WIDENINGS + 1):
            batch = self._run_once(plan)
            owners = batch.owners_written
            if not owners:
                return batch
            batch.rollback()
            if attempt == _WIDENINGS:
                break
            logger.debug("The batch wrote into %s: running it again with them",
                         ", ".join(owners))
            widened = self.graph.dependents({*plan.order, *owners})
            plan = replace(plan, order=[n for n in self.graph.ordered(widened)
                                        if n in sys.modules],
                           outcome=replace(plan.outcome, reran=[], failure=None,
                                           notes=list(plan.outcome.notes)))
        batch.escalation = Escalation(
            "re-import", f"the reload kept writing into the state of {', '.join(owners)}")
        return batch

    def _run_once(self, plan: Plan) -> Batch:
        batch = Batch(self, plan, "in place")
        if not plan.runnable:
            return batch
        self._batch = batch
        keeper = batch.keeper
        in_batch = set(plan.order)
        # A thread of the project's that is running writes whenever it likes: a change it
        # made meanwhile would look like the batch's. While one runs, no owner is looked for.
        threads = any(r.alive_threads() for r in self._records.values())
        outside = Fingerprints(
            () if threads else (sys.modules[n] for n in self.graph.modules()
                                if n in sys.modules and n not in in_batch),
            lambda cls: self.graph.is_project_module(getattr(cls, "__module__", "")))
        try:
            batch.apply_env()
            for entry, what in plan.caches:  # before the modules that may call them re-run
                cache_engine.invalidate(entry, what)
            for name in plan.removed:
                batch.remove_module(name)
            if plan.removed:
                importlib.invalidate_caches()
            imported_before = self.graph.imported_by(plan.order)
            with keeper.active():
                self._run_in_import_order(batch)
                if plan.needs_import:
                    importlib.import_module(self.target.module)
            self._drop_unimported(batch, imported_before)
            batch.owners_written = outside.written(renewed=keeper.kept_classes)
            if batch.owners_written:
                return batch
            fresh = plan.needs_import or self.target.module in batch.outcome.reran
            batch.app = self._resolve_app(fresh=fresh or self.app is None)
            batch.escalation = _unexpressible(batch.done)
        except BaseException as exc:
            # A failure is judged as before (a fresh process says whether a cold start hits
            # it too, `fh_utils.serve.escalation`), not by running again with more modules.
            self._roll_back(batch, exc)
        return batch

    def _run_in_import_order(self, batch: Batch) -> None:
        """Run the batch's modules in the order a cold start of the edited tree runs them.

        Every module of the batch is stale; the app module runs first (as a cold start begins
        there), and an import of a stale module, wherever it stands (the bottom of app.py, a
        package's `__init__`, an edge this very save added), runs it at that import. Stale
        modules no run reached (imported lazily) then run, importers first.
        """
        graph = self.graph
        order = batch.plan.order
        graph.stale = set(order)
        graph.rerun = lambda name: self._rerun(batch, name)
        try:
            first = [self.target.module] if self.target.module in graph.stale else []
            for name in [*first, *reversed(order)]:
                if name in graph.stale:
                    self._rerun(batch, name)
        finally:
            graph.stale = set()
            graph.rerun = lambda name: None

    def _rerun(self, batch: Batch, name: str) -> None:
        """Run the stale module `name` again, in place (superreload keeps the module object)."""
        self.graph.stale.discard(name)
        module = sys.modules.get(name)
        if module is None:
            return
        batch.prepare_rerun(name)
        snapshot = dict(module.__dict__)
        batch.keeper.expect(name, snapshot)
        _superreload(module, self._reexec(snapshot, batch), self._scratch)
        batch.done.append((module, snapshot))
        _reattach_submodules(module, snapshot)
        batch.outcome.reran.append(name)

    def _drop_unimported(self, batch: Batch, candidates: set[str]) -> None:
        """A project module that the batch's modules imported before, and that no module
        imports now, leaves `sys.modules` (and its package): a cold start never loads it.
        What it alone imported follows it."""
        graph = self.graph
        while candidates:
            imported = graph.imported()
            gone = sorted(name for name in candidates
                          if name in sys.modules and name not in imported
                          and name != self.target.module and graph.is_project_module(name))
            if not gone:
                return
            candidates = graph.imported_by(gone)
            for name in gone:
                logger.debug("%s is no longer imported by the project: unloaded", name)
                batch.remove_module(name)

    def reimport(self, plan: Plan, cause: str) -> Batch:
        """Import the whole project afresh: every project module leaves `sys.modules`, then the
        app module is imported. Installed packages and `no_reload_cache` values stay."""
        batch = Batch(self, plan, "re-import")
        batch.outcome.cause = cause
        self._batch = batch
        try:
            batch.apply_env()
            project = [n for n in self.graph.modules() if n in sys.modules]
            for name in reversed(project):
                batch.prepare_rerun(name)
            for name in project:
                module = sys.modules[name]
                batch.keeper.expect(name, dict(module.__dict__))
                batch.remove_module(name)
            importlib.invalidate_caches()
            started = time.perf_counter()
            with batch.keeper.active():
                importlib.import_module(self.target.module)
            batch.outcome.module_seconds += time.perf_counter() - started
            batch.app = self._resolve_app(fresh=True)
            batch.outcome.reran = [n for n in self.graph.modules() if n in sys.modules]
        except BaseException as exc:
            self._roll_back(batch, exc)
        return batch

    def _roll_back(self, batch: Batch, exc: BaseException) -> None:
        """`exc` stopped the batch: put everything back, then note why (a higher tier is
        needed, or a failure to report)."""
        batch.rollback()
        if isinstance(exc, _Unfaithful):
            batch.escalation = exc.escalation
        else:
            batch.outcome.failure = self._describe(
                exc.error if isinstance(exc, _ModuleFailed) else exc)

    def _reexec(self, snapshot: dict[str, Any], batch: Batch
                ) -> Callable[[types.ModuleType], Any]:
        """The `reload` that superreload calls: run the module, or put it back as it was."""

        def reexec(module: types.ModuleType) -> types.ModuleType:
            started = time.perf_counter()
            try:
                return importlib.reload(module)
            except (_ModuleFailed, _Unfaithful):  # a module it imported, run at that import
                module.__dict__.clear()
                module.__dict__.update(snapshot)
                raise
            except BaseException as exc:
                module.__dict__.clear()
                module.__dict__.update(snapshot)
                raise _ModuleFailed(module.__name__, exc) from None
            finally:
                batch.outcome.module_seconds += time.perf_counter() - started
                # superreload has just collected the module's old objects and would patch
                # them now, module by module; we take them and patch once the whole batch
                # is committed (Batch.commit), so its own update step finds nothing to do.
                for key, refs in self._scratch.items():
                    batch.old_objects.setdefault(key, []).extend(refs)
                self._scratch.clear()

        return reexec

    def _observed(self, name: str, record: effects.Record, ok: bool) -> None:
        """A project module ran (first import, re-run, lazy import): keep its side effects."""
        if not ok:  # what a failed run did is taken back at once
            record.undo()
            record.discard()
            return
        cache_engine.executed(name)
        batch = self._batch
        if batch is not None:
            earlier = batch.records.pop(name, None)
            if earlier is not None:
                earlier.undo()
                earlier.discard()
            batch.records[name] = record
        else:
            previous = self._records.pop(name, None)
            if previous is not None:
                previous.discard()
            self._records[name] = record

    # -- what is not Python source ----------------------------------------------------------
    def _env_changes(self, outcome: Outcome, probe: bool = False) -> Changes:
        assert self.env is not None
        label = display_path(self.env.path)
        if not self.env.path.exists():
            if not probe:
                outcome.notes.append(f"{label} was deleted: its variables keep their values")
            return {}
        changes = self.env.changes()
        if not changes or probe:
            return changes
        names = sorted(changes)
        modules, entries = self.graph.readers(names)
        if not modules and not entries:
            outcome.notes.append(
                f"{label}: {', '.join(names)} changed in os.environ; no project module read "
                f"{'them' if len(names) > 1 else 'it'} while it ran, so nothing re-runs (code "
                "that reads it from now on sees the new value; a library that read it at "
                "import keeps the old one until fh_utils dev restarts)"
            )
        return changes

    def _env_label(self, changes: Changes) -> str:
        assert self.env is not None
        return f"{display_path(self.env.path)} ({', '.join(sorted(changes))})"

    def written_and_read(self) -> list[Path]:
        """Project files the app changed (at import or while serving; not those it made, as
        FastHTML makes `.sesskey`) that a module or a cached function reads: a fresh process
        of the same project changes them again, which this one would take for an edit (what
        the fresh-process check must not cause)."""
        return sorted(p for p in self.graph.overwritten if any(self.graph.readers([p])))

    def _remember_writes(self) -> None:
        """What the app itself wrote, as it is now: a change event that finds a file in this
        state is the app's write, not the user's edit."""
        for path in self.graph.take_written():
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
        outcome.notes.append(f"{display_path(path)} changed: {why}; restart fh_utils dev to "
                             "apply it")

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
        served: ASGIApp = app
        return served  # fh_utils.serve.session adapts ASGI 2 and WSGI apps (--interface)

    def _describe(self, exc: BaseException) -> Failure:
        if isinstance(exc, AppNotFound):
            module = sys.modules.get(self.target.module)
            file = getattr(module, "__file__", None)
            return Failure(display_path(file) if file else None, None, "AppNotFound", str(exc),
                           "")
        return describe(exc, self.graph.is_project_file)


class Batch:
    """One reload, not final until `commit()` (or undone by `rollback()`)."""

    def __init__(self, reloader: Reloader, plan: Plan, tier: Tier) -> None:
        self._reloader = reloader
        self.plan = plan
        # A tier of its own: what a lower tier of the same plan ran or hit is not this one's.
        self.outcome = plan.outcome if tier == "in place" else replace(
            plan.outcome, failure=None, reran=[], notes=list(plan.outcome.notes))
        self.outcome.tier = tier
        self.app: ASGIApp | None = None
        self.escalation: Escalation | None = None
        self.keeper = ClassKeeper(cache_engine.is_pinned)
        self.done: list[tuple[types.ModuleType, dict[str, Any]]] = []  # re-run, old namespace
        self.records: dict[str, effects.Record] = {}  # runs of this batch
        self.old_objects: dict[tuple[str, str], list[weakref.ref[Any]]] = {}
        self._undone: list[effects.Record] = []  # runs this batch replaces, undone
        self._removed: list[tuple[str, types.ModuleType]] = []
        self._detached: list[tuple[types.ModuleType, str, Any]] = []  # package attributes
        self._project_before = set(sys.modules)
        self.owners_written: list[str] = []  # modules outside the batch whose state it wrote
        self._graph: GraphState = reloader.graph.snapshot()
        self._env_undo: Changes | None = None
        self._closed = False

    @property
    def ok(self) -> bool:
        return self.app is not None and self.outcome.failure is None and self.escalation is None

    # -- steps of a run --------------------------------------------------------------------
    def apply_env(self) -> None:
        env = self._reloader.env
        if env is not None and self.plan.env:
            self._env_undo = env.apply(self.plan.env)

    def prepare_rerun(self, name: str) -> None:
        """`name` is about to run again: its `on_reload` callbacks, then its side effects taken
        back. A thread it started that is still alive makes an in-place run unfaithful."""
        callbacks = cache_engine.before_rerun(name)
        record = self._reloader._records.get(name)
        if record is None or record in self._undone:
            return
        alive = record.alive_threads()
        if alive and callbacks:
            alive = record.join_threads(THREAD_STOP)
        if alive:
            names = ", ".join(repr(t.name) for t in alive)
            cause = (f"thread {names} started by {display_path(_file_of(name))} "
                     "is still running")
            if self._reloader.escalate:
                raise _Unfaithful(Escalation("restart", cause))
            self.outcome.notes.append(f"{cause}: its next run starts another one (escalation "
                                      "is off; stop it with on_reload)")
        record.undo()
        self._undone.append(record)

    def remove_module(self, name: str) -> None:
        """`name` leaves `sys.modules` (its file is gone, or the project is re-imported)."""
        module = sys.modules.pop(name, None)
        if module is None:
            return
        self._removed.append((name, module))
        parent_name, _, child = name.rpartition(".")
        parent = sys.modules.get(parent_name) if parent_name else None
        if parent is not None and getattr(parent, child, None) is module:
            self._detached.append((parent, child, module))
            delattr(parent, child)
        record = self._reloader._records.get(name)
        if record is not None and record not in self._undone:
            record.undo()
            self._undone.append(record)
        self._reloader.graph.forget(name)

    # -- the end of a batch ------------------------------------------------------------------
    def rollback(self) -> None:
        """Put back everything the batch changed; the last good version keeps serving."""
        if self._closed:
            return
        self._closed = True
        reloader = self._reloader
        for module, snapshot in reversed(self.done):
            module.__dict__.clear()
            module.__dict__.update(snapshot)
        self.keeper.rollback()
        for name in [n for n in sys.modules if n not in self._project_before]:
            if reloader.graph.is_project_module(name) or name in self.records:
                sys.modules.pop(name, None)
        for name, module in self._removed:
            sys.modules[name] = module
        for parent, child, module in self._detached:
            setattr(parent, child, module)
        for record in reversed(list(self.records.values())):
            record.undo()
            record.discard()
        for record in self._undone:
            record.redo()
        reloader.graph.restore(self._graph)
        if self._env_undo is not None and reloader.env is not None:
            reloader.env.apply(self._env_undo)
        self.app = None
        self._end()

    def commit(self) -> None:
        """The new code is serving: make the batch final."""
        if self._closed:
            return
        self._closed = True
        reloader = self._reloader
        if self.outcome.tier == "in place":
            self._patch([m for m, _ in self.done])
        else:
            self._patch([])
        for record in self._undone:
            record.discard()
        for name, record in self.records.items():
            previous = reloader._records.get(name)
            if previous is not None and previous is not record and previous not in self._undone:
                previous.discard()
            reloader._records[name] = record
        gone = [name for name, _ in self._removed if name not in sys.modules]
        for name in gone:
            reloader._records.pop(name, None)
        if gone:
            cache_engine.release_stale(gone, gone=True)
        self.outcome.released = cache_engine.release_stale(self.outcome.reran)
        reloader._pending -= self.plan.paths
        if self.app is not None:
            reloader.app = self.app
        self._end()

    def _end(self) -> None:
        cache_engine.batch_done()
        reloader = self._reloader
        if reloader._batch is self:
            reloader._batch = None
        reloader._remember_writes()

    def _patch(self, modules: list[types.ModuleType]) -> None:
        """Move objects of earlier runs onto the new code: functions and classes still
        referenced elsewhere, members of kept classes, instances of classes not kept."""
        reloader = self._reloader
        patcher = Patcher()
        for old, new in self.keeper.members:
            patcher.update(old, new)
        olds_by_module = reloader._old
        for (module_name, name), refs in self.old_objects.items():
            olds_by_module.setdefault(module_name, {}).setdefault(name, []).extend(refs)
        for module in modules:
            olds = olds_by_module.get(module.__name__, {})
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
        reloader.last_patch = patcher


class AppNotFound(Exception):
    """The app module ran but does not give a usable app."""


def _unexpressible(done: list[tuple[types.ModuleType, dict[str, Any]]]) -> Escalation | None:
    """A class change that no in-place update can carry to existing objects."""
    for module, previous in done:
        namespace = module.__dict__
        for name, old in previous.items():
            if not isinstance(old, type):
                continue
            new = namespace.get(name)
            if (not isinstance(new, type) or old is new
                    or getattr(old, "__module__", None) != module.__name__):
                continue
            what = f"{module.__name__}.{old.__qualname__}"
            if type(old) is not type(new):
                return Escalation("re-import", f"the metaclass of {what} changed")
            if isinstance(old, enum.EnumMeta):
                return Escalation("re-import", f"the members of enum {what} changed")
            if vars(old).get("__slots__") != vars(new).get("__slots__"):
                return Escalation("re-import", f"the __slots__ of {what} changed")
    return None


def _file_of(name: str) -> str:
    module = sys.modules.get(name)
    return getattr(module, "__file__", None) or name


def _state(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _reattach_submodules(module: types.ModuleType, previous: dict[str, Any]) -> None:
    """A package's cleared namespace loses its submodule attributes: put back those it had
    that are still loaded."""
    if not hasattr(module, "__path__"):
        return
    prefix = module.__name__ + "."
    namespace = module.__dict__
    for name, sub in previous.items():
        if (isinstance(sub, types.ModuleType) and sub.__name__ == prefix + name
                and sys.modules.get(sub.__name__) is sub):
            namespace.setdefault(name, sub)


def _alive(refs: list[weakref.ref[Any]]) -> list[Any]:
    seen: set[int] = set()
    out = []
    for ref in refs:
        obj = ref()
        if obj is not None and id(obj) not in seen:
            seen.add(id(obj))
            out.append(obj)
    return out
