"""The stable ASGI app uvicorn serves for a whole session, and the app generations behind it.

uvicorn binds the socket once and serves `Switch`. Each request is forwarded to the current
generation (an app object, its lifespan state, the connections it serves). A reload builds the
next generation and swaps a reference: nothing rebinds, no connection is refused, and a request
finishes on the generation it started on.

While a reload runs, new connections wait at the switch (`paused`) and running HTTP requests
are let finish first. Sync code in the thread pool (Starlette's `run_in_threadpool`: sync
handlers, sync streaming iterators, sync background tasks) is let finish, and kept from
starting, while modules re-run (`threads_held`): code run that way never sees a module
half-executed, unless it runs past the drain timeout (a warning says so). Async code cannot run
meanwhile. Code in threads of the app's own is not held (see docs/caveats.md).

A new generation starts its lifespan first (`start`), and only becomes current once the reload
is committed (`commit`). The generation it replaces is retired: its WebSockets are closed with
1012 (service restart) and its streaming responses ended, so clients reconnect to the new code;
once its other requests are done, its lifespan shuts down. Every wait on the app is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fh_utils.asgi import ASGIApp, Message, Receive, Scope, Send
from fh_utils.reload import effects
from fh_utils.reload.errors import Failure
from fh_utils.reload.graph import HANDLING_REQUEST
from fh_utils.serve.verify import Recorder
from fh_utils.timing import DRAIN, LIFESPAN, RETIRE

__all__ = ["Generation", "LifespanFailed", "LifespanSlow", "StartupAbort", "Switch", "Timeouts"]

logger = logging.getLogger("fh_utils")

CLOSE_CODE = 1012  # WebSocket "service restart": browsers and htmx reconnect


class LifespanFailed(Exception):
    """An app's lifespan startup failed, timed out or was cancelled; the message says which."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out  # it did not fail: it did not finish, or a save cut it short

    def failure(self) -> Failure:
        """As a reload failure. Starlette sends the traceback as the message: its last line is
        the error. `LifespanTimeout` (it did not finish) is never a reason to escalate."""
        text = str(self).strip()
        lines = [line for line in text.splitlines() if line.strip()]
        message, traceback = (lines[-1], text) if text.startswith("Traceback") and lines else (
            text, "")
        kind = "LifespanTimeout" if self.timed_out else "LifespanFailed"
        return Failure(None, None, kind, message, traceback)


class LifespanSlow(Exception):
    """A new app's lifespan startup did not finish within the time requests wait for it."""


class StartupAbort(Exception):
    """The session cannot start (the user named an app that is not there): exit, no traceback."""


class ConnectionRetired(OSError):
    """Raised into an app that sends on a connection the reload closed (like a disconnect)."""


@dataclass(frozen=True)
class Timeouts:
    """How long the switch waits on the app, in seconds."""

    lifespan: float = LIFESPAN
    drain: float = DRAIN
    retire: float = RETIRE


class _Connection:
    """One request or WebSocket: wraps `send` so the switch can end it."""

    def __init__(self, kind: str, send: Send, client: Any = None) -> None:
        self.kind = kind
        self.client = client  # (host, port) of the peer, as uvicorn gives it
        self._send = send
        self._lock = asyncio.Lock()
        self.started = False  # response started / socket accepted
        self.streaming = False  # an HTTP response without a length
        self.finished = False
        self.closed = False  # ended by the switch

    @property
    def long_lived(self) -> bool:
        return not self.finished and (self.kind == "websocket" or self.streaming)

    async def send(self, message: Message) -> None:
        if self.closed:
            raise ConnectionRetired("the connection was closed by a reload")
        kind = message["type"]
        async with self._lock:
            await self._send(message)
        if kind == "http.response.start":
            self.started = True
            self.streaming = not any(
                k.lower() == b"content-length" for k, _ in message.get("headers", ())
            )
        elif kind == "websocket.accept":
            self.started = True
        elif (kind == "http.response.body" and not message.get("more_body", False)) or (
            kind == "websocket.close"
        ):
            self.finished = True

    async def close(self, timeout: float = 1.0) -> bool:
        """End it on the wire (WebSocket close 1012, or the stream's last chunk)."""
        if self.closed or self.finished or not self.started:
            return False
        self.closed = True
        try:
            async with asyncio.timeout(timeout):
                async with self._lock:
                    if self.kind == "websocket":
                        await self._send({"type": "websocket.close", "code": CLOSE_CODE,
                                          "reason": "fh_utils reload"})
                    else:
                        await self._send({"type": "http.response.body", "body": b"",
                                          "more_body": False})
        except Exception:  # the client went away meanwhile: nothing to end
            pass
        self.finished = True
        return True


class Generation:
    """One app object, its lifespan and the connections it is serving."""

    _told_unsupported = False

    def __init__(self, app: ASGIApp, lifespan: str = "auto") -> None:
        self.app = app
        self.lifespan_mode = lifespan
        self.state: dict[str, Any] = {}
        self.connections: set[_Connection] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.effects = effects.Record("lifespan")  # tasks its lifespan started, and more
        self._lifespan: _Lifespan | None = None

    async def startup(self, timeout: float, cancel: asyncio.Event | None = None) -> None:
        if self.lifespan_mode == "off":
            return
        lifespan = _Lifespan(self.app, self.state, self.effects)
        self._lifespan = lifespan
        await lifespan.startup(timeout, cancel)
        if not lifespan.supported:
            self._lifespan = None
            if self.lifespan_mode == "on":
                raise LifespanFailed(f"the app does not support the lifespan protocol "
                                     f"({lifespan.error!r}); use --lifespan auto or off")
            if lifespan.error is not None and not _unsupported(lifespan.error):
                logger.error("Exception in 'lifespan' protocol: %r (the app keeps serving "
                             "without a lifespan)", lifespan.error, exc_info=lifespan.error)
            elif not Generation._told_unsupported:  # as uvicorn says it, once
                Generation._told_unsupported = True
                logger.info("ASGI 'lifespan' protocol appears unsupported.")

    async def shutdown(self, timeout: float, level: int = logging.ERROR) -> None:
        if self._lifespan is not None:
            lifespan, self._lifespan = self._lifespan, None
            await lifespan.shutdown(timeout, level)
        cancelled = self.effects.cancel_tasks()
        if cancelled:
            logger.debug("Cancelled %d task(s) left by the lifespan of the previous app",
                         cancelled)
        self.effects.undo()
        self.effects.discard()

    async def close_connections(self) -> tuple[int, int]:
        """End its WebSockets and streams; returns (WebSockets, streams) closed."""
        sockets = streams = 0
        for connection in list(self.connections):
            if connection.long_lived and await connection.close():
                if connection.kind == "websocket":
                    sockets += 1
                else:
                    streams += 1
        return sockets, streams


class Switch:
    """The ASGI app uvicorn serves: forwards to the current generation, holds requests
    while a reload runs, and shows an error page when no generation could start."""

    def __init__(
        self,
        on_startup: Callable[[], Awaitable[None]],
        on_shutdown: Callable[[], Awaitable[None]],
        lifespan: str = "auto",
        timeouts: Timeouts | None = None,
        keep_connections: bool = False,
        editor_link: Callable[[str, int | None, str], str] | None = None,
    ) -> None:
        self._on_startup = on_startup
        self._lifespan_mode = lifespan
        self._on_shutdown = on_shutdown
        self.timeouts = timeouts or Timeouts()
        self.keep_connections = keep_connections
        self.editor_link = editor_link  # (file, line, root_path) -> URL opening it (--live)
        self.current: Generation | None = None
        self.failure: Failure | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._busy = 0  # running HTTP requests that a reload waits for
        self._drained = asyncio.Event()
        self._drained.set()
        self._retiring: dict[Generation, asyncio.Task[None]] = {}
        self._closing = False
        # While another worker gets ready to take over: responses close their connection
        # (clients then reconnect, to the new worker once it serves), and the clients with a
        # request running or made meanwhile are noted (`begin_hand_over`).
        self.handing_over = False
        self.recent_clients: set[Any] = set()
        self.starting = 0  # lifespan startups pending
        # Notes the GET requests answered, and their answers (the fresh-process check's).
        self.recorder: Recorder | None = None

    # -- ASGI ----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if not self._open.is_set():
            await self._open.wait()
        generation = self.current
        if generation is None or self._closing:
            await self._error_response(scope, send)
            return
        if generation.state:
            scope["state"] = dict(generation.state)
        connection = _Connection(kind, send, scope.get("client"))
        generation.connections.add(connection)
        generation.idle.clear()
        handling = HANDLING_REQUEST.set(True)
        try:
            if kind == "http":
                await self._http(generation, scope, receive, connection)
            else:
                await generation.app(scope, receive, connection.send)
        except ConnectionRetired:
            pass  # the app sent on a connection a reload ended
        except Exception:
            if not connection.closed:
                raise
            # The app failed on a connection a reload ended (Starlette turns our error into
            # WebSocketDisconnect, which a handler may not expect): that is the reload's doing.
            logger.debug("A handler of the previous app failed after its connection was "
                         "closed by a reload", exc_info=True)
        finally:
            HANDLING_REQUEST.reset(handling)
            generation.connections.discard(connection)
            if not generation.connections:
                generation.idle.set()

    async def _http(self, generation: Generation, scope: Scope, receive: Receive,
                    connection: _Connection) -> None:
        handing_over = self.handing_over
        recorder = self.recorder
        request = recorder.request(scope) if recorder is not None else None
        observe = recorder.observe(request) if recorder and request else None
        if handing_over:
            self.recent_clients.add(scope.get("client"))
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

        async def send(message: Message) -> None:
            if handing_over and message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ())
                           if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await connection.send(message)
            if observe is not None:
                observe(message)
            # A response without a length is a stream (SSE, a long download): a reload
            # does not wait for it.
            if connection.streaming or connection.finished:
                done()

        try:
            await generation.app(scope, receive, send)
        finally:
            done()
            if recorder and request and connection.finished and not connection.streaming:
                recorder.answered(request)  # (at rest, all a request costs)

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
                try:
                    await self._on_shutdown()
                except Exception as exc:
                    logger.exception("fh_utils could not shut down cleanly")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- reloads -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Hold new connections; wait (up to the drain timeout) for running HTTP requests."""
        self._open.clear()
        try:
            if self._busy:
                try:
                    async with asyncio.timeout(self.timeouts.drain):
                        await self._drained.wait()
                except TimeoutError:
                    logger.warning(
                        "Reloading while %d request(s) are still running", self._busy
                    )
            yield
        finally:
            self._open.set()

    @contextlib.asynccontextmanager
    async def threads_held(self) -> AsyncIterator[None]:
        """Wait (up to the drain timeout) for sync code running in the thread pool, and keep
        new sync calls from starting until the block ends. Only around code that does not
        await: a lifespan startup may need the thread pool itself."""
        gate = _ThreadGate()
        try:
            await gate.close(time.monotonic() + self.timeouts.drain)
            yield
        finally:
            gate.open()

    async def start(self, app: ASGIApp, cancel: asyncio.Event | None = None,
                    budget: float | None = None) -> Generation:
        """Start `app`'s lifespan; the generation serves once `commit`ted.

        Raises LifespanFailed when the startup fails, times out, or `cancel` is set first;
        LifespanSlow when it is still running after `budget` seconds (it is cancelled).
        """
        if self.current is not None and self.current.app is app:
            return self.current
        generation = Generation(app, self._lifespan_mode)
        timeout = self.timeouts.lifespan
        slow = budget is not None and budget < timeout
        if budget is not None:
            timeout = min(budget, timeout)
        self.starting += 1
        try:
            await generation.startup(timeout, cancel)
        except BaseException as exc:
            await generation.shutdown(self.timeouts.lifespan)
            if (slow and isinstance(exc, LifespanFailed) and exc.timed_out
                    and not (cancel is not None and cancel.is_set())):
                raise LifespanSlow(f"the new app's lifespan startup takes over {timeout:g} s"
                                   ) from exc
            raise
        finally:
            self.starting -= 1
        return generation

    async def commit(self, generation: Generation) -> tuple[int, int]:
        """Make `generation` current and retire the one before; returns the retired app's
        (WebSockets, streams) closed."""
        old = self.current
        if old is generation:
            return 0, 0
        self.current, self.failure = generation, None
        if old is None:
            return 0, 0
        closed = (0, 0) if self.keep_connections else await old.close_connections()
        self._retiring[old] = asyncio.get_running_loop().create_task(self._retire(old))
        return closed

    async def discard(self, generation: Generation, level: int = logging.ERROR) -> None:
        """A started generation that will not serve (the reload was rolled back). `level`:
        how loud a failure of its lifespan shutdown is."""
        if generation is not self.current:
            await generation.shutdown(self.timeouts.lifespan, level)

    def begin_hand_over(self) -> None:
        self.handing_over = True
        self.recent_clients = {c.client for g in self.generations() for c in g.connections}

    def cancel_hand_over(self) -> None:
        self.handing_over = False
        self.recent_clients = set()

    def generations(self) -> list[Generation]:
        """The current generation and those retiring."""
        return [g for g in (self.current, *self._retiring) if g is not None]

    def fail(self, failure: Failure) -> None:
        """Record why no app is serving; requests get an error page until a swap."""
        self.failure = failure

    async def close(self) -> None:
        """Server shutdown: end every connection, shut down the current app and any retiring."""
        self._closing = True
        self._open.set()
        for generation in self.generations():
            await generation.close_connections()
        for task in self._retiring.values():
            task.cancel()
        if self.current is not None:
            await self.current.shutdown(self.timeouts.lifespan)
        for generation in list(self._retiring):
            with contextlib.suppress(Exception):
                await generation.shutdown(self.timeouts.lifespan)
        self._retiring.clear()

    async def _retire(self, generation: Generation) -> None:
        try:
            async with asyncio.timeout(self.timeouts.retire):
                await generation.idle.wait()
        except TimeoutError:
            logger.warning("The previous app still has %d request(s) running after %g s: "
                           "shutting it down", len(generation.connections),
                           self.timeouts.retire)
        try:
            await generation.shutdown(self.timeouts.lifespan)
        except Exception:
            logger.exception("Lifespan shutdown of the previous app failed")
        finally:
            self._retiring.pop(generation, None)

    def _summary(self, failure: Failure, scope: Scope) -> str:
        """`file:line: error`, the location a link that opens it in the editor (`--live`)."""
        if self.editor_link is None or not failure.file:
            return html.escape(failure.summary)
        label = f"{failure.file}:{failure.line}" if failure.line else failure.file
        href = self.editor_link(failure.file, failure.line, scope.get("root_path", ""))
        return f'<a href="{html.escape(href)}">{html.escape(label)}</a>: ' + html.escape(
            failure.error)

    async def _error_response(self, scope: Scope, send: Send) -> None:
        failure = self.failure
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # accepted first: a close before is an HTTP 403
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": 1011})
            return
        if self._closing:
            title, detail = "The server is shutting down", ""
        else:
            title = "The app failed to load" if failure else "The app is not loaded yet"
            detail = (
                f"<p><code>{self._summary(failure, scope)}</code></p>"
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
                "status": 503 if self._closing else 500,
                "headers": [
                    (b"content-type", b"text/html; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _ThreadGate:
    """Holds every token of anyio's default thread limiter (the pool Starlette runs sync code
    in): sync calls running finish first, new ones wait until `open()`. Polling the number of
    busy threads is not enough: a sync iterator takes its token back without yielding."""

    def __init__(self) -> None:
        self._limiter: Any = None
        self._held: list[object] = []

    async def close(self, deadline: float) -> None:
        try:
            import anyio
            import anyio.to_thread

            limiter = anyio.to_thread.current_default_thread_limiter()
        except Exception:  # anyio missing, or not in an anyio-compatible loop
            return
        total = limiter.total_tokens
        if total > 10_000:  # effectively unlimited: there is no holding them all
            return
        self._limiter = limiter
        while len(self._held) < total:
            borrower = object()
            try:
                limiter.acquire_on_behalf_of_nowait(borrower)
            except anyio.WouldBlock:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await limiter.acquire_on_behalf_of(borrower)
                except TimeoutError:
                    logger.warning("Reloading while %d sync call(s) still run in the thread "
                                   "pool", total - len(self._held))
                    return
            self._held.append(borrower)

    def open(self) -> None:
        limiter, self._limiter = self._limiter, None
        held, self._held = self._held, []
        for borrower in held:
            limiter.release_on_behalf_of(borrower)


def _unsupported(error: BaseException) -> bool:
    """The usual ways an app without lifespan support says so: asserting, or failing to look
    up, that the scope is HTTP (uvicorn logs these as unsupported)."""
    return isinstance(error, (AssertionError, KeyError, TypeError, NotImplementedError,
                              ValueError))


class _Lifespan:
    """Runs the ASGI lifespan protocol against one app, as uvicorn's `--lifespan auto`."""

    def __init__(self, app: ASGIApp, state: dict[str, Any], record: effects.Record) -> None:
        self._app = app
        self._state = state
        self._record = record
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.supported = True

    async def startup(self, timeout: float, cancel: asyncio.Event | None) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self._state,
        }
        self._task = asyncio.get_running_loop().create_task(
            self._run(scope), context=effects.context_for(self._record)
        )
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._answer("startup", timeout, cancel)
        if message is None:  # returned or raised before answering: no lifespan support
            self.supported = False
            return
        if message["type"] == "lifespan.startup.failed":
            await self._finish(timeout)
            raise LifespanFailed(message.get("message") or "lifespan startup failed")

    async def shutdown(self, timeout: float, level: int = logging.ERROR) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        try:
            message = await self._answer("shutdown", timeout, None)
        except LifespanFailed as exc:
            logger.log(level, "%s", exc)
            return
        await self._finish(timeout)
        if message is not None and message["type"] == "lifespan.shutdown.failed":
            logger.log(level, "Lifespan shutdown failed: %s", message.get("message", ""))
        elif message is None and self.error is not None:
            logger.log(level, "Lifespan shutdown failed: %r", self.error, exc_info=self.error)

    async def _answer(self, step: str, timeout: float, cancel: asyncio.Event | None
                      ) -> Message | None:
        """The app's answer to `step`, or LifespanFailed (the task cancelled) if none comes."""
        get = asyncio.ensure_future(self._from_app.get())
        waiters: set[asyncio.Future[Any]] = {get}
        if cancel is not None:
            waiters.add(asyncio.ensure_future(cancel.wait()))
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                if not waiter.done():
                    waiter.cancel()
        if get in done:
            return get.result()
        why = ("a newer save arrived" if done else
               f"it did not finish within {timeout:g} s (--timeout-lifespan)")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 1.0)
        raise LifespanFailed(f"lifespan {step} cancelled: {why}", timed_out=True)

    async def _run(self, scope: Scope) -> None:
        try:
            await self._app(scope, self._to_app.get, self._send)
        except BaseException as exc:
            self.error = exc
        finally:
            await self._from_app.put(None)

    async def _send(self, message: Message) -> None:
        await self._from_app.put(message)

    async def _finish(self, timeout: float) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
