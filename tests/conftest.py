"""Real servers for real tests: `fh_utils dev` in a subprocess on a free loopback port."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright
from websockets.exceptions import ConnectionClosed

STARTUP_TIMEOUT = 60.0
RELOAD_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """Ctrl+C, as a user would; kill only if it does not exit within `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def close_code(ws: Any, timeout: float) -> int | None:
    """Read a WebSocket until the server closes the socket; its close code (None: still open)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=max(0.01, deadline - time.monotonic()))
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else -1
    except TimeoutError:
        pass
    return None


def wait_until(predicate: Callable[[], object], timeout: float, what: str | Callable[[], str]
               ) -> object:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except (httpx.HTTPError, OSError) as exc:
            last_error, result = exc, None
        if result:
            return result
        time.sleep(0.01)
    if callable(what):
        what = what()
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} ({last_error!r})")


def write(path: Path, text: str) -> Path:
    """Write a source file (dedented), creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process a test starts: unbuffered, no inherited `PORT`, and
    bytecode written as on a user's machine (and a CI runner), unless `extra` says otherwise."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PORT", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra or {})
    return env


class DevServer:
    """`python -m fh_utils <command> ...` on a free port, with its output in a file."""

    def __init__(self, cwd: Path, args: list[str], command: str | None = "dev",
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.cwd = cwd
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd / f"server-{self.port}.log"
        self._log_file = self.log_path.open("wb")
        # fh_utils' debug lines, for a failure's message: outside the project, never watched.
        self._debug_dir = tempfile.mkdtemp(prefix="fh_utils-test-debug-")
        self.debug_log_path = Path(self._debug_dir) / "debug.log"
        full_env = {"FH_UTILS_DEBUG_LOG": str(self.debug_log_path), **child_env(env)}
        if command is None:  # a script, e.g. `python app.py` calling fh_utils.serve()
            argv = [sys.executable, *args]
            full_env["PORT"] = str(self.port)
        else:
            argv = [sys.executable, "-m", "fh_utils", command, *args, "--port", str(self.port)]
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
        )
        self.client = httpx.Client(base_url=self.url, timeout=10)

    # -- observing ---------------------------------------------------------------------------
    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def diagnosis(self) -> str:
        """The server's log without the access lines, and fh_utils' debug lines (the end of
        each): what a failure's message shows."""
        lines = [line for line in self.log.splitlines() if '" 200 OK' not in line
                 and not re.search(r'"(GET|POST|HEAD) \S+ HTTP/1\.1" \d+', line)]
        try:  # (the server's own log changes with each request: left out too)
            debug = "\n".join(line for line in self.debug_log_path.read_text(
                errors="replace").splitlines() if self.log_path.name not in line)
        except OSError:
            debug = "(none)"
        return ("server log, access lines left out:\n" + "\n".join(lines)[-4000:]
                + "\nfh_utils' debug log:\n" + debug[-6000:])

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log}")
            return "Application startup complete" in self.log and self._answers()

        wait_until(ready, STARTUP_TIMEOUT, "the server to start")

    def _answers(self) -> bool:
        try:
            self.client.get("/__fh_utils_probe__")
        except httpx.HTTPError:
            return False
        return True

    def get(self, path: str = "/") -> httpx.Response:
        return self.client.get(path)

    def wait_text(self, text: str, path: str = "/", timeout: float = RELOAD_TIMEOUT) -> str:
        """Poll `path` until its body contains `text`; returns the body."""

        last: list[str] = []

        def check() -> str | None:
            body = self.get(path).text
            last[:] = [body]
            return body if text in body else None

        def what() -> str:  # on a timeout: what was served instead, and the server's log
            served = last[0][:500] if last else "nothing"
            return f"{text!r} at {path}; served: {served!r}\n{self.diagnosis()}"

        return wait_until(check, timeout, what)  # type: ignore[return-value]

    def wait_log(self, text: str, count: int = 1, timeout: float = RELOAD_TIMEOUT) -> str:
        wait_until(lambda: self.log.count(text) >= count, timeout,
                   lambda: f"{count}x {text!r} in the log:\n{self.log}")
        return self.log

    # -- stopping ----------------------------------------------------------------------------
    def stop(self) -> int:
        self.client.close()
        returncode = stop_process(self.proc)
        self._log_file.close()
        shutil.rmtree(self._debug_dir, ignore_errors=True)
        return returncode


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., DevServer]]:
    """Start `fh_utils dev ARGS...` in tmp_path and wait until it answers; stopped at teardown."""
    servers: list[DevServer] = []

    def start(*args: str, cwd: Path | None = None, command: str | None = "dev",
              ready: bool = True,
              env: dict[str, str] | None = None, port: int | None = None) -> DevServer:
        server = DevServer(cwd or tmp_path, list(args), command=command, env=env, port=port)
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


# --- a real headless Chromium -----------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"  # scripts/test.sh installs it when missing
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module, closed with it."""
    assert Path(CHROMIUM).exists(), "Chromium is missing: run scripts/test.sh, which installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()
