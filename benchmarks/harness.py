"""Servers under test and the clients that measure them.

- `Server`: `fh_utils dev`, `uvicorn --reload` or plain `uvicorn` in a subprocess on a free port,
  its output in a log file, stopped with SIGINT (then SIGKILL to its own process group).
- `wait_served`: poll `/` back to back until a marker is in the page, counting failed requests.
- `Hammer`: a second process sending requests back to back during the edits; every refused or
  reset connection and every 5xx is a failed request.
- `requests_per_second`: keep-alive HTTP/1.1 over raw sockets, so the client costs little next to
  the server; the same client for every server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = {
    "fh_utils dev": ["-m", "fh_utils", "dev", "app.py"],
    "uvicorn --reload": ["-m", "uvicorn", "app:app", "--reload"],
    "uvicorn": ["-m", "uvicorn", "app:app"],
}


def median_range(values: list[float]) -> str:
    """A table cell: median (min–max)."""
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def met(ok: bool) -> str:
    """A table's "met" cell."""
    return "✅" if ok else "❌ missed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerFailed(RuntimeError):
    pass


class Server:
    """One server process serving the fixture in `cwd`."""

    def __init__(self, kind: str, cwd: Path, log_level: str = "warning",
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.cwd = cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd.parent / f"{cwd.name}-{kind.replace(' ', '_')}-{self.port}.log"
        extra = env or {}
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PORT", None)
        # The fixture imports fh_utils (no_reload_cache): make this checkout importable.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        # No bytecode written, whatever the environment (unless a row asks for it): the edits
        # keep a file's size, and after one within the second Python last cached it, uvicorn
        # --reload's new worker would run the stale .pyc (Python's check: time to the second,
        # and size) and never serve the edit.
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update(extra)
        self._log = self.log_path.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, *COMMANDS[kind], "--port", str(self.port),
             "--log-level", log_level, *args],
            cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float) -> float:
        """Poll `/` until it answers 200; returns seconds since the process was started."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=timeout) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServerFailed(f"{self.kind} exited with {self.proc.returncode}:\n"
                                       f"{self.log[-3000:]}")
                try:
                    if client.get("/").status_code == 200:
                        return time.perf_counter() - self.started
                except httpx.HTTPError:
                    pass
                time.sleep(0.002)
        raise ServerFailed(f"{self.kind} did not answer within {timeout:.0f}s:\n"
                           f"{self.log[-3000:]}")

    def rss_mb(self) -> float | None:
        """The server process's resident set size (Linux), in MB."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None

    def cpu_seconds(self) -> float | None:
        """CPU time the server process has used, all threads (Linux)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def context_switches(self) -> int | None:
        """Context switches of all the server's threads so far (Linux)."""
        total = 0
        try:
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                for line in (task / "status").read_text().splitlines():
                    if "ctxt_switches:" in line:
                        total += int(line.split()[1])
        except OSError:
            return None
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:  # uvicorn --reload's worker, if the supervisor left it behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def is_failure(response: httpx.Response | None) -> bool:
    return response is None or response.status_code >= 500


def wait_served(client: httpx.Client, marker: str, timeout: float) -> tuple[float, int, int]:
    """GET `/` back to back until `marker` is served: (seconds, requests, failed requests)."""
    started = time.perf_counter()
    deadline = started + timeout
    requests = failed = 0
    while time.perf_counter() < deadline:
        requests += 1
        try:
            response = client.get("/")
        except httpx.HTTPError:
            failed += 1
            time.sleep(0.001)  # refused: do not spin while a server restarts
            continue
        if response.status_code >= 500:
            failed += 1
        elif marker in response.text:
            return time.perf_counter() - started, requests, failed
    raise TimeoutError(f"{marker!r} was not served within {timeout:.0f}s")


class Hammer:
    """Requests to `/` back to back from another process, each one logged.

    With several servers it takes them in turn, so each gets the same share of the load.
    `requests` (after the `with` block): (start, end, failed, server index) per request, on
    the `time.monotonic()` clock, which is the same for every process on the machine.
    """

    def __init__(self, urls: list[str], workdir: Path) -> None:
        self.urls = urls
        self._out = workdir / f"hammer-{free_port()}.json"
        self.requests: list[tuple[float, float, bool, int]] = []

    def __enter__(self) -> Hammer:
        env = {**os.environ}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.harness", str(self._out), *self.urls],
            env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "hammering":  # before the first edit
            self._proc.kill()
            raise RuntimeError("the hammer process did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._out.exists():
            self.requests = [tuple(r) for r in json.loads(self._out.read_text())]
            self._out.unlink()

    def between(self, start: float, end: float, server: int) -> list[tuple[float, float, bool]]:
        """The requests to one server that were running at some moment in [start, end]."""
        return [(a, b, f) for a, b, f, i in self.requests
                if i == server and a <= end and b >= start]


def _hammer(out: Path, urls: list[str]) -> None:
    stop = False

    def interrupted(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, interrupted)
    log: list[tuple[float, float, bool, int]] = []
    clients = [httpx.Client(base_url=url, timeout=120) for url in urls]
    n = 0
    while not stop:
        index = n % len(clients)
        n += 1
        started = time.monotonic()
        try:
            failed = clients[index].get("/").status_code >= 500
        except httpx.HTTPError:
            failed = True
        log.append((started, time.monotonic(), failed, index))
        if n == 1:
            print("hammering", flush=True)
        if failed:
            time.sleep(0.001)  # refused: do not spin while a server restarts
    for client in clients:
        client.close()
    out.write_text(json.dumps(log))


async def _rps(port: int, seconds: float, connections: int, warmup: float) -> tuple[int, int]:
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    end = start + seconds
    counted = [0, 0]  # responses, non-200 responses

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (now := loop.time()) < end:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = None
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length is None:
                    raise RuntimeError("the benchmark client needs a Content-Length response")
                await reader.readexactly(length)
                if now >= start:
                    counted[0] += 1
                    if not head.startswith(b"HTTP/1.1 200"):
                        counted[1] += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return counted[0], counted[1]


def requests_per_second(port: int, seconds: float, connections: int = 4,
                        warmup: float = 0.5) -> tuple[float, int]:
    """Steady-state requests per second over `seconds` (after `warmup`), and non-200s."""
    done, bad = asyncio.run(_rps(port, seconds, connections, warmup))
    return done / seconds, bad


if __name__ == "__main__":  # the hammer: python -m benchmarks.harness OUT.json URL...
    _hammer(Path(sys.argv[1]), sys.argv[2:])
