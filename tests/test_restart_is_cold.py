"""A restart is a cold start: the worker it replaces ends as a process ends, running its
clean-ups once (atexit, `no_reload_cache(cleanup=)`), before nothing of it is left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import RELOAD_TIMEOUT, DevServer, wait_until, write
from tests.test_shutdown import POLLER, POLLER_APP

EXITING = """
import atexit
import os
from fh_utils import no_reload_cache

LOG = {log!r}

def note(text):
    with open(LOG, "a") as f:
        f.write(f"{{text}} {{os.getpid()}}\\n")

atexit.register(note, "atexit")

@no_reload_cache(cleanup=lambda value: note("cleanup " + value))
def connect():
    return "db"

CONNECTION = connect()
"""


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_a_replaced_worker_runs_atexit_and_cleanups_exactly_once(tmp_path, serve):
    log = tmp_path / "exits.log"
    write(tmp_path / "exiting.py", EXITING.format(log=str(log)))
    write(tmp_path / "poller.py", POLLER.format(version="p1"))
    write(tmp_path / "app.py", "import exiting  # noqa: F401\n" + POLLER_APP)
    server = serve("app.py")
    first = server.proc.pid
    assert server.get().text == "poller p1"
    assert lines(log) == []

    # The first restart replaces the first server (it then becomes the supervisor) ...
    write(tmp_path / "poller.py", POLLER.format(version="p2"))
    server.wait_text("poller p2")
    wait_until(lambda: len(lines(log)) >= 2, RELOAD_TIMEOUT, lambda: f"clean-ups: {lines(log)}")
    assert sorted(lines(log)) == sorted([f"atexit {first}", f"cleanup db {first}"])

    # ... the second one a worker forked from the zygote.
    write(tmp_path / "poller.py", POLLER.format(version="p3"))
    server.wait_text("poller p3")
    wait_until(lambda: len(lines(log)) >= 4, RELOAD_TIMEOUT, lambda: f"clean-ups: {lines(log)}")
    second = {line.split()[-1] for line in lines(log)[2:]}
    assert len(second) == 1 and str(first) not in second and str(os.getpid()) not in second
    pid = second.pop()
    assert sorted(lines(log)[2:]) == sorted([f"atexit {pid}", f"cleanup db {pid}"])
    assert server.get().text == "poller p3"


def test_a_restarted_worker_starts_from_the_start_up_sys_path(tmp_path, serve):
    """The project grows sys.path as it runs; a fresh worker grows it again, from the path a
    cold start begins with, not from the one the first process had grown."""
    extra = tmp_path / "vendor"
    extra.mkdir()
    write(tmp_path / "poller.py", POLLER.format(version="p1"))
    write(tmp_path / "app.py", f"import sys\nsys.path.insert(0, {str(extra)!r})\n"
          + POLLER_APP.replace('"poller " + poller.VERSION',
                               f'f"{{poller.VERSION}} {{sys.path.count({str(extra)!r})}}"'))
    server = serve("app.py")
    assert server.get().text == "p1 1"
    write(tmp_path / "poller.py", POLLER.format(version="p2"))
    server.wait_text("p2")
    server.wait_log("by restarting the worker")
    assert server.get().text == "p2 1"



GREET = """
import os
WORD = "{word}"
with open({log!r}, "a") as f:
    f.write(f"{{WORD}} {{os.getpid()}}\\n")
"""


def install(site: Path, word: str, log: Path) -> None:
    """An installer's footprint: the package's files and its dist-info directory (an upgrade
    removes the old one), which changes the directory's listing."""
    for old in site.glob("greet-*.dist-info"):
        (old / "METADATA").unlink()
        old.rmdir()
    write(site / "greet" / "__init__.py", GREET.format(word=word, log=str(log)))
    write(site / f"greet-{len(word)}.0.dist-info" / "METADATA", f"Name: greet\nVersion: {word}\n")


def test_a_restart_after_an_upgrade_imports_the_upgraded_package(tmp_path, serve):
    """The zygote imported the installed packages once; after an upgrade it starts afresh, so
    the restarted worker runs the new version, as a cold start does."""
    site = tmp_path / "env" / "site-packages"
    project = tmp_path / "project"
    log = tmp_path / "imports.log"
    install(site, "hello", log)
    write(project / "poller.py", POLLER.format(version="p1"))
    write(project / "app.py", "import greet\n" + POLLER_APP.replace(
        '"poller " + poller.VERSION', 'greet.WORD + " " + poller.VERSION'))
    env = {"PYTHONPATH": str(site)}
    server = serve("app.py", cwd=project, env=env)
    assert server.get().text == "hello p1"
    # The server imported it, then the zygote (it preloads what the app uses).
    wait_until(lambda: len(lines(log)) == 2, RELOAD_TIMEOUT, lambda: f"imports: {lines(log)}")
    zygote = lines(log)[1].split()[1]

    install(site, "greetings", log)
    write(project / "poller.py", POLLER.format(version="p2"))
    server.wait_text("greetings p2")
    assert "Installed packages changed since the zygote imported them" in server.log
    assert "by restarting the worker" in server.log
    cold = DevServer(project, ["app.py"], command="run", env=env)
    try:
        cold.wait_ready()
        assert cold.get().text == server.get().text == "greetings p2"
    finally:
        cold.stop()

    # The zygote (the same process, exec'd afresh) imported the new version: the next restart
    # needs no new start.
    wait_until(lambda: f"greetings {zygote}" in lines(log), RELOAD_TIMEOUT,
               lambda: f"imports: {lines(log)}")
    write(project / "poller.py", POLLER.format(version="p3"))
    server.wait_text("greetings p3")
    assert server.log.count("Installed packages changed") == 1


# An installed package whose import starts a thread that `threading` does not list (a BLAS or
# OpenMP pool, a client library's I/O thread), or one that its atfork handler stops (OpenBLAS).
NATIVE_POOL = """
import ctypes
import ctypes.util
import os
import threading

with open({log!r}, "a") as f:
    f.write(f"import {{os.getpid()}}\\n")

if {native}:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    thread = ctypes.c_ulong()
    sleep = ctypes.cast(libc.sleep, ctypes.c_void_p)
    libc.pthread_create(ctypes.byref(thread), None, sleep, ctypes.c_void_p(3600))
else:
    stop = threading.Event()
    pool = threading.Thread(target=stop.wait, daemon=True)
    pool.start()

    def end_pool():
        stop.set()
        pool.join()

    os.register_at_fork(before=end_pool)
"""

POOL_APP = """
import os
import nativepool
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
import poller

def home(request):
    return PlainTextResponse(f"{poller.VERSION} {os.getpid()}")

app = Starlette(routes=[Route("/", home)])
"""


@pytest.mark.parametrize("native", [True, False], ids=["native thread", "ends at fork"])
def test_a_package_whose_threads_outlive_a_fork_is_imported_by_each_worker(tmp_path, serve,
                                                                        native):
    site, project, log = tmp_path / "site", tmp_path / "project", tmp_path / "imports.log"
    write(site / "nativepool.py", NATIVE_POOL.format(log=str(log), native=native))
    write(project / "poller.py", POLLER.format(version="p1"))
    write(project / "app.py", POOL_APP)
    server = serve("app.py", cwd=project, env={"PYTHONPATH": str(site)})
    assert server.get().text.startswith("p1 ")
    # The server imported it, then the zygote (it preloads what the app uses).
    wait_until(lambda: len(lines(log)) >= 2, RELOAD_TIMEOUT, lambda: f"imports: {lines(log)}")
    write(project / "poller.py", POLLER.format(version="p2"))  # a restart: a forked worker
    server.wait_text("p2 ")
    worker = server.get().text.split()[1]
    if native:
        # Its thread would not be in the fork: the zygote started over without it, and the
        # worker imported it itself, as a cold start does.
        assert f"import {worker}" in lines(log)
    else:
        assert f"import {worker}" not in lines(log) and len(lines(log)) == 2
