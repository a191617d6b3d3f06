"""The IPython extension: `%load_ext fh_utils`, then `%fh app` to serve an app from a notebook.

Loading the extension starts reloading the project modules the notebook imports (its
directory, and the directories `%fh --watch` names) on save, between cells
(`fh_utils.notebook.reloads`). `%fh app` serves `app` from a server in a background thread
(`fh_utils.notebook.server`) and shows it in an iframe, with its URL; `%fh` again swaps the app
behind the same port. `%fh --stop` stops the server, and so does the kernel shutting down.

What FastHTML's `fasthtml.jupyter` offers is covered: `JupyUvi(app, port=, host=,
log_level=, live=)` is `%fh app --port --host --log-level --live`; `HTMX(path, height=,
link=)` is the iframe and link `%fh --page --width --height` shows; `htmx_config_port` is sent
with it, so components shown with `fasthtml.jupyter.show` reach the server; `JupyUvi.stop()`
is `%fh --stop`.
"""

from __future__ import annotations

import argparse
import atexit
import html
import logging
import os
import shlex
import sys
import uuid
from pathlib import Path
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from fh_utils.notebook.reloads import KernelReloads
from fh_utils.notebook.server import NotebookServer, ServeFailed
from fh_utils.serve.hosts import allowed_hosts

__all__ = ["FhMagics", "load_ipython_extension", "unload_ipython_extension"]

logger = logging.getLogger("fh_utils")

DEFAULT_HEIGHT = 400  # px, until a page that reports its height (FastHTML's) says otherwise

# The permissions FastHTML's HTMX() iframe asks for.
_ALLOW = ("accelerometer; autoplay; camera; clipboard-read; clipboard-write; display-capture; "
          "encrypted-media; fullscreen; gamepad; geolocation; gyroscope; hid; "
          "identity-credentials-get; idle-detection; magnetometer; microphone; midi; payment; "
          "picture-in-picture; publickey-credentials-get; screen-wake-lock; serial; usb; "
          "web-share; xr-spatial-tracking")

# A FastHTML app made in a notebook posts its height to the page holding its iframe (its
# `iframe_scr`): `--height auto` follows it. Listening from a script next to the iframe, not
# only from its `onload` (as FastHTML's `HTMX()` does): the page posts from its own `onload`,
# which can come first. The `onload` is there for frontends that run no scripts in output.
_FIT_HEIGHT = """(function (frame) {
  if (!frame || frame.dataset.fhUtilsFit) return;
  frame.dataset.fhUtilsFit = '1';
  window.addEventListener('message', function (e) {
    if (e.source === frame.contentWindow && e.data && e.data.height)
      frame.style.height = (e.data.height + 1) + 'px';
  });
})(%s)"""

# FastHTML's `htmx_config_port`: htmx requests from components shown in the notebook itself
# (`fasthtml.jupyter.show`) go to the server's port.
_HTMX_PORT = """<script>
window.fhUtilsPort = %d;
if (!window.fhUtilsHtmxPort) {
  window.fhUtilsHtmxPort = true;
  ["htmx:configRequest", "htmx-config-request"].forEach(function (name) {
    document.body.addEventListener(name, function (event) {
      var ctx = event.detail.ctx;
      var path = ctx ? ctx.request.action : event.detail.path;
      if (path.includes('://')) return;
      var full = location.protocol + '//' + location.hostname + ':' + window.fhUtilsPort + path;
      if (ctx) { ctx.request.mode = 'cors'; ctx.request.action = full; }
      else { htmx.config.selfRequestsOnly = false; event.detail.path = full; }
    });
  });
}
</script>"""


class _CellOutput(logging.Handler):
    """Log lines into the notebook: the output of the cell running (or that ran last), or the
    terminal. Looks `sys.stdout` up at each line: the kernel replaces it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        from uvicorn.logging import DefaultFormatter

        self.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


@magics_class
class FhMagics(Magics):
    """`%fh`, and what the extension runs around each cell."""

    def __init__(self, shell: Any) -> None:
        # Untyped in older IPython 9 releases: either way, mypy strict passes.
        super().__init__(shell)  # type: ignore[no-untyped-call, unused-ignore]
        kernel = getattr(shell, "kernel", None)
        io_loop = getattr(kernel, "io_loop", None)
        self._schedule = getattr(io_loop, "add_callback", None)  # thread-safe (tornado)
        self.reloads: KernelReloads | None = None
        self.server: NotebookServer | None = None
        self._handler = _CellOutput()
        self._saved: tuple[bool, int] = (True, logging.NOTSET)  # the logger's, restored

    # -- the extension's lifecycle -----------------------------------------------------------
    def open(self) -> None:
        assert self.shell is not None
        fh_logger = logging.getLogger("fh_utils")
        fh_logger.addHandler(self._handler)
        self._saved = (fh_logger.propagate, fh_logger.level)
        fh_logger.propagate = False
        if fh_logger.level == logging.NOTSET or fh_logger.level > logging.INFO:
            fh_logger.setLevel(logging.INFO)
        loaded: set[str] = getattr(self.shell.extension_manager, "loaded", set())
        if {"autoreload", "IPython.extensions.autoreload"} & loaded:
            logger.warning("%%autoreload is loaded: turn it off (%%autoreload off) so that "
                           "project modules are reloaded once, by fh_utils")
        self._watch([Path.cwd()])
        self.shell.events.register("pre_run_cell", self.pre_run_cell)
        self.shell.events.register("post_run_cell", self.post_run_cell)
        atexit.register(self.close)

    def close(self) -> None:
        """Stop the server and the reloads (`%unload_ext`, and the kernel shutting down)."""
        atexit.unregister(self.close)
        if self.shell is not None:
            for event, callback in (("pre_run_cell", self.pre_run_cell),
                                    ("post_run_cell", self.post_run_cell)):
                if callback in self.shell.events.callbacks[event]:
                    self.shell.events.unregister(event, callback)
        self._stop_server()
        if self.reloads is not None:
            self.reloads.stop()
            self.reloads = None
        fh_logger = logging.getLogger("fh_utils")
        fh_logger.removeHandler(self._handler)
        fh_logger.propagate, level = self._saved
        fh_logger.setLevel(level)

    def pre_run_cell(self, info: Any = None) -> None:
        if self.reloads is not None:
            self.reloads.before_cell()

    def post_run_cell(self, result: Any = None) -> None:
        if self.reloads is not None:
            self.reloads.after_cell()
        if self.server is not None:
            self.server.refresh()

    def _watch(self, roots: list[Path]) -> None:
        """Reload project modules under `roots` (with those watched already)."""
        assert self.shell is not None
        old = self.reloads
        wanted = [r.resolve() for r in roots]
        if old is not None:
            if all(any(r.is_relative_to(d) for d in old.roots) for r in wanted):
                return
            wanted = [*old.roots, *wanted]
            old.stop()
        self.reloads = KernelReloads(wanted, self._schedule, self.shell.user_ns)
        self.reloads.server = self.server
        self.reloads.start()

    # -- %fh -----------------------------------------------------------------------------------
    @line_magic  # type: ignore[misc, untyped-decorator, unused-ignore]  # older IPython 9
    def fh(self, line: str) -> None:
        """Serve an ASGI app (FastHTML, Starlette, FastAPI) from this notebook and show it.

        %fh app [--page /] [--port N] [--host H] [--width W] [--height H] [--live]
                [--watch DIR] [--log-level L]
        %fh --stop

        Running it again swaps the app behind the same server and port (a new app object's
        lifespan starts, the old one's shuts down). `%fh -h` lists the options.
        """
        args = _parse(line)
        if args is None:  # -h
            return
        if args.stop:
            if self.server is None:
                print("fh_utils: no server is running")
            else:
                port = self.server.port
                self._stop_server()
                print(f"fh_utils: stopped the server on port {port}")
            return
        if not args.app:
            raise UsageError("%fh needs the app to serve: %fh app (or %fh --stop)")
        app = self._evaluate(args.app)
        if args.watch:
            self._watch([Path(d).expanduser() for d in args.watch])
        page = args.page if args.page.startswith("/") else "/" + args.page
        server = self._server(args.host, args.port, args.log_level)
        server.live = args.live
        if args.allowed_host is not None or not server.guard.allowed:
            server.guard.allowed = allowed_hosts(args.allowed_host)
        try:
            swapped = server.serve(app)
        except ServeFailed as exc:
            failure = exc.failure
            detail = f"\n{failure.traceback}" if failure.traceback else ""
            raise UsageError(f"could not start {args.app}: {failure.message}{detail}") from None
        if self.reloads is not None:
            self.reloads.server = server
            self.reloads.serving(app)
        if swapped:
            server.refresh()
        url = f"http://{_browser_host(server.host)}:{server.port}{page}"
        _display({"text/html": _iframe(url, args.width, args.height, server.port),
                  "text/plain": f"Serving {args.app} at {url}"})

    def _evaluate(self, expression: str) -> Any:
        assert self.shell is not None
        try:
            app = self.shell.ev(expression)  # type: ignore[no-untyped-call, unused-ignore]
        except Exception as exc:
            raise UsageError(f"%fh {expression}: {type(exc).__name__}: {exc}") from None
        if not callable(app) or isinstance(app, type(sys)):
            raise UsageError(f"%fh {expression}: {type(app).__name__} is not an ASGI app")
        return app

    def _server(self, host: str | None, port: int | None, log_level: str) -> NotebookServer:
        server = self.server
        if server is not None and server.running:
            if port not in (None, server.port) or host not in (None, server.host):
                raise UsageError(f"already serving on {server.host}:{server.port}: "
                                 "%fh --stop first to serve on another address")
            return server
        if port is None:
            port = int(os.environ.get("PORT") or 5001)
        try:
            server = NotebookServer(host or "127.0.0.1", port, log_level=log_level)
        except OSError as exc:
            raise UsageError(f"{exc.strerror}: pass --port N (or --port 0 for a free "
                             "port)") from None
        server.start()
        self.server = server
        if self.reloads is not None:
            self.reloads.server = server
        return server

    def _stop_server(self) -> None:
        server, self.server = self.server, None
        if self.reloads is not None:
            self.reloads.server = None
        if server is not None:
            server.stop()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"%fh: {message} (%fh -h lists the options)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise _Help()


class _Help(Exception):
    """`%fh -h` printed the help."""


def _parser() -> _Parser:
    parser = _Parser(prog="%fh", description="Serve an ASGI app from this notebook and show "
                     "it; again, swap the app behind the same server and port.")
    parser.add_argument("app", nargs="?", help="the app to serve: a name (or an expression "
                        "without spaces) in the notebook")
    parser.add_argument("--page", default="/", help="the path the iframe shows (default: /)")
    parser.add_argument("--port", type=int, default=None, help="the port to serve on "
                        "(default: $PORT or 5001; 0 picks a free one)")
    parser.add_argument("--host", default=None,
                        help="the address to bind (default: 127.0.0.1)")
    parser.add_argument("--width", default="100%",
                        help="the iframe's width: pixels or a CSS length (default: 100%%)")
    parser.add_argument("--height", default="auto", help="the iframe's height: pixels, a CSS "
                        f"length, or auto ({DEFAULT_HEIGHT} px, then the height a FastHTML "
                        "page reports; the default)")
    parser.add_argument("--live", action="store_true", help="reload open pages after each "
                        "cell that ran and after each reload")
    parser.add_argument("--watch", action="append", default=[], metavar="DIR",
                        help="also reload project modules under DIR on save (repeatable)")
    parser.add_argument("--allowed-host", action="append", default=None, metavar="HOST",
                        help="also accept requests for this Host header: a proxy or tunnel "
                        "name, '.example.com' for a domain, '*' for any (repeatable; "
                        "default: $FH_UTILS_ALLOWED_HOST)")
    parser.add_argument("--log-level", default="warning",
                        help="uvicorn's log level (default: warning)")
    parser.add_argument("--stop", action="store_true", help="stop the server")
    return parser


def _parse(line: str) -> argparse.Namespace | None:
    """The options of `%fh`; None when they asked for the help (printed)."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%fh: {exc}") from None
    try:
        return _parser().parse_args(words)
    except _Help:
        return None


def _display(bundle: dict[str, str]) -> None:
    from IPython.display import display

    display(bundle, raw=True)  # type: ignore[no-untyped-call]


def _browser_host(host: str) -> str:
    """Where the browser showing the notebook finds a server bound to `host`."""
    if host in ("0.0.0.0", "::", "", "localhost"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _css_length(value: str) -> str:
    return f"{value}px" if value.isdigit() else value


def _iframe(url: str, width: str, height: str, port: int) -> str:
    """The iframe (as FastHTML's `HTMX()` makes it), a link, and `htmx_config_port`."""
    fit = height == "auto"
    style = (f"width: {html.escape(_css_length(width))}; "
             f"height: {DEFAULT_HEIGHT if fit else html.escape(_css_length(height))}"
             f"{'px' if fit else ''}; border: none;")
    frame_id = f"fh-utils-{uuid.uuid4().hex[:12]}"
    onload = f' onload="{html.escape(_FIT_HEIGHT % "this")}"' if fit else ""
    src = html.escape(url)
    fit_now = (f"<script>{_FIT_HEIGHT % f'document.getElementById({frame_id!r})'}</script>"
               if fit else "")
    return (f'<iframe id="{frame_id}" src="{src}" style="{style}"{onload} allow="{_ALLOW}">'
            f'</iframe>{fit_now}<div><a href="{src}" target="_blank">{src}</a></div>'
            + _HTMX_PORT % port)


def _magics(ipython: Any) -> FhMagics | None:
    found = ipython.magics_manager.registry.get(FhMagics.__name__)
    return found if isinstance(found, FhMagics) else None


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext fh_utils`: the `%fh` magic, and project modules reloaded on save."""
    magics = FhMagics(ipython)
    ipython.register_magics(magics)
    magics.open()


def unload_ipython_extension(ipython: Any) -> None:
    """`%unload_ext fh_utils`: stop the server and the reloads."""
    magics = _magics(ipython)
    if magics is not None:
        magics.close()
