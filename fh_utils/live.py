"""Browser refresh for any ASGI app: an injected script, a WebSocket, and a hub that pushes to it.

`fh_utils dev app.py --live` wraps the app it serves in `LiveReloadMiddleware` and tells the
middleware's `LiveHub` about each reload: open pages reload once the new code is serving, show
an overlay when a reload fails, and swap stylesheets in place when a `.css` file changes.

The middleware works on its own with any ASGI server. Under plain `uvicorn --reload`, the
restart drops the socket; the page reconnects (backoff capped at about 2 s) and reloads as soon
as the new process answers::

    import os
    from fh_utils.live import LiveReloadMiddleware

    app = ...  # FastHTML, Starlette, FastAPI or any ASGI app
    if os.environ.get("DEV"):  # never in production: the socket carries tracebacks
        app = LiveReloadMiddleware(app)

The script goes only into whole HTML documents (`text/html` starting with `<!doctype html>` or
`<html>`): not into HTMX requests (`HX-Request`), not into compressed bodies (place this
middleware inside any compression middleware), never twice. A FastHTML app built with
`live=True` has its own reload script replaced by this one. The WebSocket at `LIVE_PATH` under the
app's `root_path` accepts only same-origin pages.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fh_utils._asgi import ASGIApp, Message, Receive, Scope, Send
from fh_utils.errors import Failure, display_path

if TYPE_CHECKING:
    from fh_utils.reload import Outcome

__all__ = ["LIVE_PATH", "LiveHub", "LiveReloadMiddleware"]

logger = logging.getLogger("fh_utils")

LIVE_PATH = "/__fh_utils_live__"  # the WebSocket, under the app's root_path
MARKER = b"data-fh-utils-live"  # the attribute on the injected <script>: never inject twice
BUFFER_LIMIT = 4 * 1024 * 1024  # a body with a Content-Length up to this is injected whole

_CLIENT_JS = files("fh_utils").joinpath("live.js").read_text(encoding="ascii")
_PREAMBLE = re.compile(rb"(?:\xef\xbb\xbf)?(?:\s|<!--.*?-->)*", re.S)
_DOCUMENT_START = re.compile(rb"<(?:!doctype\s+html|html)\b", re.I)
_FASTHTML_LIVE = b"/live-reload`"
_SCRIPT = re.compile(rb"<script\b[^>]*>(.*?)</script\s*>", re.I | re.S)
_BODY_END = b"</body"
_CLOSED, _SHUTDOWN = object(), object()


def client_script(ws_path: str) -> bytes:
    """The `<script>` element injected into pages; it connects to `ws_path` on the page's host."""
    return (f'<script {MARKER.decode()}="{html.escape(ws_path)}">{_CLIENT_JS}</script>').encode()


class LiveHub:
    """Pushes reload, stylesheet and error messages to every connected page.

    `fh_utils dev --live` registers it as a session listener (`reloaded`, `failed`,
    `static_changed`); on its own, call `reload()`, `show_error()` or `static_changed()`.
    Each page has its own queue, so a slow page never delays the others.
    """

    def __init__(self) -> None:
        self.failure: Failure | None = None
        self._queues: set[asyncio.Queue[object]] = set()

    @property
    def connections(self) -> int:
        return len(self._queues)

    # -- what happened (DevListener) -------------------------------------------------------
    async def reloaded(self, outcome: Outcome | None = None) -> None:
        """The new code is serving: clear any error and reload every page."""
        await self.reload()

    async def failed(self, failure: Failure) -> None:
        """A (re)load failed: show the error on every page, and on pages opened from now on."""
        await self.show_error(failure)

    async def static_changed(self, paths: list[Path]) -> None:
        """Stylesheets are swapped in place; any other static file reloads the page."""
        if paths and all(p.suffix.lower() == ".css" for p in paths):
            self.broadcast({"type": "css", "files": [display_path(p) for p in paths]})
        elif paths:
            self.broadcast({"type": "reload"})

    # -- pushing ---------------------------------------------------------------------------
    async def reload(self) -> None:
        self.failure = None
        self.broadcast({"type": "reload"})

    async def show_error(self, failure: Failure) -> None:
        self.failure = failure
        self.broadcast(error_message(failure))

    def broadcast(self, message: dict[str, Any]) -> None:
        for queue in self._queues:
            queue.put_nowait(message)

    async def close(self) -> None:
        """Close every live socket (server shutdown); pages reconnect once a server answers."""
        for queue in self._queues:
            queue.put_nowait(_SHUTDOWN)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while self._queues and loop.time() < deadline:
            await asyncio.sleep(0.005)

    # -- the WebSocket endpoint ------------------------------------------------------------
    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI endpoint for one page's socket: refuses other origins, then pushes messages."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if not same_origin(scope):
            logger.warning("Refused a live-reload connection from origin %s",
                           _header(scope, b"origin") or "(none)")
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        queue: asyncio.Queue[object] = asyncio.Queue()
        if self.failure is not None:
            queue.put_nowait(error_message(self.failure))
        self._queues.add(queue)

        async def until_disconnect() -> None:
            while (await receive())["type"] != "websocket.disconnect":
                pass
            queue.put_nowait(_CLOSED)

        watcher = asyncio.get_running_loop().create_task(until_disconnect())
        try:
            while True:
                item = await queue.get()
                if item is _CLOSED:
                    return
                if item is _SHUTDOWN:
                    await send({"type": "websocket.close", "code": 1012})
                    return
                await send({"type": "websocket.send", "text": json.dumps(item)})
        except Exception:  # the page went away while we were sending
            return
        finally:
            self._queues.discard(queue)
            watcher.cancel()


def error_message(failure: Failure) -> dict[str, Any]:
    """The `error` message: the overlay shows these fields as text (never as HTML)."""
    return {
        "type": "error",
        "error": failure.kind,
        "message": failure.message,
        "file": failure.file,
        "line": failure.line,
        "summary": failure.summary,
        "traceback": failure.traceback,
    }


def same_origin(scope: Scope) -> bool:
    """True when the handshake's Origin names the host the socket was opened on."""
    origin, host = _header(scope, b"origin"), _header(scope, b"host")
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    default = 443 if parts.scheme == "https" else 80
    try:
        origin_port = parts.port or default
        host_parts = urlsplit(f"//{host}")
        host_port = host_parts.port or default
    except ValueError:
        return False
    return (parts.hostname, origin_port) == (host_parts.hostname, host_port)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class LiveReloadMiddleware:
    """ASGI middleware: injects the live-reload script into HTML pages and serves its socket.

    `hub` defaults to a new `LiveHub`; `path` is the socket's path under `root_path`.
    Everything else (lifespan, other WebSockets, non-HTML responses) passes straight through.
    """

    def __init__(self, app: ASGIApp, hub: LiveHub | None = None, path: str = LIVE_PATH) -> None:
        self.app = app
        self.hub = hub if hub is not None else LiveHub()
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" and _route_path(scope) == self.path:
            await self.hub.serve(scope, receive, send)
        elif kind == "http" and scope.get("method") != "HEAD" and not _header(scope, b"hx-request"):
            script = client_script(scope.get("root_path", "").rstrip("/") + self.path)
            await self.app(scope, receive, _Injector(send, script).send)
        else:
            await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


class _Injector:
    """Wraps `send`: holds `http.response.start` until the body shows whether to inject."""

    def __init__(self, send: Send, script: bytes) -> None:
        self._send = send
        self._script = script
        self._start: Message | None = None
        self._length: int | None = None
        self._mode = "undecided"  # "pass" | "whole" | "stream"
        self._held = b""  # body not yet sent
        self._done = False  # injected, or found a script already there

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if self._mode == "pass":
            await self._send(message)
        elif kind == "http.response.start":
            self._on_start(message)
            if self._mode == "pass":
                await self._send(message)
        elif kind == "http.response.body":
            await self._on_body(message.get("body", b""), message.get("more_body", False))
        else:  # an extension (pathsend, trailers): leave this response alone
            self._mode = "pass"
            if self._start is not None:
                await self._send(self._start)
                self._start = None
            await self._send(message)

    def _on_start(self, message: Message) -> None:
        headers = message.get("headers", ())
        ctype = _get(headers, b"content-type")
        encoding = _get(headers, b"content-encoding")
        length = _get(headers, b"content-length")
        if (
            not ctype.lower().startswith("text/html")
            or encoding.lower() not in ("", "identity")
            or message.get("status", 200) in (204, 304)
        ):
            self._mode = "pass"
            return
        self._start = message
        self._length = int(length) if length.isdigit() else None

    async def _on_body(self, body: bytes, more: bool) -> None:
        if self._mode == "stream":
            out = self._stream(body, more)
            if out or not more:
                await self._send({"type": "http.response.body", "body": out, "more_body": more})
            return
        self._held += body
        if self._mode == "undecided":
            document = _is_document(self._held)
            if document is None and more:
                return  # too little yet to tell
            if not document:
                await self._flush_untouched(more)
                return
            if more and (self._length is None or self._length > BUFFER_LIMIT):
                self._mode = "stream"
                await self._send_start(None)
                held, self._held = self._held, b""
                await self._on_body(held, more)
                return
            self._mode = "whole"
        if not more:
            body = _inject_whole(self._held, self._script)
            self._held = b""
            await self._send_start(len(body))
            await self._send({"type": "http.response.body", "body": body, "more_body": False})

    def _stream(self, chunk: bytes, more: bool) -> bytes:
        data = self._held + chunk
        self._held = b""
        if self._done:
            return data
        if MARKER in data or _FASTHTML_LIVE in data:
            self._done = True
            return data
        at = data.lower().find(_BODY_END)
        if at >= 0:
            self._done = True
            return data[:at] + self._script + data[at:]
        if not more:
            self._done = True
            return data + self._script
        keep = 64  # longer than anything searched for: it may straddle two chunks
        self._held, data = data[-keep:], data[:-keep]
        return data

    async def _send_start(self, length: int | None) -> None:
        assert self._start is not None
        headers = [(k, v) for k, v in self._start.get("headers", ())
                   if k.lower() != b"content-length"]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        await self._send({**self._start, "headers": headers})
        self._start = None

    async def _flush_untouched(self, more: bool) -> None:
        self._mode = "pass"
        if self._start is not None:
            await self._send(self._start)
            self._start = None
        if self._held or not more:
            held, self._held = self._held, b""
            await self._send({"type": "http.response.body", "body": held, "more_body": more})


def _inject_whole(body: bytes, script: bytes) -> bytes:
    if MARKER in body:
        return body
    body = _strip_fasthtml_live_script(body)
    at = body.lower().rfind(_BODY_END)
    return body[:at] + script + body[at:] if at >= 0 else body + script


def _is_document(body: bytes) -> bool | None:
    """Whether `body` starts a whole HTML document; None while too little of it has arrived."""
    rest = body[_PREAMBLE.match(body).end():]  # type: ignore[union-attr]
    if _DOCUMENT_START.match(rest):
        return True
    if len(body) > 65536:
        return False
    if rest.startswith(b"<!--"):
        return None  # a comment still open
    head = rest.lower()
    return None if any(s.startswith(head) for s in (b"<!doctype html", b"<html")) else False


def _strip_fasthtml_live_script(body: bytes) -> bytes:
    """Drop the reload script of FastHTML's `live=True`: one live client per page."""
    return _SCRIPT.sub(lambda m: b"" if _is_fasthtml_live(m.group(1)) else m.group(0), body)


def _is_fasthtml_live(code: bytes) -> bool:
    return _FASTHTML_LIVE in code and b"WebSocket" in code


def _get(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return ""
