"""`fh_utils dev --live` in headless Chromium: pages morph in place and keep their state, fall
back to a full reload when they must, show request errors, never stay behind, and work for apps
that compress or inline their CSS."""

from __future__ import annotations

import re
import time
from pathlib import Path

import starlette
from playwright.sync_api import Page, WebSocketRoute

from fh_utils.browser.live import LIVE_PATH
from tests import test_live_browser as browser_tests
from tests.conftest import RELOAD_TIMEOUT, write
from tests.test_live_browser import WAIT_MS, h1_text_is, open_live

new_page, project = browser_tests.new_page, browser_tests.project

FORM_APP = """
from fasthtml.common import H1, Input, Link, Main, Option, Select, Textarea, fast_app

app, rt = fast_app(hdrs=[Link(rel="stylesheet", href="/static/site.css")])

@rt("/")
def get():
    return Main(
        H1("TEXT"),
        Input(id="name"),
        Input(id="untouched", value="server TEXT"),
        Input(id="agree", type="checkbox"),
        Textarea(id="notes"),
        Select(Option("a"), Option("b"), id="pick"),
    )
"""
BROKEN_HANDLER = """
from fasthtml.common import H1, Main, fast_app

app, rt = fast_app()

@rt("/")
def get():
    return Main(H1("TEXT"))

@rt("/boom")
def boom():
    return Main(H1("boom " + str(len(BOOM))))

BOOM = "ok"
"""


def form_app(text: str) -> str:
    return FORM_APP.replace("TEXT", text)


def state(page: Page) -> dict[str, object]:
    return page.evaluate("""() => ({
        before: window.before, scrollY: window.scrollY,
        name: document.querySelector('#name').value,
        untouched: document.querySelector('#untouched').value,
        agree: document.querySelector('#agree').checked,
        notes: document.querySelector('#notes').value,
        pick: document.querySelector('#pick').value,
        focus: document.activeElement.id,
        caret: [document.activeElement.selectionStart, document.activeElement.selectionEnd],
    })""")


def test_a_save_morphs_the_page_keeping_scroll_focus_caret_and_typed_values(
        project: Path, serve, new_page):
    app = write(project / "app.py", form_app("version one"))
    server = serve("app.py", "--live")
    page = new_page()
    open_live(page, server.url)
    page.fill("#notes", "a note")
    page.check("#agree")
    page.select_option("#pick", "b")
    page.fill("#name", "typed by hand")
    page.focus("#name")
    page.evaluate("""() => {
        document.querySelector('#name').setSelectionRange(2, 5);
        window.before = true; window.scrollTo(0, 600);
    }""")
    before = state(page)
    assert before["scrollY"] == 600 and before["caret"] == [2, 5]

    write(app, form_app("version two"))
    h1_text_is(page, "version two")
    assert state(page) == {**before, "untouched": "server version two"}


def test_a_changed_script_falls_back_to_a_full_reload(project: Path, serve, new_page):
    app = write(project / "app.py", form_app("no script"))
    server = serve("app.py", "--live")
    page = new_page()
    open_live(page, server.url)
    page.evaluate("window.before = true")
    with_script = form_app("with a script").replace(
        'hdrs=[', 'hdrs=[Script("window.added = 1"), ').replace(
        "import H1,", "import H1, Script,")
    write(app, with_script)
    h1_text_is(page, "with a script")
    assert page.evaluate("[window.before, window.added]") == [None, 1]


def test_no_live_morph_reloads_the_page(project: Path, serve, new_page):
    app = write(project / "app.py", form_app("one"))
    server = serve("app.py", "--live", "--no-live-morph")
    page = new_page()
    open_live(page, server.url)
    page.fill("#name", "typed")
    page.evaluate("window.before = true")
    write(app, form_app("two"))
    h1_text_is(page, "two")
    assert page.evaluate("window.before") is None
    assert page.input_value("#name") == ""


def test_a_handler_exception_shows_the_overlay_and_the_page_recovers_on_the_fix(
        project: Path, serve, new_page):
    app = write(project / "app.py", BROKEN_HANDLER.replace("TEXT", "working"))
    server = serve("app.py", "--live")
    page = new_page()
    open_live(page, server.url)
    page.evaluate("window.before = true")

    broken = BROKEN_HANDLER.replace("TEXT", "working").replace(
        'return Main(H1("working"))', 'return Main(H1("never " + missing_name))')
    write(app, broken)
    line = broken.lstrip("\n").splitlines().index(
        '    return Main(H1("never " + missing_name))') + 1
    overlay = page.locator("#fh-utils-live-overlay")
    overlay.locator(".where").wait_for(timeout=WAIT_MS)
    assert overlay.locator(".where").text_content() == f"app.py:{line}"
    assert overlay.locator(".error").text_content() == "NameError"
    assert overlay.locator(".request").text_content() == "while handling GET /"
    assert "missing_name" in (overlay.locator(".traceback").text_content() or "")
    assert page.locator("h1").text_content() == "working"  # the old page stays, under it
    server.wait_log("NameError")  # uvicorn logged the exception as usual

    write(app, BROKEN_HANDLER.replace("TEXT", "fixed"))
    h1_text_is(page, "fixed")
    assert overlay.count() == 0
    assert page.evaluate("window.before") is True  # retried by a morph, not a reload


def test_a_failed_request_of_a_script_and_a_failed_navigation_show_the_overlay(
        project: Path, serve, new_page):
    source = BROKEN_HANDLER.replace("TEXT", "home").replace('BOOM = "ok"', "BOOM = None")
    app = write(project / "app.py", source)
    server = serve("app.py", "--live")
    page = new_page()
    open_live(page, server.url)
    status = page.evaluate("fetch('/boom').then(r => r.status)")  # like an htmx request
    assert status == 500
    overlay = page.locator("#fh-utils-live-overlay")
    overlay.locator(".error").wait_for(timeout=WAIT_MS)
    assert overlay.locator(".error").text_content() == "TypeError"
    assert overlay.locator(".request").text_content() == "while handling GET /boom"

    # Opening the failing URL: the app's 500 text, with the overlay on it.
    other = new_page()
    response = other.goto(server.url + "/boom")
    assert response is not None and response.status == 500
    assert other.locator("pre").first.text_content() == "Internal Server Error"
    other.locator("#fh-utils-live-overlay .error").wait_for(timeout=WAIT_MS)

    write(app, source.replace("BOOM = None", 'BOOM = "fixed"'))
    h1_text_is(other, "boom 5")  # the page tried the request again by itself
    assert other.locator("#fh-utils-live-overlay").count() == 0


def test_a_save_while_the_page_loads_is_not_lost(project: Path, serve, new_page):
    app = write(project / "app.py", form_app("first"))
    server = serve("app.py", "--live")
    page = new_page()
    held: list[WebSocketRoute] = []
    page.route_web_socket(re.compile(re.escape(LIVE_PATH)), lambda ws: held.append(ws))
    page.goto(server.url)
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while not held:  # the page's socket is held, not connected yet
        assert time.monotonic() < deadline, "the page opened no socket"
        page.evaluate("0")  # lets Playwright deliver the route event
    h1_text_is(page, "first")

    write(app, form_app("second"))
    # Logged in the same step as the reload message went out: to no page.
    server.wait_log("Reloaded app.py")
    held[0].connect_to_server()
    h1_text_is(page, "second")


def test_a_css_file_inlined_per_request_refreshes_the_page(project: Path, serve, new_page):
    write(project / "static" / "inline.css", "h1 { color: rgb(255, 0, 0); }\n")
    write(project / "app.py", """
        from pathlib import Path

        from fasthtml.common import H1, Main, Style, fast_app

        app, rt = fast_app()
        CSS = Path(__file__).parent / "static" / "inline.css"

        @rt("/")
        def get():
            return Main(Style(CSS.read_text()), H1("inlined"))
        """)
    server = serve("app.py", "--live")
    page = new_page()
    open_live(page, server.url)
    page.evaluate("window.before = true")
    color = "getComputedStyle(document.querySelector('h1')).color"
    assert page.evaluate(color) == "rgb(255, 0, 0)"
    write(project / "static" / "inline.css", "h1 { color: rgb(0, 0, 255); }\n")
    page.wait_for_function(f"{color} === 'rgb(0, 0, 255)'", timeout=WAIT_MS)
    assert page.evaluate("window.before") is True


def test_a_template_read_per_request_morphs_the_page(project: Path, serve, new_page):
    write(project / "templates" / "page.html", "<h1>from the template</h1>\n")
    write(project / "app.py", """
        from pathlib import Path

        from fasthtml.common import Main, NotStr, fast_app

        app, rt = fast_app()
        TEMPLATE = Path(__file__).parent / "templates" / "page.html"

        @rt("/")
        def get():
            return Main(NotStr(TEMPLATE.read_text()))
        """)
    server = serve("app.py", "--live")
    page = new_page()
    open_live(page, server.url)
    page.evaluate("window.before = true")
    write(project / "templates" / "page.html", "<h1>the template, edited</h1>\n")
    h1_text_is(page, "the template, edited")
    assert page.evaluate("window.before") is True


GZIP_APP = """
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import HTMLResponse
from starlette.routing import Route


async def home(request):
    return HTMLResponse("<!doctype html><html><body><h1>TEXT</h1>" + "<p>filler</p>" * 200
                        + "</body></html>")

app = Starlette(routes=[Route("/", home)], middleware=[Middleware(GZipMiddleware)])
"""


def test_an_app_that_compresses_its_pages_refreshes(project: Path, serve, new_page):
    app = write(project / "app.py", GZIP_APP.replace("TEXT", "gzip one"))
    server = serve("app.py", "--live")
    assert server.client.get("/", headers={"accept-encoding": "gzip"}).headers[
        "content-encoding"] == "gzip"  # the app does compress
    page = new_page()
    open_live(page, server.url)
    write(app, GZIP_APP.replace("TEXT", "gzip two"))
    h1_text_is(page, "gzip two")
    assert "could not add its script" not in server.log


def test_head_and_range_on_a_real_server(project: Path, serve):
    write(project / "static" / "index.html", "<!doctype html><html><body>x</body></html>")
    write(project / "app.py", """
        from pathlib import Path

        from starlette.applications import Starlette
        from starlette.staticfiles import StaticFiles
        from starlette.routing import Mount

        app = Starlette(routes=[Mount("/", StaticFiles(directory=Path(__file__).parent / "static",
                                                       html=True))])
        """)
    server = serve("app.py", "--live")
    get = server.get("/index.html")
    head = server.client.head("/index.html")
    assert head.status_code == get.status_code == 200
    assert head.headers["content-length"] == get.headers["content-length"] == str(
        len(get.content))
    ranged = server.client.get("/index.html", headers={"range": "bytes=0-8"})
    if tuple(int(n) for n in starlette.__version__.split(".")[:2]) < (0, 39):
        # Starlette's FileResponse serves ranges from 0.39 on: before, the whole page.
        assert (ranged.status_code, ranged.text) == (200, get.text)
    else:
        assert (ranged.status_code, ranged.text) == (206, "<!doctype")
