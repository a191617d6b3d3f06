"""`fh_utils dev`: one uvicorn server for the whole session, reloading in place on each save."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import logging
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import uvicorn
import watchfiles
from uvicorn.middleware import wsgi
from uvicorn.middleware.asgi2 import ASGI2Middleware

from fh_utils.browser.live import (
    STATIC_SUFFIXES,
    LiveHub,
    LiveReloadMiddleware,
    editor_href,
    fasthtml_live,
)
from fh_utils.reload import effects
from fh_utils.reload.engine import Batch, Outcome, Plan, Reloader
from fh_utils.reload.errors import Failure
from fh_utils.serve.channel import Channel
from fh_utils.serve.hosts import HostGuard
from fh_utils.serve.switch import Generation, LifespanFailed, StartupAbort, Switch, Timeouts
from fh_utils.serve.zygote import Zygote
from fh_utils.target import AppTarget
from fh_utils.watch.filters import WatchSpec
from fh_utils.watch.watcher import Watcher

__all__ = ["STATIC_SUFFIXES", "DevListener", "DevOptions", "DevSession", "uvicorn_log_config"]

_WSGIMiddleware: Any = getattr(wsgi, "WSGIMiddleware")  # noqa: B009  # uvicorn's, or a2wsgi's

logger = logging.getLogger("fh_utils")

CLEAR_SCREEN = "\x1b[2J\x1b[3J\x1b[H"

# A change is reported once nothing more happened for `WATCH_QUIET_MS` (on Linux, where the
# watcher sleeps on inotify; a .py file still open for writing holds it longer), or for
# `WATCH_STEP_MS` where watchfiles' own loop looks that often; its default (50 ms) alone would
# exceed our whole budget. Bursts still coalesce: anything arriving while a reload runs is
# reported next, and each reload reads the files as they are then.
WATCH_STEP_MS = 2
WATCH_QUIET_MS = 1



class DevListener(Protocol):
    """Told about each reload, e.g. to refresh open browser pages (`--live`)."""

    async def reloaded(self, outcome: Outcome) -> None:
        """The new code is live (the new app, if any, is serving)."""

    async def failed(self, failure: Failure) -> None:
        """A reload failed; the last good app keeps serving."""

    async def static_changed(self, paths: list[Path]) -> None:
        """Files the browser loads (CSS, JS, images) changed; no Python code re-ran."""


@dataclass
class DevOptions:
    """Everything `fh_utils dev` needs; the CLI only fills this in."""

    target: AppTarget
    host: str = "127.0.0.1"
    port: int = 5001
    log_level: str | None = "info"
    reload: Literal["fast", "full", "no"] = "fast"
    live: bool = False
    live_morph: bool = True  # --live pages morph in place (False: they reload)
    editor: str | None = None  # opens files from the overlay (fh_utils.browser.editor)
    clear: bool = False
    escalate: bool = True  # re-import or restart when in place cannot be faithful
    keep_connections: bool = False  # leave a retired app's WebSockets and streams open
    timeout_lifespan: float = 30.0
    allowed_hosts: Sequence[str] = ()  # Host headers allowed besides localhost and IPs
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


# Errors a cold start of the same tree hits too, whatever the previous runs left: reported at
# once, never checked against a fresh process.
GENUINE = frozenset({"NameError", "UnboundLocalError", "SyntaxError", "IndentationError",
                     "TabError", "ImportError", "ModuleNotFoundError", "AppNotFound",
                     "LifespanTimeout"})
CANDIDATE_TIMEOUT = 120.0  # a new worker's import and start-up, at most (beyond its lifespan's)
STEP_DOWN_GRACE = 1.0  # a retired worker's connections finishing their request, at most
HAND_OVER_SETTLE = 0.2  # clients of open keep-alive connections coming back, at most
ATOMIC_SAVE_GRACE = 0.05  # a module's file gone in the middle of an editor's save
WATCHER_READY_TIMEOUT = 5.0  # the watcher setting up its watches, at most


class DevSession:
    """Owns the reloader, the switch uvicorn serves, the watcher thread and the task that
    applies what it reports.

    With a `zygote`, a reload that in place cannot make faithful goes to a new worker process
    forked from it (the third tier); `link` is set in such a worker, to the worker that asked
    for it, until it serves.
    """

    def __init__(self, options: DevOptions, *, zygote: Zygote | None = None,
                 link: Channel | None = None) -> None:
        self.options = options
        self.zygote = zygote
        self.link = link
        self.server: Any = None  # the uvicorn.Server, once serving (fh_utils.serve.processes)
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
        self._tasks: list[asyncio.Task[None]] = []
        self.listeners: list[DevListener] = []
        self.asgi: Any = self.switch  # what uvicorn serves; middleware may wrap it
        self.live: LiveHub | None = None
        if options.live:
            self.live = LiveHub(self.reloader.graph.is_project_file)
            self.listeners.append(self.live)
            self.asgi = LiveReloadMiddleware(
                self.switch, self.live, morph=options.live_morph, editor=options.editor,
                roots=self.watch.dirs, is_project_file=self.reloader.graph.is_project_file)
        self.asgi = HostGuard(self.asgi, options.allowed_hosts, options.host)
        self._prepared = False  # a new worker: its app was loaded before uvicorn started

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
            logger.info(
                "Loaded %s in %d ms", self.options.target.label,
                (time.perf_counter() - started) * 1000,
            )
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
            self.zygote.preload(self.reloader.loaded_packages(), sys.path,
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
        outcome = self.reloader.start()
        generation: Generation | None = None
        failure = outcome.failure
        if failure is None and outcome.app is not None:
            try:
                generation = await self.switch.start(self._adapt(outcome.app))
            except LifespanFailed as exc:
                failure = lifespan_failure(exc)
        if failure is not None or generation is None:
            await self.link.send(("failed", failure))
            return False
        await self.link.send(("imported",))
        reply = await self.link.recv()
        if not reply or reply[0] != "go":
            await self.switch.discard(generation)
            return False
        await self.switch.commit(generation)
        self._changes.update(reply[1])
        if self._changes:
            self._changed.set()
        self._prepared = True
        return True

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
            await self._show_load_failure(lifespan_failure(exc))
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
                                self._stop, WATCH_STEP_MS, WATCH_QUIET_MS)
        thread = threading.Thread(target=self._watcher.run, daemon=True, name="fh_utils-watcher")
        thread.start()
        # A save made from now on is seen (the app is imported next: no edit falls between).
        self._watcher.ready.wait(WATCHER_READY_TIMEOUT)

    def _arrived(self, paths: set[Path]) -> None:
        self._changes.update(paths)
        self._changed.set()
        if not self.switch.starting:
            return  # only a lifespan startup still pending needs to know (and is cancelled)
        try:
            if self.reloader.relevant(paths):
                self._newer.set()
        except Exception:
            logger.debug("Could not tell whether %s matter", paths, exc_info=True)

    async def _apply_changes(self) -> None:
        """Apply changes as they arrive; an exception in one reload never stops the next."""
        while not self.retiring:
            await self._changed.wait()
            if self.retiring:
                return
            self._changed.clear()
            self._newer.clear()
            paths, self._changes = self._changes, set()
            try:
                await self.apply(paths)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Reload failed unexpectedly (this is a bug in fh_utils)")

    def _filter(self, change: watchfiles.Change, path: str) -> bool:
        return self.watch(change, path) and self.reloader.graph.is_project_file(path)

    # -- reloading ---------------------------------------------------------------------------
    async def apply(self, paths: set[Path]) -> Outcome | None:
        """Reload for these changed files and make the result live (or report why not)."""
        started = time.perf_counter()
        paths = await self._atomic_saves(paths)
        static = sorted(p for p in paths if p.suffix.lower() in STATIC_SUFFIXES)
        plan = self.reloader.plan(paths)
        if plan is None:
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
        if ran:
            async with self.switch.paused():
                outcome, restart = await self._reload(plan)
            if restart is not None:  # the old worker serves until the new one is ready
                outcome = await self._hand_over(restart, outcome)
        if self.options.clear:
            sys.stderr.write(CLEAR_SCREEN)
            sys.stderr.flush()
        for note in outcome.notes:
            logger.warning(note)
        if outcome.failure is not None:
            failure = outcome.failure
            if failure.kind.startswith("Lifespan"):
                logger.error("Lifespan startup failed, the previous app keeps serving: %s",
                             with_traceback(failure, summary=failure.message))
            else:
                logger.error("Reload failed: %s", with_traceback(failure))
            await self._notify(lambda listener: listener.failed(failure))
        elif ran:
            log_reloaded(outcome, started)
            if not self.retiring:
                await self._notify(lambda listener: listener.reloaded(outcome))
        patch = self.reloader.last_patch
        if patch is not None and patch.skipped:
            logger.warning("Could not update in place: %s",
                           "; ".join(dict.fromkeys(patch.skipped)))
            patch.skipped.clear()
        if static and not self.retiring:
            await self._notify(lambda listener: listener.static_changed(static))
        return outcome

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

    async def _reload(self, plan: Plan) -> tuple[Outcome, _Restart | None]:
        """Run the plan at the lowest tier that serves what a cold start would.

        In place first. If that cannot be faithful (a live thread, a class change it cannot
        carry) or fails where a fresh process might not, the project is re-imported; if even
        that cannot do it, a new worker process takes over (returned as a `_Restart`). A failure
        a fresh process hits too is reported as it is: the last good version keeps serving.
        """
        with _held_warnings() as held:  # shown only if this tier is the one that serves
            async with self.switch.threads_held():
                batch = self.reloader.run(plan)
        if batch.escalation is not None and not self.options.escalate:
            batch.outcome.notes.append(f"{batch.escalation.cause}: in place cannot apply this "
                                       "faithfully; restart fh_utils dev (escalation is off)")
            batch.escalation = None
        failure = await self._finish(batch)
        outcome = batch.outcome
        if batch.escalation is None and (
            failure is None or not self.options.escalate or failure.kind in GENUINE
        ):
            held.show()
            return outcome, None
        candidate: _Candidate | None = None
        if failure is not None:  # a fresh process is the judge: does the tree load there?
            candidate, cold = await self._candidate()
            if candidate is None:
                outcome.failure = cold or failure
                return outcome, None
            tier, cause = "re-import", _short(failure.message or failure.kind)
        else:
            assert batch.escalation is not None
            tier, cause = batch.escalation.tier, batch.escalation.cause
        if tier == "re-import":
            with _held_warnings() as held:
                async with self.switch.threads_held():
                    batch = self.reloader.reimport(plan, cause)
            again = await self._finish(batch)
            if again is None and batch.escalation is None:
                held.show()
                if candidate is not None:
                    await candidate.dismiss()
                return batch.outcome, None
            if batch.escalation is not None:
                cause = f"{cause}; then {batch.escalation.cause}"
        outcome.failure = None
        return outcome, _Restart(candidate, cause)

    async def _finish(self, batch: Batch) -> Failure | None:
        """Serve a successful batch and commit it; otherwise roll it back. Returns the failure
        (None also when the batch needs a higher tier: `batch.escalation`)."""
        if batch.escalation is not None or batch.outcome.failure is not None or batch.app is None:
            batch.rollback()
            return batch.outcome.failure
        try:
            generation = await self.switch.start(self._adapt(batch.app), self._newer)
        except LifespanFailed as exc:
            batch.rollback()
            batch.outcome.failure = lifespan_failure(exc)
            return batch.outcome.failure
        except BaseException:
            batch.rollback()
            raise
        sockets, streams = await self.switch.commit(generation)
        batch.commit()
        if sockets or streams:
            logger.info("Closed %s of the previous app so they reconnect to the new code",
                        _connections(sockets, streams))
        for name in batch.outcome.released:
            logger.info("%s() is gone: its cached values were released", name)
        return None

    async def _candidate(self) -> tuple[_Candidate | None, Failure | None]:
        """A new worker that loaded the project and started the app, waiting to serve; or
        (None, the failure a fresh process hit)."""
        if self.zygote is None:
            return None, None
        try:
            sock = self.zygote.fork((self.options, "candidate"))
        except OSError:
            logger.warning("The zygote process is gone: a restart needs `fh_utils dev` again")
            self.zygote = None
            return None, None
        candidate = _Candidate(Channel(sock))
        failure = await candidate.imported(CANDIDATE_TIMEOUT + 2 * self.options.timeout_lifespan)
        if failure is not None:
            await candidate.dismiss()
            return None, failure
        return candidate, None

    async def _hand_over(self, restart: _Restart, outcome: Outcome) -> Outcome:
        """The third tier: a new worker process serves from now on; this one steps down."""
        # From now on responses close their connection, so that clients come back on a new
        # one, which the new worker will take once it serves.
        connected = self._clients()
        self.switch.begin_hand_over()
        candidate = restart.candidate
        if candidate is None:
            candidate, failure = await self._candidate()
            if candidate is None:
                self.switch.cancel_hand_over()
                outcome.failure = failure or Failure(
                    None, None, "RestartNeeded",
                    f"{restart.cause}: only a new process can apply this, and none can be "
                    "started here; restart fh_utils dev", "")
                return outcome
        await self._settle(connected)
        changes, self._changes = self._changes, set()  # saved meanwhile: the new worker's
        await candidate.go(changes)
        if not await candidate.ready(CANDIDATE_TIMEOUT):
            self.switch.cancel_hand_over()
            self._changes |= changes
            outcome.failure = Failure(None, None, "RestartFailed",
                                      "the new worker stopped before it served", "")
            return outcome
        outcome.tier, outcome.cause = "restart", restart.cause
        self._retire(stale=connected - self.switch.recent_clients)
        return outcome

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
        """The peers of the connections uvicorn has open now."""
        state = getattr(self.server, "server_state", None)
        return {getattr(c, "client", None) for c in getattr(state, "connections", ())}

    def _retire(self, stale: set[Any]) -> None:
        """A newer worker serves: stop accepting at once, close the keep-alive connections no
        one used since the hand-over began (a browser reusing one would get the old code),
        let the others finish their request, then shut down (uvicorn's graceful shutdown)."""
        self.retiring = True
        self._stop_watching()
        self._changed.set()  # lets the applier loop end
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # no shutdown chatter
        if self.zygote is not None:
            try:
                self.zygote.retiring()
            except OSError:
                pass
        server = self.server
        if server is None:
            return
        for listener in getattr(server, "servers", ()):
            listener.close()
        for connection in list(server.server_state.connections):
            if getattr(connection, "client", None) in stale:
                connection.shutdown()
        self._spawn(self._step_down())

    async def _step_down(self) -> None:
        """Shut down once the connections that may still carry a request are done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP_DOWN_GRACE
        while self.server.server_state.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self.server.should_exit = True

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
        wrapped = adapt_interface(app, self._interface)
        self._adapted = (app, wrapped)
        return wrapped


@dataclass
class _Restart:
    """The third tier is needed; `candidate` is a new worker already loaded, if one is."""

    candidate: _Candidate | None
    cause: str


class _Candidate:
    """A new worker process, seen from the worker that asked for it."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def imported(self, timeout: float) -> Failure | None:
        """None once it loaded the project and started the app; else what went wrong."""
        try:
            async with asyncio.timeout(timeout):
                message = await self.channel.recv()
        except TimeoutError:
            return Failure(None, None, "RestartFailed",
                           f"the new worker did not load the app within {timeout:g} s", "")
        if message is None:
            return Failure(None, None, "RestartFailed",
                           "the new worker exited before it loaded the app", "")
        if message[0] == "failed":
            return message[1] or Failure(None, None, "RestartFailed", "unknown failure", "")
        return None

    async def go(self, changes: set[Path]) -> None:
        await self.channel.send(("go", sorted(changes)))

    async def ready(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                message = await self.channel.recv()
        except TimeoutError:
            message = None
        self.channel.close()
        return bool(message) and message[0] == "ready"

    async def dismiss(self) -> None:
        try:
            await self.channel.send(("exit",))
        except OSError:
            pass
        self.channel.close()


class _HeldWarnings(list[tuple[Any, ...]]):
    def show(self) -> None:
        for args in self:
            warnings.showwarning(*args)
        self.clear()


@contextlib.contextmanager
def _held_warnings() -> Iterator[_HeldWarnings]:
    """Keep the warnings shown in this block (a tier that may be discarded) for `show()`."""
    held = _HeldWarnings()
    original = warnings.showwarning

    def hold(*args: Any) -> None:
        held.append(args)

    setattr(warnings, "showwarning", hold)  # noqa: B010
    try:
        yield held
    finally:
        setattr(warnings, "showwarning", original)  # noqa: B010


def _short(message: str) -> str:
    """The first sentence of an error message, for a log line."""
    first = message.strip().splitlines()[0] if message.strip() else message
    first = first.split(". ")[0].rstrip(".")
    return first if len(first) <= 120 else first[:117] + "..."


def _connections(sockets: int, streams: int) -> str:
    parts = []
    if sockets:
        parts.append(f"{sockets} WebSocket{'s' if sockets != 1 else ''}")
    if streams:
        parts.append(f"{streams} stream{'s' if streams != 1 else ''}")
    total = sockets + streams
    return f"{total} connection{'s' if total != 1 else ''} ({', '.join(parts)})"


def uvicorn_log_config(level: str | None) -> dict[str, Any]:
    """uvicorn's logging config, with the `fh_utils` logger printed the same way."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["fh_utils"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config["loggers"]["watchfiles"] = {"level": "WARNING"}
    if level:
        config["loggers"]["fh_utils"]["level"] = level.upper()
    return config


def log_reloaded(outcome: Outcome, started: float) -> None:
    """The line a reload that served logs (and, at debug level, what re-ran)."""
    if not outcome.changed and not outcome.reran:
        return  # only os.environ changed, and the note said so
    dependents = outcome.dependents
    how = "" if outcome.tier == "in place" else (
        f" by re-importing the project ({outcome.cause})" if outcome.tier == "re-import"
        else f" by restarting the worker ({outcome.cause}; pinned values were not kept)")
    logger.info(
        "Reloaded %s%s%s in %d ms",
        ", ".join(outcome.changed),
        f" (+{dependents} dependent{'s' if dependents != 1 else ''})"
        if dependents and outcome.tier == "in place" else "",
        how,
        (time.perf_counter() - started) * 1000,
    )
    logger.debug("Re-executed, in order: %s (their own code: %.1f ms)",
                 ", ".join(outcome.reran), outcome.module_seconds * 1000)


def with_traceback(failure: Failure, summary: str | None = None) -> str:
    """The summary line, then the traceback when there is one."""
    summary = failure.summary if summary is None else summary
    return f"{summary}\n{failure.traceback}" if failure.traceback else summary


def lifespan_failure(exc: LifespanFailed) -> Failure:
    """A lifespan startup that failed (Starlette sends the traceback as the message: its last
    line is the error) or did not finish (`LifespanTimeout`: never a reason to escalate)."""
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    message, traceback = (lines[-1], text) if text.startswith("Traceback") and lines else (
        text, "")
    kind = "LifespanTimeout" if exc.timed_out else "LifespanFailed"
    return Failure(None, None, kind, message, traceback)


def adapt_interface(app: Any, interface: str) -> Any:
    """Wrap an ASGI 2 or WSGI app so the switch can call it as ASGI 3 (uvicorn's rules)."""
    if interface == "auto":
        if inspect.isclass(app):
            interface = "asgi3" if hasattr(app, "__await__") else "asgi2"
        elif inspect.isfunction(app):
            interface = "asgi3" if inspect.iscoroutinefunction(app) else "asgi2"
        else:
            call = getattr(app, "__call__", None)  # noqa: B004
            interface = "asgi3" if inspect.iscoroutinefunction(call) else "asgi2"
    if interface == "asgi2":
        return ASGI2Middleware(app)
    if interface == "wsgi":
        return _WSGIMiddleware(app)
    return app
