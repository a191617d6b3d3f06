"""The processes of `fh_utils dev`: the first server, the zygote, and the workers it forks.

`run_dev` binds the listening socket itself, starts the zygote (`fh_utils.serve.zygote`) with it,
and serves the app in this process. When a reload needs a new process, a worker forked from
the zygote takes over the same socket (`worker_main`) and this process steps down: it then
replaces itself (`exec`) with a small supervisor that only waits for Ctrl+C, so nothing of the
old app stays in memory. `--reload full` is uvicorn's own reloader; `--reload no` and
`--no-escalate` serve in this process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import uvicorn

from fh_utils.adapters import uvicorn as uvicorn_adapter
from fh_utils.adapters.uvicorn import HANDLED_SIGNALS
from fh_utils.reload import effects
from fh_utils.serve import zygote
from fh_utils.serve.channel import Channel
from fh_utils.serve.session import DevOptions, DevSession
from fh_utils.target import AppTarget
from fh_utils.timing import STEP_DOWN_GRACE

__all__ = ["DevServer", "run_dev", "uvicorn_log_config", "worker_main"]

logger = logging.getLogger("fh_utils")


class DevServer(uvicorn.Server):
    """uvicorn's server, with the session told when it serves and before it shuts down.

    Signals: uvicorn installs its handler before the app is imported, so an app that replaces
    it (FastHTML's `signal_shutdown()` patches `Server.handle_exit`; others call
    `signal.signal`) would never be heard, or uvicorn would not. Here the handler looks
    `handle_exit` up when the signal arrives, and also calls the handlers the app installed
    with `signal.signal` since, except a debugger's: Ctrl+C stops the server, also after you
    continued from a `breakpoint()`. A second Ctrl+C exits at once.
    """

    def __init__(self, config: uvicorn.Config, session: DevSession) -> None:
        super().__init__(config)
        self.session = session
        session.server = self
        self._chains: dict[int, effects.SignalChain] = {}
        self._stepping_down: asyncio.Task[None] | None = None

    def clients(self) -> set[Any]:
        """The peers of the connections uvicorn has open now."""
        return {getattr(c, "client", None) for c in uvicorn_adapter.connections(self)}

    def step_down(self, stale: set[Any]) -> None:
        """A newer worker serves: stop accepting, close the keep-alive connections of `stale`
        peers, let the others finish their request, then shut down (uvicorn's graceful
        shutdown)."""
        for listener in uvicorn_adapter.listeners(self):
            listener.close()
        for connection in list(uvicorn_adapter.connections(self)):
            if getattr(connection, "client", None) in stale:
                connection.shutdown()
        self._stepping_down = asyncio.get_running_loop().create_task(self._step_down())

    async def _step_down(self) -> None:
        """Shut down once the connections that may still carry a request are done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP_DOWN_GRACE
        while uvicorn_adapter.connections(self) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            await self.session.serving()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await self.session.before_shutdown()
        except Exception:
            logger.exception("Closing connections before shutdown failed")
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        chains: dict[int, effects.SignalChain] = {
            sig: effects.SignalChain(sig, self._on_signal) for sig in HANDLED_SIGNALS}
        self._chains = chains
        try:
            yield
        finally:
            for chain in chains.values():
                chain.close()
        for captured in reversed(uvicorn_adapter.captured_signals(self)):
            signal.raise_signal(captured)

    @property
    def interrupted(self) -> bool:
        """Whether a signal asked this server to stop (not a newer worker taking over)."""
        return bool(uvicorn_adapter.captured_signals(self))

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        chain = self._chains.get(sig)
        if chain is not None:
            # pdb adds its own Ctrl+C handler when you continue (`c`) from a breakpoint: it
            # would stop in the server's loop and wait for input instead of letting it stop.
            chain.handlers[:] = [h for h in chain.handlers if not _debugger_handler(h)]
        if sig == signal.SIGINT and signal.SIGINT in uvicorn_adapter.captured_signals(self):
            os._exit(130)  # a second Ctrl+C: no more waiting
        if self.session.retiring and self.should_exit:
            # Stepping down already (a newer worker serves): finish that calmly, then end
            # the session instead of becoming its supervisor.
            uvicorn_adapter.captured_signals(self).append(sig)
            return
        type(self).handle_exit(self, sig, frame)  # the current one, patched or not


def _debugger_handler(handler: object) -> bool:
    """A signal handler that belongs to a debugger (pdb's `sigint_handler`)."""
    bdb = sys.modules.get("bdb")
    return bdb is not None and isinstance(getattr(handler, "__self__", None), bdb.Bdb)


def uvicorn_log_config(level: str | None, log_format: str = "text") -> dict[str, Any]:
    """uvicorn's logging config, with the `fh_utils` logger printed the same way. With
    `log_format` "json", stdout is for the reload events alone: the access log goes to
    stderr, with the rest of the log."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    if log_format == "json":
        config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    config["loggers"]["fh_utils"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config["loggers"]["watchfiles"] = {"level": "WARNING"}
    if level:
        config["loggers"]["fh_utils"]["level"] = level.upper()
    trace = os.environ.get("FH_UTILS_DEBUG_LOG")
    if trace:  # every line fh_utils logs, debug ones too, in this file (for a bug report)
        config["handlers"]["default"]["level"] = config["loggers"]["fh_utils"]["level"]
        config["formatters"]["debug"] = {
            "format": "%(asctime)s pid %(process)d %(threadName)s %(levelname)s %(message)s"}
        config["handlers"]["debug_file"] = {"class": "logging.FileHandler", "filename": trace,
                                            "formatter": "debug", "level": "DEBUG"}
        config["loggers"]["fh_utils"]["handlers"].append("debug_file")
        config["loggers"]["fh_utils"]["level"] = "DEBUG"
    return config


STARTUP_FAILURE = 3  # uvicorn's exit code when the app's startup fails


def run_dev(options: DevOptions) -> None:
    """Serve the app until Ctrl+C: reloading in place (`fast`), restarting (`full`) or not."""
    settings = dict(options.uvicorn)
    log_config = (settings.pop("log_config", None)
                  or uvicorn_log_config(options.log_level, options.log_format))
    common: dict[str, Any] = dict(host=options.host, port=options.port,
                                  log_level=options.log_level, log_config=log_config)
    if options.reload == "full":
        _run_full(options, settings, common)
        return
    session = DevSession(options)
    config = uvicorn.Config(session.asgi, lifespan="on", interface="asgi3", **common,
                            **session.uvicorn_settings)
    sockets: list[socket.socket] | None = None
    if options.reload == "fast" and options.escalate and zygote.available():
        listener = config.bind_socket()
        listener.listen(config.backlog)  # connections queue from now on, whoever serves
        sockets = [listener]
        try:
            session.zygote = zygote.start(
                listener, spawn=options.project_loaded or zygote.spawned(),
                log_config=log_config if isinstance(log_config, dict) else None,
                worker=worker_main)
        except OSError as exc:
            logger.warning("Could not start the zygote process (%s): reloads that need a new "
                           "process will ask for a restart", exc)
    server = DevServer(config, session)
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:  # uvicorn re-raises the signal it handled, once it has stopped
        pass
    finally:
        if session.retiring and session.zygote is not None and not server.interrupted:
            session.reloader.exit()  # the exec below skips the app's exit steps
            _become_supervisor(session.zygote)
        if session.zygote is not None:
            session.zygote.stop()
    if not server.started and not server.interrupted:
        # uvicorn 0.50 exits with this code itself when the startup fails; older releases
        # return from Server.run and leave it to uvicorn.run, which this does not use.
        sys.exit(STARTUP_FAILURE)


def worker_main(start: Any, link: socket.socket | None, zygote_sock: socket.socket,
                listener: socket.socket) -> int:
    """A worker forked by the zygote: load the app, and serve it once told to (or at once,
    replacing a worker that died). Returns the exit code."""
    options, _role = start
    assert isinstance(options, DevOptions)
    log_config = uvicorn_log_config(options.log_level, options.log_format)
    log_config["loggers"]["uvicorn.error"]["level"] = "WARNING"  # one server, one start-up log
    settings = dict(options.uvicorn)
    settings.pop("log_config", None)
    session = DevSession(options, zygote=zygote.Zygote(zygote_sock),
                         link=Channel(link) if link is not None else None)
    config = uvicorn.Config(session.asgi, lifespan="on", interface="asgi3", host=options.host,
                            port=options.port, log_level=options.log_level,
                            log_config=log_config, **session.uvicorn_settings)
    server = DevServer(config, session)

    async def main() -> None:
        _exit_with(zygote_sock, server)
        if session.link is not None and not await session.prepare():
            return
        await server.serve(sockets=[listener])

    try:
        with asyncio.Runner(loop_factory=uvicorn_adapter.loop_factory(config)) as runner:
            runner.run(main())
    except KeyboardInterrupt:
        pass
    if session.retiring:  # replaced: its clean-ups run now (the zygote ends it with _exit)
        session.reloader.exit()
    return 0


def _exit_with(sock: socket.socket, server: uvicorn.Server) -> None:
    """Stop serving when the zygote goes away (the session ended, however abruptly)."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(sock.fileno())
            server.should_exit = True

    loop.add_reader(sock.fileno(), readable)


def _become_supervisor(handle: zygote.Zygote) -> NoReturn:
    """This process stepped down: become a small process that waits for Ctrl+C (and keeps the
    terminal's job alive), with none of the old app in memory."""
    sys.stdout.flush()
    sys.stderr.flush()
    # A Ctrl+C during the exec stays pending until the supervisor's handler is in place.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    handle.sock.set_inheritable(True)
    spec = {"supervise": handle.sock.fileno(), "pid": handle.pid}
    os.execv(sys.executable, [sys.executable, "-m", "fh_utils.serve.zygote", json.dumps(spec)])


_CHILD_OPTIONS = "FH_UTILS_DEV_CHILD_OPTIONS"


def _run_full(options: DevOptions, settings: dict[str, Any], common: dict[str, Any]) -> None:
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


def _to_json(options: DevOptions) -> dict[str, Any]:
    """Every option a `--reload full` child needs, whichever they are: all of `DevOptions`
    but what uvicorn's own reloader does there (watching, uvicorn's settings)."""
    data = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
            if f.name not in _NOT_FOR_CHILD}
    t = options.target
    data["target"] = [t.module, t.attr, t.factory, str(t.app_dir)]
    data["uvicorn"] = {k: options.uvicorn.get(k, "auto") for k in ("interface", "lifespan")}
    return data


# What the parent's `uvicorn.run(reload=True)` does for the child: it watches and restarts it.
_NOT_FOR_CHILD = {"target", "uvicorn", "reload", "reload_dirs", "reload_includes",
                  "reload_excludes", "reload_delay"}


def _from_json(data: dict[str, Any]) -> DevOptions:
    module, attr, factory, app_dir = data.pop("target")
    return DevOptions(target=AppTarget(module, attr, factory, Path(app_dir)), reload="no",
                      **data)


def _full_reload_child() -> Any:
    """`--reload full`: uvicorn's reloader restarts this process on change; each process
    serves the app through a session that does not watch (uvicorn's supervisor does)."""
    options = _from_json(json.loads(os.environ[_CHILD_OPTIONS]))
    return DevSession(options).asgi
