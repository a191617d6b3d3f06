"""`fh_utils dev --live`: errors in the page reach the terminal and `fh_utils status`, in
headless Chromium with real htmx (2.0.11 from npm, 0BSD: tests/assets/htmx.LICENSE)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from fh_utils.browser.live import LIVE_PATH
from fh_utils.serve.events import EVENTS_PATH, STATUS_PATH
from tests.conftest import RELOAD_TIMEOUT, child_env, wait_until, write

HTMX = Path(__file__).parent / "assets" / "htmx-2.0.11.min.js"
WAIT_MS = RELOAD_TIMEOUT * 1000

APP = """
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

PAGE = '''<!doctype html><html><head><script src="/static/htmx.min.js"></script></head>
<body><h1>TEXT</h1>
<button id="boom" hx-get="/boom" hx-target="#out">boom</button>
<button id="lost" hx-get="/fragment" hx-target="#nowhere">lost</button>
<button id="swap" hx-get="/fragment" hx-target="#out" hx-select="[[not a selector">swap</button>
<button id="js" onclick="notDefinedAnywhere()">js</button>
<button id="promise" onclick="Promise.reject(new Error('nobody waits'))">promise</button>
<div id="out"></div>
</body></html>'''


async def home(request):
    return HTMLResponse(PAGE)


async def boom(request):
    return PlainTextResponse("no", status_code=500)


async def fragment(request):
    return HTMLResponse("<p>fragment</p>")

app = Starlette(routes=[
    Route("/", home), Route("/boom", boom), Route("/fragment", fragment),
    Mount("/static", StaticFiles(directory=Path(__file__).parent / "static")),
])
"""


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context; requests leaving the machine are refused."""
    context = browser.new_context()
    context.route(re.compile(r"^https?://(?!(127\.0\.0\.1|localhost)[:/])"),
                  lambda route: route.abort())
    yield context.new_page()
    context.close()


def status(url: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "fh_utils", "status", "--json", "--url", url],
                          capture_output=True, text=True, timeout=60, env=child_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_page_errors_are_printed_with_the_page_url_and_counted(tmp_path: Path, serve,
                                                               page: Page):
    write(tmp_path / "app.py", APP.replace("TEXT", "one"))
    (tmp_path / "static").mkdir()
    shutil.copy(HTMX, tmp_path / "static" / "htmx.min.js")
    server = serve("app.py", "--live")
    with page.expect_websocket(lambda ws: LIVE_PATH + "?" in ws.url, timeout=WAIT_MS):
        page.goto(server.url + "/?tab=1")
    page_url = f"{server.url}/?tab=1"
    expected = {
        "#boom": f"Browser error on {page_url}: htmx:responseError: Response Status Error "
                 "Code 500 from /boom [GET /boom]",
        "#lost": f"Browser error on {page_url}: htmx:targetError: hx-target \"#nowhere\" "
                 "matches no element",
        "#swap": f"Browser error on {page_url}: htmx:swapError: swapping the response into "
                 "the page failed [GET /fragment]",
        "#js": f"Browser error on {page_url}: error: Uncaught ReferenceError: "
               "notDefinedAnywhere is not defined",
        "#promise": f"Browser error on {page_url}: unhandledrejection: nobody waits",
    }
    for selector, line in expected.items():
        page.click(selector)
        server.wait_log(line)

    kinds = wait_until(lambda: [e["kind"] for e in map(json.loads, server.get(
        EVENTS_PATH).text.splitlines()) if e["event"] == "browser"], RELOAD_TIMEOUT, "events")
    assert {"htmx:responseError", "htmx:targetError", "htmx:swapError", "error",
            "unhandledrejection"} <= set(kinds)  # type: ignore[arg-type]
    reported = status(server.url)
    # (the swap error's exception is uncaught as well: one more `error`)
    assert reported["live"] is True and reported["browser_errors"] == len(kinds)  # type: ignore[arg-type]
    assert len(kinds) >= len(expected)  # type: ignore[arg-type]

    write(tmp_path / "app.py", APP.replace("TEXT", "two"))  # a reload: counted anew since
    page.wait_for_function("document.querySelector('h1').textContent === 'two'",
                           timeout=WAIT_MS)
    assert server.client.get(STATUS_PATH, params={"wait": "30"}).json()["browser_errors"] == 0
    page.click("#boom")
    wait_until(lambda: status(server.url)["browser_errors"] == 1, RELOAD_TIMEOUT,
               "the error after the reload counted")


def test_an_error_before_the_socket_is_open_is_sent_once_it_is(tmp_path: Path, serve,
                                                                page: Page):
    # DOMContentLoaded comes right after the page's scripts ran: the live script's socket
    # is still connecting, so the report waits for it.
    early = ("<script>document.addEventListener('DOMContentLoaded', () => {"
             " throw new Error('early') })</script></head>")
    write(tmp_path / "app.py", APP.replace("TEXT", "one").replace("</head>", early, 1))
    (tmp_path / "static").mkdir()
    shutil.copy(HTMX, tmp_path / "static" / "htmx.min.js")
    server = serve("app.py", "--live")
    page.goto(server.url)
    server.wait_log(f"Browser error on {server.url}/: error: Uncaught Error: early")
    assert status(server.url)["browser_errors"] == 1


def test_without_live_pages_report_nothing(tmp_path: Path, serve, page: Page):
    write(tmp_path / "app.py", APP.replace("TEXT", "one"))
    (tmp_path / "static").mkdir()
    shutil.copy(HTMX, tmp_path / "static" / "htmx.min.js")
    server = serve("app.py")
    page.goto(server.url)
    with page.expect_response(lambda response: response.url.endswith("/boom")):
        page.click("#boom")
    assert status(server.url)["browser_errors"] == 0
    assert "Browser error" not in server.log


def test_the_hub_logs_what_pages_report_and_ignores_anything_else(caplog):
    from fh_utils.browser.live import LiveHub

    heard: list[dict[str, object]] = []
    hub = LiveHub(on_browser_error=heard.append)
    for junk in ["not json", "[1, 2]", json.dumps({"type": "hello"})]:
        hub.page_said(junk)
    assert heard == [] and "Browser error" not in caplog.text
    hub.page_said(json.dumps({"type": "browser-error", "kind": "error", "page": "http://x/",
                              "message": "m" * 10_000, "status": 500, "extra": "dropped"}))
    (report,) = heard
    assert report["status"] == 500 and "extra" not in report
    assert len(str(report["message"])) < 4100
    assert "Browser error on http://x/: error: mmm" in caplog.text
