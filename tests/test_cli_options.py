"""uvicorn option parity, environment variables, reload modes and `fh_utils run`."""

from __future__ import annotations

import asyncio
import sys

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

from fh_utils.adapters import uvicorn as uvicorn_adapter
from fh_utils.cli import main
from fh_utils.serve import processes, production, session
from tests.conftest import wait_until, write

UVICORN_OPTIONS = [
    p.opts[0] for p in sys.modules["uvicorn.main"].main.params
    if p.opts[0].startswith("--") and p.opts[0] not in {"--version", "--reload"}
]
APP = """
from starlette.responses import PlainTextResponse
import os

async def app(scope, receive, send):
    if scope["type"] == "http":
        await PlainTextResponse("{text} pid=" + str(os.getpid()))(scope, receive, send)
"""


@pytest.fixture
def captured(monkeypatch):
    """What the commands would start, instead of a server: the typed call they end in."""
    calls: dict[str, object] = {}
    monkeypatch.setattr(processes, "run_dev", lambda options: calls.update(dev=options))
    monkeypatch.setattr(production, "run_production",
                        lambda target, **kw: calls.update(run=(target, kw)))
    return calls


@pytest.mark.parametrize("command", ["dev", "run"])
def test_help_lists_every_uvicorn_option_with_defaults(command):
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in UVICORN_OPTIONS:
        assert option in result.output, option
    assert "[default: 5001]" in result.output
    assert "[default: 127.0.0.1]" in result.output


def test_dev_options_map_into_a_real_uvicorn_config(tmp_path, monkeypatch, captured):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "app.py", "app = None\n")
    (tmp_path / ".env").write_text("A=1\n")
    args = ["dev", "app.py", "--host", "127.0.0.2", "--port", "5099", "--root-path", "/sub",
            "--proxy-headers", "--forwarded-allow-ips", "10.0.0.1", "--timeout-keep-alive", "7",
            "--limit-concurrency", "9", "--header", "X-Dev: yes", "--http", "h11",
            "--ws", "websockets", "--lifespan", "off", "--no-access-log",
            "--timeout-graceful-shutdown", "3", "--env-file", ".env", "--backlog", "64",
            "--log-level", "debug", "--interface", "asgi3", "--live", "--clear",
            "--reload-include", "templates", "--reload-exclude", "*.tmp"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    options = captured["dev"]
    assert (options.host, options.port, options.log_level) == ("127.0.0.2", 5099, "debug")
    assert options.live and options.clear and options.reload == "fast"
    assert list(options.reload_includes) == ["templates"]
    assert list(options.reload_excludes) == ["*.tmp"]
    session_settings = session.DevSession(options).uvicorn_settings
    assert "env_file" not in session_settings  # loaded by the reloader, which reloads it
    assert str(options.uvicorn["env_file"]).endswith(".env")
    config = uvicorn.Config(lambda: None, **session_settings)
    assert config.root_path == "/sub"
    assert config.forwarded_allow_ips == "10.0.0.1"
    assert config.timeout_keep_alive == 7
    assert config.limit_concurrency == 9
    assert ("X-Dev", " yes") in [(k, v) for k, v in config.headers]
    assert config.http == "h11" and config.ws == "websockets"
    assert config.access_log is False
    assert config.timeout_graceful_shutdown == 3
    assert config.backlog == 64
    assert "lifespan" not in session_settings  # applies to the user's app, not the switch


def test_environment_variables_and_explicit_flags(tmp_path, monkeypatch, captured):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "app.py", "app = None\n")
    monkeypatch.setenv("FH_UTILS_ROOT_PATH", "/from-env")
    monkeypatch.setenv("FH_UTILS_LIVE", "true")
    monkeypatch.setenv("PORT", "6001")
    assert CliRunner().invoke(main, ["dev", "app.py"]).exit_code == 0
    options = captured["dev"]
    assert options.uvicorn["root_path"] == "/from-env" and options.live
    assert options.port == 6001
    monkeypatch.setenv("FH_UTILS_PORT", "6002")  # ours before FastHTML's $PORT
    assert CliRunner().invoke(main, ["dev", "app.py"]).exit_code == 0
    assert captured["dev"].port == 6002
    assert CliRunner().invoke(main, ["dev", "app.py", "--root-path", "/flag",
                                     "--port", "6003"]).exit_code == 0
    assert captured["dev"].uvicorn["root_path"] == "/flag" and captured["dev"].port == 6003


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dev", "app.py", "--workers", "2"], "--workers cannot be used here"),
        (["dev", "app.py", "--reload-delay", "1"], "it applies to --reload full"),
        (["run", "app.py", "--reload"], "fh_utils run is production mode and never reloads"),
        (["run", "app.py", "--reload-include", "*.html"], "never reloads"),
        (["run", "app.py", "--live"], "exists only in `fh_utils dev --live`"),
        (["dev", "app.py", "--reload", "sometimes"], "'sometimes' is not one of"),
        (["dev", "app.py", "--header", "no-colon"], "is not 'Name: value'"),
    ],
)
def test_options_that_cannot_apply_are_refused(tmp_path, monkeypatch, captured, args, message):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "app.py", "app = None\n")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_run_maps_to_uvicorn_with_an_import_string(tmp_path, monkeypatch, captured):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "src" / "pkg" / "__init__.py", "")
    write(tmp_path / "src" / "pkg" / "app.py", "app = None\n")
    result = CliRunner().invoke(main, ["run", "src/pkg/app.py", "--workers", "3",
                                       "--proxy-headers", "--root-path", "/r"])
    assert result.exit_code == 0, result.output
    target, kwargs = captured["run"]
    assert target.label == "pkg.app:app" and target.app_dir == tmp_path / "src"
    assert kwargs["workers"] == 3 and kwargs["root_path"] == "/r"
    healthcheck = any(p.name == "timeout_worker_healthcheck"  # uvicorn 0.37 and later
                      for p in sys.modules["uvicorn.main"].main.params)
    assert ("timeout_worker_healthcheck" in kwargs) == healthcheck


def test_run_serves_with_two_workers(tmp_path, serve):
    write(tmp_path / "app.py", APP.format(text="production"))
    server = serve("app.py", "--workers", "2", command="run", ready=False)
    pids: set[str] = set()

    def two_workers() -> bool:
        try:
            response = httpx.get(server.url, timeout=5)  # a new connection: any worker
        except httpx.HTTPError:
            return False
        pids.add(response.text.split("pid=")[1])
        return len(pids) == 2

    wait_until(two_workers, 60, "responses from two worker processes")
    log = server.log
    assert "IPython" not in log and "Will watch" not in log


def test_reload_full_restarts_and_reload_no_does_not_watch(tmp_path, serve):
    write(tmp_path / "app.py", APP.format(text="first"))
    full = serve("app.py", "--reload", "full")
    fast = serve("app.py")
    no = serve("app.py", "--reload", "no")
    pid = full.get().text.split("pid=")[1]

    write(tmp_path / "app.py", APP.format(text="second"))
    full.wait_text("second")
    assert full.get().text.split("pid=")[1] != pid  # a new process
    fast.wait_text("second")  # the same edit was seen and reloaded by a watching server...
    assert no.get().text.startswith("first ")  # ...but not by the one that does not watch
    assert "Will watch" not in no.log


def test_clear_wipes_the_terminal_before_each_reload(tmp_path, serve):
    write(tmp_path / "app.py", APP.format(text="one"))
    server = serve("app.py", "--clear")
    write(tmp_path / "app.py", APP.format(text="two"))
    server.wait_text("two")
    log = server.wait_log("Reloaded app.py")
    assert "\x1b[2J" in log.split("Reloaded app.py")[0]


def test_debug_log_file_gets_debug_lines_and_the_console_stays_as_it_was(tmp_path, serve):
    # FH_UTILS_DEBUG_LOG (the test servers all set it: a failure's message shows the file)
    write(tmp_path / "app.py", APP.format(text="one"))
    server = serve("app.py")
    write(tmp_path / "app.py", APP.format(text="two"))
    server.wait_text("two")
    server.wait_log("Reloaded app.py")
    wait_until(lambda: "DEBUG Re-executed, in order: app" in
               server.debug_log_path.read_text(), 10, "the reload's debug line in the file")
    debug = server.debug_log_path.read_text()
    assert f"pid {server.proc.pid} MainThread INFO Reloaded app.py" in debug
    assert "fh_utils-watcher DEBUG Changed: " in debug
    assert "Re-executed" not in server.log and "DEBUG" not in server.log


def test_missing_app_attribute_exits_with_one_line(tmp_path, serve):
    write(tmp_path / "app.py", APP.format(text="x"))
    server = serve("app.py", "--app", "api", ready=False)
    assert server.proc.wait(timeout=30) != 0
    log = server.log
    assert "app.py: AppNotFound: module 'app' has no attribute 'api'" in log
    assert "Traceback" not in log


def test_port_in_use_exits_with_one_line(tmp_path, serve):
    write(tmp_path / "app.py", APP.format(text="x"))
    first = serve("app.py")
    second = serve("app.py", port=first.port, ready=False)
    assert second.proc.wait(timeout=30) != 0
    assert "address already in use" in second.log.lower()  # uvicorn's own message
    assert "Traceback" not in second.log


def test_restarted_worker_gets_its_event_loop_from_either_uvicorn():
    """uvicorn 0.36 hands over a loop factory; older releases set the event loop policy."""
    config = uvicorn.Config(lambda: None, loop="asyncio")
    factory = uvicorn_adapter.loop_factory(config)
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(asyncio.sleep(0, "ran")) == "ran"

    calls: list[str] = []

    class OldConfig:  # uvicorn < 0.36: no get_loop_factory
        def setup_event_loop(self) -> None:
            calls.append("policy set")

    assert uvicorn_adapter.loop_factory(OldConfig()) is None
    assert calls == ["policy set"]
