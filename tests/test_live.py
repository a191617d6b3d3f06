"""LiveReloadMiddleware and LiveHub with tiny inline apps: injection rules and the socket."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from fh_utils.browser.live import LIVE_PATH, MARKER, LiveHub, LiveReloadMiddleware, same_origin
from fh_utils.reload.errors import Failure

PAGE = "<!doctype html><html><head><title>t</title></head><body><p>hello</p></body></html>"
ORIGIN = {"origin": "http://testserver"}


def live_app(*routes: Route | WebSocketRoute, hub: LiveHub | None = None) -> LiveReloadMiddleware:
    return LiveReloadMiddleware(Starlette(routes=list(routes)), hub)


def page(body: str = PAGE, **kwargs: object) -> Route:
    return Route("/", lambda request: HTMLResponse(body, **kwargs))  # type: ignore[arg-type]


async def call(app: LiveReloadMiddleware, headers: list[tuple[bytes, bytes]] | None = None
               ) -> list[dict[str, object]]:
    """One GET through the ASGI app; returns the messages it sent."""
    sent: list[dict[str, object]] = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/", "raw_path": b"/", "root_path": "", "query_string": b"",
             "headers": headers or [(b"host", b"testserver")], "server": ("testserver", 80)}

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def injected(text: str) -> int:
    return text.count(MARKER.decode() + "=")


def assert_length(response) -> None:  # type: ignore[no-untyped-def]
    assert int(response.headers["content-length"]) == len(response.content)


# -- injection ---------------------------------------------------------------------------------
def test_full_document_gets_the_script_before_body_end_with_fixed_length():
    response = TestClient(live_app(page())).get("/")
    assert injected(response.text) == 1
    assert response.text.index(MARKER.decode()) < response.text.index("</body>")
    assert response.text.startswith(PAGE[: PAGE.index("</body>")])
    assert_length(response)
    assert f'{MARKER.decode()}="{LIVE_PATH}"' in response.text


@pytest.mark.parametrize("body", [
    "<div id='partial'>a fragment</div>",
    "just text",
    "",
])
def test_fragments_are_untouched(body):
    response = TestClient(live_app(page(body))).get("/")
    assert response.text == body
    assert_length(response)


def test_document_variants_are_recognised():
    for body in ["\n  <!DOCTYPE html>\n<html><body>x</body></html>",
                 "\ufeff<html><body>x</body></html>",
                 "<!-- built by hand --><!doctype html><p>no body end tag",
                 "<html lang='en'><p>x"]:
        response = TestClient(live_app(page(body))).get("/")
        assert injected(response.text) == 1, body
        assert_length(response)


def test_htmx_requests_get_no_script():
    client = TestClient(live_app(page()))
    response = client.get("/", headers={"HX-Request": "true"})
    assert response.text == PAGE


def test_other_content_types_are_untouched_and_head_gets_the_headers_of_get():
    app = live_app(
        Route("/json", lambda r: JSONResponse({"html": PAGE})),
        Route("/plain", lambda r: Response(PAGE, media_type="text/plain")),
        page(),
    )
    client = TestClient(app)
    assert client.get("/json").json() == {"html": PAGE}
    assert client.get("/plain").text == PAGE
    head, get = client.head("/"), client.get("/")
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(get.content) > len(PAGE)
    assert head.headers == get.headers


def test_compressed_bodies_are_untouched():
    big = PAGE.replace("hello", "hello " * 500)
    gzipped = LiveReloadMiddleware(GZipMiddleware(Starlette(routes=[page(big)])))
    response = TestClient(gzipped).get("/", headers={"accept-encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.text == big  # decoded by httpx: nothing was spliced into the gzip stream

    raw = gzip.compress(PAGE.encode())
    messages = asyncio.run(call(live_app(page(raw, headers={"content-encoding": "br"}))))
    assert messages[0]["headers"] == [(b"content-encoding", b"br"),
                                      (b"content-length", str(len(raw)).encode()),
                                      (b"content-type", b"text/html; charset=utf-8")]
    assert b"".join(m.get("body", b"") for m in messages[1:]) == raw


def test_streamed_document_is_injected_once_even_across_chunk_boundaries():
    chunks = ["<!doctype html><html><body>", "<p>one</p>", "<p>two</p></bo", "dy></html>"]

    async def stream():
        for chunk in chunks:
            yield chunk

    app = live_app(Route("/", lambda r: StreamingResponse(stream(), media_type="text/html")))
    response = TestClient(app).get("/")
    assert "content-length" not in response.headers
    assert injected(response.text) == 1
    assert response.text.replace(response.text[response.text.index("<script"):
                                              response.text.index("</script>") + 9], "") \
        == "".join(chunks)
    assert response.text.index("<script") > response.text.index("<p>two</p>")


def test_streamed_fragment_passes_through():
    async def stream():
        yield "<div>"
        yield "</div>"

    app = live_app(Route("/", lambda r: StreamingResponse(stream(), media_type="text/html")))
    assert TestClient(app).get("/").text == "<div></div>"


def test_large_file_with_content_length_is_injected_with_corrected_length(tmp_path: Path):
    file = tmp_path / "index.html"
    file.write_text(PAGE.replace("hello", "x" * 200_000))  # several FileResponse chunks
    app = live_app(Route("/", lambda r: FileResponse(file)))
    response = TestClient(app).get("/")
    assert injected(response.text) == 1
    assert_length(response)


def test_never_injected_twice():
    twice = LiveReloadMiddleware(LiveReloadMiddleware(Starlette(routes=[page()])))
    response = TestClient(twice).get("/")
    assert injected(response.text) == 1
    assert_length(response)


def test_fasthtml_live_app_ends_up_with_one_live_script():
    from fasthtml.common import P, fast_app

    app, rt = fast_app(live=True)

    @rt("/")
    def get():
        return P("hello")

    plain = TestClient(app).get("/").text
    assert "/live-reload`" in plain  # FastHTML's own script, which ours replaces
    response = TestClient(LiveReloadMiddleware(app)).get("/")
    assert "/live-reload`" not in response.text
    assert injected(response.text) == 1
    assert "hello" in response.text
    assert_length(response)


def test_root_path_is_in_the_socket_path():
    app = live_app(page())
    response = TestClient(app, root_path="/sub").get("/")
    assert f'{MARKER.decode()}="/sub{LIVE_PATH}"' in response.text
    hub = LiveHub()
    with TestClient(live_app(page(), hub=hub), root_path="/sub") as client, \
            client.websocket_connect(LIVE_PATH, headers=ORIGIN) as ws:
        assert client.portal is not None
        assert ws.receive_json()["type"] == "hello"
        client.portal.call(hub.reload)
        assert ws.receive_json()["type"] == "reload"


def test_live_js_ships_in_the_package_and_is_ascii():
    js = (Path(__file__).parent.parent / "fh_utils" / "browser" / "live.js").read_bytes()
    js.decode("ascii")
    assert b"</script" not in js.lower()


# -- the socket --------------------------------------------------------------------------------
def test_same_origin_socket_gets_pushed_messages():
    hub = LiveHub()
    with TestClient(live_app(page(), hub=hub)) as client, \
            client.websocket_connect(LIVE_PATH, headers=ORIGIN) as ws:
        assert client.portal is not None
        assert ws.receive_json() == {"type": "hello", "server": hub.server, "generation": 0,
                                     "css": 0}
        client.portal.call(hub.reload)
        assert ws.receive_json() == {"type": "reload", "generation": 1, "failing": False}
        client.portal.call(hub.static_changed, [Path.cwd() / "static" / "site.css"])
        assert ws.receive_json() == {"type": "css", "files": [str(Path("static/site.css"))],
                                     "css": 1}
        client.portal.call(hub.static_changed, [Path("app.js"), Path("site.css")])
        assert ws.receive_json() == {"type": "css", "files": ["site.css"], "css": 2}
        assert ws.receive_json() == {"type": "reload", "generation": 2, "failing": False,
                                     "full": True}
        client.portal.call(hub.static_changed, [Path("templates/page.html")])  # read per request
        assert ws.receive_json() == {"type": "reload", "generation": 3, "failing": False}
        failure = Failure("app.py", 3, "NameError", "name 'x' is not defined", "Traceback <b>")
        client.portal.call(hub.failed, failure)
        message = ws.receive_json()
        assert message == {
            "type": "error", "error": "NameError", "message": "name 'x' is not defined",
            "file": "app.py", "line": 3, "summary": "app.py:3: NameError: name 'x' is not defined",
            "traceback": "Traceback <b>", "request": None, "editable": [],
        }
        client.portal.call(hub.static_changed, [Path("app.js")])  # the error stays on
        assert ws.receive_json() == {"type": "reload", "generation": 4, "failing": True,
                                     "full": True}


def test_a_page_connecting_while_failed_gets_the_error_at_once_and_reload_clears_it():
    hub = LiveHub()
    app = live_app(page(), hub=hub)
    with TestClient(app) as client:
        assert client.portal is not None
        client.portal.call(hub.failed, Failure("app.py", 9, "SyntaxError", "oops", "tb"))
        with client.websocket_connect(LIVE_PATH, headers=ORIGIN) as ws:
            assert ws.receive_json()["type"] == "hello"
            assert ws.receive_json()["summary"] == "app.py:9: SyntaxError: oops"
            client.portal.call(hub.reloaded, None)
            assert ws.receive_json() == {"type": "reload", "generation": 1, "failing": False}
        assert hub.failure is None


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"},
    {"origin": "http://testserver:8080"},
    {"origin": "null"},
    {},
])
def test_other_origins_are_refused(headers):
    hub = LiveHub()
    hub.failure = Failure("app.py", 1, "SyntaxError", "secret source", "secret")
    client = TestClient(live_app(page(), hub=hub))
    with pytest.raises(WebSocketDisconnect) as refused, \
            client.websocket_connect(LIVE_PATH, headers=headers) as ws:
        ws.receive_text()
    assert refused.value.code == 1008


def test_same_origin_rules():
    def scope(origin: str, host: str) -> dict[str, object]:
        return {"headers": [(b"origin", origin.encode()), (b"host", host.encode())]}

    assert same_origin(scope("http://127.0.0.1:5001", "127.0.0.1:5001"))
    assert same_origin(scope("http://localhost", "localhost:80"))
    assert same_origin(scope("https://dev.example", "dev.example"))
    assert not same_origin(scope("http://localhost:5001", "127.0.0.1:5001"))
    assert not same_origin(scope("https://dev.example", "dev.example:80"))
    assert not same_origin(scope("file://", "127.0.0.1:5001"))


def test_hub_close_ends_every_socket():
    hub = LiveHub()
    with TestClient(live_app(page(), hub=hub)) as client, \
            client.websocket_connect(LIVE_PATH, headers=ORIGIN) as ws:
        assert client.portal is not None
        assert ws.receive_json()["type"] == "hello"
        client.portal.call(hub.close)
        assert ws.receive()["code"] == 1012
        assert hub.connections == 0


def test_other_websockets_and_lifespan_pass_through():
    events: list[str] = []

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(app):  # type: ignore[no-untyped-def]
        events.append("startup")
        yield
        events.append("shutdown")

    app = LiveReloadMiddleware(Starlette(routes=[WebSocketRoute("/ws", echo)], lifespan=lifespan))
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        ws.send_text("ping")
        assert ws.receive_text() == "ping"
    assert events == ["startup", "shutdown"]


def test_messages_are_json():
    hub = LiveHub()
    with TestClient(live_app(page(), hub=hub)) as client, \
            client.websocket_connect(LIVE_PATH, headers=ORIGIN) as ws:
        assert client.portal is not None
        assert json.loads(ws.receive_text())["type"] == "hello"
        client.portal.call(hub.reload)
        assert json.loads(ws.receive_text())["type"] == "reload"


def test_fastapi_page_and_fasthtml_htmx_partial():
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse as FastAPIHTML
    from fasthtml.common import P, fast_app

    api = FastAPI()
    api.get("/", response_class=FastAPIHTML)(lambda: PAGE)
    api.get("/data")(lambda: {"ok": True})
    client = TestClient(LiveReloadMiddleware(api))
    assert injected(client.get("/").text) == 1
    assert client.get("/data").json() == {"ok": True}

    app, rt = fast_app()
    rt("/")(lambda: P("partial or page"))
    client = TestClient(LiveReloadMiddleware(app))
    assert injected(client.get("/").text) == 1
    partial = client.get("/", headers={"HX-Request": "true"}).text
    assert "partial or page" in partial and injected(partial) == 0


def test_pathsend_extension_passes_through():
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.pathsend", "path": "/tmp/index.html"})

    messages = asyncio.run(call(LiveReloadMiddleware(app)))
    assert [m["type"] for m in messages] == ["http.response.start", "http.response.pathsend"]
