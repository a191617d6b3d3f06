"""`fh_utils status` and the reload events: what a coding agent or an editor asks a real server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from fh_utils import status
from fh_utils.serve import events
from tests.conftest import (
    RELOAD_TIMEOUT,
    child_env,
    free_port,
    stop_process,
    wait_until,
    write,
)

APP = """
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route
from helpers import TEXT


async def home(request):
    return HTMLResponse(f"<!doctype html><html><body><h1>{TEXT}</h1></body></html>")

app = Starlette(routes=[Route("/", home)])
"""


def project(root: Path) -> Path:
    write(root / "app.py", APP)
    write(root / "helpers.py", "TEXT = 'v0'\n")
    return root


def run_status(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fh_utils", "status", "--url", url, *args],
        capture_output=True, text=True, timeout=timeout, env=child_env(),
    )


def test_an_agent_saves_waits_and_sees_the_new_code(tmp_path: Path, serve):
    # The way a coding agent works: save, `fh_utils status --wait`, fetch. No sleep anywhere:
    # the save is a moment old when status asks, so the watcher has not reported it yet.
    server = serve("app.py", cwd=project(tmp_path))
    for i in range(1, 6):
        (tmp_path / "helpers.py").write_text(f"TEXT = 'v{i}'\n")
        done = run_status(server.url, "--wait")
        assert done.returncode == 0, done.stdout + done.stderr + server.diagnosis()
        assert done.stdout.startswith("live: reloaded helpers.py in place"), done.stdout
        assert f"<h1>v{i}</h1>" in server.get("/").text, f"save {i} was not live"


def test_a_save_made_just_before_the_request_is_waited_for(tmp_path: Path, serve):
    # The same through the endpoint, many times and without the CLI's start-up time in
    # between: each request is made right after its save returned.
    server = serve("app.py", cwd=project(tmp_path))
    for i in range(1, 41):
        (tmp_path / "helpers.py").write_text(f"TEXT = 'w{i}'\n")
        answer = server.client.get(events.STATUS_PATH, params={"wait": "30"}).json()
        assert answer["live"] and answer["event"] == "reload", answer
        assert f"<h1>w{i}</h1>" in server.get("/").text, f"save {i} was not live"


def test_a_failed_reload_exits_1_with_the_error_and_a_fix_exits_0(tmp_path: Path, serve):
    server = serve("app.py", cwd=project(tmp_path))
    (tmp_path / "helpers.py").write_text("TEXT = (\n")
    done = run_status(server.url, "--wait", "--json")
    assert done.returncode == 1, done.stdout + done.stderr + server.diagnosis()
    event = json.loads(done.stdout)
    assert event["event"] == "reload" and event["ok"] is False and event["live"] is False
    assert event["files"] == ["helpers.py"]
    error = event["error"]
    assert (error["kind"], error["file"], error["line"]) == ("SyntaxError", "helpers.py", 1)
    assert "TEXT = (" in error["traceback"]
    text = run_status(server.url)
    assert text.returncode == 1
    assert text.stdout.startswith("failed: helpers.py:1: SyntaxError:"), text.stdout
    (tmp_path / "helpers.py").write_text("TEXT = 'fixed'\n")
    done = run_status(server.url, "--wait")
    assert done.returncode == 0, done.stdout + server.diagnosis()
    assert "<h1>fixed</h1>" in server.get("/").text


def test_no_server_exits_2():
    done = run_status(f"http://127.0.0.1:{free_port()}", "--wait", timeout=30)
    assert done.returncode == 2
    assert "no server answers" in done.stderr
    assert status.ask("ftp://example").code == status.NO_SERVER


def test_status_follows_port_from_the_environment(tmp_path: Path, serve):
    server = serve("app.py", cwd=project(tmp_path))
    done = subprocess.run([sys.executable, "-m", "fh_utils", "status"], capture_output=True,
                          text=True, timeout=60, env=child_env({"PORT": str(server.port)}))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("live: loaded app:app"), done.stdout


def test_events_are_json_lines_behind_the_host_check(tmp_path: Path, serve):
    server = serve("app.py", cwd=project(tmp_path))
    followed: list[dict[str, object]] = []
    ready = threading.Event()

    def follow() -> None:
        with httpx.stream("GET", f"{server.url}{events.EVENTS_PATH}?follow=1",
                          timeout=RELOAD_TIMEOUT) as response:
            ready.set()
            for line in response.iter_lines():
                followed.append(json.loads(line))
                if followed[-1]["event"] == "reload":
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert ready.wait(RELOAD_TIMEOUT)
    (tmp_path / "helpers.py").write_text("TEXT = 'events'\n")
    (tmp_path / "style.css").write_text("h1 { color: red }\n")
    reader.join(RELOAD_TIMEOUT)
    assert [e["event"] for e in followed][:1] == ["load"] and followed[-1]["files"] == [
        "helpers.py"]
    wait_until(lambda: "static" in server.get(events.EVENTS_PATH).text, RELOAD_TIMEOUT,
               "the stylesheet's event")
    kept = [json.loads(line) for line in server.get(events.EVENTS_PATH).text.splitlines()]
    assert [e["seq"] for e in kept] == sorted(e["seq"] for e in kept)
    assert {"load", "reload", "static"} <= {e["event"] for e in kept}
    assert all({"seq", "time", "event"} <= set(e) for e in kept)
    refused = server.client.get(events.STATUS_PATH, headers={"Host": "evil.example"})
    assert refused.status_code == 403
    assert server.client.post(events.STATUS_PATH).status_code == 405


def test_log_format_json_prints_each_event_as_a_line_on_stdout(tmp_path: Path):
    project(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out, err = (tmp_path / "out.txt").open("wb"), (tmp_path / "err.txt").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fh_utils", "dev", "app.py", "--port", str(port),
         "--log-format", "json", "--reload-exclude", "*.txt"],
        cwd=tmp_path, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=child_env())
    try:
        wait_until(lambda: run_status(url).returncode == 0, 60, "the server to start")
        (tmp_path / "helpers.py").write_text("TEXT = 'json'\n")
        assert run_status(url, "--wait").returncode == 0
        assert "<h1>json</h1>" in httpx.get(url).text  # an access log line: on stderr
        # The fresh-process check of that reload reports too, once its verdict is in.
        wait_until(lambda: "verify" in httpx.get(url + events.STATUS_PATH).json(), 60,
                   "the check's verdict")
        kept = httpx.get(url + events.EVENTS_PATH).text.splitlines()
    finally:
        stop_process(proc)
        out.close()
        err.close()
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert lines == kept  # stdout holds the events and nothing else
    printed = [json.loads(line) for line in lines]
    assert [e["event"] for e in printed] == ["load", "reload", "verify"]
    assert printed[2]["same"] and printed[2]["files"] == ["helpers.py"]
    assert printed[1]["files"] == ["helpers.py"] and printed[1]["tier"] == "in place"
    assert set(printed[1]["reran"]) == {"helpers", "app"}
    log = (tmp_path / "err.txt").read_text()
    assert "Reloaded helpers.py (+1 dependent) in" in log and '"GET / HTTP/1.1" 200' in log


def test_the_status_client_knows_the_endpoint():
    assert status.STATUS_PATH == events.STATUS_PATH


def test_wait_follows_a_save_that_restarts_the_worker(tmp_path: Path, serve):
    # A thread started at import: only a new process is faithful. The worker that took the
    # save hands over; status asks again and the new worker answers.
    from tests.test_shutdown import POLLER, POLLER_APP

    write(tmp_path / "poller.py", POLLER.format(version="p1"))
    write(tmp_path / "app.py", POLLER_APP)
    server = serve("app.py")
    for version in ("p2", "p3"):
        (tmp_path / "poller.py").write_text(POLLER.format(version=version))
        done = run_status(server.url, "--wait", "--json")
        assert done.returncode == 0, done.stdout + done.stderr + server.diagnosis()
        assert server.get().text == f"poller {version}", server.log[-3000:]
        event = json.loads(done.stdout)
        assert event["tier"] == "restart", event


def test_status_starts_without_click_uvicorn_or_the_reloader():
    # An agent runs it after every save: its start-up is most of its time.
    code = ("import sys\n"
            "sys.argv = ['fh_utils', 'status', '--url', 'http://127.0.0.1:1']\n"
            "from fh_utils.__main__ import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
            "heavy = ['click', 'uvicorn', 'asyncio', 'fh_utils.reload.pinning', 'http.client']\n"
            "print(code, [m for m in heavy if m in sys.modules])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=child_env())
    assert done.stdout.split("\n")[0] == "2 []", done.stdout + done.stderr


def test_the_quick_parser_takes_the_options_of_the_documented_command():
    from fh_utils.cli import main

    options = {opt for param in main.commands["status"].params for opt in param.opts}
    assert options - {"--help", "-h"} == {*status.FLAGS, *status.VALUES}
    assert status.main(["--wait", "--url=http://127.0.0.1:1", "--timeout", "1"]) == 2
    for handed_to_click in (["--help"], ["--wait", "--nope"], ["--url"], ["--timeout", "x"]):
        assert status.main(handed_to_click) is None
    helped = subprocess.run([sys.executable, "-m", "fh_utils", "status", "--help"],
                            capture_output=True, text=True, timeout=60, env=child_env())
    assert helped.returncode == 0 and "Usage: fh_utils status" in helped.stdout
    wrong = subprocess.run([sys.executable, "-m", "fh_utils", "status", "--nope"],
                           capture_output=True, text=True, timeout=60, env=child_env())
    assert wrong.returncode == 2 and "No such option" in wrong.stderr


def test_wait_without_inotify_waits_for_a_round_of_watchfiles_loop(tmp_path: Path, serve):
    # Polling (Docker on macOS, network drives): no doorbell to read; a save made just before
    # is waited for all the same.
    server = serve("app.py", cwd=project(tmp_path),
                   env={"WATCHFILES_FORCE_POLLING": "1", "WATCHFILES_POLL_DELAY_MS": "50"})
    helpers = tmp_path / "helpers.py"
    for i in range(1, 4):
        # Polling compares modification times to the second (watchfiles): a save in the same
        # second as the last one is never seen, waited for or not.
        wait_until(lambda: int(time.time()) > int(helpers.stat().st_mtime), 2, "the next second")
        helpers.write_text(f"TEXT = 'polled{i}'\n")
        done = run_status(server.url, "--wait")
        assert done.returncode == 0, done.stdout + done.stderr + server.diagnosis()
        assert f"<h1>polled{i}</h1>" in server.get("/").text, f"save {i} was not live"
