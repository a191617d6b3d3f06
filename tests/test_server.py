"""The switch (fh_utils.server): drains, streams and WebSockets across a save, lifespans of the
generations it starts and retires. Real servers on free ports: `fh_utils dev` in a subprocess,
or a real uvicorn serving a `Switch` in a thread where the test drives the swaps itself.

Handlers that must keep answering with the *old* code after a save put their value in a
literal inside the function: a running frame keeps its code object, whereas a module global
is re-executed in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from fh_utils.serve.switch import Switch, Timeouts
from tests.conftest import close_code, free_port, wait_until, write

pytestmark = pytest.mark.timeout(60)


# --- helpers ----------------------------------------------------------------------------------


def reloaded_ms(log: str, module: str = "app.py") -> int:
    """The duration of the last "Reloaded MODULE ... in N ms" line."""
    found = re.findall(rf"Reloaded {re.escape(module)}.* in (\d+) ms", log)
    assert found, f"no reload of {module} in the log:\n{log}"
    return int(found[-1])


class StreamReader:
    """Reads a streaming response line by line in a thread until it ends or `stop()`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lines: list[str] = []
        self.ended = False  # the server ended the body
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=10) as response:
                self.status = response.status_code
                self.headers = response.headers
                for line in response.iter_lines():
                    self.lines.append(line)
                    if self._stop.is_set():
                        return
            self.ended = True
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def wait_lines(self, count: int, timeout: float = 10) -> None:
        wait_until(lambda: len(self.lines) >= count or self.ended or self.error, timeout,
                   lambda: f"{count} lines (got {self.lines!r}, error {self.error!r})")
        assert len(self.lines) >= count, (self.lines, self.ended, self.error)

    def join(self, timeout: float) -> bool:
        """True when the reading ended (the body ended, or an error) within `timeout`."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def no_app_error(log: str) -> None:
    assert "Exception in ASGI application" not in log, log
    assert "Traceback" not in log, log


# --- 1: the drain cap -------------------------------------------------------------------------

SLOW_APP = """
import asyncio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def slow(request):
    open({marker!r}, "a").write("slow ")
    await asyncio.sleep(6)
    return PlainTextResponse("slow {version}")

def home(request):
    return PlainTextResponse("home {version}")

app = Starlette(routes=[Route("/", home), Route("/slow", slow)])
"""


def test_slow_request_does_not_hold_a_reload_past_the_drain_timeout(tmp_path, serve):
    marker = tmp_path / "slow.txt"
    write(tmp_path / "app.py", SLOW_APP.format(marker=str(marker), version="v1"))
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify")
    assert server.get().text == "home v1"

    result: dict[str, Any] = {}

    def slow_request() -> None:
        started = time.monotonic()
        response = httpx.get(server.url + "/slow", timeout=20)
        result.update(status=response.status_code, body=response.text,
                      elapsed=time.monotonic() - started, done=time.monotonic())

    thread = threading.Thread(target=slow_request)
    thread.start()
    try:
        wait_until(marker.exists, 10, "the slow request to reach the app")
        saved = time.monotonic()
        write(tmp_path / "app.py", SLOW_APP.format(marker=str(marker), version="v2"))
        server.wait_log("Reloading while 1 request(s) are still running")
        log = server.wait_log("Reloaded app.py")
        reloaded = time.monotonic()
        assert server.get().text == "home v2"  # new requests: the new code
        assert "done" not in result  # the reload did not wait for the slow request
    finally:
        thread.join(20)
    # The reload waited for the drain timeout (3 s), not less, and not for the request (6 s).
    assert 2500 <= reloaded_ms(log) <= 5500, log
    assert 2.5 <= reloaded - saved <= 9, reloaded - saved
    # The slow request finished on the code it started on.
    assert result["status"] == 200 and result["body"] == "slow v1", result
    assert result["elapsed"] >= 5.5 and result["done"] > reloaded, result
    no_app_error(server.log)


# --- 2: a streaming response open across a save -----------------------------------------------

STREAM_APP = """
import asyncio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

async def ticks():
    while True:
        yield "tick {version}\\n"
        await asyncio.sleep(0.05)

async def stream(request):
    return StreamingResponse(ticks(), media_type="text/plain")

def home(request):
    return PlainTextResponse("home {version}")

app = Starlette(routes=[Route("/", home), Route("/stream", stream)])
"""


def test_stream_is_ended_by_a_reload(tmp_path, serve):
    write(tmp_path / "app.py", STREAM_APP.format(version="v1"))
    server = serve("app.py")
    reader = StreamReader(server.url + "/stream")
    try:
        reader.wait_lines(2)
        assert "content-length" not in reader.headers
        write(tmp_path / "app.py", STREAM_APP.format(version="v2"))
        assert reader.join(10), f"the stream was not ended: {len(reader.lines)} lines"
    finally:
        reader.stop()
    assert reader.error is None, repr(reader.error)  # a clean end of the body, not a reset
    assert reader.ended
    assert set(reader.lines) == {"tick v1"}
    server.wait_text("home v2")
    log = server.wait_log("Closed 1 connection (1 stream)", timeout=5)
    reader = StreamReader(server.url + "/stream")  # a new stream: the new generator
    try:
        reader.wait_lines(1)
        assert reader.lines[0] == "tick v2"
    finally:
        reader.stop()
    no_app_error(log)


def test_stream_is_kept_with_keep_connections(tmp_path, serve):
    write(tmp_path / "app.py", STREAM_APP.format(version="v1"))
    server = serve("app.py", "--keep-connections")
    reader = StreamReader(server.url + "/stream")
    try:
        reader.wait_lines(2)
        write(tmp_path / "app.py", STREAM_APP.format(version="v2"))
        server.wait_log("Reloaded app.py")
        assert server.get().text == "home v2"
        seen = len(reader.lines)
        reader.wait_lines(seen + 10)  # it keeps going after the reload
        assert not reader.ended and reader.error is None
        assert set(reader.lines) == {"tick v1"}  # the old generator's output
    finally:
        reader.stop()
    assert "Closed 1 connection" not in server.log
    no_app_error(server.log)


# --- 3: a WebSocket open across a save --------------------------------------------------------

WS_APP = """
import asyncio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

async def ws(websocket):
    await websocket.accept()
    try:
        while True:
            await websocket.send_text("ws {version}")
            await asyncio.sleep(0.05)
    except WebSocketDisconnect:
        pass

def home(request):
    return PlainTextResponse("home {version}")

app = Starlette(routes=[Route("/", home), WebSocketRoute("/ws", ws)])
"""


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep-connections"])
def test_websocket_open_across_a_save(tmp_path, serve, keep):
    write(tmp_path / "app.py", WS_APP.format(version="v1"))
    server = serve("app.py", *(["--keep-connections"] if keep else []))
    ws_url = f"ws://127.0.0.1:{server.port}/ws"
    with connect(ws_url, open_timeout=5) as old:
        assert old.recv(timeout=5) == "ws v1"
        write(tmp_path / "app.py", WS_APP.format(version="v2"))
        if not keep:
            assert close_code(old, timeout=10) == 1012
        else:
            server.wait_log("Reloaded app.py")
            with connect(ws_url, open_timeout=5) as new:
                assert new.recv(timeout=5) == "ws v2"  # a new connection: the new app
            # The old handler keeps the old socket, sending its old value.
            received = [old.recv(timeout=5) for _ in range(10)]
            assert set(received) == {"ws v1"}
            assert close_code(old, timeout=0.3) is None  # still open
    assert server.get().text == "home v2"
    if keep:
        assert "Closed 1 connection" not in server.log
    else:
        server.wait_log("Closed 1 connection (1 WebSocket)", timeout=5)
        with connect(ws_url, open_timeout=5) as new:
            assert new.recv(timeout=5) == "ws v2"
    no_app_error(server.log)


# --- 4: the retire timeout, in process: a real uvicorn serving a Switch -----------------------


class LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)


class SwitchServer:
    """A real uvicorn serving a `Switch` in a thread; swaps are run on its loop."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.switch = Switch(self._startup, self._shutdown, "auto", timeouts)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.switch, host="127.0.0.1", port=self.port, lifespan="on",
                                log_config=None, access_log=False, interface="asgi3")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def _startup(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def _shutdown(self) -> None:
        await self.switch.close()

    def __enter__(self) -> SwitchServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 10, "uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def run(self, coro: Any, timeout: float = 10) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def swap(self, app: Any) -> None:
        """A reload as DevSession runs it: pause, start the new generation, commit."""

        async def reload() -> None:
            async with self.switch.paused():
                generation = await self.switch.start(app)
                await self.switch.commit(generation)

        self.run(reload())


def lifespan_app(name: str, events: list[tuple[str, str, float]]) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        events.append(("start", name, time.monotonic()))
        yield
        events.append(("stop", name, time.monotonic()))

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse(name)

    async def slow(request: Any) -> PlainTextResponse:
        events.append(("slow", name, time.monotonic()))
        await asyncio.sleep(3)
        return PlainTextResponse(f"{name} slow")

    return Starlette(routes=[Route("/", home), Route("/slow", slow)], lifespan=lifespan)


@contextlib.contextmanager
def fh_utils_log() -> Iterator[LogLines]:
    logger = logging.getLogger("fh_utils")
    handler, level = LogLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_retired_app_shuts_down_after_the_retire_timeout_despite_a_running_request():
    events: list[tuple[str, str, float]] = []

    def when(kind: str, name: str) -> float | None:
        return next((t for k, n, t in events if (k, n) == (kind, name)), None)

    timeouts = Timeouts(retire=0.5, lifespan=1, drain=0.5)
    with fh_utils_log() as log, SwitchServer(timeouts) as server:
        server.swap(lifespan_app("A", events))
        assert httpx.get(server.url).text == "A"
        assert when("start", "A") is not None and when("stop", "A") is None

        slow: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: slow.update(
            response=httpx.get(server.url + "/slow", timeout=10), done=time.monotonic()))
        thread.start()
        try:
            wait_until(lambda: when("slow", "A"), 5, "the slow request to reach A")
            paused = time.monotonic()
            server.swap(lifespan_app("B", events))
            committed = time.monotonic()
            assert 0.4 <= committed - paused <= 3  # the drain timeout, then the swap anyway
            assert log.count("Reloading while 1 request(s) are still running") == 1
            assert httpx.get(server.url).text == "B"

            # A's shutdown runs once the retire timeout passes, the request still running.
            stopped = wait_until(lambda: when("stop", "A"), 5, "A's lifespan shutdown")
            assert 0.3 <= stopped - committed <= 2.5, stopped - committed
            assert "done" not in slow
            assert log.count("The previous app still has 1 request(s) running") == 1
        finally:
            thread.join(10)
        assert slow["response"].status_code == 200 and slow["response"].text == "A slow"
        assert slow["done"] > stopped

        # Nothing running: the next retired app shuts down at once, without a warning.
        server.swap(lifespan_app("C", events))
        committed = time.monotonic()
        stopped = wait_until(lambda: when("stop", "B"), 5, "B's lifespan shutdown")
        assert stopped - committed < 0.45, stopped - committed
        assert log.count("The previous app still has") == 1
        assert httpx.get(server.url).text == "C"
        assert when("stop", "C") is None
    assert when("stop", "C") is not None  # the server's shutdown ends the current app
    assert [(k, n) for k, n, _ in events if k != "slow"] == [
        ("start", "A"), ("start", "B"), ("stop", "A"), ("start", "C"), ("stop", "B"),
        ("stop", "C")]


def test_retired_app_lifespan_shutdown_runs_after_a_save(tmp_path, serve):
    stops = tmp_path / "stops.txt"
    src = """
        import contextlib
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        @contextlib.asynccontextmanager
        async def lifespan(app):
            yield
            open({stops!r}, "a").write("stop-{label} ")

        app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("{label}"))],
                        lifespan=lifespan)
    """
    write(tmp_path / "app.py", src.format(stops=str(stops), label="one"))
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify")
    assert server.get().text == "one"
    write(tmp_path / "app.py", src.format(stops=str(stops), label="two"))
    server.wait_text("two")
    wait_until(lambda: stops.exists() and stops.read_text().split() == ["stop-one"], 10,
               "the old app's lifespan shutdown")


# --- 5: no app loaded -------------------------------------------------------------------------


def test_websocket_and_http_when_no_app_is_loaded(tmp_path, serve):
    write(tmp_path / "app.py", """
        from starlette.responses import PlainTextResponse
        raise RuntimeError("broken at import")
    """)
    server = serve("app.py")
    response = server.get()
    assert response.status_code == 500
    assert "The app failed to load" in response.text
    assert "app.py:2: RuntimeError: broken at import" in response.text

    code: int | str | None
    try:
        with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5) as ws:
            code = close_code(ws, timeout=5)
    except InvalidStatus as exc:
        code = f"HTTP {exc.response.status_code} to the handshake"
    assert code == 1011
    assert server.proc.poll() is None


# --- 6: --lifespan on and off -----------------------------------------------------------------


def test_lifespan_on_with_an_app_without_lifespan_support(tmp_path, serve):
    write(tmp_path / "app.py", """
        from starlette.responses import PlainTextResponse

        async def app(scope, receive, send):
            assert scope["type"] == "http"
            await PlainTextResponse("bare app")(scope, receive, send)
    """)
    server = serve("app.py", "--lifespan", "on")
    response = server.get()
    assert response.status_code == 500
    assert "does not support the lifespan protocol" in response.text
    assert "--lifespan auto or off" in response.text
    assert "does not support the lifespan protocol" in server.log
    assert server.proc.poll() is None

    write(tmp_path / "app.py", """
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("with lifespan"))])
    """)
    server.wait_text("with lifespan")


def test_lifespan_off_never_runs_the_app_lifespan(tmp_path, serve):
    ran = tmp_path / "lifespan-ran.txt"
    src = """
        import contextlib
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        @contextlib.asynccontextmanager
        async def lifespan(app):
            open({ran!r}, "a").write("start ")
            yield
            open({ran!r}, "a").write("stop ")

        app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("{text}"))],
                        lifespan=lifespan)
    """
    write(tmp_path / "app.py", src.format(ran=str(ran), text="off one"))
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify", "--lifespan", "off")
    assert server.get().text == "off one"
    write(tmp_path / "app.py", src.format(ran=str(ran), text="off two"))
    server.wait_text("off two")
    assert server.stop() == 0
    assert not ran.exists()


# --- 7: a lifespan that crashes in auto mode --------------------------------------------------

CRASHING_LIFESPAN = """
from starlette.responses import PlainTextResponse

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        raise RuntimeError("{message}")
    await PlainTextResponse("serving anyway")(scope, receive, send)
"""


@pytest.mark.parametrize("message", ["lifespan crashed", "database down"])
def test_lifespan_crash_in_auto_mode_is_logged_and_the_app_serves(tmp_path, serve, message):
    write(tmp_path / "app.py", CRASHING_LIFESPAN.format(message=message))
    server = serve("app.py")
    assert server.get().text == "serving anyway"
    log = server.log
    assert "Exception in 'lifespan' protocol" in log, log
    assert f"RuntimeError: {message}" in log or f"RuntimeError('{message}')" in log, log


# --- 8: a lifespan shutdown that fails --------------------------------------------------------


def test_failing_lifespan_shutdown_is_logged_and_reloads_go_on(tmp_path, serve):
    src = """
        import contextlib
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        @contextlib.asynccontextmanager
        async def lifespan(app):
            yield
            raise RuntimeError("cleanup exploded in {label}")

        app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("{label}"))],
                        lifespan=lifespan)
    """
    write(tmp_path / "app.py", src.format(label="gen1"))
    server = serve("app.py")
    write(tmp_path / "app.py", src.format(label="gen2"))
    server.wait_text("gen2")
    log = server.wait_log("Lifespan shutdown failed")
    assert "cleanup exploded in gen1" in log
    write(tmp_path / "app.py", src.format(label="gen3"))
    server.wait_text("gen3")
    log = server.wait_log("Lifespan shutdown failed", count=2)
    assert "cleanup exploded in gen2" in log
    assert server.proc.poll() is None


# --- 9: a lifespan startup that hangs in a reload ---------------------------------------------

HANGING_APP = """
import asyncio
import contextlib
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

HANG = {hang}

@contextlib.asynccontextmanager
async def lifespan(app):
    if HANG:
        open({marker!r}, "a").write("hang ")
        await asyncio.Event().wait()
    yield

app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("{text}"))], lifespan=lifespan)
"""


def hanging(project: Path, hang: bool, text: str) -> None:
    # The marker is outside the watched project: a file written there would count as a save.
    write(project / "app.py", HANGING_APP.format(hang=hang, text=text,
                                                 marker=str(project.parent / "hung.txt")))


def test_hung_lifespan_startup_times_out(tmp_path, serve):
    project = tmp_path / "project"
    hanging(project, False, "first")
    server = serve("app.py", "--timeout-lifespan", "1", cwd=project)
    assert server.get().text == "first"
    hanging(project, True, "hung")
    wait_until((tmp_path / "hung.txt").exists, 10, "the lifespan startup to hang")
    started = time.monotonic()
    response = server.get()  # held until the startup times out
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.text == "first"
    assert 0.5 <= elapsed <= 5, elapsed
    log = server.wait_log("did not finish within 1 s")
    assert "Lifespan startup failed, the previous app keeps serving" in log
    assert "a newer save arrived" not in log
    assert server.get().text == "first"
    hanging(project, False, "fixed")
    server.wait_text("fixed")


def test_file_written_by_the_lifespan_startup_does_not_cancel_it(tmp_path, serve):
    """A lifespan that creates a data file in the project (a SQLite database, a log) while it
    starts: that is not a newer save, and must not cancel the reload's startup."""
    src = """
        import asyncio
        import contextlib
        from pathlib import Path
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        @contextlib.asynccontextmanager
        async def lifespan(app):
            with open(Path(__file__).parent / "data.db", "a") as db:
                db.write("{text} ")
            await asyncio.sleep(0.5)  # connecting, migrating...
            yield

        app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("{text}"))],
                        lifespan=lifespan)
    """
    project = tmp_path / "project"
    write(project / "app.py", src.format(text="one"))
    server = serve("app.py", cwd=project)
    assert server.get().text == "one"
    write(project / "app.py", src.format(text="two"))
    wait_until(lambda: (project / "data.db").read_text().split() == ["one", "two"], 10,
               "the reload's lifespan startup")
    wait_until(lambda: "Reloaded app.py" in server.log or "Lifespan startup failed" in server.log,
               10, "the reload to finish")
    assert "a newer save arrived" not in server.log, server.log
    assert server.get().text == "two"


# --- 10: sync code in the thread pool across a save -------------------------------------------


def test_reload_waits_for_the_thread_pool_between_chunks(tmp_path, serve):
    words = """
        import time
        time.sleep(0.3)  # a slow module body: a half-run namespace would be seen meanwhile
        WORD = "{word}"

        def word():
            return WORD
    """
    write(tmp_path / "words.py", words.format(word="alpha"))
    write(tmp_path / "app.py", """
        import time
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse, StreamingResponse
        from starlette.routing import Route
        import words

        def ticks():  # sync: each next() runs in the thread pool
            for _ in range(100):
                try:
                    time.sleep(0.3)
                    value = words.word()
                except Exception as exc:
                    value = f"ERROR {exc!r}"
                yield value + "\\n"

        def stream(request):
            return StreamingResponse(ticks(), media_type="text/plain")

        app = Starlette(routes=[Route("/", lambda r: PlainTextResponse(words.word())),
                                Route("/stream", stream)])
    """)
    server = serve("app.py", "--keep-connections")
    reader = StreamReader(server.url + "/stream")
    try:
        reader.wait_lines(2)
        write(tmp_path / "words.py", words.format(word="beta"))
        server.wait_log("Reloaded words.py")
        wait_until(lambda: "beta" in reader.lines or reader.ended or reader.error, 10,
                   lambda: f"the stream to show the new word: {reader.lines}")
        reader.wait_lines(len(reader.lines) + 3)
    finally:
        reader.stop()
    assert reader.error is None and not reader.ended
    assert not [line for line in reader.lines if line not in ("alpha", "beta")], reader.lines
    i = reader.lines.index("beta")
    assert set(reader.lines[:i]) == {"alpha"} and set(reader.lines[i:]) == {"beta"}
    log = server.log
    assert "NameError" not in log and "Traceback" not in log, log
    assert "still run in the thread pool" not in log, log  # it waited, between chunks
    assert server.get().text == "beta"
