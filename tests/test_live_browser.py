"""`fh_utils dev --live` in headless Chromium (Debian's `chromium`, driven by Playwright)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from fh_utils.browser.live import LIVE_PATH, MARKER
from tests.conftest import (
    RELOAD_TIMEOUT,
    STARTUP_TIMEOUT,
    free_port,
    stop_process,
    wait_until,
    write,
)

WAIT_MS = RELOAD_TIMEOUT * 1000

FASTHTML_APP = """
from fasthtml.common import Button, H1, Input, Link, Main, fast_app

app, rt = fast_app(hdrs=[Link(rel="stylesheet", href="/static/site.css")])

@rt("/")
def get():
    return Main(
        H1("TEXT"),
        Input(id="name"),
        Button("0", id="count", onclick="this.textContent = ++window.clicks"),
    )
"""
SITE_CSS = """
body { min-height: 4000px; }
h1 { color: rgb(255, 0, 0); }
#count { position: fixed; bottom: 0; left: 0; }
"""
STARLETTE_APP = """
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles


async def home(request):
    return HTMLResponse(
        "<!doctype html><html><head><link rel='stylesheet' href='/static/site.css'>"
        "<script src='/static/page.js'></script></head>"
        "<body><h1>TEXT</h1></body></html>"
    )

app = Starlette(routes=[
    Route("/", home),
    Mount("/static", StaticFiles(directory=Path(__file__).parent / "static")),
])
"""


def fasthtml_app(text: str) -> str:
    return FASTHTML_APP.replace("TEXT", text)


def starlette_app(text: str) -> str:
    return STARLETTE_APP.replace("TEXT", text)


@pytest.fixture
def new_page(browser: Browser) -> Iterator[callable]:  # type: ignore[valid-type]
    """Pages in a fresh context; requests leaving the machine (CDN scripts) are refused."""
    context = browser.new_context()
    context.route(re.compile(r"^https?://(?!(127\.0\.0\.1|localhost)[:/])"),
                  lambda route: route.abort())
    errors: list[str] = []

    def make() -> Page:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield make
    context.close()
    assert not errors, errors


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path / "static" / "site.css", SITE_CSS)
    write(tmp_path / "static" / "page.js", "window.pageScript = 1;\n")
    return tmp_path


def h1_text_is(page: Page, text: str) -> None:
    page.wait_for_function(
        "text => document.querySelector('h1')?.textContent === text", arg=text, timeout=WAIT_MS
    )


def open_live(page: Page, url: str) -> None:
    """Open `url` and wait until its live socket is connected."""
    with page.expect_websocket(lambda ws: LIVE_PATH + "?" in ws.url, timeout=WAIT_MS):
        page.goto(url)
    page.evaluate("window.clicks = 0")


# -- reload after an edit ----------------------------------------------------------------------
def test_edit_appears_in_the_open_page(project: Path, serve, new_page):
    app = write(project / "app.py", fasthtml_app("version one"))
    server = serve("app.py", "--live")
    page = new_page()
    open_live(page, server.url)
    h1_text_is(page, "version one")
    page.evaluate("window.before = true")

    write(app, fasthtml_app("version two"))
    h1_text_is(page, "version two")
    assert page.evaluate("window.before") is True  # morphed in place, not reloaded
    assert page.evaluate("window.__fhUtilsLive") is True

    write(app, fasthtml_app("version three"))
    h1_text_is(page, "version three")
    assert page.locator(f"script[{MARKER.decode()}]").count() == 1


def test_starlette_app_refreshes_too(project: Path, serve, new_page):
    app = write(project / "app.py", starlette_app("starlette one"))
    server = serve("app.py", "--live")
    page = new_page()
    open_live(page, server.url)
    write(app, starlette_app("starlette two"))
    h1_text_is(page, "starlette two")


# -- errors ----------------------------------------------------------------------------------
def test_syntax_error_shows_overlay_and_the_fix_clears_it(project: Path, serve, new_page):
    app = write(project / "app.py", fasthtml_app("before the error"))
    server = serve("app.py", "--live")
    page = new_page()
    open_live(page, server.url)

    broken = fasthtml_app("broken") + "\nvalue = (1,\n"
    write(app, broken)
    line = broken.lstrip("\n").splitlines().index("value = (1,") + 1
    overlay = page.locator("#fh-utils-live-overlay")
    overlay.locator(".where").wait_for(timeout=WAIT_MS)
    assert overlay.locator(".where").text_content() == f"app.py:{line}"
    assert overlay.locator(".error").text_content() == "SyntaxError"
    assert "was never closed" in (overlay.locator(".message").text_content() or "")
    assert "value = (1," in (overlay.locator(".traceback").text_content() or "")

    # The old page is still there and works under the overlay.
    assert page.locator("h1").text_content() == "before the error"
    page.locator("#count").click()
    page.locator("#count").click()
    assert page.locator("#count").text_content() == "2"

    # A page opened while the app is failing shows the overlay as soon as it connects.
    late = new_page()
    late.goto(server.url)
    late.locator("#fh-utils-live-overlay .where").wait_for(timeout=WAIT_MS)
    assert late.locator("#fh-utils-live-overlay .where").text_content() == f"app.py:{line}"

    write(app, fasthtml_app("after the fix"))
    for p in (page, late):
        h1_text_is(p, "after the fix")
        assert p.locator("#fh-utils-live-overlay").count() == 0


def test_first_load_failure_shows_overlay_and_traceback_as_text(project: Path, serve, new_page):
    source = fasthtml_app("never served") + "\nraise RuntimeError('<b>not bold</b>')\n"
    app = write(project / "app.py", source)
    line = source.lstrip("\n").splitlines().index("raise RuntimeError('<b>not bold</b>')") + 1
    server = serve("app.py", "--live")
    page = new_page()
    page.goto(server.url)
    overlay = page.locator("#fh-utils-live-overlay")
    overlay.locator(".where").wait_for(timeout=WAIT_MS)
    assert overlay.locator(".where").text_content() == f"app.py:{line}"
    assert overlay.locator(".error").text_content() == "RuntimeError"
    assert overlay.locator(".message").text_content() == "<b>not bold</b>"
    assert overlay.locator("b").count() == 0  # shown as text, never parsed as HTML
    page.keyboard.press("Escape")
    assert overlay.count() == 0

    write(app, fasthtml_app("first good version"))
    h1_text_is(page, "first good version")


# -- static files ----------------------------------------------------------------------------
def test_css_edit_swaps_the_stylesheet_and_keeps_page_state(project: Path, serve, new_page):
    write(project / "app.py", fasthtml_app("styled"))
    server = serve("app.py", "--live")
    page = new_page()
    open_live(page, server.url)
    color = "getComputedStyle(document.querySelector('h1')).color"
    assert page.evaluate(color) == "rgb(255, 0, 0)"
    page.fill("#name", "typed by hand")
    page.evaluate("window.state = 42; window.scrollTo(0, 500)")

    write(project / "static" / "site.css", SITE_CSS.replace("255, 0, 0", "0, 0, 255"))
    page.wait_for_function(f"{color} === 'rgb(0, 0, 255)'", timeout=WAIT_MS)
    assert page.evaluate("window.state") == 42
    assert page.evaluate("window.scrollY") == 500
    assert page.input_value("#name") == "typed by hand"
    page.wait_for_function(  # the old <link> goes once the new one has loaded
        """() => [...document.querySelectorAll("link[rel=stylesheet]")]
                   .filter(l => l.href.includes("/static/site.css"))
                   .map(l => l.href.includes("fh_utils_live=")).join() === "true"
        """,
        timeout=WAIT_MS,
    )
    assert "Reloaded" not in server.log  # no Python reload for a stylesheet


def test_js_edit_reloads_the_page(project: Path, serve, new_page):
    write(project / "app.py", starlette_app("with a script"))
    server = serve("app.py", "--live")
    page = new_page()
    open_live(page, server.url)
    assert page.evaluate("window.pageScript") == 1
    page.evaluate("window.state = 42")
    write(project / "static" / "page.js", "window.pageScript = 2;\n")
    page.wait_for_function("window.pageScript === 2", timeout=WAIT_MS)
    assert page.evaluate("window.state") is None


# -- safety ----------------------------------------------------------------------------------
def test_without_live_there_is_no_script_and_no_socket(project: Path, serve, new_page):
    write(project / "app.py", fasthtml_app("not live"))
    server = serve("app.py")
    assert MARKER not in server.get().content
    page = new_page()
    page.goto(server.url)
    assert page.evaluate("window.__fhUtilsLive") is None
    assert socket_outcome(page, f"ws://127.0.0.1:{server.port}{LIVE_PATH}") == "refused"


def test_cross_origin_pages_cannot_connect(project: Path, serve, new_page):
    write(project / "app.py", fasthtml_app("origin"))
    server = serve("app.py", "--live")
    page = new_page()
    page.goto(f"http://localhost:{server.port}/")  # another origin than 127.0.0.1
    assert socket_outcome(page, f"ws://localhost:{server.port}{LIVE_PATH}") == "open"
    assert socket_outcome(page, f"ws://127.0.0.1:{server.port}{LIVE_PATH}") == "refused"


def socket_outcome(page: Page, url: str) -> str:
    return page.evaluate(
        """url => new Promise(done => {
            const ws = new WebSocket(url);
            ws.onopen = () => { ws.close(); done("open"); };
            ws.onclose = () => done("refused");
        })""",
        url,
    )


def test_ctrl_c_exits_within_a_second_with_pages_connected(project: Path, serve, new_page):
    write(project / "app.py", fasthtml_app("connected"))
    server = serve("app.py", "--live")
    pages = [new_page() for _ in range(3)]
    for page in pages:
        open_live(page, server.url)
        page.wait_for_load_state("networkidle")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    server.proc.wait(timeout=10)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"took {elapsed:.2f}s to exit:\n{server.log}"


# -- the middleware alone, under plain `uvicorn --reload` ------------------------------------
STANDALONE_APP = """
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from fh_utils.browser.live import LiveReloadMiddleware


async def home(request):
    return HTMLResponse("<!doctype html><html><body><h1>TEXT</h1></body></html>")

app = LiveReloadMiddleware(Starlette(routes=[Route("/", home)]))
"""


def test_standalone_middleware_reconnects_after_uvicorn_reload_restart(project: Path, new_page):
    app = write(project / "app.py", STANDALONE_APP.replace("TEXT", "process one"))
    port = free_port()
    log = (project / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--reload", "--port", str(port),
         "--reload-dir", str(project)],
        cwd=project, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: "Application startup complete" in (project / "uvicorn.log").read_text(),
                   STARTUP_TIMEOUT, "uvicorn to start")
        page = new_page()
        open_live(page, f"http://127.0.0.1:{port}/")
        # (a new length: a same-size save within the second would restart plain Python into
        # its stale .pyc, uvicorn's own pitfall, not the middleware's)
        write(app, STANDALONE_APP.replace("TEXT", "the second process"))
        h1_text_is(page, "the second process")
    finally:
        stop_process(proc)
        log.close()
