"""`fh_utils dev`: one uvicorn server for the whole session, reloading in place on each save."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import watchfiles

from fh_utils.browser.live import (
    STATIC_SUFFIXES,
    LiveHub,
    LiveReloadMiddleware,
    editor_href,
    fasthtml_live,
)
from fh_utils.reload import effects, pinning
from fh_utils.reload.engine import Outcome, Reloader
from fh_utils.reload.errors import Failure, display_path
from fh_utils.reload.report import log_reloaded, with_traceback
from fh_utils.serve.channel import Channel
from fh_utils.serve.escalation import Candidate, Ladder, PendingRestart
from fh_utils.serve.events import EventFeed, EventsMiddleware, stdout_echo
from fh_utils.serve.hosts import HostGuard
from fh_utils.serve.interface import as_asgi3
from fh_utils.serve.switch import Generation, LifespanFailed, StartupAbort, Switch, Timeouts
from fh_utils.serve.verify import (
    Answer,
    Description,
    Get,
    Recorder,
    answer_twice,
    describe,
    differences,
)
from fh_utils.serve.zygote import Zygote
from fh_utils.target import AppTarget
from fh_utils.timing import (
    ATOMIC_SAVE_GRACE,
    CANDIDATE,
    FLUSH,
    HAND_OVER_SETTLE,
    VERIFY_ANSWERS,
    VERIFY_DESCRIBE,
    VERIFY_REQUEST,
    VERIFY_SLOW,
    WATCH_QUIET_MS,
    WATCH_STEP_MS,
    WATCHER_READY,
)
from fh_utils.watch.filters import WatchSpec
from fh_utils.watch.watcher import Watcher

__all__ = ["STATIC_SUFFIXES", "DevListener", "DevOptions", "DevSession", "Server"]

logger = logging.getLogger("fh_utils")

CLEAR_SCREEN = "\x1b[2J\x1b[3J\x1b[H"


class DevListener(Protocol):
    """Told about each reload, e.g. to refresh open browser pages (`--live`)."""

    async def reloaded(self, outcome: Outcome) -> None:
        """The new code is live (the new app, if any, is serving)."""

    async def failed(self, failure: Failure) -> None:
        """A reload failed; the last good app keeps serving."""

    async def static_changed(self, paths: list[Path]) -> None:
        """Files the browser loads (CSS, JS, images) changed; no Python code re-ran."""


class Server(Protocol):
    """The uvicorn server a session runs in (`fh_utils.serve.processes`), as the restart tier
    sees it."""

    def clients(self) -> set[Any]:
        """The peers of the connections open now."""

    def step_down(self, stale: set[Any]) -> None:
        """Stop accepting, close the idle connections of `stale` peers, let the others finish
        their request, then shut down."""


@dataclass
class DevOptions:
    """Everything `fh_utils dev` needs; the CLI only fills this in."""

    target: AppTarget
    host: str = "127.0.0.1"
    port: int = 5001
    log_level: str | None = "info"
    log_format: Literal["text", "json"] = "text"  # json: each reload event printed as JSON
    reload: Literal["fast", "full", "no"] = "fast"
    live: bool = False
    live_morph: bool = True  # --live pages morph in place (False: they reload)
    editor: str | None = None  # opens files from the overlay (fh_utils.browser.editor)
    clear: bool = False
    escalate: bool = True  # re-import or restart when in place cannot be faithful
    # Check reloads in place against a fresh process: None decides by what a fresh start costs.
    verify: bool | None = None
    keep_connections: bool = False  # leave a retired app's WebSockets and streams open
    timeout_lifespan: float = 30.0
    allowed_hosts: Sequence[str] = ()  # Host headers allowed besides localhost and IPs
    host_hint: str = "--allowed-host {name}"  # how this entry point's user allows a host
    project_loaded: bool = False  # this process already ran the app (`python app.py`)
    notes: Sequence[str] = ()  # lines to log once at start-up
    reload_dirs: Sequence[str] = ()
    reload_includes: Sequence[str] = ()
    reload_excludes: Sequence[str] = ()
    reload_delay: float = 0.25
    uvicorn: dict[str, Any] = field(default_factory=dict)  # further uvicorn.Config arguments

    def watch_spec(self) -> WatchSpec:
        return WatchSpec(self.target.app_dir, self.reload_includes, self.reload_excludes,
                         reload_dirs=self.reload_dirs)




def _no_breakpoint(*args: Any, **kwargs: Any) -> None:
    return None


class DevSession:
    """Owns the reloader, the switch uvicorn serves, the watcher thread and the task that
    applies what it reports.

    With a `zygote`, a reload that in place cannot make faithful goes to a new worker process
    forked from it (the restart tier); `link` is set in such a worker, to the worker that asked
    for it, until it serves.
    """

    def __init__(self, options: DevOptions, *, zygote: Zygote | None = None,
                 link: Channel | None = None) -> None:
        self.options = options
        self.link = link
        self.server: Server | None = None  # once serving (fh_utils.serve.processes)
        self.retiring = False  # a newer worker took over: this one stops serving
        self.shutting_down = False
        self.watch = options.watch_spec()
        self.reloader = Reloader(options.target, self.watch.dirs, self.watch.exclude_dirs,
                                 ignore=self.watch.ignores,
                                 env_file=options.uvicorn.get("env_file"),
                                 escalate=options.escalate)
        settings = dict(options.uvicorn)
        # The env file is loaded by the reloader, not uvicorn: a worker forked later must start
        # from the environment before it, then load the file as it is then.
        settings.pop("env_file", None)
        # These two describe the user's app; the switch uvicorn serves is always ASGI 3.
        self._interface = settings.pop("interface", "auto")
        self.switch = Switch(self._startup, self._shutdown, settings.pop("lifespan", "auto"),
                             Timeouts(lifespan=options.timeout_lifespan),
                             keep_connections=options.keep_connections,
                             editor_link=editor_href if options.live else None)
        self.uvicorn_settings = settings
        self._adapted: tuple[Any, Any] | None = None
        self._stop = threading.Event()  # the watcher thread ends; so does the applier
        self._watcher: Watcher | None = None
        self._changes: set[Path] = set()
        self._changed = asyncio.Event()  # set when changes arrive
        # Set when a change arrives that a reload would act on: a lifespan startup still
        # pending is cancelled (the newer save wins). A file the app writes meanwhile is not.
        self._newer = asyncio.Event()
        self._idle = asyncio.Event()  # nothing reported is waiting to be applied (`settled`)
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.events = EventFeed(self.settled, retiring=lambda: self.retiring,
                                echo=stdout_echo(options.log_format))
        self.listeners: list[DevListener] = [self.events]
        self.asgi: Any = self.switch  # what uvicorn serves; middleware may wrap it
        self.live: LiveHub | None = None
        if options.live:
            self.live = LiveHub(self.reloader.graph.is_project_file,
                                on_browser_error=self.events.browser_error)
            self.listeners.append(self.live)
            self.asgi = LiveReloadMiddleware(
                self.switch, self.live, morph=options.live_morph, editor=options.editor,
                roots=self.watch.dirs, is_project_file=self.reloader.graph.is_project_file)
        self.asgi = EventsMiddleware(self.asgi, self.events)
        self.asgi = HostGuard(self.asgi, options.allowed_hosts, options.host,
                              hint=options.host_hint)
        self._prepared = False  # a new worker: its app was loaded before uvicorn started
        # The fresh-process check (fh_utils.serve.verify): one at a time, cancelled by a save.
        self.load_seconds = 0.0  # the project's import and app start-up: a fresh start's cost
        self._check: asyncio.Task[None] | None = None
        self._applying = asyncio.Lock()  # a reload, or the check switching to its worker
        self._told_unchecked = False
        self._awaiting_worker = False  # a restart's new worker is starting: a save gives it up
        self._saves = 0  # saves that matter, counted as the watcher reports them
        if options.reload == "fast" and options.verify is not False:
            self.switch.recorder = Recorder()
        self.ladder = Ladder(self.reloader, self.switch, self._adapt, self._newer,
                             escalate=options.escalate, timeout_lifespan=options.timeout_lifespan,
                             fork_start=options)
        self.ladder.zygote = zygote

    @property
    def zygote(self) -> Zygote | None:
        """What forks the restart tier's workers; None where there is none (or it is gone)."""
        return self.ladder.zygote

    @zygote.setter
    def zygote(self, zygote: Zygote | None) -> None:
        self.ladder.zygote = zygote

    # -- start and stop ----------------------------------------------------------------------
    async def _startup(self) -> None:
        if self._prepared:  # a new worker, ready before uvicorn started
            self._spawn(self._apply_changes())
            return
        effects.install_task_factory(asyncio.get_running_loop())
        for note in self.options.notes:
            logger.info(note)
        if self.options.reload == "fast":
            dirs = [str(d) for d in self.watch.dirs]
            logger.info("Will watch for changes in these directories: %s", dirs)
            self._start_watching()
        started = time.perf_counter()
        outcome = self.reloader.start()
        for note in outcome.notes:
            logger.warning(note)
        if outcome.failure is not None and self._is_mistake(outcome.failure):
            self._stop_watching()
            raise StartupAbort(f"{outcome.failure.summary}: check PATH and --app")
        if outcome.failure is not None:
            await self._show_load_failure(outcome.failure)
        elif await self._serve_first(outcome):
            self.load_seconds = time.perf_counter() - started
            ms = self.load_seconds * 1000
            logger.info("Loaded %s in %d ms", self.options.target.label, ms)
            self.events.loaded(self.options.target.label, ms)
            self._preload()
            if not self.options.live and fasthtml_live(outcome.app):
                logger.warning(
                    "%s is built with fast_app(live=True): its script refreshes open pages "
                    "only when its socket drops, not for CSS or template edits; pass --live "
                    "for fh_utils' live refresh (it replaces that script)",
                    self.options.target.label)
        if self.options.reload == "fast":
            self._spawn(self._apply_changes())

    def _preload(self) -> None:
        """Have the zygote import the installed packages the app uses, for fast restarts."""
        if self.zygote is None:
            return
        env = self.reloader.env
        try:
            self.zygote.preload(self.reloader.loaded_packages(), self.reloader.start_path,
                                str(env.path) if env is not None else None)
        except OSError:
            logger.debug("The zygote is gone: restarts are not available", exc_info=True)
            self.zygote = None

    async def prepare(self) -> bool:
        """In a new worker: load the app and start it, tell the worker that asked, and wait
        to hear whether to serve. False: it will not serve (the app failed, or not needed)."""
        assert self.link is not None
        effects.install_task_factory(asyncio.get_running_loop())
        if self.options.reload == "fast":
            self._start_watching()  # changes saved from now on are not missed
        started = time.perf_counter()
        outcome = self.reloader.start()
        generation: Generation | None = None
        failure = outcome.failure
        if failure is None and outcome.app is not None:
            # The worker that asked may give this one up meanwhile (a newer save): a startup
            # that hangs must not keep it alive until --timeout-lifespan.
            abandoned = asyncio.Event()
            watching = asyncio.ensure_future(self._until_abandoned(abandoned))
            try:
                generation = await self.switch.start(self._adapt(outcome.app), abandoned)
            except LifespanFailed as exc:
                failure = exc.failure()
            finally:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
            if abandoned.is_set():
                if generation is not None:
                    await self.switch.discard(generation, logging.DEBUG)
                return False
        if failure is not None or generation is None:
            await self.link.send(("failed", failure))
            return False
        self.load_seconds = time.perf_counter() - started
        await self.link.send(("imported",))
        reply = await self.link.recv()
        while reply and reply[0] == "describe":  # the fresh-process check asks
            _, modules, requests = reply
            fresh = describe(outcome.app, [sys.modules[m] for m in modules if m in sys.modules],
                             self.reloader.graph.is_project_file)
            # A replayed request never stops at a breakpoint(): the terminal is the hot
            # server's, where the user may be debugging that very request.
            hook, sys.breakpointhook = sys.breakpointhook, _no_breakpoint
            try:
                fresh.answers = await answer_twice(generation.app, generation.state, requests,
                                                   VERIFY_REQUEST)
            finally:
                sys.breakpointhook = hook
            await self.link.send(("described", fresh))
            reply = await self.link.recv()
        if not reply or reply[0] != "go":
            # Its app never served (a check's fresh worker, a restart given up): a failing
            # lifespan shutdown would read as the serving app's, which has not shut down.
            await self.switch.discard(generation, logging.DEBUG)
            return False
        await self.switch.commit(generation)
        self.events.loaded(self.options.target.label, self.load_seconds * 1000, tier="restart")
        self._changes.update(reply[1])
        if self._changes:
            self._changed.set()
            self._idle.clear()
        self._prepared = True
        return True

    async def _until_abandoned(self, abandoned: asyncio.Event) -> None:
        """Set `abandoned` when the worker that asked for this one closes the link. It sends
        nothing before this one says it started."""
        assert self.link is not None
        if await self.link.recv() is None:
            abandoned.set()

    async def serving(self) -> None:
        """uvicorn accepts connections: tell the worker that asked for this one."""
        if self.link is not None:
            await self.link.send(("ready",))
        if self.zygote is not None:
            self.zygote.serving()

    async def _serve_first(self, outcome: Outcome) -> bool:
        assert outcome.app is not None
        try:
            generation = await self.switch.start(self._adapt(outcome.app), self._newer)
        except LifespanFailed as exc:
            await self._show_load_failure(exc.failure())
            return False
        await self.switch.commit(generation)
        return True

    async def _show_load_failure(self, failure: Failure) -> None:
        self.switch.fail(failure)
        await self._notify(lambda listener: listener.failed(failure))
        logger.error(
            "Could not load %s: %s\nServing an error page until a fix is saved.",
            self.options.target.label, with_traceback(failure),
        )

    def _is_mistake(self, failure: Failure) -> bool:
        """The command line names an app that is not there (not a crash in the app's code)."""
        module = self.options.target.module
        missing = {f"No module named '{module[: i]}'"
                   for i in [len(module), *(i for i, c in enumerate(module) if c == ".")]}
        return failure.kind == "AppNotFound" or (
            failure.kind == "ModuleNotFoundError" and failure.message in missing
        )

    async def _shutdown(self) -> None:
        """Every step runs, even when one before it fails."""
        self._stop_watching()
        self._cancel_check()
        steps: list[Callable[[], Awaitable[None]]] = []
        if self.live is not None:
            steps.append(self.live.close)
        steps += [self._stop_tasks, self.switch.close]
        for step in steps:
            try:
                await step()
            except Exception:
                logger.exception("Shutdown step %s failed", getattr(step, "__name__", step))
        try:
            self.reloader.stop()
        except Exception:
            logger.exception("Shutdown step reloader.stop failed")

    async def before_shutdown(self) -> None:
        """Ctrl+C or a newer worker: end WebSockets and streams at once (they would hold
        uvicorn's graceful shutdown forever) and stop reacting to changes."""
        self.shutting_down = True
        self._stop_watching()
        await self.events.close()
        if self.zygote is not None:
            with contextlib.suppress(OSError):  # stopping on purpose: not to be replaced
                self.zygote.retiring()
        for generation in self.switch.generations():
            await generation.close_connections()

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # -- watching ----------------------------------------------------------------------------
    def _stop_watching(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.close()  # wakes its thread, asleep until a change

    def _start_watching(self) -> None:
        """Watch in a thread of our own: not in anyio's thread pool, which a reload holds
        (see `Switch.threads_held`). Idle, it sleeps until something changes."""
        loop = asyncio.get_running_loop()

        def report(changes: set[tuple[watchfiles.Change, str]]) -> None:
            try:
                loop.call_soon_threadsafe(self._arrived, {Path(path) for _, path in changes})
            except RuntimeError:  # the loop is closed: the session is over
                self._stop_watching()

        self._watcher = Watcher(self.watch.dirs, self._filter, self.watch.ignores, report,
                                self._stop, WATCH_STEP_MS, WATCH_QUIET_MS, self.reloader.reads)
        thread = threading.Thread(target=self._watcher.run, daemon=True, name="fh_utils-watcher")
        thread.start()
        # A save made from now on is seen (the app is imported next: no edit falls between).
        self._watcher.ready.wait(WATCHER_READY)

    def _arrived(self, paths: set[Path]) -> None:
        self._changes.update(paths)
        self._changed.set()
        self._idle.clear()
        try:
            relevant = self.reloader.relevant(paths)
        except Exception:
            logger.debug("Could not tell whether %s matter", paths, exc_info=True)
            return
        if not relevant:  # e.g. a log file the app writes
            return
        self._saves += 1  # (the fresh-process check: what it compares may be older)
        if self.switch.starting or self._awaiting_worker:
            self._newer.set()  # a lifespan startup or a new worker pending is given up

    async def _apply_changes(self) -> None:
        """Apply changes as they arrive; an exception in one reload never stops the next."""
        while not self.retiring:
            if not self._changed.is_set():
                self._idle.set()
            await self._changed.wait()
            if self.retiring:
                return
            self._changed.clear()
            self._newer.clear()
            paths, self._changes = self._changes, set()
            try:
                async with self._applying:
                    await self.apply(paths)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Reload failed unexpectedly (this is a bug in fh_utils)")

    async def settled(self, timeout: float) -> bool:
        """Wait until every save made before the call is live or has failed (or needs no
        reload): the watcher has reported it (`Watcher.flush`) and the applier is idle. False
        when that takes longer than `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._flush_watcher(min(FLUSH, timeout))
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return False
        return True

    async def _flush_watcher(self, timeout: float) -> None:
        """Return once the watcher reported every change made before the call (`_arrived`
        ran for them), or after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        watcher = self._watcher
        if watcher is None or self._stop.is_set():
            return
        seen: asyncio.Future[None] = loop.create_future()

        def done() -> None:  # in the watcher's thread, after it reported the changes
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(_resolve, seen)

        watcher.flush(done)
        try:
            await asyncio.wait_for(seen, timeout)
        except TimeoutError:
            logger.debug("The file watcher did not answer a flush within %.1f s", timeout)

    async def _saved_since(self, saves: int) -> bool:
        """Whether a save that matters was made since `saves` were counted: a fresh worker
        started before it may have imported it, so what it serves is no verdict on the reload
        before (that save gets its own reload, and its own check)."""
        await self._flush_watcher(FLUSH)
        return self._saves != saves

    def _filter(self, change: watchfiles.Change, path: str) -> bool:
        return self.watch(change, path) and self.reloader.graph.is_project_file(path)

    # -- reloading ---------------------------------------------------------------------------
    async def apply(self, paths: set[Path]) -> Outcome | None:
        """Reload for these changed files and make the result live (or report why not)."""
        started = time.perf_counter()
        saves = self._saves  # those this reload applies: a later one makes its check moot
        paths = await self._atomic_saves(paths)
        static = sorted(p for p in paths if p.suffix.lower() in STATIC_SUFFIXES)
        plan = self.reloader.plan(paths)
        if plan is None:
            if logger.isEnabledFor(logging.DEBUG):  # (a log the app writes: each request)
                logger.debug("Nothing loaded is affected by %s",
                             ", ".join(map(str, sorted(paths))))
            if static:
                await self._notify(lambda listener: listener.static_changed(static))
            return None
        if plan.pages:  # templates and data files read per request: the pages show them
            logger.debug("%s changed: read while handling requests; open pages refresh",
                         ", ".join(str(p) for p in plan.pages))
            static = sorted({*static, *plan.pages})
            if not plan.runnable and not plan.outcome.notes:
                await self._notify(lambda listener: listener.static_changed(static))
                return plan.outcome
        outcome = plan.outcome
        ran = plan.runnable  # (the plan's outcome keeps what a lower tier hit)
        check: Description | None = None
        reported: Failure | None = None
        if ran:
            self._cancel_check()  # a newer save: its own reload is checked
            async with self.switch.paused():
                outcome, restart = await self.ladder.run(plan)
                if restart is None and outcome.failure is None and outcome.tier == "in place":
                    check = self._hot_description(outcome)  # before any request runs
            if self.ladder.judgeable(outcome):  # said at once; a fresh process then judges
                assert outcome.failure is not None
                reported = outcome.failure
                self._clear_screen()
                self.events.finished(outcome, started)
                await self._report_failure(reported)
                outcome, restart = await self.ladder.judge(plan, outcome)
            if restart is not None:  # the old worker serves until the new one is ready
                outcome = await self._hand_over(restart, outcome)
        self.events.finished(outcome, started)
        if reported is None:
            self._clear_screen()
        for note in outcome.notes:
            logger.warning(note)
        if outcome.failure is not None and outcome.failure.kind == "Superseded":
            logger.info("%s", outcome.failure.message)
        elif outcome.failure is not None:
            if reported is None or outcome.failure.summary != reported.summary:
                await self._report_failure(outcome.failure)
        elif ran:
            log_reloaded(outcome, started)
            if not self.retiring:
                await self._notify(lambda listener: listener.reloaded(outcome))
            if check is not None and self.switch.recorder is not None:
                recorder = self.switch.recorder
                if self.retiring:
                    recorder.release()
                else:
                    self._check = asyncio.get_running_loop().create_task(
                        self._verify(outcome, check, time.monotonic(), saves))
                    # Also when cancelled before it ran: its body would not.
                    self._check.add_done_callback(lambda _: recorder.release())
        patch = self.reloader.last_patch
        if patch is not None and patch.skipped:
            logger.warning("Could not update in place: %s",
                           "; ".join(dict.fromkeys(patch.skipped)))
            patch.skipped.clear()
        if static and not self.retiring:
            await self._notify(lambda listener: listener.static_changed(static))
        return outcome

    def _clear_screen(self) -> None:
        if self.options.clear:
            sys.stderr.write(CLEAR_SCREEN)
            sys.stderr.flush()

    async def _report_failure(self, failure: Failure) -> None:
        if failure.kind.startswith("Lifespan"):
            logger.error("Lifespan startup failed, the previous app keeps serving: %s",
                         with_traceback(failure, summary=failure.message))
        else:
            logger.error("Reload failed: %s", with_traceback(failure))
        await self._notify(lambda listener: listener.failed(failure))

    # -- the fresh-process check --------------------------------------------------------------
    def _hot_description(self, outcome: Outcome) -> Description | None:
        """The hot app as the check compares it, taken while requests wait; None: no check."""
        recorder = self.switch.recorder
        if recorder is None or self.zygote is None or not self._worth_checking():
            return None
        recorder.want()  # answers from now on are the new code's, and compared
        modules = [sys.modules[m] for m in outcome.reran if m in sys.modules]
        return describe(self.reloader.app, modules, self.reloader.graph.is_project_file)

    def _worth_checking(self) -> bool:
        """Unless --verify asks for it, a project whose fresh start is slow is not checked: the
        check would load its model again, behind the user's back. Nor is one that writes a
        file it reads (even with --verify). Said once."""
        written = self.reloader.written_and_read()
        if written:  # its fresh worker would write them again: a reload, a check, a write...
            if not self._told_unchecked:
                self._told_unchecked = True
                logger.info("Reloads in place are not checked against a fresh process: the app "
                            "writes %s, which it also reads, and a fresh start would write it "
                            "again", ", ".join(display_path(p) for p in written[:3]))
            return False
        if self.options.verify:
            return True
        slowest, name = pinning.engine.slowest()
        cost = self.load_seconds + slowest
        if cost <= VERIFY_SLOW:
            return True
        if not self._told_unchecked:
            self._told_unchecked = True
            what = f"; {name} alone {slowest:.1f} s" if slowest > 0.5 else ""
            logger.info("Reloads in place are not checked against a fresh process: a fresh "
                        "start of %s takes %.1f s%s (--verify checks anyway)",
                        self.options.target.label, cost, what)
        return False

    def _cancel_check(self) -> None:
        if self._check is not None and not self._check.done():
            self._check.cancel()
        self._check = None

    async def _verify(self, outcome: Outcome, hot: Description, reloaded: float,
                      saves: int) -> None:
        """Start the edited project in a fresh worker and compare; when they differ, the fresh
        worker serves from now on. Never holds a request; a newer save cancels it."""
        recorder = self.switch.recorder
        assert recorder is not None
        files = ", ".join(outcome.changed) or "the project"
        started = time.perf_counter()
        candidate, failure = await self.ladder.candidate()
        if candidate is None:
            if failure is not None and not await self._saved_since(saves):
                logger.warning("Reloaded %s in place, but a fresh start of the same files "
                               "fails: %s", files, with_traceback(failure))
                self._verified(outcome, started, ["a fresh start fails: " + failure.summary])
            return
        try:
            fresh = await candidate.describe(list(hot.state), recorder.requests(),
                                             VERIFY_DESCRIBE)
            answers = await self._hot_answers(recorder, fresh, reloaded)
            found = differences(hot, fresh, answers) if fresh is not None else []
            if found and await self._saved_since(saves):
                logger.debug("The check of %s is given up: a newer save is checked on its "
                             "own", files)
                await candidate.dismiss()
                return
            if found:  # confirmed by a second fresh start, or it was the process's own
                assert fresh is not None
                found = await self._confirm(hot, fresh, answers, recorder.requests())
        except BaseException:
            await candidate.dismiss()
            raise
        if not found:
            await candidate.dismiss()
            logger.debug("A fresh start serves what the reload of %s does (%d GET(s) compared, "
                         "checked in %d ms)", files, len(answers),
                         (time.perf_counter() - started) * 1000)
            self._verified(outcome, started, [], compared=len(answers))
            return
        if not self.options.escalate:
            await candidate.dismiss()
            logger.warning("Reloaded %s in place, but a fresh start differs (%s): restart "
                           "fh_utils dev to serve it (escalation is off)", files, "; ".join(found))
            self._verified(outcome, started, found, compared=len(answers))
            return
        async with self._applying:  # no reload runs meanwhile; a save waits for the switch
            if self.retiring or await self._saved_since(saves):
                await candidate.dismiss()
                return
            switching = time.perf_counter()
            result = await self._hand_over(PendingRestart(candidate, "a fresh start differs"),
                                           Outcome(changed=outcome.changed))
        if result.failure is not None:
            logger.error("Reloaded %s in place, but a fresh start differs (%s); switching to "
                         "a fresh worker failed: %s", files, "; ".join(found),
                         result.failure.summary)
            return
        logger.warning("Reloaded %s in place, but a fresh start differs (%s): switched to a "
                       "fresh worker in %d ms", files, "; ".join(found),
                       (time.perf_counter() - switching) * 1000)
        self._verified(outcome, started, found, compared=len(answers), switched=True)

    def _verified(self, outcome: Outcome, started: float, found: list[str], *,
                  compared: int = 0, switched: bool = False) -> None:
        """The check's verdict, as an event (`fh_utils status`, --log-format json)."""
        self.events.publish({"event": "verify", "files": list(outcome.changed),
                             "same": not found, "differences": found, "compared": compared,
                             "switched": switched,
                             "ms": round((time.perf_counter() - started) * 1000)})

    async def _confirm(self, hot: Description, fresh: Description, answers: dict[Get, Answer],
                       requests: list[Get]) -> list[str]:
        """The differences that a second fresh start shows too: one a fresh process has by
        itself (a process id, the time or a random value taken at import) is no evidence."""
        second, _ = await self.ladder.candidate()
        if second is None:
            return []
        try:
            other = await second.describe(list(hot.state), requests, VERIFY_DESCRIBE)
        finally:
            await second.dismiss()
        if other is None:
            return []
        return differences(hot, fresh.agreeing(other), answers)

    @staticmethod
    async def _hot_answers(recorder: Recorder, fresh: Description | None, reloaded: float
                           ) -> dict[Get, Answer]:
        """The hot app's answers, since the reload, to the requests the fresh app answered,
        as clients ask again: a page open with --live at once, others when the user reloads
        (`VERIFY_ANSWERS` after the save at most). Returns at the first that differs."""
        if fresh is None or not fresh.answers:
            return {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, reloaded + VERIFY_ANSWERS - time.monotonic())
        while True:
            recorder.updated.clear()
            answers = {g: a for g, a in recorder.answers_since(recorder.epoch).items()
                       if g in fresh.answers}
            if (len(answers) == len(fresh.answers) or loop.time() >= deadline
                    or any(fresh.answers[g] != a for g, a in answers.items())):
                return answers
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await recorder.updated.wait()

    async def _atomic_saves(self, paths: set[Path]) -> set[Path]:
        """An editor's atomic save may take the old file away a moment before the new one is
        in place: a module's file missing now gets `ATOMIC_SAVE_GRACE` to come back before it
        counts as deleted. What arrives meanwhile joins this reload."""
        graph = self.reloader.graph
        missing = [p for p in paths
                   if p.suffix == ".py" and graph.module_for(p) is not None and not p.exists()]
        if not missing:
            return paths
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ATOMIC_SAVE_GRACE
        while any(not p.exists() for p in missing) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        arrived, self._changes = self._changes, set()
        return paths | arrived

    async def _hand_over(self, restart: PendingRestart, outcome: Outcome) -> Outcome:
        """The restart tier: a new worker process serves from now on; this one steps down."""
        # From now on responses close their connection, so that clients come back on a new
        # one, which the new worker will take once it serves.
        connected = self._clients()
        self.switch.begin_hand_over()
        candidate = restart.candidate
        if candidate is None:
            logger.info("%s: starting a new worker; the previous app serves meanwhile",
                        restart.cause[:1].upper() + restart.cause[1:])
            candidate, failure = await self._unless_newer(self.ladder.candidate())
            if candidate is None and failure is not None and failure.kind == "Superseded":
                self.switch.cancel_hand_over()
                outcome.failure = failure
                return outcome
            if candidate is None:
                self.switch.cancel_hand_over()
                outcome.failure = failure or Failure(
                    None, None, "RestartUnavailable",
                    f"{restart.cause}: only a new process can apply this, and none can be "
                    "started here; restart fh_utils dev", "")
                return outcome
        await self._settle(connected)
        changes, self._changes = self._changes, set()  # saved meanwhile: the new worker's
        await candidate.go(changes)
        if not await candidate.ready(CANDIDATE):
            self.switch.cancel_hand_over()
            self._changes |= changes
            outcome.failure = Failure(None, None, "RestartFailed",
                                      "the new worker stopped before it served", "")
            return outcome
        outcome.tier, outcome.cause = "restart", restart.cause
        self._retire(stale=connected - self.switch.recent_clients)
        return outcome

    async def _unless_newer(self, starting: Awaitable[tuple[Candidate | None, Failure | None]]
                            ) -> tuple[Candidate | None, Failure | None]:
        """A new worker starting (its lifespan may hang) is given up for a newer save."""
        self._awaiting_worker = True
        task = asyncio.ensure_future(starting)
        newer = asyncio.ensure_future(self._newer.wait())
        try:
            await asyncio.wait({task, newer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._awaiting_worker = False
            newer.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None, Failure(None, None, "Superseded", "The restart was given up for a newer "
                             "save; the previous app served meanwhile", "")

    async def _settle(self, connected: set[Any]) -> None:
        """Give each connection open when the hand-over began the chance to be used once
        (its response then closes it) before the new worker takes over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HAND_OVER_SETTLE
        while loop.time() < deadline:
            if not (connected & self._clients()) - self.switch.recent_clients:
                return
            await asyncio.sleep(0.005)

    def _clients(self) -> set[Any]:
        return self.server.clients() if self.server is not None else set()

    def _retire(self, stale: set[Any]) -> None:
        """A newer worker serves: stop accepting at once, close the keep-alive connections no
        one used since the hand-over began (a browser reusing one would get the old code),
        let the others finish their request, then shut down (`Server.step_down`)."""
        self.retiring = True
        self._stop_watching()
        self._changed.set()  # lets the applier loop end
        self._idle.set()  # and a status --wait ask the new worker
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # no shutdown chatter
        if self.zygote is not None:
            try:
                self.zygote.retiring()
            except OSError:
                pass
        if self.server is not None:
            self.server.step_down(stale)

    async def _notify(self, event: Callable[[DevListener], Awaitable[None]]) -> None:
        for listener in self.listeners:
            try:
                await event(listener)
            except Exception:
                logger.exception("A reload listener failed")

    def _adapt(self, app: Any) -> Any:
        """The app as ASGI 3, per --interface (the same wrapper while the app is the same)."""
        if self._adapted is not None and self._adapted[0] is app:
            return self._adapted[1]
        wrapped = as_asgi3(app, self._interface)
        self._adapted = (app, wrapped)
        return wrapped


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
