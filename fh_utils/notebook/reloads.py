"""Project modules a notebook imported, reloaded in place on save, between cells.

`%load_ext fh_utils` starts one `KernelReloads` for the notebook's directory (and the
directories `%fh --watch` names). It uses the engine of `fh_utils dev` (`fh_utils.reload.engine`): a
saved file re-runs its module and the modules that import it, in a cold start's order, as one batch
that is committed or rolled back whole; `no_reload_cache` values stay.

When reloads run: never while a cell runs. A watcher thread notes changed files and asks the
kernel's event loop (`kernel.io_loop`, on the main thread) to apply them; a callback that
finds a cell running (an async cell awaiting) leaves them for later. Before and after each
cell, changes noted so far, and project module files whose size or modification time changed
(a save the watcher has not reported yet, a file the cell wrote), are applied, so a cell run
after a save sees it. Outside a kernel (terminal IPython) only the steps around cells run.

While a batch runs, the server `%fh` started serves nothing half-executed: new connections
wait at its switch, and its event loop and thread pool are held (`NotebookServer.frozen`).

In a kernel, reloads stay in place: the notebook's own namespace (`__main__`) is no module
fh_utils can import again, so neither a re-import of the project nor a new process could
serve what re-running the notebook would. A change in place cannot apply faithfully is applied
with a warning, as `fh_utils dev --no-escalate` does.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import watchfiles

from fh_utils.browser.live import STATIC_SUFFIXES
from fh_utils.notebook.server import NotebookServer, ServeFailed
from fh_utils.reload.engine import Batch, Outcome, Plan, Reloader
from fh_utils.reload.errors import Failure
from fh_utils.reload.report import log_reloaded, with_traceback
from fh_utils.target import AppTarget
from fh_utils.timing import WATCH_QUIET_MS, WATCH_STEP_MS, WATCHER_READY
from fh_utils.watch.filters import WatchSpec
from fh_utils.watch.watcher import Watcher

__all__ = ["KernelReloads", "stand_in"]

logger = logging.getLogger("fh_utils")

Schedule = Callable[[Callable[[], None]], object]


async def stand_in(scope: Any, receive: Any, send: Any) -> None:
    """What the reload engine takes for "the app" in a kernel, where `%fh` says what is
    served instead (this is never served)."""
    raise RuntimeError("fh_utils.notebook.reloads.stand_in is not an app")


class KernelReloads:
    """Watches `roots` and reloads the project modules loaded from them, between cells.

    `schedule(callback)` runs `callback` on the kernel's main thread soon (thread-safe: the
    kernel's `io_loop.add_callback`); None outside a kernel. `namespace` is the notebook's
    (names bound to a served app that a reload replaced are moved to the new app).
    """

    def __init__(self, roots: Sequence[Path], schedule: Schedule | None,
                 namespace: dict[str, Any] | None = None) -> None:
        directory = Path.cwd()
        self.spec = WatchSpec(directory, reload_dirs=list(roots) or [directory])
        self.roots = list(self.spec.dirs)
        self.reloader = Reloader(AppTarget(__name__, "stand_in", app_dir=directory),
                                 self.spec.dirs, self.spec.exclude_dirs,
                                 ignore=self.spec.ignores, escalate=False)
        self.server: NotebookServer | None = None
        self.namespace = namespace if namespace is not None else {}
        self._schedule = schedule
        self._served: Any = None  # what %fh serves
        self._origin: tuple[str, str] | None = None  # (project module, attribute) holding it
        self._lock = threading.Lock()
        self._pending: set[Path] = set()
        self._seen: dict[Path, tuple[int, int]] = {}  # file -> (size, mtime) last planned
        self._busy = False  # a cell is running
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watcher: Watcher | None = None

    # -- start and stop ----------------------------------------------------------------------
    def start(self) -> None:
        """Track project modules from now on (those already imported are taken in), and
        watch their files."""
        logger.info("Will watch for changes in these directories: %s",
                    [str(d) for d in self.roots])
        outcome = self.reloader.start()
        for note in outcome.notes:
            logger.warning(note)
        self._scan()
        self._watcher = Watcher(self.roots, self._filter, self.spec.ignores, self._report,
                                self._stop, WATCH_STEP_MS, WATCH_QUIET_MS, self.reloader.reads)
        self._thread = threading.Thread(target=self._watcher.run, daemon=True,
                                        name="fh_utils-kernel-watcher")
        self._thread.start()
        self._watcher.ready.wait(WATCHER_READY)

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.close()  # wakes its thread, asleep until a change
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        self.reloader.stop()

    def serving(self, app: Any) -> None:
        """`%fh` serves `app` now. If a project module holds it (`from myapp import app`),
        a reload that re-runs that module serves the module's new app."""
        self._served = app
        self._origin = None
        for name in self.reloader.graph.modules():
            module = sys.modules.get(name)
            for attr, value in list(vars(module).items()) if module is not None else ():
                if value is app:
                    self._origin = (name, attr)
                    return

    # -- cells -------------------------------------------------------------------------------
    def before_cell(self) -> None:
        """IPython's `pre_run_cell`: apply what changed, then mark a cell running."""
        self._busy = False
        self.apply_pending()
        self._busy = True

    def after_cell(self) -> None:
        """IPython's `post_run_cell`: files the cell wrote, and changes that arrived while it
        ran, are applied now (logged in that cell's output)."""
        self._busy = False
        self.apply_pending()

    def _when_idle(self) -> None:
        if not self._busy:  # an async cell awaiting: its post_run_cell applies them
            self.apply_pending()

    def apply_pending(self) -> Outcome | None:
        with self._lock:
            paths, self._pending = self._pending, set()
        paths |= self._scan()
        paths = {p for p in paths if self._seen.get(p) != _state(p) or p.suffix != ".py"}
        if not paths:
            return None
        for path in paths:
            self._seen[path] = _state(path)
        try:
            return self.apply(paths)
        except Exception:
            logger.exception("Reload failed unexpectedly (this is a bug in fh_utils)")
            return None

    # -- watching ----------------------------------------------------------------------------
    def _report(self, changes: set[tuple[watchfiles.Change, str]]) -> None:
        """In the watcher's thread: note the changes, ask the kernel's thread to apply them."""
        with self._lock:
            self._pending.update(Path(path) for _, path in changes)
        if self._schedule is not None:
            self._schedule(self._when_idle)

    def _filter(self, change: watchfiles.Change, path: str) -> bool:
        return self.spec(change, path) and self.reloader.graph.is_project_file(path)

    def _scan(self) -> set[Path]:
        """Files of project modules whose size or modification time changed since last seen
        (a file seen for the first time is only noted)."""
        changed = set()
        for path in list(self.reloader.graph.files):
            state = _state(path)
            before = self._seen.setdefault(path, state)
            if before != state:
                changed.add(path)
        return changed

    # -- reloading ---------------------------------------------------------------------------
    def apply(self, paths: set[Path]) -> Outcome | None:
        """Reload for these changed files, log one line, and refresh open pages."""
        started = time.perf_counter()
        server = self.server if self.server is not None and self.server.running else None
        static = sorted(p for p in paths if p.suffix.lower() in STATIC_SUFFIXES)
        plan = self.reloader.plan(paths)
        if plan is None:
            if static and server is not None:
                server.refresh()
            return None
        outcome = plan.outcome
        if plan.runnable:
            outcome = self._run(plan, server)
        for note in outcome.notes:
            logger.warning(note)
        if outcome.failure is not None:
            logger.error("Reload failed: %s", with_traceback(outcome.failure))
            if server is not None:
                server.show_error(outcome.failure)
        elif plan.runnable:
            log_reloaded(outcome, started)
            if server is not None:
                server.refresh()
        patch = self.reloader.last_patch
        if patch is not None and patch.skipped:
            logger.warning("Could not update in place: %s",
                           "; ".join(dict.fromkeys(patch.skipped)))
            patch.skipped.clear()
        return outcome

    def _run(self, plan: Plan, server: NotebookServer | None) -> Outcome:
        with _paused(server):
            with _frozen(server, threads=True):
                batch = self.reloader.run(plan)
            if batch.escalation is not None:
                batch.outcome.notes.append(
                    f"{batch.escalation.cause}: in place cannot apply this faithfully, and a "
                    "kernel reloads in place only; restart the kernel to start clean")
                batch.escalation = None
            if batch.outcome.failure is not None or batch.app is None:
                with _frozen(server, threads=False):
                    batch.rollback()
                return batch.outcome
            replaced = self._served
            try:
                new = self._new_app(batch)
                if new is not None and server is not None:
                    server.serve(new)
            except (ServeFailed, _AppGone) as exc:
                with _frozen(server, threads=False):
                    batch.rollback()
                batch.outcome.failure = exc.failure
                return batch.outcome
            except BaseException:
                with _frozen(server, threads=False):
                    batch.rollback()
                raise
            with _frozen(server, threads=False):
                batch.commit()
        if new is not None:
            self._served = new
            for name, value in list(self.namespace.items()):
                if value is replaced:
                    self.namespace[name] = new
        for name in batch.outcome.released:
            logger.info("%s() is gone: its cached values were released", name)
        return batch.outcome

    def _new_app(self, batch: Batch) -> Any:
        """The app the served app's module defines now, if that module re-ran and made a
        new one (None otherwise)."""
        if self._origin is None or self._origin[0] not in batch.outcome.reran:
            return None
        name, attr = self._origin
        new = getattr(sys.modules.get(name), attr, None)
        if new is self._served:
            return None
        if new is None or not callable(new):
            raise _AppGone(Failure(None, None, "AppNotFound",
                                   f"module {name!r} has no app {attr!r} any more (the app "
                                   "%fh serves)", ""))
        return new


class _AppGone(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@contextlib.contextmanager
def _paused(server: NotebookServer | None) -> Iterator[None]:
    if server is None:
        yield
        return
    with server.paused():
        yield


@contextlib.contextmanager
def _frozen(server: NotebookServer | None, threads: bool) -> Iterator[None]:
    if server is None:
        yield
        return
    with server.frozen(threads):
        yield


def _state(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)
