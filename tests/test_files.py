"""Files the app reads, the env file, ignored paths and save bursts, against a real server.

A negative ("this write caused no reload") is proved without waiting for nothing: after the
ignored write, a real edit is made; watchfiles reports changes in order, so once the real edit
is served, the log shows every reload the earlier write could have caused.
"""

from __future__ import annotations

import glob
import marshal
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from fh_utils.reload import tracking
from fh_utils.reload.graph import ModuleGraph
from fh_utils.serve import events
from tests.conftest import write
from tests.test_faithful import assert_matches_cold

PLAIN_APP = """
from starlette.responses import PlainTextResponse

async def app(scope, receive, send):
    await PlainTextResponse("{text}")(scope, receive, send)
"""


def ran(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def reloads(log: str) -> list[str]:
    return [line.split("Reloaded ", 1)[1] for line in log.splitlines() if "Reloaded " in line]


def test_template_read_at_import_reloads_the_page(tmp_path, serve):
    write(tmp_path / "templates" / "page.html", "<h1>{{ title }}</h1><p>first template</p>\n")
    write(tmp_path / "app.py", """
        from jinja2 import Environment, FileSystemLoader
        from starlette.responses import HTMLResponse

        PAGE = Environment(loader=FileSystemLoader("templates")).get_template("page.html")

        async def app(scope, receive, send):
            await HTMLResponse(PAGE.render(title="Shop"))(scope, receive, send)
    """)
    server = serve("app.py")
    assert server.get().text == "<h1>Shop</h1><p>first template</p>"
    write(tmp_path / "templates" / "page.html", "<h2>{{ title }}</h2><p>second template</p>\n")
    server.wait_text("second template")
    assert "<h2>Shop</h2>" in server.get().text
    assert "Reloaded templates/page.html in" in server.log


def test_json_config_edit_reruns_reader_and_its_dependents(tmp_path, serve):
    log = tmp_path / "ran.txt"
    write(tmp_path / "config.json", '{"greeting": "hello"}\n')
    write(tmp_path / "prompt.txt", "be brief\n")
    write(tmp_path / "settings.py", f"""
        import json
        from pathlib import Path
        open({str(log)!r}, "a").write("settings ")
        CONFIG = json.load(open("config.json"))
        PROMPT = (Path(__file__).parent / "prompt.txt").read_text().strip()
    """)
    write(tmp_path / "other.py", f"open({str(log)!r}, 'a').write('other ')\n")
    write(tmp_path / "app.py", f"""
        open({str(log)!r}, "a").write("app ")
        from starlette.responses import JSONResponse
        from settings import CONFIG, PROMPT
        import other

        async def app(scope, receive, send):
            await JSONResponse({{**CONFIG, "prompt": PROMPT}})(scope, receive, send)
    """)
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify")
    assert server.get().json() == {"greeting": "hello", "prompt": "be brief"}
    assert ran(log) == ["app", "settings", "other"]

    write(tmp_path / "config.json", '{"greeting": "bonjour"}\n')
    server.wait_text("bonjour")
    # The reader and what imports it, in a cold start's order: app.py runs until it imports
    # settings.py, which runs there (other.py, untouched, does not run again).
    assert ran(log)[3:] == ["app", "settings"]
    assert "Reloaded config.json (+1 dependent) in" in server.log

    write(tmp_path / "prompt.txt", "be thorough\n")
    server.wait_text("be thorough")
    assert server.get().json()["greeting"] == "bonjour"


CONFIG_APP = """
import json
from starlette.responses import PlainTextResponse
N = json.load(open("config.json"))["n"]

async def app(scope, receive, send):
    await PlainTextResponse(f"n={N}")(scope, receive, send)
"""


def test_broken_config_keeps_old_app_and_fix_recovers(tmp_path, serve):
    write(tmp_path / "config.json", '{"n": 1}\n')
    write(tmp_path / "app.py", CONFIG_APP)
    server = serve("app.py")
    assert server.get().text == "n=1"
    write(tmp_path / "config.json", '{"n": \n')
    server.wait_log("Reload failed: app.py:3: JSONDecodeError")
    assert server.get().text == "n=1"
    write(tmp_path / "config.json", '{"n": 2}\n')
    server.wait_text("n=2")


def test_broken_config_at_startup_then_fixed(tmp_path, serve):
    write(tmp_path / "config.json", "not json\n")
    write(tmp_path / "app.py", CONFIG_APP)
    server = serve("app.py")
    assert server.get().status_code == 500
    write(tmp_path / "config.json", '{"n": 3}\n')
    server.wait_text("n=3")


def test_new_module_failing_on_its_file_is_retried_when_the_file_is_fixed(tmp_path, serve):
    write(tmp_path / "app.py", PLAIN_APP.format(text="before"))
    server = serve("app.py")
    write(tmp_path / "extra.json", "{oops\n")
    write(tmp_path / "extra.py", "import json\nDATA = json.load(open('extra.json'))\n")
    write(tmp_path / "app.py", PLAIN_APP.replace("PlainTextResponse(\"{text}\")",
                                                 "PlainTextResponse(extra.DATA['text'])")
          .replace("from starlette", "import extra\nfrom starlette"))
    server.wait_log("Reload failed: extra.py:2: JSONDecodeError")
    assert server.get().text == "before"
    write(tmp_path / "extra.json", '{"text": "after"}\n')
    server.wait_text("after")


def test_file_read_in_cached_function_clears_only_that_cache(tmp_path, serve):
    runs, loads = tmp_path / "runs.txt", tmp_path / "loads.txt"
    write(tmp_path / "prompt.txt", "first prompt\n")
    write(tmp_path / "weights.txt", "w1\n")
    write(tmp_path / "app.py", f"""
        from pathlib import Path
        from starlette.responses import PlainTextResponse
        from fh_utils import no_reload_cache

        open({str(runs)!r}, "a").write("app ")

        @no_reload_cache
        def load_prompt():
            open({str(loads)!r}, "a").write("prompt ")
            return Path("prompt.txt").read_text().strip()

        @no_reload_cache
        def load_model():
            open({str(loads)!r}, "a").write("model ")
            return Path("weights.txt").read_text().strip()

        @no_reload_cache
        def unrelated():
            open({str(loads)!r}, "a").write("unrelated ")
            return "u"

        MODEL = load_model()  # held by the module: its file must re-run the module

        async def app(scope, receive, send):
            body = f"{{load_prompt()}} {{MODEL}} {{unrelated()}}"
            await PlainTextResponse(body)(scope, receive, send)
    """)
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify")
    assert server.get().text == "first prompt w1 u"
    assert ran(runs) == ["app"] and sorted(ran(loads)) == ["model", "prompt", "unrelated"]

    write(tmp_path / "prompt.txt", "second prompt\n")
    server.wait_text("second prompt w1 u")
    assert ran(runs) == ["app"]  # the module did not re-run
    assert ran(loads)[3:] == ["prompt"]  # only that cache recomputed
    assert "load_prompt() read prompt.txt, which changed: cache cleared" in server.log

    write(tmp_path / "weights.txt", "w2\n")
    server.wait_text("second prompt w2 u")
    assert ran(runs) == ["app", "app"]
    assert ran(loads)[4:] == ["model"]
    assert "load_model() read weights.txt, which changed: cache cleared" in server.log


# A pinned model loaded from weights.txt; each load is noted in loads.txt.
PINNED_WEIGHTS = """
    from pathlib import Path
    from starlette.responses import PlainTextResponse
    from fh_utils import no_reload_cache

    @no_reload_cache
    def load_model():
        open("loads.txt", "a").write("model ")
        return Path("weights.txt").read_text().strip()

    async def app(scope, receive, send):
        await PlainTextResponse(load_model())(scope, receive, send)
"""


def test_a_change_reported_again_for_the_same_bytes_computes_nothing_again(tmp_path, serve):
    # watchfiles may hand one write's events over in two bursts (the truncation, then the
    # bytes); a file touched with its own times is reported the same way. Computing a pinned
    # model again for what is the same file costs what a real edit would.
    loads, weights = tmp_path / "loads.txt", tmp_path / "weights.txt"
    write(weights, "w1\n")
    write(tmp_path / "app.py", PINNED_WEIGHTS)
    server = serve("app.py", "--no-verify")  # (a fresh process would load it too)
    assert server.get().text == "w1"
    write(weights, "w2\n")
    server.wait_text("w2")
    assert ran(loads) == ["model", "model"]
    times = weights.stat()
    os.utime(weights, ns=(times.st_atime_ns, times.st_mtime_ns))  # a change event, same file
    answer = server.client.get(events.STATUS_PATH, params={"wait": "30"}).json()
    assert answer["live"], answer
    assert server.get().text == "w2"
    assert ran(loads) == ["model", "model"]


def test_a_file_read_at_load_written_in_two_parts_is_loaded_once_whole(tmp_path, serve):
    # Weights written in place by a slow writer: loaded from the first part, the pinned model
    # would be one no fresh process loads (and loaded again when the rest comes).
    loads, weights = tmp_path / "loads.txt", tmp_path / "weights.txt"
    write(weights, "w1\n")
    write(tmp_path / "app.py", PINNED_WEIGHTS)
    server = serve("app.py", "--no-verify")  # (the check's fresh process would load it too)
    assert server.get().text == "w1"
    with open(weights, "w") as file:
        file.write("first part")
        file.flush()
        window = time.monotonic() + 0.5  # a reload of the part would take ~5 ms
        while time.monotonic() < window:
            assert server.get().text == "w1"
        file.write(" and the rest\n")
    server.wait_text("first part and the rest")
    assert ran(loads) == ["model", "model"]
    assert_matches_cold(server, tmp_path)


# store.py counts the starts in state.json: it reads the file, then writes it.
COUNTING_STORE = """
    import json
    STATE = json.load(open("state.json"))
    STATE["starts"] += 1
    json.dump(STATE, open("state.json", "w"))
"""
COUNTING_APP = """
    from starlette.responses import PlainTextResponse
    from store import STATE

    async def app(scope, receive, send):
        await PlainTextResponse(f"{{STATE['starts']}} {mark}")(scope, receive, send)
"""


def counting_project(tmp_path: Path, mark: str) -> None:
    write(tmp_path / "state.json", '{"starts": 0}\n')
    write(tmp_path / "store.py", COUNTING_STORE)
    write(tmp_path / "app.py", COUNTING_APP.format(mark=mark))


def test_module_updating_a_file_it_reads_does_not_reload_itself(tmp_path, serve):
    counting_project(tmp_path, "m1")
    server = serve("app.py")
    assert server.get().text == "1 m1"
    write(tmp_path / "app.py", COUNTING_APP.format(mark="m2"))
    server.wait_text("m2")
    assert server.get().text == "1 m2"  # store did not re-run: its own write is no edit
    write(tmp_path / "state.json", '{"starts": 10}\n')  # the user's edit is one
    server.wait_text("11 m2")
    write(tmp_path / "app.py", COUNTING_APP.format(mark="m3"))
    server.wait_text("11 m3")
    assert [r.split(" in ")[0] for r in reloads(server.log)] == [
        "app.py", "state.json (+1 dependent)", "app.py"
    ]


def test_app_saving_a_file_it_loads_at_import_does_not_reload(tmp_path, serve):
    runs = tmp_path / "runs.txt"
    write(tmp_path / "todos.json", '["milk"]\n')
    app_src = f"""
        import json
        from starlette.responses import PlainTextResponse
        open({str(runs)!r}, "a").write("app ")
        TODOS = json.load(open("todos.json"))

        async def app(scope, receive, send):
            if scope["path"] == "/add":
                TODOS.append(f"item{{len(TODOS)}}")
                with open("todos.json", "w") as f:
                    json.dump(TODOS, f)
            await PlainTextResponse(",".join(TODOS) + " @MARK@")(scope, receive, send)
    """
    write(tmp_path / "app.py", app_src.replace("@MARK@", "first"))
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify")
    for _ in range(3):
        server.get("/add")
    assert server.get().text == "milk,item1,item2,item3 first"
    write(tmp_path / "app.py", app_src.replace("@MARK@", "second"))
    server.wait_text("second")
    assert server.get().text == "milk,item1,item2,item3 second"  # re-read at import
    assert [r.split(" in ")[0] for r in reloads(server.log)] == ["app.py"]
    assert ran(runs) == ["app", "app"]


def test_file_read_at_request_time_needs_no_reload(tmp_path, serve):
    write(tmp_path / "page.txt", "one\n")
    app_src = """
        from pathlib import Path
        from starlette.responses import PlainTextResponse

        async def app(scope, receive, send):
            text = Path("page.txt").read_text().strip()
            await PlainTextResponse(text + " {marker}")(scope, receive, send)
    """
    write(tmp_path / "app.py", app_src.format(marker="m1"))
    server = serve("app.py")
    assert server.get().text == "one m1"
    write(tmp_path / "page.txt", "two\n")
    server.wait_text("two m1")  # read fresh by the handler
    write(tmp_path / "app.py", app_src.format(marker="m2"))
    server.wait_text("two m2")
    assert reloads(server.log) == [reloads(server.log)[0]]
    assert reloads(server.log)[0].startswith("app.py in")


def test_file_outside_the_watched_directories_is_not_tracked(tmp_path, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "data.txt"
    outside.write_text("x")
    inside = tmp_path / "data.txt"
    inside.write_text("x")
    graph = ModuleGraph([tmp_path])
    tracking.activate(graph)
    try:
        graph.begin("mod", tmp_path / "mod.py")
        outside.read_text()
        inside.read_text()
        (tmp_path / "written.txt").write_text("w")  # a write is not a read
        (tmp_path / "other.py").write_text("")
        (tmp_path / "other.py").read_text()  # source is import business, not a read
        graph.end("mod")
        (tmp_path / "later.txt").write_text("")
        (tmp_path / "later.txt").read_text()  # nothing executing: not recorded
    finally:
        tracking.deactivate(graph)
    assert graph.reads["mod"] == {inside.resolve()}


def test_files_read_are_held_for_their_writer_but_not_those_the_app_writes(tmp_path):
    # The watcher holds a save of a file a reload reads until its writer closes it; a file
    # the app writes itself may be kept open by the app for good (a history it appends to).
    weights, history = write(tmp_path / "weights.txt", "w"), write(tmp_path / "history.txt", "")
    graph = ModuleGraph([tmp_path])
    tracking.activate(graph)
    try:
        graph.begin("mod", tmp_path / "mod.py")
        weights.read_text()
        history.read_text()
        graph.end("mod")
        with open(history, "a") as file:  # at request time, say
            file.write("a visit\n")
    finally:
        tracking.deactivate(graph)
    assert graph.was_read(str(weights))
    link = tmp_path / "link.txt"
    link.symlink_to(weights)
    assert graph.was_read(str(link))  # (the watcher sees the path it watches)
    assert not graph.was_read(str(history))
    assert not graph.was_read(str(tmp_path / "never.txt"))


@pytest.mark.parametrize("listing", [
    'os.listdir("plugins")',
    'list(os.scandir("plugins"))',
    'glob.glob("plugins/*.py")',
    'list(Path("plugins").iterdir())',
    'list(Path("plugins").glob("*.py"))',  # 3.13: through glob._StringGlobber.scandir
    'list(Path("plugins").rglob("*.py"))',
])
def test_each_way_of_listing_a_directory_is_tracked(tmp_path, monkeypatch, listing):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "plugins" / "a.py", "")
    source = f"import glob\nimport os\nfrom pathlib import Path\n{listing}\n"
    code = compile(source, str(tmp_path / "mod.py"), "exec")  # project code, as a module runs
    graph = ModuleGraph([tmp_path])
    scandir = os.scandir
    tracking.activate(graph)
    try:
        graph.begin("mod", tmp_path / "mod.py")
        exec(code, {})
        graph.end("mod")
    finally:
        tracking.deactivate(graph)
    assert set(graph.listings) == {(tmp_path / "plugins").resolve()}
    assert os.scandir is scandir
    globber = getattr(glob, "_StringGlobber", None)  # put back too (Python 3.13)
    if globber is not None and isinstance(globber.__dict__.get("scandir"), staticmethod):
        assert globber.__dict__["scandir"].__func__ is scandir


def test_ignored_paths_cause_no_reload(tmp_path, serve):
    log = tmp_path / "ran.txt"
    venv_lib = tmp_path / "venv" / "lib"
    write(venv_lib / "vendored.py", "WORD = 'vendored one'\n")
    write(tmp_path / ".venv" / "pyvenv.cfg", "home = /usr/bin\n")
    app_src = f"""
        import sys
        sys.path.insert(0, {str(venv_lib)!r})
        open({str(log)!r}, "a").write("app ")
        from starlette.responses import PlainTextResponse
        import vendored
        CFG = open(".venv/pyvenv.cfg").read().strip()

        async def app(scope, receive, send):
            text = f"{{vendored.WORD}} | {{CFG}} | {{MARK}}"
            await PlainTextResponse(text)(scope, receive, send)

        MARK = "@MARK@"
    """
    write(tmp_path / "app.py", app_src.replace("@MARK@", "first"))
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify")
    assert server.get().text == "vendored one | home = /usr/bin | first"

    write(venv_lib / "vendored.py", "WORD = 'vendored two'\n")
    write(tmp_path / ".venv" / "pyvenv.cfg", "home = /opt/bin\n")
    write(tmp_path / ".venv" / "lib" / "python3.11" / "site-packages" / "pkg.py", "X = 1\n")
    write(tmp_path / "node_modules" / "htmx" / "htmx.js", "//\n")
    write(tmp_path / ".git" / "index", "x\n")
    for name in (".app.py.swp", ".app.py.swx", "app.py~", ".#app.py", "4913"):
        write(tmp_path / name, "junk\n")
    write(tmp_path / "__pycache__" / "app.cpython-311.pyc", "junk\n")
    assert server.get().text.endswith("first")

    write(tmp_path / "app.py", app_src.replace("@MARK@", "second"))
    server.wait_text("second")
    assert reloads(server.log) == [reloads(server.log)[0]]
    assert reloads(server.log)[0].startswith("app.py in")
    # The app re-ran and read the new .venv file; vendored code is never re-run.
    assert server.get().text == "vendored one | home = /opt/bin | second"
    assert ran(log) == ["app", "app"]


def test_glob_exclude(tmp_path, serve):
    write(tmp_path / "fixtures" / "rows.json", "[1]\n")
    write(tmp_path / "settings_local.py", "LOCAL = 'local one'\n")
    app_src = """
        import json
        from starlette.responses import PlainTextResponse
        from settings_local import LOCAL
        ROWS = json.load(open("fixtures/rows.json"))

        async def app(scope, receive, send):
            await PlainTextResponse(f"{{ROWS}} {{LOCAL}} {mark}")(scope, receive, send)
    """
    write(tmp_path / "app.py", app_src.format(mark="m1"))
    server = serve("app.py", "--reload-exclude", "fixtures/*", "--reload-exclude", "*_local.py")
    assert server.get().text == "[1] local one m1"

    write(tmp_path / "fixtures" / "rows.json", "[1, 2]\n")
    write(tmp_path / "settings_local.py", "LOCAL = 'local two'\n")
    write(tmp_path / "app.py", app_src.format(mark="m2"))
    server.wait_text("m2")
    assert reloads(server.log) == [reloads(server.log)[0]]
    assert reloads(server.log)[0].startswith("app.py in")
    # app.py re-ran and read the file again; the excluded module is not project code.
    assert server.get().text == "[1, 2] local one m2"


def test_atomic_rename_save_reloads_once(tmp_path, serve):
    app = write(tmp_path / "app.py", PLAIN_APP.format(text="original"))
    write(tmp_path / "helpers.py", "X = 1\n")
    server = serve("app.py")
    for n, tmp_name in enumerate(["app.py.tmp", ".app.py.swx", "app.py___jb_tmp___"], 1):
        tmp = write(tmp_path / tmp_name, PLAIN_APP.format(text=f"renamed {n}"))
        os.replace(tmp, app)
        server.wait_text(f"renamed {n}")
    # Anything else the renames caused would be logged before this edit's reload.
    write(tmp_path / "app.py", PLAIN_APP.format(text="import helpers").replace(
        "from starlette", "import helpers\nfrom starlette"))
    server.wait_text("import helpers")
    write(tmp_path / "helpers.py", "X = 2\n")
    server.wait_log("Reloaded helpers.py (+1 dependent)")
    assert [r.split(" in ")[0] for r in reloads(server.log)] == ["app.py"] * 4 + [
        "helpers.py (+1 dependent)"
    ]
    assert "deleted" not in server.log and "Reload failed" not in server.log


def test_save_written_in_two_parts_is_reloaded_once_whole(tmp_path, serve):
    # An editor writing in place (truncate, then write) on a loaded machine, or a slow writer:
    # the first part alone is a valid module serving something else. It must never be served.
    first = PLAIN_APP.format(text="first part only")
    whole = first + "\nasync def app(scope, receive, send):\n" + (
        "    await PlainTextResponse('the whole save')(scope, receive, send)\n")
    app = write(tmp_path / "app.py", PLAIN_APP.format(text="before"))
    server = serve("app.py")
    with open(app, "w") as file:
        file.write(textwrap.dedent(first))
        file.flush()
        window = time.monotonic() + 0.5  # a reload of the part would take ~5 ms
        while time.monotonic() < window:
            assert server.get().text == "before"
        file.write(whole[len(first):])
    server.wait_text("the whole save")
    assert [r.split(" in ")[0] for r in reloads(server.log)] == ["app.py"]
    assert "Reload failed" not in server.log  # (the truncated, empty file has no `app`)
    assert_matches_cold(server, tmp_path)


def test_burst_of_saves_ends_on_the_last_and_never_goes_back(tmp_path, serve):
    app = write(tmp_path / "app.py", PLAIN_APP.format(text="save 0"))
    server = serve("app.py")
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not stop.is_set():
                body = client.get("/").text
                seen.append(int(body.split()[1]))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        started = time.monotonic()
        for n in range(1, 31):
            app.write_text(textwrap.dedent(PLAIN_APP.format(text=f"save {n}")))
            # The burst's rhythm (a save every 10 ms, on a fixed schedule), not a wait.
            # (A loaded machine may stretch it; what must hold does not depend on timing.)
            time.sleep(max(0.0, started + n * 0.01 - time.monotonic()))
        server.wait_text("save 30")
        settle = time.monotonic() + 1.5
        while time.monotonic() < settle:  # keep watching: it must stay on the last save
            assert server.get().text == "save 30"
    finally:
        stop.set()
        sampler.join()
    assert seen == sorted(seen), f"served an older save after a newer one: {seen}"
    assert seen[-1] == 30


def test_env_file_edit_updates_environment_and_reruns_readers(tmp_path, serve):
    log = tmp_path / "ran.txt"
    write(tmp_path / ".env", "GREETING=hello\n")
    write(tmp_path / "config.py", f"""
        import os
        open({str(log)!r}, "a").write("config ")
        GREETING = os.environ["GREETING"]
    """)
    write(tmp_path / "other.py", f"open({str(log)!r}, 'a').write('other ')\n")
    write(tmp_path / "app.py", f"""
        import os
        open({str(log)!r}, "a").write("app ")
        from starlette.responses import PlainTextResponse
        from config import GREETING
        import other

        async def app(scope, receive, send):
            late = os.environ.get("LATE", "-")
            await PlainTextResponse(f"{{GREETING}} {{late}}")(scope, receive, send)
    """)
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify", "--env-file", ".env")
    assert server.get().text == "hello -"

    write(tmp_path / ".env", "GREETING=bonjour\n")
    server.wait_text("bonjour -")
    assert ran(log)[3:] == ["app", "config"]  # a cold start's order
    assert "Reloaded .env (GREETING) (+1 dependent) in" in server.log

    # Read only at request time: the new value is there at once, nothing re-runs.
    write(tmp_path / ".env", "GREETING=bonjour\nLATE=late\n")
    server.wait_text("bonjour late")
    server.wait_log("LATE changed in os.environ; no project module read it")
    assert ran(log)[5:] == []

    write(tmp_path / ".env", "LATE=late\n")  # removed from the file: removed from os.environ
    server.wait_log("Reload failed: config.py:3: KeyError: 'GREETING'")
    assert server.get().text == "bonjour late"


def test_env_file_does_not_override_the_real_environment(tmp_path, serve):
    write(tmp_path / ".env", "MODE=file\nCOLOR=red\n")
    write(tmp_path / "app.py", """
        import os
        from starlette.responses import PlainTextResponse
        TEXT = os.environ["MODE"] + " " + os.environ["COLOR"]

        async def app(scope, receive, send):
            await PlainTextResponse(TEXT)(scope, receive, send)
    """)
    server = serve("app.py", "--env-file", ".env", env={"MODE": "shell"})
    assert server.get().text == "shell red"
    write(tmp_path / ".env", "MODE=file2\nCOLOR=blue\n")
    server.wait_text("shell blue")


def test_changes_that_need_a_restart_are_said_once(tmp_path, serve):
    write(tmp_path / "pyproject.toml", '[project]\nname = "demo"\n')
    write(tmp_path / "requirements.txt", "starlette\n")
    app_src = PLAIN_APP
    write(tmp_path / "app.py", app_src.format(text="v1"))
    server = serve("app.py")
    for n in range(2):
        write(tmp_path / "pyproject.toml", f'[project]\nname = "demo{n}"\n')
        write(tmp_path / "requirements.txt", f"starlette\nhttpx=={n}\n")
    write(tmp_path / "app.py", app_src.format(text="v2"))
    server.wait_text("v2")
    log = server.log
    assert log.count("pyproject.toml changed: the project's settings and dependencies are not "
                     "reloaded in place; restart fh_utils dev to apply it") == 1
    assert log.count("requirements.txt changed:") == 1
    assert reloads(log) == [reloads(log)[0]]


def test_loaded_compiled_extension_needs_a_restart(tmp_path, serve):
    import _testcapi  # a real compiled extension to copy into the project
    import shutil
    import sysconfig

    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    shutil.copy(_testcapi.__file__, tmp_path / f"_testcapi{suffix}")
    write(tmp_path / "app.py", PLAIN_APP.format(text="ext").replace(
        "from starlette", "import _testcapi\nfrom starlette"))
    server = serve("app.py")
    assert server.get().text == "ext"
    (tmp_path / f"_testcapi{suffix}").touch()
    server.wait_log("a compiled extension module cannot be reloaded in place; restart")


def test_files_written_by_request_threads_while_the_reloader_takes_them(tmp_path):
    """Request threads note the files the app writes while the watcher's side takes the set:
    neither may see the other half-way (it once ended the watcher with 'Set changed size')."""
    graph = ModuleGraph([tmp_path])
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                graph.opened(str(tmp_path / f"out-{n}-{i % 50}.txt"), os.O_WRONLY)
            except BaseException as exc:
                errors.append(exc)
            i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    taken: set[Path] = set()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for path in graph.take_written():  # iterating while the writers add
                taken.add(path)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    taken |= graph.take_written()
    assert errors == []
    assert len(taken) == 200


def test_template_read_per_request_refreshes_pages_without_a_python_reload(tmp_path, serve):
    """A page's template read while handling the request: a save refreshes open pages (the
    next request reads it anyway), and no module re-runs."""
    import json

    from websockets.sync.client import connect

    write(tmp_path / "templates" / "page.html", "<!doctype html><html><body><h1>{{ title }}</h1>"
          "<p>first template</p></body></html>\n")
    write(tmp_path / "app.py", """
        from starlette.applications import Starlette
        from starlette.routing import Route
        from starlette.templating import Jinja2Templates

        templates = Jinja2Templates(directory="templates")

        def home(request):
            return templates.TemplateResponse(request, "page.html", {"title": "Shop"})

        app = Starlette(routes=[Route("/", home)])
    """)
    server = serve("app.py", "--live")
    assert "first template" in server.get().text  # read now, by the request
    url = f"ws://127.0.0.1:{server.port}/__fh_utils_live__"
    with connect(url, origin=server.url, open_timeout=5) as socket:
        write(tmp_path / "templates" / "page.html", "<!doctype html><html><body>"
              "<h1>{{ title }}</h1><p>second template</p></body></html>\n")
        deadline = time.monotonic() + 10
        kinds = []
        while "reload" not in kinds and time.monotonic() < deadline:
            kinds.append(json.loads(socket.recv(timeout=deadline - time.monotonic()))["type"])
    assert "reload" in kinds
    assert "second template" in server.get().text
    assert "Reloaded" not in server.log  # nothing re-ran


WRITES_BYTECODE = {"PYTHONDONTWRITEBYTECODE": ""}


def helper_app(root: Path) -> Path:
    """app.py serving helper.WORD ("e000"); returns helper.py."""
    helper = write(root / "helper.py", 'WORD = "e000"\n')
    write(root / "app.py", PLAIN_APP.replace('"{text}"', "helper.WORD")
          .replace("from starlette", "import helper\nfrom starlette"))
    return helper


def fresh_word(root: Path, env: dict[str, str] | None = None) -> str:
    """helper.WORD as a fresh `python` process imports it, writing bytecode as by default."""
    return subprocess.run(
        [sys.executable, "-c", "import helper; print(helper.WORD)"], cwd=root,
        capture_output=True, text=True, check=True,
        env={**os.environ, **WRITES_BYTECODE, **(env or {})}).stdout.strip()


def test_cached_bytecode_is_read_only_when_compiled_from_the_source(tmp_path, serve):
    """With bytecode written (as on a user's machine), a start reads a project module's .pyc
    when Python would, except one written within the second its source was saved in: a save
    later in that second that keeps the size looks unchanged to Python's check (time to the
    second, and size), so Python runs the stale .pyc; fh_utils compiles the source, as a
    process without the cache does."""
    helper = helper_app(tmp_path)
    second = int(time.time()) - 60
    os.utime(helper, (second + 0.1, second + 0.1))

    def cold(env: dict[str, str] | None = None) -> str:
        return fresh_word(tmp_path, env)

    def start() -> str:
        server = serve("app.py", env=WRITES_BYTECODE)
        text = server.get().text
        server.stop()
        return text

    assert start() == "e000"
    [cache] = (tmp_path / "__pycache__").glob("helper.*.pyc")
    header = cache.read_bytes()[:16]
    assert header[4:8] == bytes(4)  # Python's own format: the source's time and size

    # A valid .pyc is used, as Python uses it: one holding other code shows it.
    other = compile('WORD = "from the cache"\n', str(helper), "exec")
    cache.write_bytes(header + marshal.dumps(other))
    assert start() == cold() == "from the cache"

    # Written within the source's second, then a same-size save later in that second.
    cache.write_bytes(header + marshal.dumps(compile('WORD = "e000"\n', str(helper), "exec")))
    os.utime(cache, (second + 0.5, second + 0.5))
    write(helper, 'WORD = "e001"\n')
    os.utime(helper, (second + 0.9, second + 0.9))
    assert cold() == "e000"  # Python runs the stale .pyc
    without_cache = cold({"PYTHONPYCACHEPREFIX": str(tmp_path / "empty-cache")})
    assert start() == without_cache == "e001"
    assert cold() == "e001"  # the .pyc was written again, after the source's second


def test_no_bytecode_is_written_for_a_source_saved_within_the_second(tmp_path, serve):
    """A .pyc written for a source saved within the current second would hide, from plain
    Python, a same-size save later in that second: `fh_utils run` or `python app.py` after
    `fh_utils dev` would run the stale code. fh_utils writes none for such a source."""
    helper = helper_app(tmp_path)
    # The save's second, pinned ahead of the clock: not over when the server imports the
    # module, however slowly it starts.
    second = int(time.time()) + 60
    os.utime(helper, (second + 0.1, second + 0.1))
    server = serve("app.py", env=WRITES_BYTECODE)
    assert server.get().text == "e000"
    assert not list((tmp_path / "__pycache__").glob("helper.*.pyc"))

    write(helper, 'WORD = "e001"\n')  # same size, same second
    os.utime(helper, (second + 0.9, second + 0.9))
    server.wait_text("e001")
    assert fresh_word(tmp_path) == server.get().text == "e001"
