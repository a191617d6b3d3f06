"""A restart is a cold start: the worker it replaces ends as a process ends, running its
clean-ups once (atexit, `no_reload_cache(cleanup=)`), before nothing of it is left."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import RELOAD_TIMEOUT, wait_until, write
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

