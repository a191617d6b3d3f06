"""Browser refresh for any ASGI app: an injected script, a WebSocket, and a hub that pushes to it.

`fh_utils dev app.py --live` wraps the app it serves in `LiveReloadMiddleware` and tells the
middleware's `LiveHub` about each reload: once the new code is serving, open pages fetch their
URL again and morph in place to it (or reload, with `morph=False`); they show an overlay when a
reload fails or a request raises, and swap stylesheets in place when a `.css` file changes.

The middleware works on its own with any ASGI server. Under plain `uvicorn --reload`, the
restart drops the socket; the page reconnects (backoff capped at about 2 s) and refreshes as soon
as the new process answers::

    import os
    from fh_utils.browser.live import LiveReloadMiddleware

    app = ...  # FastHTML, Starlette, FastAPI or any ASGI app
    if os.environ.get("DEV"):  # never in production: the socket carries tracebacks
        app = LiveReloadMiddleware(app)

The script goes only into whole HTML documents (`text/html` starting with `<!doctype html>` or
`<html>`), before the last `</body>`: not into HTMX requests (`HX-Request`), not into `Range`
answers, never twice. A request for an HTML page is passed on without its `Accept-Encoding`, so
the app's own compression middleware answers uncompressed. A FastHTML app built with `live=True`
has its own reload script replaced by this one. The WebSocket at `LIVE_PATH` under the app's
`root_path`, and `LIVE_PATH/open` (open a project file in the developer's editor), answer only
same-origin pages.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from fh_utils.asgi import ASGIApp, Message, Receive, Scope, Send
from fh_utils.browser.editor import DETECTED, EditorError, find_editor
from fh_utils.browser.html import Rewriter
from fh_utils.reload.errors import Failure, describe, display_path

if TYPE_CHECKING:
    from fh_utils.reload.engine import Outcome

__all__ = ["LIVE_PATH", "LiveHub", "LiveReloadMiddleware", "editor_href", "fasthtml_live"]

logger = logging.getLogger("fh_utils")

LIVE_PATH = "/__fh_utils_live__"  # the WebSocket, under the app's root_path
OPEN = "/open"  # under LIVE_PATH: open a file in the editor
MARKER = b"data-fh-utils-live"  # the attribute on the injected <script>: never inject twice
BUFFER_LIMIT = 4 * 1024 * 1024  # a body with a Content-Length up to this is injected whole

# URLs of files the browser loads: under --live they are revalidated on each use.
STATIC_SUFFIXES = frozenset(
    {".css", ".js", ".mjs", ".map", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".webp",
     ".avif", ".woff", ".woff2", ".ttf", ".otf"}
)

_PACKAGE = files("fh_utils.browser")
# idiomorph 0.8.0 from npm, unchanged (0BSD: idiomorph.LICENSE beside this file); in the same
# function scope as live.js, so a page's own Idiomorph (htmx's morph extension) is left alone.
_CLIENT_JS = (
    "(function () {\n/* idiomorph 0.8.0, https://github.com/bigskysoftware/idiomorph, 0BSD */\n"
    + _PACKAGE.joinpath("idiomorph.min.js").read_text(encoding="ascii")
    + "\n" + _PACKAGE.joinpath("live.js").read_text(encoding="ascii") + "\n})();"
)
_PREAMBLE = re.compile(rb"(?:\xef\xbb\xbf)?(?:\s|<!--.*?-->)*", re.S)
_DOCUMENT_START = re.compile(rb"<(?:!doctype\s+html|html)\b", re.I)
_FASTHTML_LIVE = b"/live-reload`"
_FRAME = re.compile(r'^\s*File "(.+)", line \d+', re.M)
_OWN = str(Path(__file__).resolve().parent) + os.sep  # fh_utils' own frames
_CLOSED, _SHUTDOWN = object(), object()
# What a page's error report may carry (live.js), each clipped to `_CLIP` characters.
_BROWSER_FIELDS = ("kind", "message", "page", "source", "stack", "request", "status")
_CLIP = 4000


def client_script(ws_path: str, *, server: str = "", generation: int = 0, css: int = 0,
                  morph: bool = True, code: bool = True) -> bytes:
    """The `<script>` element injected into pages; it connects to `ws_path` on the page's host.

    `server`, `generation` and `css` say which version of the pages it came with (the hub's),
    so a page that connects after a newer one went out refreshes itself. `code` False leaves
    the script empty: for a page's own morph fetch, which only reads the attributes.
    """
    attributes = {
        MARKER.decode(): ws_path, "id": "fh-utils-live", "data-fh-utils-server": server,
        "data-fh-utils-generation": str(generation), "data-fh-utils-css": str(css),
        "data-fh-utils-morph": "1" if morph else "0",
    }
    tag = " ".join(f'{name}="{html.escape(value)}"' for name, value in attributes.items())
    return f"<script {tag}>{_CLIENT_JS if code else ''}</script>".encode()


def editor_href(file: str, line: int | None, root_path: str = "") -> str:
    """The URL that opens `file` at `line` in the developer's editor (with `--live`)."""
    return (f"{root_path.rstrip('/')}{LIVE_PATH}{OPEN}?file={quote(file, safe='')}"
            f"&line={line or 1}")


def fasthtml_live(app: object) -> bool:
    """True for an app built with FastHTML's `fast_app(live=True)` (its `/live-reload` socket)."""
    return any(getattr(route, "path", None) == "/live-reload" and
               type(route).__name__ == "WebSocketRoute" for route in getattr(app, "routes", ()))


class LiveHub:
    """Pushes reload, stylesheet and error messages to every connected page.

    `fh_utils dev --live` registers it as a session listener (`reloaded`, `failed`,
    `static_changed`); on its own, call `reload()`, `show_error()` or `static_changed()`.
    Each page has its own queue, so a slow page never delays the others. `is_project_file`
    says which files in a traceback the overlay links to the editor.

    Every connection starts with `hello`: this process (`server`), how many reloads
    (`generation`) and stylesheet swaps (`css`) went out. The injected script carries the same
    figures as of its request, so a page that missed a message while it loaded refreshes.

    Pages report their errors over the same socket (uncaught errors and rejections, htmx's
    failed requests, swaps and targets): each is logged with the page's URL, and passed to
    `on_browser_error` (`fh_utils status` counts them).
    """

    def __init__(self, is_project_file: Callable[[Path], bool] | None = None, *,
                 on_browser_error: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.failure: Failure | None = None  # a failed (re)load, shown on every page
        self.on_browser_error = on_browser_error
        self.is_project_file = is_project_file or _under_cwd
        self.server = secrets.token_hex(4)
        self.generation = 0
        self.css = 0
        self._request_error: tuple[str | None, dict[str, Any]] | None = None  # (page, message)
        self._queues: dict[asyncio.Queue[object], str | None] = {}  # each page's queue: its URL

    @property
    def connections(self) -> int:
        return len(self._queues)

    # -- what happened (DevListener) -------------------------------------------------------
    async def reloaded(self, outcome: Outcome | None = None) -> None:
        """The new code is serving: clear any error and refresh every page."""
        await self.reload()

    async def failed(self, failure: Failure) -> None:
        """A (re)load failed: show the error on every page, and on pages opened from now on."""
        await self.show_error(failure)

    async def static_changed(self, paths: list[Path]) -> None:
        """Files the pages use changed, no Python re-ran. Stylesheets are swapped in place (a
        page that links none of them refreshes); a script, image or font reloads the page (it
        loads them anew and runs its scripts again); any other file (a template or data file
        read per request) refreshes it."""
        css = [p for p in paths if p.suffix.lower() == ".css"]
        if css:
            self.css += 1
            self.broadcast({"type": "css", "files": [display_path(p) for p in css],
                            "css": self.css})
        if len(css) < len(paths):
            self._push_reload(full=any(p.suffix.lower() in STATIC_SUFFIXES for p in paths
                                       if p.suffix.lower() != ".css"))

    # -- pushing ---------------------------------------------------------------------------
    async def reload(self) -> None:
        self.failure = None
        self._request_error = None
        self._push_reload()

    async def show_error(self, failure: Failure) -> None:
        self.failure = failure
        self.broadcast(self.error_message(failure))

    def request_failed(self, failure: Failure, request: str, page: str | None) -> None:
        """An exception escaped the app while it answered `request` (`"GET /path"`), asked
        for by the page at `page` (None: unknown). Every page shows it; a page opened at `page`
        shows it too, until the next reload or a good answer for that page."""
        message = {**self.error_message(failure), "request": request}
        self._request_error = (page, message)
        self.broadcast(message)

    def request_succeeded(self, page: str) -> None:
        """The page at `page` was served without an exception."""
        if self._request_error is not None and self._request_error[0] == page:
            self._request_error = None

    def page_said(self, text: str) -> None:
        """A message from a page: `{"type": "browser-error", "kind", "message", "page", ...}`
        (`live.js`), logged with the page's URL."""
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("type") != "browser-error":
            return
        report = {key: _clip(message.get(key)) for key in _BROWSER_FIELDS
                  if message.get(key) not in (None, "")}
        report.setdefault("kind", "error")
        where = f" ({report['source']})" if report.get("source") else ""
        request = f" [{report['request']}]" if report.get("request") else ""
        logger.warning("Browser error on %s: %s: %s%s%s", report.get("page", "(unknown page)"),
                       report["kind"], report.get("message", ""), request, where)
        if self.on_browser_error is not None:
            try:
                self.on_browser_error(report)
            except Exception:
                logger.exception("Could not record a browser error")

    def hello(self) -> dict[str, Any]:
        return {"type": "hello", "server": self.server, "generation": self.generation,
                "css": self.css}

    def broadcast(self, message: dict[str, Any]) -> None:
        for queue in self._queues:
            queue.put_nowait(message)

    def error_message(self, failure: Failure) -> dict[str, Any]:
        """The `error` message: the overlay shows these fields as text (never as HTML), and
        links the files in `editable` (the project's) to the editor."""
        message = error_message(failure)
        named = [failure.file] if failure.file else []
        named += _FRAME.findall(failure.traceback)
        message["editable"] = [f for f in dict.fromkeys(named) if self._editable(f)]
        return message

    def _editable(self, file: str) -> bool:
        try:
            path = Path(file).resolve()
            return path.is_file() and self.is_project_file(path)
        except (OSError, ValueError):
            return False

    def _push_reload(self, full: bool = False) -> None:
        self.generation += 1
        message: dict[str, Any] = {"type": "reload", "generation": self.generation,
                                   "failing": self.failure is not None}
        if full:
            message["full"] = True
        self.broadcast(message)

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
        page = _query(scope, "page")
        queue: asyncio.Queue[object] = asyncio.Queue()
        queue.put_nowait(self.hello())
        if self.failure is not None:
            queue.put_nowait(self.error_message(self.failure))
        if self._request_error is not None and page and self._request_error[0] == page:
            queue.put_nowait(self._request_error[1])
        self._queues[queue] = page

        async def until_disconnect() -> None:
            while (message := await receive())["type"] != "websocket.disconnect":
                if message.get("text"):
                    self.page_said(message["text"])
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
            self._queues.pop(queue, None)
            watcher.cancel()


def _clip(value: object) -> object:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = str(value)
    return text if len(text) <= _CLIP else text[:_CLIP] + "..."


def error_message(failure: Failure) -> dict[str, Any]:
    """The `error` message of a failed load (`request` None) without editor links."""
    return {
        "type": "error",
        "error": failure.kind,
        "message": failure.message,
        "file": failure.file,
        "line": failure.line,
        "summary": failure.summary,
        "traceback": failure.traceback,
        "request": None,
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


def _same_origin_request(scope: Scope) -> bool:
    """A request from one of the server's own pages: a same-origin `Origin` (fetch, POST), or
    without one, `Sec-Fetch-Site: same-origin` (a link followed), which no other site can send."""
    if _header(scope, b"origin") is not None:
        return same_origin(scope)
    return _header(scope, b"sec-fetch-site") == "same-origin"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _query(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0] if values else None


def _under_cwd(path: Path) -> bool:
    return path.is_relative_to(Path.cwd()) and not {"site-packages", "dist-packages"} & set(
        path.parts)


class LiveReloadMiddleware:
    """ASGI middleware: injects the live-reload script into HTML pages and serves its socket.

    `hub` defaults to a new `LiveHub`; `path` is the socket's path under `root_path`; `morph`
    False makes pages reload instead of morphing. `roots` (default: the working directory) and
    `is_project_file` say which files the editor may open and which frames of a request's
    traceback are the user's; `editor` is the editor command (default: see fh_utils.browser.editor).
    Everything else (lifespan, other WebSockets) passes straight through.
    """

    def __init__(self, app: ASGIApp, hub: LiveHub | None = None, path: str = LIVE_PATH, *,
                 morph: bool = True, editor: str | None = None,
                 roots: Sequence[Path | str] = (),
                 is_project_file: Callable[[Path], bool] | None = None) -> None:
        self.app = app
        self.roots = [Path(r).resolve() for r in roots] or [Path.cwd().resolve()]
        self.is_project_file = is_project_file or self._under_roots
        self.hub = hub if hub is not None else LiveHub(self.is_project_file)
        self.path = path
        self.morph = morph
        self.editor = editor
        self._told: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" and _route_path(scope) == self.path:
            await self.hub.serve(scope, receive, send)
        elif kind == "http" and _route_path(scope) == self.path + OPEN:
            status, text = await self._open_in_editor(scope)
            await _respond(send, status, text)
        elif kind == "http":
            await self._http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "GET")
        inject = method in ("GET", "HEAD") and _header(scope, b"hx-request") is None
        page_request = inject and _asks_for_page(scope)
        inner = scope
        if inject and (method == "HEAD" or page_request):
            inner = dict(scope)
            inner["method"] = "GET"  # HEAD gets GET's headers, the script counted in
            if page_request:  # an uncompressed page, which the script can go into
                inner["headers"] = [(k, v) for k, v in scope.get("headers", ())
                                    if k.lower() != b"accept-encoding"]
        script = None
        if inject:
            hub = self.hub
            script = client_script(scope.get("root_path", "").rstrip("/") + self.path,
                                   server=hub.server, generation=hub.generation, css=hub.css,
                                   morph=self.morph,
                                   code=_header(scope, b"x-fh-utils-live") != "morph")
        navigation = _header(scope, b"sec-fetch-dest") == "document"
        injector = _Injector(send, script, label=f"{method} {_display(scope)}",
                             static=method in ("GET", "HEAD") and _is_static(scope),
                             navigation=navigation, tell=self._tell)
        try:
            await self.app(inner, receive, injector.send)
        except Exception as exc:
            self._report(exc, scope, page_request or navigation)  # before a page can connect
            await injector.finish(failed=True)
            raise
        await injector.finish(failed=False)
        if (page_request or navigation) and injector.status < 500:
            self.hub.request_succeeded(_page_key(scope))

    def _report(self, exc: Exception, scope: Scope, page_request: bool) -> None:
        """Show an exception that escaped the app (uvicorn logs it as usual) in the pages."""
        if type(exc).__name__ == "ClientDisconnect":
            return
        try:
            failure = _describe_trimmed(exc, self.is_project_file)
            if page_request:
                page: str | None = _page_key(scope)
            else:
                referrer = _header(scope, b"hx-current-url") or _header(scope, b"referer")
                page = _url_key(referrer) if referrer else None
            self.hub.request_failed(failure, f"{scope.get('method')} {_display(scope)}", page)
        except Exception:
            logger.debug("Could not show a request's error in the page", exc_info=True)

    def _tell(self, reason: str, text: str) -> None:
        """Log `text` once per `reason`: why a page got no script."""
        if reason not in self._told:
            self._told.add(reason)
            logger.warning("%s", text)

    def _under_roots(self, path: Path) -> bool:
        return any(path.is_relative_to(r) for r in self.roots) and not {
            "site-packages", "dist-packages"} & set(path.parts)

    # -- opening files in the editor ---------------------------------------------------------
    async def _open_in_editor(self, scope: Scope) -> tuple[int, str]:
        """`LIVE_PATH/open?file=F&line=N`: a project file, asked for by one of our own pages
        (the Host was checked before: fh_utils.serve.hosts), opened in the editor.
        (status, text)."""
        if scope.get("method") not in ("GET", "POST"):
            return 405, "Use GET or POST."
        if not _same_origin_request(scope):
            logger.warning("Refused to open a file for a request from another site (origin %s)",
                           _header(scope, b"origin") or "(none)")
            return 403, "Only the dev server's own pages may open files."
        name = _query(scope, "file")
        try:
            line = int(_query(scope, "line") or 1)
            column = int(_query(scope, "column") or 1)
        except ValueError:
            return 400, "line and column must be numbers."
        if not name or line < 1 or column < 1:
            return 400, "Say which file: ?file=app.py&line=12."
        path = (Path.cwd() / name).resolve()  # an absolute name stays itself
        if not (any(path.is_relative_to(r) for r in self.roots) and self.is_project_file(path)):
            return 403, f"{name} is not a file of this project."
        if not path.is_file():
            return 404, f"{name} does not exist."
        editor = find_editor(self.editor)
        if editor is None:
            text = ("No editor found: set FH_UTILS_EDITOR (or VISUAL, EDITOR) or pass --editor; "
                    f"none of {', '.join(DETECTED)} is on PATH.")
            self._tell("no editor", text)
            return 500, text
        try:
            await editor.open(path, line, column)
        except EditorError as exc:
            logger.warning("%s", exc)
            return 500, str(exc)
        logger.info("Opened %s:%d in %s", display_path(path), line, editor.name)
        return 204, ""


async def _respond(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"cache-control", b"no-store")]
    if status != 204:
        headers += [(b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _describe_trimmed(exc: BaseException, is_project_file: Callable[[Path], bool]) -> Failure:
    """`describe(exc)`, its traceback starting at the first frame of the user's code (not the
    framework's middleware around it); the exception itself is left as it was."""
    original = tb = exc.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename.startswith(_OWN) or
                              not is_project_file(Path(tb.tb_frame.f_code.co_filename))):
        tb = tb.tb_next
    try:
        if tb is not None:
            exc.__traceback__ = tb
        return describe(exc, is_project_file)
    finally:
        exc.__traceback__ = original


def _asks_for_page(scope: Scope) -> bool:
    """A browser navigation, a page's morph fetch, or any request that accepts HTML."""
    return (_header(scope, b"sec-fetch-dest") in ("document", "iframe")
            or _header(scope, b"x-fh-utils-live") is not None
            or "text/html" in (_header(scope, b"accept") or ""))


def _is_static(scope: Scope) -> bool:
    return Path(scope.get("path", "")).suffix.lower() in STATIC_SUFFIXES


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _display(scope: Scope) -> str:
    """The request's path and query, as the browser sent them."""
    path = scope.get("raw_path")
    text: str = (path.decode("latin-1") if path
                 else scope.get("root_path", "") + scope.get("path", ""))
    query = scope.get("query_string", b"")
    return f"{text}?{query.decode('latin-1')}" if query else text


def _page_key(scope: Scope) -> str:
    return _display(scope)


def _url_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path or '/'}?{parts.query}" if parts.query else parts.path or "/"


class _Injector:
    """Wraps `send`: holds `http.response.start` until the body shows whether to inject.

    `script` None: nothing is injected. `static`: the request named a static file, which is
    marked for revalidation (`Cache-Control: no-cache`) when it carries a validator and no
    cache policy of its own. `navigation`: a browser opening a page; a plain-text 500 from an
    exception is then wrapped in a page with the script (`finish`), and a page that cannot get
    the script is logged (`tell`, once per reason).
    """

    def __init__(self, send: Send, script: bytes | None, *, label: str, static: bool,
                 navigation: bool, tell: Callable[[str, str], None]) -> None:
        self._send = send
        self._script = script
        self._label = label
        self._static = static
        self._navigation = navigation
        self._tell = tell
        self._start: Message | None = None
        self._length: int | None = None
        self._mode = "undecided"  # "pass" | "whole" | "stream" | "error"
        self._held = b""  # body not yet sent
        self._rewriter: Rewriter | None = None
        self.status = 0

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if self._mode == "pass":
            await self._send(message)
        elif kind == "http.response.start":
            message = self._on_start(message)
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

    async def finish(self, failed: bool) -> None:
        """The app returned (or raised): send a 500 held back to see which."""
        if self._mode != "error" or self._start is None:
            return
        start, body = self._start, self._held
        self._start, self._held, self._mode = None, b"", "pass"
        headers = list(start.get("headers", ()))
        if failed and self._script is not None:
            body = _error_page(body, self._script)
            headers = [(k, v) for k, v in headers
                       if k.lower() not in (b"content-type", b"content-length")]
            headers += [(b"content-type", b"text/html; charset=utf-8")]
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    def _on_start(self, message: Message) -> Message:
        headers = message.get("headers", ())
        status = self.status = message.get("status", 200)
        ctype = _get(headers, b"content-type").lower()
        encoding = _get(headers, b"content-encoding").lower()
        length = _get(headers, b"content-length")
        self._mode = "pass"
        if self._script is None:
            pass
        elif self._navigation and status >= 500 and ctype.startswith("text/plain"):
            self._mode = "error"  # held: shown in a page if an exception caused it
        elif (not ctype.startswith("text/html") or status in (204, 206, 304)
              or _get(headers, b"content-range")):
            pass
        elif encoding not in ("", "identity"):
            if self._navigation:
                self._tell("compressed", f"{self._label} came compressed (Content-Encoding: "
                           f"{encoding}) although the request did not accept it: --live cannot "
                           "add its script to such pages, and they will not refresh")
        else:
            self._mode = "undecided"
        if self._mode == "pass":
            return self._revalidated(message) if self._static else message
        self._start = message
        self._length = int(length) if length.isdigit() else None
        return message

    def _revalidated(self, message: Message) -> Message:
        """A static file with a validator and no cache policy: `Cache-Control: no-cache`, so
        the browser asks again (a cheap 304) instead of running an edited script's old copy."""
        headers = message.get("headers", ())
        if (message.get("status", 200) not in (200, 304) or _get(headers, b"cache-control")
                or not (_get(headers, b"etag") or _get(headers, b"last-modified"))):
            return message
        return {**message, "headers": [*headers, (b"cache-control", b"no-cache")]}

    async def _on_body(self, body: bytes, more: bool) -> None:
        if self._mode == "error":
            self._held += body
            return
        if self._mode == "stream":
            assert self._rewriter is not None
            out = self._rewriter.feed(body, final=not more)
            if out or not more:
                await self._send({"type": "http.response.body", "body": out, "more_body": more})
            return
        self._held += body
        if self._mode == "undecided":
            document = _is_document(self._held)
            if document is None and more:
                return  # too little yet to tell
            if not document:
                if self._navigation:
                    self._tell("fragment", f"{self._label} answered text/html that is not a "
                               "whole document (it does not start with <!doctype html> or "
                               "<html>): --live adds its script only to whole documents, so "
                               "this page will not refresh")
                await self._flush_untouched(more)
                return
            if more and (self._length is None or self._length > BUFFER_LIMIT):
                self._mode = "stream"
                self._rewriter = _rewriter(self._script)
                await self._send_start(None)
                held, self._held = self._held, b""
                await self._on_body(held, more)
                return
            self._mode = "whole"
        if not more:
            body = _rewriter(self._script).feed(self._held, final=True)
            self._held = b""
            await self._send_start(len(body))
            await self._send({"type": "http.response.body", "body": body, "more_body": False})

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


def _rewriter(script: bytes | None) -> Rewriter:
    assert script is not None
    return Rewriter(script, MARKER, strip=_is_fasthtml_live)


def _error_page(text: bytes, script: bytes) -> bytes:
    """A plain-text error answer as a page the script can go into (the text unchanged)."""
    shown = html.escape(text.decode("utf-8", "replace"))
    title = shown.splitlines()[0] if shown.strip() else "Server error"
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head>'
            f"<body><pre>{shown}</pre>").encode() + script + b"</body></html>"


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


def _is_fasthtml_live(code: bytes) -> bool:
    """The reload script of FastHTML's `live=True`: one live client per page, ours."""
    return _FASTHTML_LIVE in code and b"WebSocket" in code


def _get(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return ""
