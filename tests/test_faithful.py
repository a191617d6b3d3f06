"""Faithful reloads: after each edit the hot `fh_utils dev` server serves what a cold start serves.

The oracle is `cold()`: a fresh `fh_utils run` process (plain uvicorn, no reload machinery) on
the same tree, asked the same paths. Bodies are deterministic so they compare exactly.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import RELOAD_TIMEOUT, DevServer, close_code, wait_until, write

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Log lines that end one reload (or a restart), whatever its result.
RELOAD_EVENTS = ("Reloaded ", "Reload failed", "Lifespan startup failed", "Loaded ")
ESCALATIONS = ("by re-importing the project", "by restarting the worker")

# Time the hot server gets, after a reload finished, to match the cold start (threads and tasks
# stopped by a reload exit asynchronously), and, where no log line can tell that a change was
# noticed (files only listed, deleted), to notice it at all.
SETTLE = 3.0
NOTICE = 8.0


# --- the cold-start oracle --------------------------------------------------------------------


@contextlib.contextmanager
def cold_server(cwd: Path, app: str = "app.py") -> Iterator[DevServer]:
    """A fresh `fh_utils run APP` process on the same tree; stopped on exit.

    It writes no bytecode: Python trusts a .pyc whose recorded time (to the second) and size
    match the source, so a cold start soon after an earlier one, across a same-size save made
    within the same second, would run the earlier one's .pyc (Python's pitfall, which the
    oracle must not bring in). It reads the .pyc files fh_utils dev writes, which are safe."""
    server = DevServer(cwd, [app], command="run", env={"PYTHONDONTWRITEBYTECODE": "1"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def cold(cwd: Path, paths: Sequence[str], app: str = "app.py") -> dict[str, tuple[int, str]]:
    """What a cold start on `cwd` serves at each path: {path: (status, body)}."""
    with cold_server(cwd, app) as server:
        return snapshot(server, paths)


def snapshot(server: DevServer, paths: Sequence[str]) -> dict[str, tuple[int, str]]:
    """{path: (status, body)}, the server's own port masked (FastHTML's canonical link)."""
    return {path: (r.status_code, r.text.replace(f"127.0.0.1:{server.port}", "127.0.0.1:PORT"))
            for path in paths for r in [server.get(path)]}


def assert_matches_cold(server: DevServer, cwd: Path, paths: Sequence[str] = ("/",),
                        settle: float = SETTLE, app: str = "app.py"
                        ) -> dict[str, tuple[int, str]]:
    """Hot == cold at `paths`, allowing the hot server `settle` seconds to get there."""
    expected = cold(cwd, paths, app)
    deadline = time.monotonic() + settle
    while True:
        try:
            hot: dict[str, tuple[int, str]] | None = snapshot(server, paths)
        except httpx.HTTPError:
            hot = None
        if hot == expected or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert hot == expected
    return hot


# --- editing ----------------------------------------------------------------------------------


def reload_events(server: DevServer) -> int:
    log = server.log
    return sum(log.count(event) for event in RELOAD_EVENTS)


@contextlib.contextmanager
def reload_of(server: DevServer, marker: str | None = None, url: str = "/") -> Iterator[None]:
    """Wait, after the edits in the block, until a reload finished or `marker` is served."""
    before = reload_events(server)
    yield

    def done() -> bool:
        if reload_events(server) > before:
            return True
        return marker is not None and marker in server.get(url).text

    wait_until(done, RELOAD_TIMEOUT, lambda: f"a reload (or {marker!r} at {url}):\n{server.log}")


def save(server: DevServer, path: Path, text: str, marker: str | None = None,
         url: str = "/") -> None:
    with reload_of(server, marker, url):
        write(path, text)


STARLETTE = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
{imports}

{kind}def home(request):
{body}

app = Starlette(routes=[Route("/", home)])
"""


def starlette_app(tmp_path: Path, imports: str, body: str, is_async: bool = False) -> Path:
    """app.py serving `body` at / (an async handler runs in the server's event loop)."""
    body = "\n".join("    " + line for line in body.strip().splitlines())
    return write(tmp_path / "app.py", STARLETTE.format(
        imports=imports.strip(), body=body, kind="async " if is_async else ""))


# --- 1, 2: ORMs whose classes register in a shared metadata -----------------------------------

USER = """
from sqlalchemy.orm import Mapped, mapped_column
from db import Base

class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
{extra}
"""


@pytest.mark.timeout(60)
def test_sqlalchemy_declarative_column_added(tmp_path, serve):
    """A cold start serves the users table's columns as models.py now declares them."""
    write(tmp_path / "db.py", """
        from sqlalchemy import create_engine
        from sqlalchemy.orm import DeclarativeBase

        engine = create_engine("sqlite://")

        class Base(DeclarativeBase):
            pass
    """)
    write(tmp_path / "models.py", USER.format(extra=""))
    starlette_app(tmp_path, "import db\nimport models\nLABEL = 'one'", """
columns = sorted(c.name for c in db.Base.metadata.tables["users"].columns)
return PlainTextResponse(LABEL + ": " + " ".join(columns))
""")
    server = serve("app.py")
    assert server.get().text == "one: id name"

    save(server, tmp_path / "models.py", USER.format(extra="    email: Mapped[str]"), "email")
    assert_matches_cold(server, tmp_path)
    # db.py keeps its Base: a fresh import of the project is enough, no new process
    assert ("Reloaded models.py by re-importing the project (Table 'users' is already defined"
            in server.log)

    app = tmp_path / "app.py"
    save(server, app, app.read_text().replace("'one'", "'two'"), "two:")
    assert_matches_cold(server, tmp_path)


HERO = """
from sqlmodel import Field, SQLModel

class Hero(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str
{extra}
"""


@pytest.mark.timeout(60)
def test_sqlmodel_field_added(tmp_path, serve):
    """A cold start serves the hero table's columns as models.py now declares them."""
    write(tmp_path / "models.py", HERO.format(extra=""))
    starlette_app(tmp_path, "from sqlmodel import SQLModel\nimport models\nLABEL = 'one'", """
columns = sorted(c.name for c in SQLModel.metadata.tables["hero"].columns)
return PlainTextResponse(LABEL + ": " + " ".join(columns))
""")
    server = serve("app.py")
    assert server.get().text == "one: id name"

    save(server, tmp_path / "models.py", HERO.format(extra="    age: int | None = None"), "age")
    assert_matches_cold(server, tmp_path)
    # SQLModel.metadata lives in the installed package: only a new process is faithful
    assert "Reloaded models.py by restarting the worker (Table 'hero' is already defined" in (
        server.log)

    app = tmp_path / "app.py"
    save(server, app, app.read_text().replace("'one'", "'two'"), "two:")
    assert_matches_cold(server, tmp_path)


# --- 3: logging configured at import ---------------------------------------------------------

AUDIT = """
import logging
import store

VERSION = {n}

class ListHandler(logging.Handler):
    def emit(self, record):
        store.records.append(record.getMessage())

logger = logging.getLogger("audit")
logger.addHandler(ListHandler())
logger.setLevel(logging.INFO)
"""


@pytest.mark.timeout(60)
def test_logging_handler_added_at_import(tmp_path, serve):
    """A cold start has one handler on the "audit" logger, so one record is emitted once."""
    write(tmp_path / "store.py", "records = []\n")  # imports nothing: never re-runs
    write(tmp_path / "audit.py", AUDIT.format(n=1))
    starlette_app(tmp_path, "import logging\nimport audit\nimport store", """
logger = logging.getLogger("audit")
before = len(store.records)
logger.info("one record")
emitted = len(store.records) - before
return PlainTextResponse(f"v{audit.VERSION} handlers={len(logger.handlers)} emitted={emitted}")
""")
    server = serve("app.py")
    assert server.get().text == "v1 handlers=1 emitted=1"

    for n in (2, 3, 4):
        save(server, tmp_path / "audit.py", AUDIT.format(n=n), f"v{n} ")
    assert_matches_cold(server, tmp_path)


@pytest.mark.timeout(60)
def test_logging_basic_config_format_edited(tmp_path, serve):
    """A cold start's root handlers carry the format string logsetup.py now passes."""
    logsetup = 'import logging\nFORMAT = "{fmt}"\nlogging.basicConfig(format=FORMAT)\n'
    write(tmp_path / "logsetup.py", logsetup.format(fmt="one %(message)s"))
    starlette_app(tmp_path, "import logging\nimport logsetup", """
return JSONResponse({"FORMAT": logsetup.FORMAT,
                     "root": [h.formatter._fmt for h in logging.getLogger().handlers]})
""")
    server = serve("app.py")
    assert_matches_cold(server, tmp_path)  # the same root set-up to begin with

    save(server, tmp_path / "logsetup.py", logsetup.format(fmt="two %(message)s"), "two %")
    assert_matches_cold(server, tmp_path)


# --- 4, 5: threads and asyncio tasks started at import ----------------------------------------

THREAD_IMPORTS = "import threading\nimport worker"
THREAD_BODY = """
alive = sum(t.name == "poller" and t.is_alive() for t in threading.enumerate())
return PlainTextResponse(f"rate={worker.RATE} pollers={alive}")
"""


@pytest.mark.timeout(60)
def test_thread_started_at_import(tmp_path, serve):
    """A cold start has exactly one "poller" thread alive."""
    worker = """
        import threading
        import time

        RATE = {n}

        def loop():
            while True:
                time.sleep(0.05)

        threading.Thread(target=loop, daemon=True, name="poller").start()
    """
    write(tmp_path / "worker.py", worker.format(n=1))
    starlette_app(tmp_path, THREAD_IMPORTS, THREAD_BODY)
    server = serve("app.py")
    assert server.get().text == "rate=1 pollers=1"

    for n in (2, 3):
        save(server, tmp_path / "worker.py", worker.format(n=n), f"rate={n} ")
    assert_matches_cold(server, tmp_path)
    assert server.log.count("by restarting the worker (thread 'poller' started by worker.py "
                            "is still running") == 2


@pytest.mark.timeout(60)
def test_thread_stopped_by_on_reload(tmp_path, serve):
    """A cold start has exactly one "poller" thread alive (the module stops its own on reload)."""
    worker = """
        import threading
        import fh_utils

        RATE = {n}
        stop = threading.Event()
        fh_utils.on_reload(stop.set)

        def loop():
            while not stop.wait(0.05):
                pass

        threading.Thread(target=loop, daemon=True, name="poller").start()
    """
    write(tmp_path / "worker.py", worker.format(n=1))
    starlette_app(tmp_path, THREAD_IMPORTS, THREAD_BODY)
    server = serve("app.py")
    assert server.get().text == "rate=1 pollers=1"

    for n in (2, 3):
        save(server, tmp_path / "worker.py", worker.format(n=n), f"rate={n} ")
    assert_matches_cold(server, tmp_path)


@pytest.mark.timeout(60)
def test_asyncio_task_created_at_import(tmp_path, serve):
    """A cold start has exactly one `ticker` task running in the server's loop."""
    # `fh_utils run` (uvicorn.run) imports the app before its event loop runs: the module then
    # leaves the start to the first request; `fh_utils dev` imports it inside the loop.
    game = """
        import asyncio

        RATE = {n}
        TICKS = [0]
        TASKS = []

        async def ticker():
            while True:
                TICKS[0] += 1
                await asyncio.sleep(0.02)

        def start():
            TASKS.append(asyncio.get_running_loop().create_task(ticker()))

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            start()
    """
    write(tmp_path / "game.py", game.format(n=1))
    starlette_app(tmp_path, "import asyncio\nimport game", """
if not game.TASKS:
    game.start()
tickers = sum(getattr(t.get_coro(), "__name__", "") == "ticker" for t in asyncio.all_tasks())
return PlainTextResponse(f"rate={game.RATE} tickers={tickers}")
""", is_async=True)
    server = serve("app.py")
    assert server.get().text == "rate=1 tickers=1"

    for n in (2, 3, 4):
        save(server, tmp_path / "game.py", game.format(n=n), f"rate={n} ")
    assert_matches_cold(server, tmp_path)


GAME_WS_APP = """
import asyncio
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
import game

async def feed(websocket):
    await websocket.accept()
    if not game.TASKS:  # (a cold start under `fh_utils run` imported game outside a loop)
        game.start()
    queue = asyncio.Queue()
    game.CLIENTS.add(queue)
    try:
        while True:
            await websocket.send_text(await queue.get())
    finally:
        game.CLIENTS.discard(queue)

app = Starlette(routes=[WebSocketRoute("/ws", feed)])
"""


def messages_per_second(port: int, seconds: float = 1.0) -> float:
    with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
        ws.recv(timeout=5)  # the feed is running
        count, deadline = 0, time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                ws.recv(timeout=left)
            except TimeoutError:
                break
            count += 1
    return count / seconds


@pytest.mark.timeout(60)
def test_game_loop_task_feeding_a_websocket_keeps_its_rate(tmp_path, serve):
    """A cold start's one loop sends 20 messages a second, whatever was saved before."""
    game = """
        import asyncio

        VERSION = {n}
        CLIENTS = set()
        TASKS = []

        async def loop():
            while True:
                for queue in CLIENTS:
                    queue.put_nowait(f"tick v{{VERSION}}")
                await asyncio.sleep(0.05)

        def start():
            TASKS.append(asyncio.get_running_loop().create_task(loop()))

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            start()
    """
    write(tmp_path / "game.py", game.format(n=1))
    write(tmp_path / "app.py", GAME_WS_APP)
    server = serve("app.py")
    for n in (2, 3, 4):
        write(tmp_path / "game.py", game.format(n=n))
        server.wait_log("Reloaded game.py", count=n - 1)
    hot = messages_per_second(server.port)
    with cold_server(tmp_path) as cold_one:
        cold_rate = messages_per_second(cold_one.port)
    # One loop sends 20 a second; the 4 loops of a server that piled them up would send 80.
    assert 12 <= cold_rate <= 24
    assert abs(hot - cold_rate) <= 0.35 * cold_rate, (hot, cold_rate)


# --- 6: a WebSocket open across a save --------------------------------------------------------

WS_APP = """
import asyncio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

VERSION = "{version}"

async def stream(websocket):
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(VERSION)
            await asyncio.sleep(0.05)
    except WebSocketDisconnect:
        pass

def home(request):
    return PlainTextResponse(VERSION)

app = Starlette(routes=[Route("/", home), WebSocketRoute("/ws", stream)])
"""


def first_message(server: DevServer) -> str:
    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5) as ws:
        return ws.recv(timeout=5)  # type: ignore[return-value]


@pytest.mark.timeout(60)
def test_websocket_open_across_a_save(tmp_path, serve):
    """A cold start's new WebSocket receives the VERSION now in app.py."""
    write(tmp_path / "app.py", WS_APP.format(version="v1"))
    server = serve("app.py")
    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5) as old:
        assert old.recv(timeout=5) == "v1"
        write(tmp_path / "app.py", WS_APP.format(version="v2"))
        code = close_code(old, timeout=10)
    assert code == 1012

    server.wait_text("v2")
    hot = first_message(server)
    with cold_server(tmp_path) as cold_one:
        assert hot == first_message(cold_one)
    server.wait_log("Closed 1 connection", timeout=5)


# --- 7: modules found by listing a directory --------------------------------------------------

DISCOVERY = {
    "pkgutil": ("import pkgutil\nfrom pathlib import Path",
                'sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent'
                ' / "plugins")]))'),
    "glob": ("from pathlib import Path", 'sorted(p.stem for p in Path("plugins").glob("*.py"))'),
    "listdir": ("import os",
                'sorted(f[:-3] for f in os.listdir("plugins") if f.endswith(".py"))'),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", sorted(DISCOVERY))
def test_plugin_directory_listed_at_import(tmp_path, serve, how):
    """A cold start lists the plugin files plugins/ holds now."""
    imports, names = DISCOVERY[how]
    write(tmp_path / "plugins" / "a.py", "NAME = 'a'\n")
    write(tmp_path / "plugins" / "b.py", "NAME = 'b'\n")
    starlette_app(tmp_path, f"{imports}\nPLUGINS = {names}",
                  'return PlainTextResponse("plugins: " + " ".join(PLUGINS))')
    server = serve("app.py")
    assert server.get().text == "plugins: a b"

    write(tmp_path / "plugins" / "c.py", "NAME = 'c'\n")
    assert_matches_cold(server, tmp_path, settle=NOTICE)

    (tmp_path / "plugins" / "a.py").unlink()
    assert_matches_cold(server, tmp_path, settle=NOTICE)


# --- 8: an instance kept across a reload of its base class ------------------------------------


@pytest.mark.timeout(60)
def test_instance_of_subclass_follows_edited_base(tmp_path, serve):
    """A cold start serves "sub+base-2 True True" from a fresh Sub()."""
    write(tmp_path / "store.py", "kept = {}\n")  # imports nothing: never re-runs
    base = 'class Base:\n    def hello(self):\n        return "{text}"\n'
    write(tmp_path / "base.py", base.format(text="base-1"))
    write(tmp_path / "sub.py", """
        from base import Base

        class Sub(Base):
            def hello(self):
                return "sub+" + super().hello()
    """)
    starlette_app(tmp_path, "import base\nimport store\nimport sub", """
obj = store.kept.setdefault("obj", sub.Sub())
return PlainTextResponse(f"{obj.hello()} {isinstance(obj, sub.Sub)} {isinstance(obj, base.Base)}")
""")
    server = serve("app.py")
    assert server.get().text == "sub+base-1 True True"  # the kept instance is made here

    save(server, tmp_path / "base.py", base.format(text="base-2"), "base-2")
    assert_matches_cold(server, tmp_path)


# --- 9, 10: modules deleted, restored, renamed ------------------------------------------------


@pytest.mark.timeout(60)
def test_lazily_imported_module_deleted_then_restored(tmp_path, serve):
    """A cold start's lazy `import extras` fails while extras.py is gone and finds it when back."""
    extras = write(tmp_path / "extras.py", 'NAME = "extras"\n')
    starlette_app(tmp_path, "", """
try:
    import extras
except ModuleNotFoundError:
    return PlainTextResponse("missing")
return PlainTextResponse(extras.NAME)
""")
    server = serve("app.py")
    assert server.get().text == "extras"  # imported now, by the request

    extras.unlink()
    assert_matches_cold(server, tmp_path, settle=NOTICE)

    write(extras, 'NAME = "extras again"\n')
    assert_matches_cold(server, tmp_path, settle=NOTICE)


@pytest.mark.timeout(60)
def test_module_renamed_with_its_importer(tmp_path, serve):
    """A cold start imports text_utils and cannot import the old `utils`."""
    write(tmp_path / "utils.py", 'def shout(s):\n    return s.upper() + "!"\n')
    app_src = """
        import importlib
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from {module} import shout

        def home(request):
            return PlainTextResponse(shout("hi"))

        def probe(request):
            try:
                importlib.import_module("utils")
            except ModuleNotFoundError:
                return PlainTextResponse("utils: not importable")
            return PlainTextResponse("utils: importable")

        app = Starlette(routes=[Route("/", home), Route("/probe", probe)])
    """
    write(tmp_path / "app.py", app_src.format(module="utils"))
    server = serve("app.py")
    assert server.get().text == "HI!"

    with reload_of(server, "HI!!"):
        write(tmp_path / "text_utils.py", 'def shout(s):\n    return s.upper() + "!!"\n')
        write(tmp_path / "app.py", app_src.format(module="text_utils"))
        (tmp_path / "utils.py").unlink()
    assert_matches_cold(server, tmp_path, ["/", "/probe"], settle=NOTICE)


# --- 11, 12: failed reloads, then the fix -----------------------------------------------------


TWO_FILES_APP = """
import asyncio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
import a
import b
import d

RUNNING = [0]

def home(request):
    return PlainTextResponse(a.A + "+" + b.B)

async def slow(request):
    RUNNING[0] += 1
    await asyncio.sleep(3.5)
    return PlainTextResponse("slow")

def ping(request):
    return PlainTextResponse(f"running={RUNNING[0]}")

app = Starlette(routes=[Route("/", home), Route("/slow", slow), Route("/ping", ping)])
"""


def held(server: DevServer) -> bool:
    """Whether the server holds a new request (a reload is waiting for running ones)."""
    try:
        httpx.get(f"{server.url}/ping", timeout=0.25)
    except httpx.TimeoutException:
        return True
    return False


@pytest.mark.timeout(60)
def test_syntax_error_in_one_of_two_saved_files_then_fixed(tmp_path, serve):
    """A cold start serves both new values once b.py is fixed."""
    write(tmp_path / "a.py", 'A = "a1"\n')
    write(tmp_path / "b.py", 'B = "b1"\n')
    write(tmp_path / "d.py", "D = 1\n")
    write(tmp_path / "app.py", TWO_FILES_APP)
    server = serve("app.py")
    assert server.get().text == "a1+b1"

    # One batch for both saves, whatever the watcher's timing: a reload of d.py waits (up to
    # its drain timeout) for a running request, so the two saves made meanwhile arrive together.
    slow = threading.Thread(target=httpx.get, args=(f"{server.url}/slow",),
                            kwargs={"timeout": 15})
    slow.start()
    try:
        wait_until(lambda: server.get("/ping").text == "running=1", 5, "/slow to be running")
        write(tmp_path / "d.py", "D = 2\n")
        with contextlib.suppress(AssertionError):  # without holding, the saves still race
            wait_until(lambda: held(server), 3, "the reload of d.py to hold requests")
        write(tmp_path / "a.py", 'A = "a2"\n')
        write(tmp_path / "b.py", 'B = "b2\n')  # unterminated string
        server.wait_log("Reload failed")
    finally:
        slow.join()
    assert "Reloaded d.py" in server.log
    assert server.get().text == "a1+b1"  # the failed batch changed nothing

    save(server, tmp_path / "b.py", 'B = "b2"\n', "+b2")
    assert_matches_cold(server, tmp_path)


LIFESPAN_APP = """
import contextlib
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
import helpers

FAIL = {fail}
VERSION = "{version}"

@contextlib.asynccontextmanager
async def lifespan(app):
    if FAIL:
        raise RuntimeError("boom")
    yield

def home(request):
    return PlainTextResponse(VERSION + " " + helpers.TEXT)

app = Starlette(routes=[Route("/", home)], lifespan=lifespan)
"""


@pytest.mark.timeout(60)
def test_new_app_whose_lifespan_fails_then_fixed(tmp_path, serve):
    """A cold start serves "v3 h2" once the lifespan no longer fails."""
    write(tmp_path / "helpers.py", 'TEXT = "h1"\n')
    write(tmp_path / "app.py", LIFESPAN_APP.format(fail=False, version="v1"))
    server = serve("app.py")
    assert server.get().text == "v1 h1"

    # app.py first: however the watcher splits the two writes, every reload includes app.py.
    write(tmp_path / "app.py", LIFESPAN_APP.format(fail=True, version="v2"))
    write(tmp_path / "helpers.py", 'TEXT = "h2"\n')
    server.wait_log("Lifespan startup failed")
    assert "boom" in server.log
    assert server.get().text == "v1 h1"  # the previous app, with its helpers, untouched

    save(server, tmp_path / "app.py", LIFESPAN_APP.format(fail=False, version="v3"), "v3")
    assert_matches_cold(server, tmp_path)


# --- 13: ordinary edits of the examples never escalate ----------------------------------------

# (file, old, new, marker or None, url) applied in turn.
EXAMPLE_EDITS: dict[str, tuple[str, list[tuple[str, str, str, str | None, str]]]] = {
    "minimal": ("app.py", [
        ("helpers.py", '"cheese"', '"olives"', "<li>olives</li>", "/"),
        ("app.py", 'greeting("world")', 'greeting("fh_utils")', "Hello, fh_utils!", "/"),
        ("helpers.py", 'f"Hello, {name}!"', 'f"Hi, {name}!"', "Hi, fh_utils!", "/"),
        ("app.py", '"fh_utils demo"', '"fh_utils demo two"', "fh_utils demo two", "/"),
        ("helpers.py", '"bread"', '"rolls"', "<li>rolls</li>", "/"),
    ]),
    "starlette_app": ("app.py", [
        ("page.html", "Hello from Starlette", "Edited page", "Edited page", "/"),
        ("app.py", 'f"Hello, {name}!"', 'f"Hi, {name}."', "Hi, you.", "/api/hello?name=you"),
        ("page.html", "Edit page.html", "Edited page.html", "Edited page.html", "/"),
        ("app.py", '"name", "world"', '"name", "there"', "Hi, there.", "/api/hello"),
        ("app.py", 'f"Hi, {name}."', 'f"Hey, {name}."', "Hey, there.", "/api/hello"),
    ]),
    "fastapi_app": ("app.py", [
        ("items.py", 'name="coffee"', 'name="tea"', '"tea"', "/items/0"),
        ("app.py", "Hello from FastAPI", "Hi from FastAPI", "Hi from FastAPI", "/"),
        ("items.py", 'name="bread"', 'name="rolls"', '"rolls"', "/items/1"),
        ("app.py", "fh_utils FastAPI example", "fh_utils FastAPI demo", "FastAPI demo",
         "/openapi.json"),
        ("items.py", '"no such item"', '"nothing here"', "nothing here", "/items/9"),
    ]),
    "src_layout": ("src/shop/app.py", [
        ("src/shop/catalog.py", '("cheese", 600)', '("olives", 475)', "olives: 4.75", "/"),
        ("src/shop/prices.py", 'CURRENCY = "€"', 'CURRENCY = "EUR"', "3.50 EUR", "/"),
        ("src/shop/app.py", 'Titled("Shop"', 'Titled("Store"', "Store", "/"),
        ("src/shop/catalog.py", '("bread", 225)', '("rolls", 250)', "rolls: 2.50", "/"),
        ("src/shop/prices.py", 'CURRENCY = "EUR"', 'CURRENCY = "eur"', "3.50 eur", "/"),
    ]),
    "model_app": ("app.py", [
        ("app.py", 'H1("Complete a sentence")', 'H1("Edit one")', "Edit one", "/"),
        ("models.py", "Continues a prompt", "Extends a prompt", None, "/"),
        ("app.py", 'H1("Edit one")', 'H1("Edit two")', "Edit two", "/"),
        ("app.py", '"Model demo"', '"Model demo two"', "Model demo two", "/"),
        ("app.py", 'words from', 'words out of', "words out of", "/"),
    ]),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", sorted(EXAMPLE_EDITS))
def test_example_edits_never_escalate(tmp_path, serve, name):
    """A cold start serves the edited example as the hot server does, with no escalation."""
    target, edits = EXAMPLE_EDITS[name]
    work = tmp_path / name
    shutil.copytree(EXAMPLES / name, work, ignore=shutil.ignore_patterns("__pycache__"))
    server = serve(target, cwd=work)
    for file, old, new, marker, url in edits:
        path = work / file
        text = path.read_text()
        assert old in text, f"{old!r} is not in {file}"
        with reload_of(server, marker, url):
            path.write_text(text.replace(old, new))
        if marker is not None:
            server.wait_text(marker, url)
    assert_matches_cold(server, work, sorted({url for *_, url in edits}), app=target)
    escalated = [line for line in server.log.splitlines()
                 if any(escalation in line for escalation in ESCALATIONS)]
    assert escalated == []


# --- changes in place cannot carry to existing objects ----------------------------------------

ENUM_APP = """
import enum
from starlette.responses import PlainTextResponse
import store

class Color(enum.Enum):
{members}

async def app(scope, receive, send):
    kept = store.kept.setdefault("color", Color.RED)
    text = f"{{[m.name for m in Color]}} kept-is-current={{kept is Color.RED}}"
    await PlainTextResponse(text)(scope, receive, send)
"""


@pytest.mark.timeout(60)
def test_enum_members_changed_reimports_and_unchanged_enum_is_kept(tmp_path, serve):
    """A cold start serves the enum's current members, with the member kept being current."""
    write(tmp_path / "store.py", "kept = {}\n")  # imports nothing: survives in-place reloads
    write(tmp_path / "app.py", ENUM_APP.format(members="    RED = 1"))
    server = serve("app.py")
    assert server.get().text == "['RED'] kept-is-current=True"

    app = tmp_path / "app.py"
    save(server, app, app.read_text() + "\n# unchanged enum\n", "RED")
    assert server.get().text == "['RED'] kept-is-current=True"  # the same enum, kept in place
    assert "by re-importing" not in server.log

    save(server, app, ENUM_APP.format(members="    RED = 1\n    BLUE = 2"), "BLUE")
    assert_matches_cold(server, tmp_path)  # store re-ran too: the kept member is current
    assert "by re-importing the project (the members of enum app.Color changed)" in server.log


@pytest.mark.timeout(60)
def test_no_escalate_reports_and_applies_in_place(tmp_path, serve):
    """With escalation off a failure is shown as it happens in place; nothing restarts."""
    write(tmp_path / "db.py", """
        from sqlalchemy.orm import DeclarativeBase

        class Base(DeclarativeBase):
            pass
    """)
    write(tmp_path / "models.py", USER.format(extra=""))
    starlette_app(tmp_path, "import db\nimport models", """
return PlainTextResponse(" ".join(sorted(c.name for c in db.Base.metadata.tables["users"].c)))
""")
    server = serve("app.py", "--no-escalate")
    write(tmp_path / "models.py", USER.format(extra="    email: Mapped[str]"))
    server.wait_log("Reload failed: models.py:4: InvalidRequestError: Table 'users' is already")
    assert server.get().text == "id name"  # the last good version
    assert not any(escalation in server.log for escalation in ESCALATIONS)


LIFESPAN_TASK_APP = """
import asyncio
import contextlib
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

VERSION = {n}

async def heartbeat():
    while True:
        await asyncio.sleep(0.02)

@contextlib.asynccontextmanager
async def lifespan(app):
    asyncio.get_running_loop().create_task(heartbeat())  # never stopped by the app
    yield

async def home(request):
    beats = sum(getattr(t.get_coro(), "__name__", "") == "heartbeat" for t in asyncio.all_tasks())
    return PlainTextResponse(f"v{{VERSION}} heartbeats={{beats}}")

app = Starlette(routes=[Route("/", home)], lifespan=lifespan)
"""


@pytest.mark.timeout(60)
def test_tasks_a_retired_apps_lifespan_left_are_cancelled(tmp_path, serve):
    """A cold start has the one task its app's lifespan started."""
    write(tmp_path / "app.py", LIFESPAN_TASK_APP.format(n=1))
    server = serve("app.py")
    assert server.get().text == "v1 heartbeats=1"
    for n in (2, 3):
        save(server, tmp_path / "app.py", LIFESPAN_TASK_APP.format(n=n), f"v{n} ")
    assert_matches_cold(server, tmp_path)
