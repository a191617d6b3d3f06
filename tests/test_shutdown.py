"""Ending a session: Ctrl+C is quick whatever is open, a second one exits at once, and the
watcher survives what goes wrong on the way (hung or failing lifespans, vanished workers).

Real `fh_utils dev` processes (the `serve` fixture). Durations are measured from the signal to
the process exit: the goal is 1 s; `CTRL_C_LIMIT` adds 0.5 s so that a loaded CI machine does
not fail a test that is well within the goal on a developer's machine (plain uvicorn needs
~0.26 s for the FastHTML stream below).

The processes of one session (the first server, the zygote, the workers it forks) all run in
the test's own directory: they are found through `/proc/PID/cwd`, and their parents through
`/proc/PID/stat`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from fh_utils.serve import events
from tests.conftest import RELOAD_TIMEOUT, DevServer, stop_process, wait_until, write

pytestmark = pytest.mark.skipif(not Path("/proc/self/cwd").exists(),
                                reason="finds the session's processes through /proc")

CTRL_C_GOAL = 1.0  # seconds from Ctrl+C to the exit
CTRL_C_LIMIT = CTRL_C_GOAL + 0.5  # what the tests allow: the goal plus CI noise
SECOND_SIGNAL_GAP = 0.3  # between the two Ctrl+C of a user who lost patience
WAIT_EXIT = 8.0  # how long a slow exit is still waited for, to report its real duration


# --- the session's processes ------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def session_pids(directory: Path) -> set[int]:
    """Live processes running in `directory` (those of the session started there)."""
    wanted = os.path.realpath(directory)
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.readlink(entry / "cwd") == wanted and alive(int(entry.name)):
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def children(pid: int, among: set[int]) -> set[int]:
    return {p for p in among if (s := _stat(p)) is not None and s[1] == pid and alive(p)}


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> Iterator[None]:
    """Set up before `serve`, so torn down after it: kill (by pid) whatever of the session a
    failing test left running."""
    yield
    for pid in session_pids(tmp_path):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def ctrl_c(proc: subprocess.Popen[bytes]) -> float:
    """Send Ctrl+C; seconds until the process exited (inf if not within WAIT_EXIT s: then it
    is killed)."""
    started = time.monotonic()
    if stop_process(proc, WAIT_EXIT) == -signal.SIGKILL:
        return float("inf")
    return time.monotonic() - started


def assert_quick(elapsed: float, server: DevServer, what: str) -> None:
    assert elapsed < CTRL_C_LIMIT, (
        f"Ctrl+C {what} took {elapsed:.2f} s (goal {CTRL_C_GOAL:g} s, allowed "
        f"{CTRL_C_LIMIT:g} s)\n{server.log}")


# --- clients that hold a connection open ------------------------------------------------------


class Reader(threading.Thread):
    """Reads a long-lived connection in the background until the server ends it."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.received: list[str] = []
        self.ended = threading.Event()
        self.error: BaseException | None = None

    @property
    def text(self) -> str:
        return "".join(self.received)

    def wait_for(self, text: str, timeout: float = 10) -> None:
        wait_until(lambda: text in self.text, timeout,
                   lambda: f"{text!r} on the stream (got {self.text[-300:]!r}, "
                           f"ended={self.ended.is_set()}, error={self.error!r})")

    def run(self) -> None:
        try:
            self.read()
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended.set()

    def read(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class StreamReader(Reader):
    """An HTTP GET whose response never ends (SSE), read over a raw socket."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())

    def read(self) -> None:
        while data := self.sock.recv(65536):
            self.received.append(data.decode(errors="replace"))

    def body_ended(self, timeout: float) -> bool:
        """The response's chunked body got its last chunk, or the server closed the connection.
        After the last chunk, HTTP/1.1 keeps the connection open for the next request (until
        uvicorn's keep-alive timeout): the end of the body is what ends an EventSource."""
        with contextlib.suppress(AssertionError):
            wait_until(lambda: self.ended.is_set() or self.text.endswith("\r\n0\r\n\r\n"),
                       timeout, "")
        return self.ended.is_set() or self.text.endswith("\r\n0\r\n\r\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class SocketReader(Reader):
    """A WebSocket the server sends on forever."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__()
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            connect(f"ws://127.0.0.1:{port}{path}", open_timeout=10, close_timeout=1))

    def read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = self.ws.recv()
                self.received.append(message if isinstance(message, str) else message.decode())

    def close(self) -> None:
        self._stack.close()


@contextlib.contextmanager
def held_open(reader: Reader, first: str) -> Iterator[Reader]:
    """Start reading; yields once `first` arrived. Closed on exit."""
    reader.start()
    try:
        reader.wait_for(first)
        yield reader
    finally:
        reader.close()
        reader.join(5)


# --- apps -------------------------------------------------------------------------------------

STARLETTE_STREAMS = """
import asyncio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute

VERSION = "{version}"

async def ticks():
    while True:
        yield f"data: {{VERSION}}\\n\\n"
        await asyncio.sleep(0.05)

def home(request):
    return PlainTextResponse(VERSION)

def stream(request):
    return StreamingResponse(ticks(), media_type="text/event-stream")

async def socket(websocket):
    await websocket.accept()
    while True:
        await websocket.send_text(VERSION)
        await asyncio.sleep(0.05)

app = Starlette(routes=[Route("/", home), Route("/stream", stream),
                        WebSocketRoute("/ws", socket)])
"""

FASTHTML_STREAM = """
import asyncio
from fasthtml.common import EventStream, P, fast_app, signal_shutdown, sse_message

app, rt = fast_app()
shutdown_event = signal_shutdown()
VERSION = "{version}"

async def ticks():
    while not shutdown_event.is_set():
        yield sse_message(P(VERSION))
        await asyncio.sleep(0.1)

@rt("/")
def get():
    return P(VERSION)

@rt("/stream")
async def stream():
    return EventStream(ticks())
"""

STARLETTE_LIFESPAN = """
import asyncio
import contextlib
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

VERSION = "{version}"

@contextlib.asynccontextmanager
async def lifespan(app):
    me = VERSION  # this app's version (the module's VERSION changes with each reload)
    print("lifespan startup of", me, flush=True)
{startup}
    yield
    print("lifespan shutdown of", me, flush=True)
{shutdown}

def home(request):
    return PlainTextResponse(VERSION)

app = Starlette(routes=[Route("/", home)], lifespan=lifespan)
"""

HANG = "    await asyncio.Event().wait()"
RAISE = '    raise RuntimeError("shutdown of " + me + " failed")'
PASS = "    pass"

POLLER = """
import threading
import time

VERSION = "{version}"

def loop():
    while True:
        time.sleep(0.05)

threading.Thread(target=loop, daemon=True, name="poller").start()
"""

POLLER_APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
import poller

def home(request):
    return PlainTextResponse("poller " + poller.VERSION)

app = Starlette(routes=[Route("/", home)])
"""


def restart_worker(tmp_path: Path, serve) -> tuple[DevServer, int, int]:
    """A session whose worker was restarted (tier 3) and whose first server stepped down to
    the supervisor. Returns (server, the zygote's pid, the serving worker's pid)."""
    write(tmp_path / "poller.py", POLLER.format(version="p1"))
    write(tmp_path / "app.py", POLLER_APP)
    server = serve("app.py")
    assert server.get().text == "poller p1"

    write(tmp_path / "poller.py", POLLER.format(version="p2"))
    server.wait_text("poller p2")
    server.wait_log("by restarting the worker")
    original = server.proc.pid

    def stepped_down() -> bool:
        """The first server exec'd into the supervisor, which now handles SIGTERM (it set
        its handlers: a Ctrl+C while its interpreter starts is another story)."""
        if b"fh_utils.serve.zygote" not in Path(f"/proc/{original}/cmdline").read_bytes():
            return False
        status = Path(f"/proc/{original}/status").read_text()
        caught = int(status.split("SigCgt:")[1].split()[0], 16)
        return bool(caught & (1 << (signal.SIGTERM - 1)))

    wait_until(stepped_down, RELOAD_TIMEOUT, lambda: f"the first server to step down\n"
                                                     f"{server.log}")

    def one_worker() -> tuple[int, int] | None:
        pids = session_pids(tmp_path)
        zygotes = children(original, pids)
        if len(zygotes) != 1:
            return None
        zygote = next(iter(zygotes))
        workers = children(zygote, pids)
        return (zygote, next(iter(workers))) if len(workers) == 1 else None

    found = wait_until(one_worker, RELOAD_TIMEOUT,
                       lambda: f"one zygote with one worker: {session_pids(tmp_path)}")
    assert isinstance(found, tuple)
    return server, found[0], found[1]


def assert_all_gone(server: DevServer, tmp_path: Path, pids: set[int], started: float,
                    what: str) -> None:
    """The session's processes all ended (and the port refuses) within CTRL_C_LIMIT of
    `started`; the last one is waited for up to WAIT_EXIT s to report the real duration."""

    def gone() -> bool:
        return not any(alive(p) for p in pids) and not session_pids(tmp_path) and not accepts(
            server.port)

    with contextlib.suppress(AssertionError):
        wait_until(gone, WAIT_EXIT, "")
    elapsed = time.monotonic() - started
    remaining = {p for p in pids if alive(p)} | session_pids(tmp_path)
    assert not remaining and not accepts(server.port), (
        f"{what}: processes {sorted(remaining)} still run (port accepts: "
        f"{accepts(server.port)}) after {elapsed:.2f} s\n{server.log}")
    assert elapsed < CTRL_C_LIMIT, (
        f"{what}: the session's processes took {elapsed:.2f} s to end (allowed "
        f"{CTRL_C_LIMIT:g} s)\n{server.log}")


# --- 1: Ctrl+C is quick whatever is open ------------------------------------------------------


@pytest.mark.timeout(60)
def test_ctrl_c_with_an_endless_sse_stream_open(tmp_path, serve):
    write(tmp_path / "app.py", STARLETTE_STREAMS.format(version="s1"))
    server = serve("app.py")
    with held_open(StreamReader(server.port, "/stream"), "data: s1") as stream:
        assert not stream.ended.is_set()
        elapsed = ctrl_c(server.proc)
        assert_quick(elapsed, server, "with an endless StreamingResponse open")
        assert stream.ended.wait(5), "the stream is still open after the server exited"


@pytest.mark.timeout(60)
def test_ctrl_c_with_a_websocket_open(tmp_path, serve):
    write(tmp_path / "app.py", STARLETTE_STREAMS.format(version="w1"))
    server = serve("app.py")
    with held_open(SocketReader(server.port, "/ws"), "w1") as ws:
        assert not ws.ended.is_set()
        elapsed = ctrl_c(server.proc)
        assert_quick(elapsed, server, "with a WebSocket open")
        assert ws.ended.wait(5), "the WebSocket is still open after the server exited"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reloads", [0, 1])
def test_ctrl_c_with_a_fasthtml_event_stream_and_signal_shutdown(tmp_path, serve, reloads):
    """FastHTML's own recipe: the generator ends once `signal_shutdown()`'s event is set."""
    write(tmp_path / "app.py", FASTHTML_STREAM.format(version="f1"))
    server = serve("app.py")
    assert "f1" in server.get().text
    version = "f1"
    for n in range(reloads):
        with held_open(StreamReader(server.port, "/stream"), f"<p>{version}</p>") as old:
            version = f"f{n + 2}"
            write(tmp_path / "app.py", FASTHTML_STREAM.format(version=version))
            server.wait_text(version)
            assert isinstance(old, StreamReader)
            assert old.body_ended(5), "the retired app's stream was not ended by the reload"
    with held_open(StreamReader(server.port, "/stream"), f"<p>{version}</p>") as stream:
        assert not stream.ended.is_set()
        elapsed = ctrl_c(server.proc)
        assert_quick(elapsed, server, f"with an EventStream open ({reloads} reload(s) before)")
        assert stream.ended.wait(5), "the stream is still open after the server exited"


@pytest.mark.timeout(60)
def test_ctrl_c_after_the_worker_was_restarted_ends_every_process(tmp_path, serve):
    server, zygote, worker = restart_worker(tmp_path, serve)
    pids = session_pids(tmp_path)
    assert {server.proc.pid, zygote, worker} <= pids

    started = time.monotonic()
    elapsed = ctrl_c(server.proc)
    assert_quick(elapsed, server, "to the first server's pid after a worker restart")
    assert_all_gone(server, tmp_path, pids, started, "Ctrl+C after a worker restart")


# --- 2: a second Ctrl+C exits at once ---------------------------------------------------------


@pytest.mark.timeout(60)
def test_second_ctrl_c_exits_while_the_lifespan_shutdown_hangs(tmp_path, serve):
    write(tmp_path / "app.py", STARLETTE_LIFESPAN.format(version="h1", startup=PASS,
                                                         shutdown=HANG))
    server = serve("app.py")
    assert server.get().text == "h1"

    server.proc.send_signal(signal.SIGINT)
    server.wait_log("lifespan shutdown of h1", timeout=5)
    time.sleep(SECOND_SIGNAL_GAP)  # spaces the two signals, as a user would
    assert server.proc.poll() is None, (
        f"the first Ctrl+C should still wait for the hung lifespan shutdown\n{server.log}")

    elapsed = ctrl_c(server.proc)
    assert elapsed < CTRL_C_GOAL, (
        f"the second Ctrl+C took {elapsed:.2f} s to exit (allowed {CTRL_C_GOAL:g} s)\n"
        f"{server.log}")


# --- 3: the hardening issue's "Done when" -----------------------------------------------------


@pytest.mark.timeout(60)
def test_done_when_a_save_cancels_a_first_startup_that_hangs_and_ctrl_c_exits(tmp_path, serve):
    """Done when: the first lifespan startup hangs; saving a fixed app.py serves the fixed
    page (the save cancels the hung startup), and Ctrl+C then ends the process within ~1 s."""
    app = write(tmp_path / "app.py", STARLETTE_LIFESPAN.format(version="hung", startup=HANG,
                                                               shutdown=PASS))
    server = serve("app.py", ready=False)
    server.wait_log("Will watch for changes", timeout=30)
    server.wait_log("lifespan startup of hung", timeout=30)
    assert "Application startup complete" not in server.log

    # The watcher starts alongside the hung startup: a save before its first scan would go
    # unnoticed, so the fix is saved again (same text) until it is served.
    fixed = STARLETTE_LIFESPAN.format(version="fixed", startup=PASS, shutdown=PASS)
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while True:
        write(app, fixed)
        try:
            server.wait_text("fixed", timeout=2)
            break
        except AssertionError:
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the fix was never served\n{server.log}") from None
    assert "lifespan startup cancelled: a newer save arrived" in server.log
    server.wait_log("Application startup complete")

    elapsed = ctrl_c(server.proc)
    assert_quick(elapsed, server, "after a hung first startup was fixed")


# --- 4: the watcher survives exceptions -------------------------------------------------------


@pytest.mark.timeout(60)
def test_reloads_continue_when_each_retired_app_shutdown_raises(tmp_path, serve):
    app = write(tmp_path / "app.py", STARLETTE_LIFESPAN.format(version="r1", startup=PASS,
                                                               shutdown=RAISE))
    server = serve("app.py")
    assert server.get().text == "r1"

    for n in (2, 3, 4):
        write(app, STARLETTE_LIFESPAN.format(version=f"r{n}", startup=PASS, shutdown=RAISE))
        server.wait_text(f"r{n}")
    # The last reload's check started r4 in a fresh worker too, and shut it down unserved:
    # that shutdown's failure is not the serving app's, and must not read as if it were.
    def verdict() -> bool:
        server.get()  # the page asked again: the check compares the answer
        return "verify" in server.client.get(events.STATUS_PATH).json()

    wait_until(verdict, RELOAD_TIMEOUT, lambda: f"the check's verdict\n{server.log}")
    wait_until(lambda: len(session_pids(tmp_path)) == 2, RELOAD_TIMEOUT,
               lambda: f"the server and the zygote only: {session_pids(tmp_path)}")
    log = server.wait_log("Lifespan shutdown failed", count=3)
    for n in (1, 2, 3):
        assert f"RuntimeError: shutdown of r{n} failed" in log
    assert "shutdown of r4 failed" not in log  # the current app has not shut down
    assert log.count("Lifespan shutdown failed") == 3
    assert "this is a bug in fh_utils" not in log


# --- 5: values pinned by a renamed or deleted cached function are released --------------------

CACHED = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from fh_utils import no_reload_cache

CLEANED = {cleaned!r}
MARK = "{mark}"
{function}

def home(request):
    return PlainTextResponse(MARK + " " + VALUE)

app = Starlette(routes=[Route("/", home)])
"""

CACHED_FUNCTION = """
@no_reload_cache(cleanup=lambda v: open(CLEANED, "a").write(v + " "))
def {name}():
    return "v1"

VALUE = {name}()
"""


@pytest.mark.timeout(60)
def test_cached_values_of_renamed_then_deleted_function_are_released(tmp_path, serve):
    cleaned = tmp_path / "cleaned.txt"
    app = tmp_path / "app.py"

    def cleanups() -> list[str]:
        return cleaned.read_text().split() if cleaned.exists() else []

    def version(mark: str, function: str) -> str:
        return CACHED.format(cleaned=str(cleaned), mark=mark, function=function)

    write(app, version("one", CACHED_FUNCTION.format(name="load")))
    server = serve("app.py")
    assert server.get().text == "one v1"
    assert cleanups() == []

    write(app, version("two", CACHED_FUNCTION.format(name="load2")))
    server.wait_text("two v1")
    wait_until(lambda: cleanups() == ["v1"], 5, lambda: f"load()'s value cleaned up "
                                                        f"({cleanups()})\n{server.log}")
    server.wait_log("load() is gone: its cached values were released")

    write(app, version("three", 'VALUE = "plain"'))
    server.wait_text("three plain")
    wait_until(lambda: cleanups() == ["v1", "v1"], 5,
               lambda: f"load2()'s value cleaned up ({cleanups()})\n{server.log}")
    server.wait_log("load2() is gone: its cached values were released")


# --- 6: a worker killed after a restart is replaced -------------------------------------------


@pytest.mark.timeout(60)
def test_worker_killed_after_a_restart_is_replaced(tmp_path, serve):
    server, zygote, worker = restart_worker(tmp_path, serve)
    assert worker != server.proc.pid

    os.kill(worker, signal.SIGKILL)
    server.wait_log("exited unexpectedly")
    assert f"[{worker}] exited unexpectedly (signal {int(signal.SIGKILL)})" in server.log
    wait_until(lambda: not alive(worker), 5, "the killed worker to be reaped")
    server.wait_text("poller p2")
    replacements = children(zygote, session_pids(tmp_path))
    assert replacements and worker not in replacements

    pids = session_pids(tmp_path)
    started = time.monotonic()
    elapsed = ctrl_c(server.proc)
    assert_quick(elapsed, server, "after the killed worker was replaced")
    assert_all_gone(server, tmp_path, pids, started, "Ctrl+C after a replaced worker")



@pytest.mark.parametrize("preload", ["1", "0"])
def test_restart_tier_without_preloading_as_on_macos(tmp_path, serve, preload):
    """macOS cannot fork a process that loaded Objective-C: there the zygote is a fresh
    interpreter that preloads none of the app's packages (FH_UTILS_ZYGOTE_PRELOAD=0 does the
    same here), and a restart still serves the edit. pydantic_core stands for such a package:
    a compiled one that the app imports and uvicorn does not."""
    write(tmp_path / "poller.py", POLLER.format(version="p1"))
    write(tmp_path / "app.py", "import pydantic_core\n" + POLLER_APP)
    server = serve("app.py", env={"FH_UTILS_ZYGOTE_PRELOAD": preload})
    assert server.get().text == "poller p1"

    def zygote() -> int | None:
        """The first server's child (the workers are the zygote's children)."""
        for pid in session_pids(tmp_path):
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                if int(stat.rpartition(")")[2].split()[1]) == server.proc.pid:
                    return pid
        return None

    def preloaded() -> bool:
        pid = zygote()
        return pid is not None and "pydantic_core" in Path(f"/proc/{pid}/maps").read_text()

    if preload == "1":  # the control: on Linux the zygote imports the app's packages
        wait_until(preloaded, RELOAD_TIMEOUT, "pydantic_core preloaded in the zygote")
    write(tmp_path / "poller.py", POLLER.format(version="p2"))
    server.wait_text("poller p2")
    server.wait_log("by restarting the worker")
    if preload == "0":
        pid = zygote()
        assert pid is not None
        assert b"fh_utils.serve.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert not preloaded()
