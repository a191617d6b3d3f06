"""Docker, WSL, network drives: `WATCHFILES_FORCE_POLLING` makes the watcher poll, as
docs/debugging.md shows (file events do not reach the process on such set-ups)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import wait_until, write

APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def home(request):
    return PlainTextResponse("{text}")


app = Starlette(routes=[Route("/", home)])
"""


def inotify_descriptors(pid: int) -> int:
    """How many inotify instances the process holds open (Linux)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd) == "anon_inode:inotify"
        except OSError:  # closed meanwhile
            pass
    return count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_forced_polling_sees_saves_without_file_events(tmp_path, serve):
    work = tmp_path / "polling"
    app = write(work / "app.py", APP.format(text="first"))
    server = serve("app.py", cwd=work,
                   env={"WATCHFILES_FORCE_POLLING": "true", "WATCHFILES_POLL_DELAY_MS": "100"})
    assert server.get().text == "first"
    assert inotify_descriptors(server.proc.pid) == 0  # no file events: the tree is polled

    # Polling compares modification times to the second (watchfiles): save in a later one.
    wait_until(lambda: int(time.time()) > int(app.stat().st_mtime), 2, "the next second")
    write(app, APP.format(text="second"))
    server.wait_text("second")
    assert "Reloaded app.py in" in server.log

    # The same server without the variable: it listens to file events (inotify).
    other = tmp_path / "events"
    write(other / "app.py", APP.format(text="first"))
    events = serve("app.py", cwd=other, env={"WATCHFILES_FORCE_POLLING": ""})
    assert inotify_descriptors(events.proc.pid) > 0
