"""A dev server in a background thread of a notebook kernel, serving a `Switch`.

`%fh app` (`fh_utils.notebook.magics`) starts one `NotebookServer`: a uvicorn server with its
own event loop in a thread, bound once to its port. Each `%fh` after that swaps the app behind
the same socket (`serve`): the new app's lifespan starts, then it takes the next request, and
the app it replaces shuts down once its requests are done, as under `fh_utils dev`.

The kernel's main thread re-runs project modules between cells (`fh_utils.notebook.reloads`);
while it does, `paused()` holds new connections at the switch and `frozen()` stops the
server's loop, so no request code runs while a module is half-executed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import uvicorn

from fh_utils.browser.live import LiveHub, LiveReloadMiddleware
from fh_utils.reload import effects
from fh_utils.reload.errors import Failure
from fh_utils.serve.hosts import HostGuard
from fh_utils.serve.interface import as_asgi3
from fh_utils.serve.switch import LifespanFailed, Switch, Timeouts
from fh_utils.timing import FREEZE_LIMIT, NOTEBOOK_START, NOTEBOOK_STOP

__all__ = ["NotebookServer", "ServeFailed"]

logger = logging.getLogger("fh_utils")

T = TypeVar("T")



class ServeFailed(Exception):
    """The app could not be served: its lifespan startup failed or did not finish."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.summary)
        self.failure = failure


class _Server(uvicorn.Server):
    """uvicorn's server, telling the notebook once it serves and closing long-lived
    connections (WebSockets, streams) first when it stops, which would otherwise hold
    uvicorn's graceful shutdown."""

    def __init__(self, config: uvicorn.Config, owner: NotebookServer) -> None:
        super().__init__(config)
        self.owner = owner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.owner._serving.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.owner.hub.close()
        for generation in self.owner.switch.generations():
            await generation.close_connections()
        await super().shutdown(sockets)


class NotebookServer:
    """uvicorn in a daemon thread of the kernel, bound to `host:port` until `stop()`.

    `port=0` picks a free port (`port` then tells which). With `live`, HTML pages get the
    live-reload script and `refresh()` reloads every open page; `live` can change at any time.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 5001, *, live: bool = False,
                 log_level: str = "warning", allowed_hosts: Sequence[str] = ()) -> None:
        self.host = host
        self.live = live
        self.switch = Switch(self._startup, self._shutdown, "auto", Timeouts())
        self.hub = LiveHub()
        self._with_live = LiveReloadMiddleware(self.switch, self.hub)
        self.guard = HostGuard(self._entry, allowed_hosts, host,
                               hint="%fh --allowed-host {name}")
        self.asgi = self.guard
        self._sock = _bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(self.asgi, lifespan="on", interface="asgi3", log_config=None,
                                log_level=log_level, access_log=False,
                                timeout_graceful_shutdown=int(NOTEBOOK_STOP / 2))
        self._server = _Server(config, self)
        self._serving = threading.Event()
        self._adapted: tuple[Any, Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"fh_utils-notebook-server-{self.port}")

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._server.should_exit

    # -- the server thread -------------------------------------------------------------------
    def start(self) -> None:
        """Start serving (no app yet: requests get a page saying so until `serve`)."""
        self._thread.start()
        deadline = time.monotonic() + NOTEBOOK_START
        while not self._serving.wait(0.01):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server.should_exit = True
                self._sock.close()
                raise RuntimeError(f"the server on port {self.port} did not start")

    def _run(self) -> None:
        with asyncio.Runner() as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            await self._server.serve(sockets=[self._sock])
        finally:
            self._sock.close()

    async def _entry(self, scope: Any, receive: Any, send: Any) -> None:
        app: LiveReloadMiddleware | Switch = self._with_live if self.live else self.switch
        await app(scope, receive, send)

    async def _startup(self) -> None:
        effects.install_task_factory(asyncio.get_running_loop())

    async def _shutdown(self) -> None:
        await self.switch.close()

    def stop(self) -> None:
        """Stop serving: WebSockets and streams are closed, running requests finish, the
        app's lifespan shuts down; returns once the port is free."""
        self._server.should_exit = True
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(NOTEBOOK_STOP)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(NOTEBOOK_STOP)
        if not self._thread.is_alive():
            self._sock.close()

    # -- the app -----------------------------------------------------------------------------
    def serve(self, app: Any) -> bool:
        """Serve `app` from the next request on; False if it was already serving it.

        A new app's lifespan starts first: if that fails, `ServeFailed` is raised and the app
        before it keeps serving. The app it replaces shuts down once its requests are done.
        """
        asgi = self._adapt(app)
        if self.switch.current is not None and self.switch.current.app is asgi:
            return False
        try:
            generation = self.call(self.switch.start(asgi),
                                   self.switch.timeouts.lifespan + NOTEBOOK_START)
        except LifespanFailed as exc:
            raise ServeFailed(exc.failure()) from None
        self.call(self.switch.commit(generation), NOTEBOOK_STOP)
        return True

    def _adapt(self, app: Any) -> Any:
        """The app as ASGI 3 (the same wrapper while the app is the same object)."""
        if self._adapted is None or self._adapted[0] is not app:
            self._adapted = (app, as_asgi3(app, "auto"))
        return self._adapted[1]

    def refresh(self) -> None:
        """Reload every open page that has the live-reload script (with `live`)."""
        if self.live and self.loop is not None:
            self._soon(self.hub.reload())

    def show_error(self, failure: Failure) -> None:
        """Show a failed reload on every open page (with `live`)."""
        if self.live and self.loop is not None:
            self._soon(self.hub.show_error(failure))

    def _soon(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self.loop is not None
        try:
            asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop is closed: the server stopped meanwhile
            coro.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the server's loop and wait for its result (from another thread)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # -- reloads -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """New connections wait at the switch; running HTTP requests finish first (up to the
        drain timeout). The server's loop keeps running (a lifespan can start meanwhile)."""
        with self._hold(self._pause, "finish its requests"):
            yield

    @contextlib.contextmanager
    def frozen(self, threads: bool = True) -> Iterator[None]:
        """The server's loop stopped, so no async request code runs; with `threads`, sync code
        in the thread pool is let finish first and kept from starting (`Switch.threads_held`)."""
        def freeze(entered: threading.Event, leave: threading.Event,
                   release: asyncio.Event) -> Coroutine[Any, Any, None]:
            return self._freeze(entered, leave, release, threads)

        with self._hold(freeze, "stop its request code"):
            yield

    @contextlib.contextmanager
    def _hold(self, holder: Any, what: str) -> Iterator[None]:
        if not self.running or self.loop is None:
            yield
            return
        loop = self.loop
        entered, leave, release = threading.Event(), threading.Event(), asyncio.Event()
        try:
            future = asyncio.run_coroutine_threadsafe(holder(entered, leave, release), loop)
        except RuntimeError:  # the loop closed meanwhile
            yield
            return
        # Each wait of the switch is bounded by the drain timeout (3 s); more means the loop
        # itself is stuck (an async handler blocking it): reload anyway, as the switch does.
        limit = 2 * self.switch.timeouts.drain + 1.0
        if not entered.wait(limit):
            logger.warning("The server did not %s within %g s: reloading anyway", what, limit)
        try:
            yield
        finally:
            leave.set()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(release.set)
            if entered.is_set():
                with contextlib.suppress(Exception):
                    future.result(limit)

    async def _pause(self, entered: threading.Event, leave: threading.Event,
                     release: asyncio.Event) -> None:
        if leave.is_set():
            return
        async with self.switch.paused():
            entered.set()
            await release.wait()  # set from the kernel's thread

    async def _freeze(self, entered: threading.Event, leave: threading.Event,
                      release: asyncio.Event, threads: bool) -> None:
        if leave.is_set():
            return
        async with self.switch.threads_held() if threads else _nothing():
            entered.set()
            leave.wait(FREEZE_LIMIT)  # blocks this loop on purpose: no request code runs


@contextlib.asynccontextmanager
async def _nothing() -> Any:
    yield


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port is an error in the cell."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot serve on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock
