"""The fresh-process check: after a reload in place, a worker forked from the zygote starts the
edited project; when it serves something else, it takes over. Compared with a cold start."""

from __future__ import annotations

from pathlib import Path

import pytest

from fh_utils.serve.verify import Answer, Description, Get, Recorder, differences
from tests.conftest import RELOAD_TIMEOUT, wait_until, write
from tests.test_faithful import assert_matches_cold, cold
from tests.test_files import COUNTING_APP, counting_project
from tests.test_shutdown import children, session_pids

# `banner` reads the title through sys.modules: no import edge, so no rule of the reloader
# knows that it depends on `config`. A cold start computes it from the new title.
APP = """
import os
from fasthtml.common import fast_app, P
import config
import banner

app, rt = fast_app()

@rt("/")
def get():
    return P(config.TITLE, " / ", banner.BANNER)

@rt("/pid")
def get():
    return P(os.getpid())
"""
CONFIG = 'TITLE = "{title}"\n'
BANNER = """
import sys
BANNER = sys.modules["config"].TITLE.upper()
"""


def shop(tmp_path: Path, extra: str = "") -> None:
    write(tmp_path / "app.py", APP + extra)
    write(tmp_path / "config.py", CONFIG.format(title="shop"))
    write(tmp_path / "banner.py", BANNER)


def pid(server) -> int:
    return int(server.get("/pid").text.split("<p>")[1].split("</p>")[0])


def test_a_divergence_no_rule_sees_is_served_as_a_cold_start(tmp_path, serve):
    shop(tmp_path)
    server = serve("app.py")
    assert "shop / SHOP" in server.get().text
    first = pid(server)
    write(tmp_path / "config.py", CONFIG.format(title="store"))
    server.wait_text("store / STORE")  # the page asked again: what the check compares
    assert "a fresh start differs (GET / answers differ): switched to a fresh worker" in (
        server.log)
    assert pid(server) != first
    assert_matches_cold(server, tmp_path, ["/"])


def test_without_the_check_the_hot_server_keeps_what_no_rule_sees(tmp_path, serve):
    """What the check is for: with --no-verify the in-place reload alone differs from a cold
    start here (the test above would fail without the check)."""
    shop(tmp_path)
    server = serve("app.py", "--no-verify")
    write(tmp_path / "config.py", CONFIG.format(title="store"))
    server.wait_text("store / SHOP")
    assert cold(tmp_path, ["/"])["/"][1].count("store / STORE") == 1
    assert "fresh start" not in server.log


def test_an_ordinary_edit_is_checked_and_keeps_its_process(tmp_path, serve):
    """The check finds nothing: the hot process serves on, its state kept. A page that shows
    the process id differs between any two processes: it is no evidence."""
    shop(tmp_path, '\n@rt("/about")\ndef get():\n    return P("about v1")\n')
    server = serve("app.py", "--log-level", "debug")
    first = pid(server)
    write(tmp_path / "app.py", APP + '\n@rt("/about")\ndef get():\n    return P("about v2")\n')
    server.wait_text("about v2", "/about")
    wait_until(lambda: "A fresh start serves what the reload of app.py does" in server.log,
               RELOAD_TIMEOUT, lambda: f"the check's verdict\n{server.log}")
    assert pid(server) == first
    assert "differs" not in server.log
    assert_matches_cold(server, tmp_path, ["/about"])
    # The verdict is an event, and `fh_utils status` shows it with the reload's outcome.
    status = server.get("/__fh_utils_live__/status").json()
    assert status["live"] and status["files"] == ["app.py"]
    assert status["verify"]["same"] and status["verify"]["differences"] == []
    assert status["verify"]["compared"] >= 1 and not status["verify"]["switched"]


def test_a_newer_save_cancels_the_running_check(tmp_path, serve):
    """The fresh start takes a second (an import the in-place reload does not re-run); the
    save made meanwhile cancels the check: its worker exits, the newer save is checked."""
    shop(tmp_path)
    write(tmp_path / "slow.py", "import time\ntime.sleep(1.0)\n")
    write(tmp_path / "app.py", "import slow\n" + APP)
    server = serve("app.py", "--log-level", "debug")
    write(tmp_path / "app.py", "import slow\n" + APP.replace('" / "', '" - "'))
    server.wait_text("shop - SHOP")
    write(tmp_path / "app.py", "import slow\n" + APP.replace('" / "', '" + "'))
    server.wait_text("shop + SHOP")
    wait_until(lambda: "does (" in server.log, RELOAD_TIMEOUT,
               lambda: f"the check's verdict\n{server.log}")
    assert server.log.count("A fresh start serves what the reload") == 1
    assert "a fresh start differs" not in server.log


def test_a_slow_fresh_start_is_not_checked_unless_asked(tmp_path, serve):
    shop(tmp_path)
    write(tmp_path / "app.py", "import time\ntime.sleep(2.1)\n" + APP)
    server = serve("app.py")
    write(tmp_path / "config.py", CONFIG.format(title="store"))
    server.wait_text("store / SHOP")
    wait_until(lambda: "not checked against a fresh process" in server.log, RELOAD_TIMEOUT,
               "the note")
    assert "a fresh start of app:app takes 2." in server.log
    assert "--verify checks anyway" in server.log


@pytest.mark.timeout(120)
def test_verify_checks_a_slow_fresh_start_when_asked(tmp_path, serve):
    shop(tmp_path)
    write(tmp_path / "app.py", "import time\ntime.sleep(2.1)\n" + APP)
    server = serve("app.py", "--verify")
    write(tmp_path / "config.py", CONFIG.format(title="store"))
    server.wait_text("store / STORE", timeout=RELOAD_TIMEOUT + 10)
    assert "a fresh start differs" in server.log


def test_the_check_never_leaves_a_worker_behind(tmp_path, serve):
    """Each check's fresh worker exits once the verdict is in: at rest, the server and its
    zygote (which forks the restart tier's workers) are all that run."""
    shop(tmp_path)
    server = serve("app.py", "--log-level", "debug")
    for n in range(3):
        write(tmp_path / "app.py", APP + f"\nVERSION = {n}\n")
        wait_until(lambda n=n: server.log.count("A fresh start serves what") == n + 1,
                   RELOAD_TIMEOUT, lambda n=n: f"check {n}\n{server.log}")
    wait_until(lambda: len(session_pids(tmp_path)) == 2, RELOAD_TIMEOUT,
               lambda: f"the server and the zygote only: {session_pids(tmp_path)}")
    zygote = children(server.proc.pid, session_pids(tmp_path))
    assert len(zygote) == 1 and not children(next(iter(zygote)), session_pids(tmp_path))


# -- the comparison itself ---------------------------------------------------------------------


def test_differences_name_what_differs():
    get = Get("/", b"", ())
    hot = Description(routes=[("Route", "/", "GET", "home", "app.home#1")],
                      state={"config": {"TITLE": "builtins.str", "COUNT": "1"}})
    fresh = Description(routes=[("Route", "/", "GET", "home", "app.home#2"),
                                ("Route", "/new", "GET", "new", "app.new#3")],
                        state={"config": {"TITLE": "builtins.str", "COUNT": "2"}},
                        answers={get: Answer(200, "b")})
    found = differences(hot, fresh, {get: Answer(404, "a")}, limit=10)
    assert found == ["GET / 404 vs 200", "route / runs other code",
                     "route /new only in a fresh start", "config.COUNT: 1 vs 2"]
    noise = Description(routes=fresh.routes, state={"config": {"COUNT": "3"}},
                        answers={get: Answer(200, "c")})
    assert differences(hot, fresh.agreeing(noise), {get: Answer(404, "a")}, limit=10) == [
        "route / runs other code", "route /new only in a fresh start"]


def test_an_app_that_writes_a_file_it_reads_is_not_checked(tmp_path, serve):
    """A fresh start would write state.json again, which the hot server would take for an
    edit: a reload, its check, another write, forever. Such an app is not checked, and the
    log says why, once."""
    counting_project(tmp_path, "m1")
    server = serve("app.py")
    write(tmp_path / "app.py", COUNTING_APP.format(mark="m2"))
    server.wait_text("1 m2")
    server.wait_log("not checked against a fresh process: the app writes state.json, which "
                    "it also reads")
    status = server.client.get("/__fh_utils_live__/status", params={"wait": "10"}).json()
    assert status["live"] and "verify" not in status
    assert server.get().text == "1 m2" and server.log.count("Reloaded ") == 1
    assert server.log.count("not checked against a fresh process") == 1


def test_the_recorder_looks_at_answers_only_while_a_check_wants_them():
    """At rest a GET is noted (the fresh worker makes it again), its answer never looked at."""
    recorder = Recorder()
    response = [{"type": "http.response.start", "status": 200,
                 "headers": [(b"content-length", b"2")]},
                {"type": "http.response.body", "body": b"ok"}]

    def serve_once(path: str = "/") -> None:
        scope = {"type": "http", "method": "GET", "path": path,
                 "headers": [(b"cookie", b"a=1"), (b"x-request-id", path.encode())]}
        request = recorder.request(scope)
        assert request is not None
        seen = recorder.observe(request)
        for message in response if seen is not None else ():
            seen(message)
        recorder.answered(request)

    serve_once()
    assert recorder.observe(recorder.request({"method": "GET", "path": "/"})) is None
    assert recorder.request({"method": "POST", "path": "/"}) is None
    assert recorder.requests() == [Get("/", b"", ((b"cookie", b"a=1"),))]
    assert recorder.answers_since(0) == {}
    recorder.want()
    serve_once()
    answers = recorder.answers_since(recorder.epoch)
    assert [a.status for a in answers.values()] == [200] and all(a.digest for a in answers.values())
    recorder.release()
    assert recorder.observe(recorder.request({"method": "GET", "path": "/"})) is None
    # The last distinct requests, oldest first, however often each was made.
    for path in [f"/{n}" for n in range(12)] + ["/3"] * 20:
        serve_once(path)
    expected = [f"/{n}" for n in (5, 6, 7, 8, 9, 10, 11, 3)]
    assert [get.path for get in recorder.requests()] == expected
