"""No request waits on user code: a new app's lifespan startup that hangs, or a failure a fresh
process has to judge, leave the previous version answering, untouched (its own globals), until
the new one is committed. Compared with a cold start at the end."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import RELOAD_TIMEOUT, wait_until, write
from tests.test_faithful import assert_matches_cold
from tests.test_shutdown import alive

APP = """
import asyncio
import contextlib
import os
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

VERSION = "{version}"

@contextlib.asynccontextmanager
async def lifespan(app):
    {startup}
    yield

async def home(request):
    return PlainTextResponse(VERSION)

app = Starlette(routes=[Route("/", home)], lifespan=lifespan)
"""


def app_file(tmp_path: Path, version: str, startup: str = "pass") -> None:
    write(tmp_path / "app.py", APP.format(version=version, startup=startup))


@contextmanager
def polling(port: int) -> Iterator[list[tuple[int, str, float]]]:
    """GET / over and over in a thread: (status, body, seconds) of each answer."""
    answers: list[tuple[int, str, float]] = []
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.get(f"http://127.0.0.1:{port}/")
                answers.append((response.status_code, response.text,
                                response.elapsed.total_seconds()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield answers
    finally:
        stop.set()
        thread.join(30)


def started(tmp_path: Path) -> set[int]:
    """The pids that ran the hanging startup so far."""
    path = tmp_path / "started.txt"
    return {int(pid) for pid in path.read_text().split()} if path.exists() else set()


def test_a_hanging_lifespan_startup_leaves_the_old_app_answering(tmp_path, serve):
    app_file(tmp_path, "v1")
    server = serve("app.py")
    with polling(server.port) as answers:
        wait_until(lambda: answers, RELOAD_TIMEOUT, "a first answer")
        app_file(tmp_path, "v2", "open('started.txt', 'a').write(f'{os.getpid()} ')\n"
                 "    await asyncio.Event().wait()  # hangs")
        wait_until(lambda: "lifespan startup takes over 1 s" in server.log, RELOAD_TIMEOUT,
                   lambda: f"the startup given up on\n{server.log}")
        seen = len(answers)
        wait_until(lambda: len(answers) > seen + 20, RELOAD_TIMEOUT, "answers meanwhile")
        # The new worker is in its startup (it tried the startup in place first: that pid is
        # the server's), so the next save gives up a worker whose startup hangs.
        wait_until(lambda: started(tmp_path) - {server.proc.pid}, RELOAD_TIMEOUT,
                   lambda: f"a new worker in its startup\n{server.log}")
    assert {(status, body) for status, body, _ in answers} == {(200, "v1")}
    # While the new startup ran in place, requests waited for it one second at most.
    assert max(seconds for _, _, seconds in answers) < 1.0 + 2.0  # (a loaded machine's slack)
    app_file(tmp_path, "v3")
    server.wait_text("v3")
    assert "given up for a newer save" in server.log
    # The new worker whose startup hangs exits once given up (not --timeout-lifespan later).
    hung = started(tmp_path) - {server.proc.pid}
    wait_until(lambda: not any(alive(pid) for pid in hung), 10,
               lambda: f"a given-up worker still runs: {hung}")
    assert_matches_cold(server, tmp_path)


def test_a_slow_lifespan_startup_is_served_by_a_fresh_worker(tmp_path, serve):
    """Slow, not hung: the fresh worker started it while the old app answered; it serves."""
    app_file(tmp_path, "v1")
    server = serve("app.py")
    with polling(server.port) as answers:
        wait_until(lambda: answers, RELOAD_TIMEOUT, "a first answer")
        app_file(tmp_path, "v2", "await asyncio.sleep(2)")
        server.wait_text("v2")
    assert "by restarting the worker (the new app's lifespan startup takes over 1 s" in (
        server.log)
    assert {body for status, body, _ in answers if status == 200} <= {"v1", "v2"}
    assert all(status == 200 for status, _, _ in answers)
    assert_matches_cold(server, tmp_path)


def test_the_same_save_reported_again_does_not_give_the_new_worker_up(tmp_path, serve):
    """watchfiles may report one write twice (its truncation, then its bytes): a repeat is no
    newer save, and the new worker whose startup is under way still takes over."""
    app_file(tmp_path, "v1")
    server = serve("app.py")
    app_file(tmp_path, "v2", "await asyncio.sleep(2)")
    wait_until(lambda: "lifespan startup takes over 1 s" in server.log, RELOAD_TIMEOUT,
               lambda: f"a new worker starting\n{server.log}")
    times = (tmp_path / "app.py").stat()
    os.utime(tmp_path / "app.py", ns=(times.st_atime_ns, times.st_mtime_ns))  # an event, no edit
    server.wait_text("v2")
    assert "given up for a newer save" not in server.log
    assert_matches_cold(server, tmp_path)


JUDGED = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
import registry

VERSION = "{version}"
registry.add("home")  # a registry that refuses a name twice: a re-run in place fails

async def home(request):
    return PlainTextResponse(VERSION)

app = Starlette(routes=[Route("/", home)])
"""
REGISTRY = """
import time
time.sleep({delay})  # a fresh process takes this long to load the project
NAMES = set()

def add(name):
    if name in NAMES:
        raise ValueError(f"{{name}} is registered already")
    NAMES.add(name)
"""


def test_a_failure_is_reported_at_once_and_judged_while_the_old_app_answers(tmp_path, serve):
    write(tmp_path / "registry.py", REGISTRY.format(delay=0))
    write(tmp_path / "app.py", JUDGED.format(version="v1"))
    server = serve("app.py")
    write(tmp_path / "registry.py", REGISTRY.format(delay=1.5))
    server.wait_text("v1")
    wait_until(lambda: "Reloaded registry.py" in server.log, RELOAD_TIMEOUT, "the reload")
    with polling(server.port) as answers:
        write(tmp_path / "app.py", JUDGED.format(version="v2"))
        wait_until(lambda: "is registered already" in server.log, RELOAD_TIMEOUT,
                   lambda: f"the in-place failure\n{server.log}")
        reported = len(answers)
        server.wait_text("v2")  # the fresh process loads it: the project is re-imported
    # Answered while the fresh process loaded the project (1.5 s), by the old app.
    during = answers[reported:]
    assert len(during) > 5 and {b for s, b, _ in during} <= {"v1", "v2"}
    assert all(status == 200 for status, _, _ in answers)
    assert "by re-importing the project" in server.log
    assert_matches_cold(server, tmp_path)
