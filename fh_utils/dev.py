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

from fh_utils.errors import Failure
from fh_utils.live import LiveHub, LiveReloadMiddleware
from fh_utils.reload import Outcome, Reloader
from fh_utils.server import LifespanFailed, StartupAbort, Switch
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
                                 env_file=options.uvicorn.get("env_file"))
        settings = dict(options.uvicorn)
        # These two describe the user's app; the switch uvicorn serves is always ASGI 3.
        self._interface = settings.pop("interface", "auto")
        self.switch = Switch(self._startup, self._shutdown, settings.pop("lifespan", "auto"))
        self.uvicorn_settings = settings
        self._adapted: tuple[Any, Any] | None = None
        self._stop = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self.listeners: list[DevListener] = []
        self.asgi: Any = self.switch  # what uvicorn serves; middleware may wrap it
        self.live: LiveHub | None = None
        if options.live:
            self.live = LiveHub()
            self.listeners.append(self.live)
            self.asgi = LiveReloadMiddleware(self.switch, self.live)

    async def _startup(self) -> None:
        if self.options.reload == "fast":
            dirs = [str(d) for d in self.watch.dirs]
            logger.info("Will watch for changes in these directories: %s", dirs)
        started = time.perf_counter()
        outcome = self.reloader.start()
        for note in outcome.notes:
            logger.warning(note)
        if outcome.failure is not None and self._is_mistake(outcome.failure):
            raise StartupAbort(f"{outcome.failure.summary}: check PATH and --app")
        if outcome.failure is not None:
            self.switch.fail(outcome.failure)
            failure = outcome.failure
            await self._notify(lambda listener: listener.failed(failure))
            logger.error(
                "Could not load %s: %s\nServing an error page until a fix is saved.",
                self.options.target.label, _with_traceback(outcome.failure),
            )
        elif await self._swap(outcome):
            logger.info(
                "Loaded %s in %d ms", self.options.target.label,
                (time.perf_counter() - started) * 1000,
            )
        if self.options.reload == "fast":
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def _is_mistake(self, failure: Failure) -> bool:
        """The command line names an app that is not there (not a crash in the app's code)."""
        module = self.options.target.module
        missing = {f"No module named '{module[: i]}'"
                   for i in [len(module), *(i for i, c in enumerate(module) if c == ".")]}
        return failure.kind == "AppNotFound" or (
            failure.kind == "ModuleNotFoundError" and failure.message in missing
        )

    async def _shutdown(self) -> None:
        self._stop.set()
        if self.live is not None:
            await self.live.close()
        if self._watcher is not None:
            await self._watcher
        await self.switch.close()
        self.reloader.stop()

    async def _watch(self) -> None:
        async for changes in watchfiles.awatch(
            *self.watch.dirs,
            watch_filter=self._filter,
            step=WATCH_STEP_MS,
            stop_event=self._stop,
            rust_timeout=500,
        ):
            await self.apply({Path(path) for _, path in changes})

    def _filter(self, change: watchfiles.Change, path: str) -> bool:
        return self.watch(change, path) and self.reloader.graph.is_project_file(Path(path))

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
                outcome = self.reloader.run(plan)
                if outcome.app is not None and not await self._swap(outcome):
                    return outcome
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
            dependents = outcome.dependents
            logger.info(
                "Reloaded %s%s in %d ms",
                ", ".join(outcome.changed),
                f" (+{dependents} dependent{'s' if dependents != 1 else ''})" if dependents else "",
                (time.perf_counter() - started) * 1000,
            )
            logger.debug("Re-executed, in order: %s", ", ".join(outcome.reran))
            await self._notify(lambda listener: listener.reloaded(outcome))
        patch = self.reloader.last_patch
        if patch is not None and patch.skipped:
            logger.warning("Could not update in place: %s",
                           "; ".join(dict.fromkeys(patch.skipped)))
            patch.skipped.clear()
        if static:
            await self._notify(lambda listener: listener.static_changed(static))
        return outcome

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

    async def _swap(self, outcome: Outcome) -> bool:
        assert outcome.app is not None
        try:
            await self.switch.swap(self._adapt(outcome.app))
        except LifespanFailed as exc:
            failure = Failure(None, None, "Lifespan startup failed", str(exc), "")
            if self.switch.current is None:
                self.switch.fail(failure)
                logger.error("Lifespan startup failed: %s", exc)
            else:
                logger.error("Lifespan startup failed, the previous app keeps serving: %s", exc)
            await self._notify(lambda listener: listener.failed(failure))
            return False
        return True


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
