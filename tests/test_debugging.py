"""Debuggers under `fh_utils dev`: `breakpoint()` driven over the server's stdin (pdb), and
debugpy driven over its socket (the Debug Adapter Protocol, as VS Code speaks it)."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    RELOAD_TIMEOUT,
    STARTUP_TIMEOUT,
    free_port,
    stop_process,
    wait_until,
    write,
)

DRAIN = 3.0  # Timeouts.drain in fh_utils.server


class Terminal:
    """`python ARGS` in `cwd` with stdin a pipe the test types into, as a user at a terminal
    would; its output goes to a file."""

    def __init__(self, cwd: Path, args: list[str], port: int) -> None:
        self.port = port
        self.log_path = cwd / f"terminal-{port}.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PORT": str(port)}
        self.proc = subprocess.Popen([sys.executable, *args], cwd=cwd, stdin=subprocess.PIPE,
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._pool = ThreadPoolExecutor(4)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1, timeout: float = RELOAD_TIMEOUT) -> str:
        wait_until(lambda: self.log.count(text) >= count, timeout,
                   lambda: f"{count}x {text!r} in the output:\n{self.log}")
        return self.log

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def request(self, path: str = "/") -> Future[httpx.Response]:
        """GET `path` in the background (it may stop at a breakpoint)."""
        return self._pool.submit(httpx.get, f"http://127.0.0.1:{self.port}{path}", timeout=60)

    def stop(self) -> int:
        code = stop_process(self.proc)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._log.close()
        return code


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        port = free_port()
        term = Terminal(tmp_path, [*args, "--port", str(port)] if args[:2] == (
            "-m", "fh_utils") else list(args), port)
        started.append(term)
        term.wait_log("Application startup complete", timeout=STARTUP_TIMEOUT)
        return term

    yield start
    for term in started:
        term.stop()


APP = """
from fasthtml.common import P, fast_app

app, rt = fast_app()


@rt("/")
async def get():
    name = "one"
    breakpoint()
    return P(f"async {name}")


@rt("/sync")
def get_sync():
    name = "one"
    breakpoint()
    return P(f"sync {name}")
"""


def pdb_stop(app: Path, function: str) -> str:
    """What pdb prints when it stops at the `breakpoint()` in `function` of `app` (as saved
    now): Python 3.13 stops at the call itself (gh-118579), earlier ones at the line after it."""
    lines = app.read_text().splitlines()
    start = next(n for n, text in enumerate(lines) if f"def {function}(" in text)
    line = next(n for n in range(start, len(lines)) if lines[n].strip() == "breakpoint()") + 1
    if sys.version_info < (3, 13):
        line += 1
    return f"> {app}({line}){function}()\n-> {lines[line - 1].strip()}"


def test_breakpoint_stops_in_pdb_before_and_after_a_reload(tmp_path, terminal):
    app = write(tmp_path / "app.py", APP)
    term = terminal("-m", "fh_utils", "dev", "app.py")
    response = term.request("/")
    term.wait_log(pdb_stop(app, "get"))
    term.type("p name")
    term.wait_log("(Pdb) 'one'")
    term.type("c")
    assert "async one" in response.result(RELOAD_TIMEOUT).text

    # Two lines above the breakpoint: the new code stops at the new line numbers.
    write(app, APP.replace('    name = "one"\n    breakpoint()\n    return P(f"async',
                               '    # moved down\n    # by two lines\n'
                               '    name = "two"\n    breakpoint()\n    return P(f"async'))
    term.wait_log("Reloaded app.py in")
    response = term.request("/")
    term.wait_log(pdb_stop(app, "get"))  # two lines further down
    term.type("p name")
    term.wait_log("(Pdb) 'two'")
    term.type("c")
    assert "async two" in response.result(RELOAD_TIMEOUT).text

    # pdb chains its own Ctrl+C handler once continued: Ctrl+C still stops the server.
    term.proc.send_signal(signal.SIGINT)
    assert term.proc.wait(RELOAD_TIMEOUT) == 0
    assert "Program interrupted" not in term.log


def test_a_request_stopped_at_a_breakpoint_does_not_hold_a_reload(tmp_path, terminal):
    """A sync handler stopped in pdb (in the thread pool): the reload waits for it up to the
    drain timeout, twice (running requests, then sync code in the thread pool), then runs; the
    stopped request finishes on the code it started with."""
    app = write(tmp_path / "app.py", APP)
    term = terminal("-m", "fh_utils", "dev", "app.py")
    held = term.request("/sync")
    stop = pdb_stop(app, "get_sync")
    term.wait_log(stop)

    write(app, APP.replace('name = "one"', 'name = "two"'))
    log = term.wait_log("Reloaded app.py in", timeout=2 * DRAIN + RELOAD_TIMEOUT)
    assert "WARNING:  Reloading while 1 request(s) are still running" in log
    assert "WARNING:  Reloading while 1 sync call(s) still run in the thread pool" in log
    assert not held.done()  # still stopped at the breakpoint
    term.type("c")
    assert "sync one" in held.result(RELOAD_TIMEOUT).text

    again = term.request("/sync")
    term.wait_log(stop, count=2)  # the line did not move
    term.type("p name")
    term.wait_log("(Pdb) 'two'")
    term.type("c")
    assert "sync two" in again.result(RELOAD_TIMEOUT).text


THREAD_MODULE = """
import threading
import time

N = {n}


def loop():
    while True:
        time.sleep(0.05)


threading.Thread(target=loop, daemon=True, name="poller").start()
"""

SERVED_APP = """
import os

from fasthtml.common import P, fast_app

import worker
from fh_utils import serve

app, rt = fast_app()


@rt("/")
def get():
    breakpoint()
    return P(f"worker {worker.N} in process {os.getpid()}")


serve()
"""


def test_pdb_in_a_restarted_worker_reads_the_terminal(tmp_path, terminal):
    """`python app.py`: a restart's worker is forked from a zygote started as a fresh
    interpreter; pdb there reads the terminal too."""
    write(tmp_path / "worker.py", THREAD_MODULE.format(n=1))
    app = write(tmp_path / "app.py", SERVED_APP)
    term = terminal("app.py")
    first = term.request("/")
    stop = pdb_stop(app, "get")
    term.wait_log(stop)
    term.type("c")
    before = first.result(RELOAD_TIMEOUT).text
    assert f"worker 1 in process {term.proc.pid}" in before

    replacement = tmp_path / "worker.tmp"
    replacement.write_text(THREAD_MODULE.format(n=2))
    replacement.replace(tmp_path / "worker.py")
    term.wait_log("by restarting the worker")
    second = term.request("/")
    term.wait_log(stop, count=2)
    term.type("c")
    after = second.result(RELOAD_TIMEOUT)
    assert after.status_code == 200, term.log
    assert "worker 2 in process" in after.text
    assert f"in process {term.proc.pid}<" not in after.text  # a new process


# -- debugpy ----------------------------------------------------------------------------------

DAP_APP = """
from fasthtml.common import P, fast_app

app, rt = fast_app()


@rt("/")
def get():
    name = "one"
    return P(f"hello {name}")
"""


class DebugAdapter:
    """A minimal client of the Debug Adapter Protocol over debugpy's socket."""

    def __init__(self, port: int) -> None:
        self.sock = wait_until(lambda: socket.create_connection(("127.0.0.1", port), 1),
                               STARTUP_TIMEOUT, "debugpy to listen")
        assert isinstance(self.sock, socket.socket)
        self.sock.settimeout(None)
        self._file = self.sock.makefile("rb")
        self._seq = 0
        self.responses: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            headers = {}
            try:
                while (line := self._file.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip()] = value.strip()
                if not headers:
                    return
                message = json.loads(self._file.read(int(headers["Content-Length"])))
            except OSError:  # closed
                return
            (self.responses if message["type"] == "response" else self.events).put(message)

    def send(self, command: str, **arguments: Any) -> None:
        self._seq += 1
        body = json.dumps({"seq": self._seq, "type": "request", "command": command,
                           "arguments": arguments}).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def request(self, command: str, **arguments: Any) -> dict[str, Any]:
        self.send(command, **arguments)
        while True:
            response = self.responses.get(timeout=RELOAD_TIMEOUT)
            if response["command"] == command:
                assert response["success"], response
                body: dict[str, Any] = response.get("body", {})
                return body

    def event(self, name: str) -> dict[str, Any]:
        while True:
            event = self.events.get(timeout=RELOAD_TIMEOUT)
            if event["event"] == name:
                body: dict[str, Any] = event.get("body", {})
                return body

    def close(self) -> None:
        self.sock.close()


def test_debugpy_breakpoint_binds_after_the_file_is_reloaded(tmp_path):
    """VS Code's flow: attach, set a breakpoint in app.py, hit it; edit and save app.py (the
    module re-runs: same path, new code objects): the breakpoint stops the new code."""
    app = write(tmp_path / "app.py", DAP_APP)
    debug_port, port = free_port(), free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "debugpy", "--listen", f"127.0.0.1:{debug_port}",
             "--wait-for-client", "-m", "fh_utils", "dev", "app.py", "--port", str(port)],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
    dap = None
    pool = ThreadPoolExecutor(2)

    def output() -> str:
        return log_path.read_text(errors="replace")

    def hit(line: int) -> tuple[int, str, str]:
        """GET /, stopped at the breakpoint: (line, value of `name`, then the page)."""
        assert dap is not None
        response = pool.submit(httpx.get, f"http://127.0.0.1:{port}/", timeout=60)
        stopped = dap.event("stopped")
        assert stopped["reason"] == "breakpoint"
        frames = dap.request("stackTrace", threadId=stopped["threadId"])["stackFrames"]
        top = frames[0]
        assert Path(top["source"]["path"]) == app
        value = dap.request("evaluate", expression="name", frameId=top["id"],
                            context="repl")["result"]
        dap.request("continue", threadId=stopped["threadId"])
        return top["line"], value, response.result(RELOAD_TIMEOUT).text

    try:
        dap = DebugAdapter(debug_port)
        dap.request("initialize", clientID="tests", adapterID="debugpy", pathFormat="path",
                    linesStartAt1=True, columnsStartAt1=True)
        dap.send("attach", justMyCode=True)  # answered once configured
        dap.event("initialized")
        dap.request("setBreakpoints", source={"path": str(app)}, breakpoints=[{"line": 9}])
        dap.request("configurationDone")
        wait_until(lambda: "Application startup complete" in output(), STARTUP_TIMEOUT,
                   lambda: f"the server under debugpy:\n{output()}")

        line, value, page = hit(9)
        assert (line, value) == (9, "'one'") and "hello one" in page

        write(app, DAP_APP.replace('"one"', '"two"'))
        wait_until(lambda: "Reloaded app.py in" in output(), RELOAD_TIMEOUT, output)
        line, value, page = hit(9)
        assert (line, value) == (9, "'two'") and "hello two" in page

        # Lines inserted above: the editor moves the breakpoint and sends it again.
        write(app, DAP_APP.replace('    name = "one"',
                                       '    # two lines\n    # above\n    name = "three"'))
        wait_until(lambda: output().count("Reloaded app.py in") == 2, RELOAD_TIMEOUT, output)
        dap.request("setBreakpoints", source={"path": str(app)}, breakpoints=[{"line": 11}])
        line, value, page = hit(11)
        assert (line, value) == (11, "'three'") and "hello three" in page
    finally:
        if dap is not None:
            dap.close()
        pool.shutdown(wait=False, cancel_futures=True)
        code = stop_process(proc)
    assert code == 0, output()
