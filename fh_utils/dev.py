"""`fh_utils dev`: one uvicorn server for the whole session, reloading in place on each save."""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import uvicorn
import watchfiles
from uvicorn.middleware.asgi2 import ASGI2Middleware
from uvicorn.middleware.wsgi import WSGIMiddleware

from fh_utils import effects
from fh_utils.errors import Failure
from fh_utils.live import LiveHub, LiveReloadMiddleware
from fh_utils.reload import Batch, Outcome, Plan, Reloader
from fh_utils.server import LifespanFailed, StartupAbort, Switch, Timeouts
from fh_utils.target import AppTarget
from fh_utils.watch import WatchSpec

__all__ = ["DevListener", "DevOptions", "DevSession", "run_dev", "uvicorn_log_config"]

logger = logging.getLogger("fh_utils")

CLEAR_SCREEN = "\x1b[2J\x1b[3J\x1b[H"

# watchfiles reports a change once nothing more happened for `step` ms; its default (50 ms)
# alone would exceed our whole budget. Bursts still coalesce: anything arriving while a
# reload runs is reported next, and each reload reads the files as they are then.
WATCH_STEP_MS = 3

# Files the browser loads: a change needs no Python reload, only the page told.
STATIC_SUFFIXES = frozenset(
    {".css", ".js", ".mjs", ".map", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".webp",
     ".avif", ".woff", ".woff2", ".ttf", ".otf"}
)


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
    clear: bool = False
    escalate: bool = True  # re-import or restart when in place cannot be faithful
    keep_connections: bool = False  # leave a retired app's WebSockets and streams open
    timeout_lifespan: float = 30.0
    reload_dirs: Sequence[str] = ()
    reload_includes: Sequence[str] = ()
    reload_excludes: Sequence[str] = ()
    reload_delay: float = 0.25
    uvicorn: dict[str, Any] = field(default_factory=dict)  # further uvicorn.Config arguments

    def watch_spec(self) -> WatchSpec:
        return WatchSpec(self.target.app_dir, self.reload_includes, self.reload_excludes,
                         reload_dirs=self.reload_dirs)


class DevSession:
    """Owns the reloader, the switch uvicorn serves, and the watcher task."""

    def __init__(self, options: DevOptions) -> None:
        self.options = options
        self.watch = options.watch_spec()
        self.reloader = Reloader(options.target, self.watch.dirs, self.watch.exclude_dirs,
                                 ignore=self.watch.ignores,
                                 env_file=options.uvicorn.get("env_file"),
                                 escalate=options.escalate)
        settings = dict(options.uvicorn)
        # These two describe the user's app; the switch uvicorn serves is always ASGI 3.
        self._interface = settings.pop("interface", "auto")
        self.switch = Switch(self._startup, self._shutdown, settings.pop("lifespan", "auto"),
                             Timeouts(lifespan=options.timeout_lifespan),
                             keep_connections=options.keep_connections)
        self.uvicorn_settings = settings
        self._adapted: tuple[Any, Any] | None = None
        self._stop = asyncio.Event()
        self._changes: set[Path] = set()
        self._changed = asyncio.Event()  # set when changes arrive; cancels a pending startup
        self._tasks: list[asyncio.Task[None]] = []
        self.listeners: list[DevListener] = []
        self.asgi: Any = self.switch  # what uvicorn serves; middleware may wrap it
        self.live: LiveHub | None = None
        if options.live:
            self.live = LiveHub()
            self.listeners.append(self.live)
            self.asgi = LiveReloadMiddleware(self.switch, self.live)

    # -- start and stop ----------------------------------------------------------------------
    async def _startup(self) -> None:
        effects.install_task_factory(asyncio.get_running_loop())
        if self.options.reload == "fast":
            dirs = [str(d) for d in self.watch.dirs]
            logger.info("Will watch for changes in these directories: %s", dirs)
            self._spawn(self._watch())
        started = time.perf_counter()
        outcome = self.reloader.start()
        for note in outcome.notes:
            logger.warning(note)
        if outcome.failure is not None and self._is_mistake(outcome.failure):
            raise StartupAbort(f"{outcome.failure.summary}: check PATH and --app")
        if outcome.failure is not None:
            await self._show_load_failure(outcome.failure)
        elif await self._serve_first(outcome):
            logger.info(
                "Loaded %s in %d ms", self.options.target.label,
                (time.perf_counter() - started) * 1000,
            )
        if self.options.reload == "fast":
            self._spawn(self._apply_changes())

    async def _serve_first(self, outcome: Outcome) -> bool:
        assert outcome.app is not None
        try:
            generation = await self.switch.start(self._adapt(outcome.app), self._changed)
        except LifespanFailed as exc:
            await self._show_load_failure(Failure(None, None, "LifespanFailed", str(exc), ""))
            return False
        await self.switch.commit(generation)
        return True

    async def _show_load_failure(self, failure: Failure) -> None:
        self.switch.fail(failure)
        await self._notify(lambda listener: listener.failed(failure))
        logger.error(
            "Could not load %s: %s\nServing an error page until a fix is saved.",
            self.options.target.label, _with_traceback(failure),
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
        self._stop.set()
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

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    async def _stop_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # -- watching ----------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Collect changes from watchfiles; a failure of the watcher is logged and it restarts."""
        while not self._stop.is_set():
            try:
                async for changes in watchfiles.awatch(
                    *self.watch.dirs,
                    watch_filter=self._filter,
                    step=WATCH_STEP_MS,
                    stop_event=self._stop,
                    rust_timeout=500,
                ):
                    self._changes.update(Path(path) for _, path in changes)
                    self._changed.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("The file watcher failed; restarting it")
                await asyncio.sleep(0.5)

    async def _apply_changes(self) -> None:
        """Apply changes as they arrive; an exception in one reload never stops the next."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            paths, self._changes = self._changes, set()
            try:
                await self.apply(paths)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Reload failed unexpectedly (this is a bug in fh_utils)")

    def _filter(self, change: watchfiles.Change, path: str) -> bool:
        return self.watch(change, path) and self.reloader.graph.is_project_file(Path(path))

    # -- reloading ---------------------------------------------------------------------------
    async def apply(self, paths: set[Path]) -> Outcome | None:
        """Reload for these changed files and make the result live (or report why not)."""
        started = time.perf_counter()
        static = sorted(p for p in paths if p.suffix.lower() in STATIC_SUFFIXES)
        plan = self.reloader.plan(paths)
        if plan is None:
            if static:
                await self._notify(lambda listener: listener.static_changed(static))
            return None
        outcome = plan.outcome
        if plan.runnable:
            async with self.switch.paused():
                outcome = await self._reload(plan)
        if self.options.clear:
            sys.stderr.write(CLEAR_SCREEN)
            sys.stderr.flush()
        for note in outcome.notes:
            logger.warning(note)
        if outcome.failure is not None:
            logger.error("Reload failed: %s", _with_traceback(outcome.failure))
            failure = outcome.failure
            await self._notify(lambda listener: listener.failed(failure))
        elif plan.runnable:
            self._log_reloaded(outcome, started)
            await self._notify(lambda listener: listener.reloaded(outcome))
        patch = self.reloader.last_patch
        if patch is not None and patch.skipped:
            logger.warning("Could not update in place: %s",
                           "; ".join(dict.fromkeys(patch.skipped)))
            patch.skipped.clear()
        if static:
            await self._notify(lambda listener: listener.static_changed(static))
        return outcome

    async def _reload(self, plan: Plan) -> Outcome:
        """Run the plan at the lowest tier that is faithful, then serve what it gave."""
        batch = self.reloader.run(plan)
        if batch.escalation is not None:
            batch = self._escalate(batch, plan)
        if batch.outcome.failure is not None or batch.app is None:
            batch.rollback()
            return batch.outcome
        try:
            closed = await self._serve(batch)
        except BaseException:
            batch.rollback()
            raise
        if closed is None:
            return batch.outcome
        batch.commit()
        sockets, streams = closed
        if sockets or streams:
            logger.info("Closed %s of the previous app so they reconnect to the new code",
                        _connections(sockets, streams))
        for name in batch.outcome.released:
            logger.info("%s() is gone: its cached values were released", name)
        return batch.outcome

    def _escalate(self, batch: Batch, plan: Plan) -> Batch:
        """In place cannot be faithful: re-import the project (or say what a restart needs)."""
        escalation = batch.escalation
        assert escalation is not None
        if not self.options.escalate:
            batch.outcome.notes.append(f"{escalation.cause}: in place cannot apply this "
                                       "faithfully; restart fh_utils dev (escalation is off)")
            batch.escalation = None
            return batch
        batch.rollback()
        if escalation.tier == "re-import":
            batch = self.reloader.reimport(plan, escalation.cause)
            if batch.escalation is None:
                return batch
            escalation = batch.escalation
        batch.outcome.failure = Failure(
            None, None, "RestartNeeded",
            f"{escalation.cause}: only a new process can apply this; restart fh_utils dev", "")
        return batch

    async def _serve(self, batch: Batch) -> tuple[int, int] | None:
        """Start the batch's app if it is a new one and make it current; None if it could not
        start (the batch is rolled back, the failure is in its outcome)."""
        assert batch.app is not None
        try:
            generation = await self.switch.start(self._adapt(batch.app), self._changed)
        except LifespanFailed as exc:
            batch.rollback()
            batch.outcome.failure = Failure(None, None, "LifespanFailed", str(exc), "")
            logger.error("Lifespan startup failed, the previous app keeps serving: %s", exc)
            return None
        return await self.switch.commit(generation)

    def _log_reloaded(self, outcome: Outcome, started: float) -> None:
        dependents = outcome.dependents
        how = "" if outcome.tier == "in place" else (
            f" by re-importing the project ({outcome.cause})" if outcome.tier == "re-import"
            else f" by restarting the worker ({outcome.cause})")
        logger.info(
            "Reloaded %s%s%s in %d ms",
            ", ".join(outcome.changed),
            f" (+{dependents} dependent{'s' if dependents != 1 else ''})"
            if dependents and outcome.tier == "in place" else "",
            how,
            (time.perf_counter() - started) * 1000,
        )
        logger.debug("Re-executed, in order: %s", ", ".join(outcome.reran))

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


def _with_traceback(failure: Failure) -> str:
    """The summary line, then the traceback when there is one."""
    return f"{failure.summary}\n{failure.traceback}" if failure.traceback else failure.summary


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
        return WSGIMiddleware(app)
    return app


def run_dev(options: DevOptions) -> None:
    """Serve the app until Ctrl+C: reloading in place (`fast`), restarting (`full`) or not."""
    settings = dict(options.uvicorn)
    log_config = settings.pop("log_config", None) or uvicorn_log_config(options.log_level)
    common = dict(host=options.host, port=options.port, log_level=options.log_level,
                  log_config=log_config)
    if options.reload == "full":
        watch = options.watch_spec()
        os.environ[_CHILD_OPTIONS] = json.dumps(_to_json(options))
        for key in ("interface", "lifespan"):
            settings.pop(key, None)
        uvicorn.run(
            f"{__name__}:{_full_reload_child.__name__}", factory=True, lifespan="on",
            reload=True, reload_dirs=[str(d) for d in watch.dirs],
            reload_includes=list(options.reload_includes) or None,
            reload_excludes=list(options.reload_excludes) or None,
            reload_delay=options.reload_delay, **common, **settings,
        )
        return
    session = DevSession(options)
    config = uvicorn.Config(session.asgi, lifespan="on", interface="asgi3", **common,
                            **session.uvicorn_settings)
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:  # uvicorn re-raises the signal it handled, once it has stopped
        pass


_CHILD_OPTIONS = "FH_UTILS_DEV_CHILD_OPTIONS"


def _to_json(options: DevOptions) -> dict[str, Any]:
    t = options.target
    return {"target": [t.module, t.attr, t.factory, str(t.app_dir)], "live": options.live,
            "uvicorn": {k: options.uvicorn.get(k, "auto") for k in ("interface", "lifespan")}}


def _full_reload_child() -> Any:
    """`--reload full`: uvicorn's reloader restarts this process on change; each process
    serves the app through a session that does not watch (uvicorn's supervisor does)."""
    data = json.loads(os.environ[_CHILD_OPTIONS])
    module, attr, factory, app_dir = data["target"]
    options = DevOptions(
        target=AppTarget(module, attr, factory, Path(app_dir)),
        reload="no", live=data["live"], uvicorn=data["uvicorn"],
    )
    return DevSession(options).asgi
