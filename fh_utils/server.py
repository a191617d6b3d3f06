"""The stable ASGI app uvicorn serves for a whole session, and the app generations behind it.

uvicorn binds the socket once and serves `Switch`. Each request is forwarded to the current
generation (an app object plus its lifespan state). A reload builds the next generation and
swaps a reference: nothing rebinds, no connection is refused, and a request finishes on the
generation it started on. While a reload runs, new connections wait at the switch, and
running HTTP requests are let finish first, so no request ever sees a half-executed module.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fh_utils._asgi import ASGIApp, Message, Receive, Scope, Send
from fh_utils.errors import Failure

__all__ = ["Generation", "LifespanFailed", "StartupAbort", "Switch"]

logger = logging.getLogger("fh_utils")

DRAIN_TIMEOUT = 3.0  # longest a reload waits for running requests
RETIRE_TIMEOUT = 10.0  # longest an old app waits for its connections before its shutdown


class LifespanFailed(Exception):
    """An app's lifespan startup failed; the message is the app's own."""


class StartupAbort(Exception):
    """The session cannot start (the user named an app that is not there): exit, no traceback."""


class Generation:
    """One app object, its lifespan and the connections it is serving."""

    def __init__(self, app: ASGIApp, lifespan: str = "auto") -> None:
        self.app = app
        self.lifespan_mode = lifespan
        self.state: dict[str, Any] = {}
        self.connections = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._lifespan: _Lifespan | None = None

    async def startup(self) -> None:
        if self.lifespan_mode == "off":
            return
        lifespan = _Lifespan(self.app, self.state)
        await lifespan.startup()
        if not lifespan.supported and self.lifespan_mode == "on":
            raise LifespanFailed(f"the app does not support the lifespan protocol "
                                 f"({lifespan.error!r}); use --lifespan auto or off")
        self._lifespan = lifespan

    async def shutdown(self) -> None:
        if self._lifespan is not None:
            lifespan, self._lifespan = self._lifespan, None
            await lifespan.shutdown()


class Switch:
    """The ASGI app uvicorn serves: forwards to the current generation, holds requests
    while a reload runs, and shows an error page when no generation could start."""

    def __init__(
        self,
        on_startup: Callable[[], Awaitable[None]],
        on_shutdown: Callable[[], Awaitable[None]],
        lifespan: str = "auto",
    ) -> None:
        self._on_startup = on_startup
        self._lifespan_mode = lifespan
        self._on_shutdown = on_shutdown
        self.current: Generation | None = None
        self.failure: Failure | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._busy = 0  # running HTTP requests that a reload waits for
        self._drained = asyncio.Event()
        self._drained.set()
        self._retiring: set[asyncio.Task[None]] = set()

    # -- ASGI ----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if not self._open.is_set():
            await self._open.wait()
        generation = self.current
        if generation is None:
            await self._error_response(scope, send)
            return
        if generation.state:
            scope["state"] = dict(generation.state)
        generation.connections += 1
        generation.idle.clear()
        try:
            if kind == "http":
                await self._http(generation.app, scope, receive, send)
            else:
                await generation.app(scope, receive, send)
        finally:
            generation.connections -= 1
            if generation.connections == 0:
                generation.idle.set()

    async def _http(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        counted = True
        self._busy += 1
        self._drained.clear()

        def done() -> None:
            nonlocal counted
            if counted:
                counted = False
                self._busy -= 1
                if self._busy == 0:
                    self._drained.set()

        async def watch_send(message: Message) -> None:
            # A response without a length is a stream (SSE, a long download): a reload
            # does not wait for it.
            if message["type"] == "http.response.start" and not any(
                k.lower() == b"content-length" for k, _ in message.get("headers", ())
            ):
                done()
            await send(message)

        try:
            await app(scope, receive, watch_send)
        finally:
            done()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._on_startup()
                except StartupAbort as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                except Exception as exc:
                    logger.exception("fh_utils could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- reloads -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Hold new connections and wait for running HTTP requests (up to DRAIN_TIMEOUT)."""
        self._open.clear()
        try:
            if self._busy:
                try:
                    await asyncio.wait_for(self._drained.wait(), DRAIN_TIMEOUT)
                except TimeoutError:
                    logger.warning(
                        "Reloading while %d request(s) are still running", self._busy
                    )
            yield
        finally:
            self._open.set()

    async def swap(self, app: ASGIApp) -> None:
        """Start `app`'s lifespan and make it current; the old app shuts down once idle.

        Raises LifespanFailed, leaving the current generation serving, when startup fails.
        """
        if self.current is not None and self.current.app is app:
            return
        generation = Generation(app, self._lifespan_mode)
        await generation.startup()
        old, self.current, self.failure = self.current, generation, None
        if old is not None:
            task = asyncio.get_running_loop().create_task(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def fail(self, failure: Failure) -> None:
        """Record why no app is serving; requests get an error page until a swap."""
        self.failure = failure

    async def close(self) -> None:
        """Shut down the current app and any still retiring."""
        if self.current is not None:
            await self.current.shutdown()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _retire(self, generation: Generation) -> None:
        try:
            await asyncio.wait_for(generation.idle.wait(), RETIRE_TIMEOUT)
        except TimeoutError:
            pass
        try:
            await generation.shutdown()
        except Exception:
            logger.exception("Lifespan shutdown of the previous app failed")

    async def _error_response(self, scope: Scope, send: Send) -> None:
        failure = self.failure
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1011})
            return
        title = "The app failed to load" if failure else "The app is not loaded yet"
        detail = (
            f"<p><code>{html.escape(failure.summary)}</code></p>"
            f"<pre>{html.escape(failure.traceback)}</pre>"
            if failure
            else ""
        )
        body = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{title}</title></head><body><h1>{title}</h1>{detail}"
            "<p>fh_utils is watching: save a fix and reload this page.</p></body></html>"
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/html; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _Lifespan:
    """Runs the ASGI lifespan protocol against one app, as uvicorn's `--lifespan auto`."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self._app = app
        self._state = state
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.supported = True

    async def startup(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self._state,
        }
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._from_app.get()
        if message is None:  # returned or raised before answering: no lifespan support
            self.supported = False
            return
        if message["type"] == "lifespan.startup.failed":
            await self._finish()
            raise LifespanFailed(message.get("message") or "lifespan startup failed")

    async def shutdown(self) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        message = await self._from_app.get()
        await self._finish()
        if message is not None and message["type"] == "lifespan.shutdown.failed":
            logger.error("Lifespan shutdown failed: %s", message.get("message", ""))

    async def _run(self, scope: Scope) -> None:
        try:
            await self._app(scope, self._to_app.get, self._send)
        except BaseException as exc:
            self.error = exc
        finally:
            await self._from_app.put(None)

    async def _send(self, message: Message) -> None:
        await self._from_app.put(message)

    async def _finish(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), 5)
