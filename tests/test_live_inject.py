"""What the live middleware does to responses it must not break, and to requests that fail:
the HTML rewriter, Range, HEAD, streamed pages, compression, static files, request errors."""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

import pytest
import starlette
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient

from fh_utils.browser.html import Rewriter
from fh_utils.browser.live import LIVE_PATH, MARKER, LiveHub, LiveReloadMiddleware, fasthtml_live

PAGE = "<!doctype html><html><head><title>t</title></head><body><p>hello</p></body></html>"
ORIGIN = {"origin": "http://testserver"}
BROWSER = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8", "sec-fetch-dest": "document",
           "accept-encoding": "gzip, deflate"}
SCRIPT = b"<script data-fh-utils-live></script>"
TRICKY = (b"<!doctype html><html><head><script>var s = '</body>';</script>"
          b"<title></body></title><!-- </body> --></head><body><p>one</p>"
          b"<textarea></body></textarea><p>two</p></body></html>")


def strip_script(text: str) -> str:
    return re.sub(r"<script data-fh-utils-live=.*?</script>", "", text, flags=re.S)


def script_at(text: str) -> int:
    return text.index(f"<script {MARKER.decode()}=")


# -- the rewriter --------------------------------------------------------------------------------
def rewrite(chunks: list[bytes]) -> bytes:
    rewriter = Rewriter(SCRIPT, MARKER, strip=lambda code: b"drop me" in code)
    out = b""
    for i, chunk in enumerate(chunks):
        out += rewriter.feed(chunk, final=i == len(chunks) - 1)
    return out


def test_script_goes_before_the_last_body_end_never_into_scripts_titles_or_comments():
    expected = TRICKY.replace(b"<p>two</p></body>", b"<p>two</p>" + SCRIPT + b"</body>")
    assert rewrite([TRICKY]) == expected
    # The same whatever the chunks: cut at every position, and one byte at a time.
    for cut in range(1, len(TRICKY)):
        assert rewrite([TRICKY[:cut], TRICKY[cut:]]) == expected, cut
    assert rewrite([bytes([b]) for b in TRICKY]) == expected


def test_rewriter_drops_scripts_it_is_told_to_and_keeps_the_rest():
    doc = (b"<html><head><script>keep</script><SCRIPT type=x>drop me</SCRIPT >"
           b"<script src=a.js></script></head><body>x</body></html>")
    expected = (b"<html><head><script>keep</script><script src=a.js></script></head>"
                b"<body>x" + SCRIPT + b"</body></html>")
    for cut in range(1, len(doc)):
        assert rewrite([doc[:cut], doc[cut:]]) == expected, cut


def test_rewriter_adds_nothing_when_a_live_script_is_there_and_appends_without_body_end():
    assert rewrite([b"<html><body><script data-fh-utils-live='/x'>1</script></body></html>"]) \
        == b"<html><body><script data-fh-utils-live='/x'>1</script></body></html>"
    assert rewrite([b"<html><p>no end tag", b" at all"]) == b"<html><p>no end tag at all" + SCRIPT
    assert rewrite([b"<html><!--> empty comment </body>", b""]) \
        == b"<html><!--> empty comment " + SCRIPT + b"</body>"


def test_rewriter_sends_what_it_can_as_it_goes():
    rewriter = Rewriter(SCRIPT, MARKER)
    assert rewriter.feed(b"<html><body>" + b"x" * 100, final=False).startswith(b"<html><body>xx")
    assert rewriter.feed(b"<script>var a = 1;", final=False) == b"x" * 16  # the tail waits
    assert rewriter.feed(b"</script><p>after</p>", final=False).startswith(b"<script>var a")


# -- responses that pass untouched ----------------------------------------------------------------
def ranged_page(request: Request) -> Response:
    """PAGE, or the bytes a `Range: bytes=A-B` header asks for as a 206, as Starlette's
    FileResponse serves it from Starlette 0.39 on."""
    asked = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers.get("range", ""))
    if asked is None:
        return HTMLResponse(PAGE)
    start, end = int(asked[1]), int(asked[2])
    return Response(PAGE.encode()[start:end + 1], 206, media_type="text/html",
                    headers={"content-range": f"bytes {start}-{end}/{len(PAGE)}"})


@pytest.mark.parametrize("served_by", ["FileResponse", "ranged_page"])
def test_range_requests_pass_untouched(tmp_path: Path, served_by: str):
    file = tmp_path / "index.html"
    file.write_text(PAGE)
    starlette_release = tuple(int(n) for n in starlette.__version__.split(".")[:2])
    client = TestClient(LiveReloadMiddleware(Starlette(routes=[
        Route("/", lambda r: FileResponse(file) if served_by == "FileResponse"
              else ranged_page(r))])))
    response = client.get("/", headers={**BROWSER, "range": "bytes=0-20"})
    if served_by == "FileResponse" and starlette_release < (0, 39):
        # Before 0.39 FileResponse ignores Range and sends the whole page: a whole document,
        # which gets the script like any other.
        assert response.status_code == 200 and MARKER.decode() in response.text
        return
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 0-20/{len(PAGE)}"
    assert response.text == PAGE[:21]
    whole = client.get("/", headers=BROWSER)
    assert whole.status_code == 200 and MARKER.decode() in whole.text


def test_head_of_a_file_gets_the_headers_of_its_get(tmp_path: Path):
    file = tmp_path / "index.html"
    file.write_text(PAGE)
    client = TestClient(LiveReloadMiddleware(Starlette(routes=[
        Route("/", lambda r: FileResponse(file))])))
    head, get = client.head("/", headers=BROWSER), client.get("/", headers=BROWSER)
    assert head.status_code == get.status_code == 200
    assert head.headers == get.headers
    assert int(head.headers["content-length"]) == len(get.content) > len(PAGE)
    assert head.content == b""


def test_streamed_page_gets_the_script_before_its_last_body_end():
    chunks = [TRICKY[i:i + 7] for i in range(0, len(TRICKY), 7)]

    async def stream():
        for chunk in chunks:
            yield chunk

    app = LiveReloadMiddleware(Starlette(routes=[
        Route("/", lambda r: StreamingResponse(stream(), media_type="text/html"))]))
    text = TestClient(app).get("/", headers=BROWSER).text
    assert strip_script(text) == TRICKY.decode()
    assert text.count(MARKER.decode() + "=") == 1
    assert text.index("<p>two</p>") < script_at(text) < text.rindex("</body>")


def test_fasthtml_live_script_is_replaced_in_streamed_pages_too():
    from fasthtml.common import P, fast_app

    app, rt = fast_app(live=True)
    rt("/")(lambda: P("streamed"))
    assert fasthtml_live(app) and not fasthtml_live(fast_app()[0])
    body = TestClient(app).get("/").content
    assert b"/live-reload`" in body

    async def stream():
        for i in range(0, len(body), 50):
            yield body[i:i + 50]

    streamed = LiveReloadMiddleware(Starlette(routes=[
        Route("/", lambda r: StreamingResponse(stream(), media_type="text/html"))]))
    text = TestClient(streamed).get("/", headers=BROWSER).text
    assert "/live-reload`" not in text
    assert text.count(MARKER.decode() + "=") == 1
    assert "streamed" in text


# -- compression ----------------------------------------------------------------------------------
def test_an_app_that_compresses_serves_pages_uncompressed_and_the_rest_as_it_likes():
    big = PAGE.replace("hello", "hello " * 500)
    app = LiveReloadMiddleware(GZipMiddleware(Starlette(routes=[
        Route("/", lambda r: HTMLResponse(big)),
        Route("/data", lambda r: Response("x" * 5000, media_type="text/csv"))])))
    client = TestClient(app)
    page = client.get("/", headers=BROWSER)
    assert "content-encoding" not in page.headers
    assert page.text.count(MARKER.decode() + "=") == 1
    api = client.get("/data", headers={"accept-encoding": "gzip"})
    assert api.headers["content-encoding"] == "gzip"  # not a page: the app still compresses
    morph = client.get("/", headers={"accept-encoding": "gzip", "accept": "text/html",
                                     "x-fh-utils-live": "morph"})
    assert "content-encoding" not in morph.headers and MARKER.decode() in morph.text


def test_a_page_that_cannot_get_the_script_is_logged_once(caplog):
    raw = gzip.compress(PAGE.encode())
    app = LiveReloadMiddleware(Starlette(routes=[
        Route("/", lambda r: Response(raw, media_type="text/html",
                                      headers={"content-encoding": "gzip"})),
        Route("/part", lambda r: HTMLResponse("<div>a fragment</div>"))]))
    client = TestClient(app)
    with caplog.at_level(logging.WARNING, logger="fh_utils"):
        for _ in range(3):
            assert client.get("/", headers=BROWSER).text == PAGE  # decoded, untouched
            assert client.get("/part", headers=BROWSER).text == "<div>a fragment</div>"
        client.get("/part")  # not a navigation: a fragment fetched by a script is normal
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "GET / came compressed (Content-Encoding: gzip)" in messages[0]
    assert "GET /part answered text/html that is not a whole document" in messages[1]


# -- static files ---------------------------------------------------------------------------------
def test_static_files_are_revalidated_and_an_apps_own_policy_is_kept(tmp_path: Path):
    (tmp_path / "app.js").write_text("window.x = 1;\n")
    (tmp_path / "site.css").write_text("h1 {}\n")

    def cached(request):  # type: ignore[no-untyped-def]
        return Response("y", media_type="text/javascript",
                        headers={"cache-control": "max-age=60", "etag": '"1"'})

    app = LiveReloadMiddleware(Starlette(routes=[
        Mount("/static", StaticFiles(directory=tmp_path)),
        Route("/cached.js", cached),
        Route("/api", lambda r: Response("{}", headers={"etag": '"2"'})),
    ]))
    client = TestClient(app)
    for path in ("/static/app.js", "/static/site.css"):
        response = client.get(path)
        assert response.headers["cache-control"] == "no-cache", path
        assert "last-modified" in response.headers
        again = client.get(path, headers={"if-none-match": response.headers["etag"]})
        assert again.status_code == 304 and again.headers["cache-control"] == "no-cache"
    assert client.get("/cached.js").headers["cache-control"] == "max-age=60"
    assert "cache-control" not in client.get("/api").headers  # not a static file's URL


# -- request errors -------------------------------------------------------------------------------
def boom(request):  # type: ignore[no-untyped-def]
    raise ValueError("bad <input>")


def test_a_request_error_reaches_every_page_and_the_exception_propagates():
    hub = LiveHub()
    app = LiveReloadMiddleware(Starlette(routes=[Route("/boom", boom), Route("/", lambda r:
                                                                         HTMLResponse(PAGE))]),
                               hub)
    with TestClient(app, raise_server_exceptions=False) as client, \
            client.websocket_connect(LIVE_PATH + "?page=/", headers=ORIGIN) as ws:
        assert ws.receive_json()["type"] == "hello"
        response = client.get("/boom", headers={"hx-request": "true", "referer":
                                                "http://testserver/"})
        assert (response.status_code, response.text) == (500, "Internal Server Error")
        message = ws.receive_json()
        assert message["type"] == "error"
        assert message["request"] == "GET /boom"
        assert (message["error"], message["message"]) == ("ValueError", "bad <input>")
        assert message["file"] == "tests/test_live_inject.py"
        assert message["line"] == boom.__code__.co_firstlineno + 1
        assert message["editable"] == ["tests/test_live_inject.py", __file__]
        # Trimmed: from the handler on, not Starlette's middleware around it.
        assert message["traceback"].splitlines()[1].startswith(f'  File "{__file__}"')
        assert "starlette" not in message["traceback"]
    with pytest.raises(ValueError, match="bad <input>"):  # nothing swallowed
        TestClient(app).get("/boom")


def test_a_failed_navigation_gets_its_500_in_a_page_and_a_page_opened_there_the_error():
    hub = LiveHub()
    app = LiveReloadMiddleware(Starlette(routes=[Route("/boom", boom)]), hub)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers=BROWSER)
        assert response.status_code == 500
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert "<pre>Internal Server Error</pre>" in response.text  # the app's own text
        assert response.text.count(MARKER.decode() + "=") == 1
        assert int(response.headers["content-length"]) == len(response.content)
        with client.websocket_connect(LIVE_PATH + "?page=%2Fboom", headers=ORIGIN) as ws:
            assert ws.receive_json()["type"] == "hello"
            assert ws.receive_json()["request"] == "GET /boom"
        with client.websocket_connect(LIVE_PATH + "?page=%2Fother", headers=ORIGIN) as ws:
            assert ws.receive_json()["type"] == "hello"
            assert client.portal is not None
            client.portal.call(hub.reload)  # the next message is the reload: no error first
            assert ws.receive_json()["type"] == "reload"
        # A plain-text 500 the app meant to send, and API calls, stay as they were.
        plain = client.get("/boom")
        assert (plain.headers["content-type"], plain.text) == (
            "text/plain; charset=utf-8", "Internal Server Error")


def test_the_frameworks_debug_page_gets_the_script():
    app = LiveReloadMiddleware(Starlette(debug=True, routes=[Route("/boom", boom)]))
    response = TestClient(app, raise_server_exceptions=False).get("/boom", headers=BROWSER)
    assert response.status_code == 500
    assert "ValueError" in response.text and "bad &lt;input&gt;" in response.text
    assert response.text.count(MARKER.decode() + "=") == 1


def test_a_good_answer_for_the_page_clears_its_stored_error():
    hub = LiveHub()
    fail = {"on": True}

    def flaky(request):  # type: ignore[no-untyped-def]
        if fail["on"]:
            raise RuntimeError("not yet")
        return HTMLResponse(PAGE)

    app = LiveReloadMiddleware(Starlette(routes=[Route("/", flaky)]), hub)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.get("/", headers=BROWSER)
        fail["on"] = False
        assert client.get("/", headers=BROWSER).status_code == 200
        with client.websocket_connect(LIVE_PATH + "?page=%2F", headers=ORIGIN) as ws:
            assert ws.receive_json()["type"] == "hello"
            assert client.portal is not None
            client.portal.call(hub.reload)
            assert ws.receive_json()["type"] == "reload"


def test_pages_carry_the_generation_they_were_served_at():
    hub = LiveHub()
    client = TestClient(LiveReloadMiddleware(Starlette(routes=[
        Route("/", lambda r: HTMLResponse(PAGE))]), hub, morph=False))

    def attributes() -> dict[str, str]:
        tag = re.search(r"<script [^>]*>", client.get("/").text)
        assert tag is not None
        return dict(re.findall(r'(data-fh-utils-[a-z]+)="([^"]*)"', tag.group(0)))

    assert attributes() == {"data-fh-utils-live": LIVE_PATH, "data-fh-utils-server": hub.server,
                            "data-fh-utils-generation": "0", "data-fh-utils-css": "0",
                            "data-fh-utils-morph": "0"}
    with client:
        assert client.portal is not None
        client.portal.call(hub.reload)
        client.portal.call(hub.static_changed, [Path("a.css")])
    assert attributes()["data-fh-utils-generation"] == "1"
    assert attributes()["data-fh-utils-css"] == "1"
