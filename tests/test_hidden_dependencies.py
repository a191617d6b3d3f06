"""What a module depends on without importing it: the process environment. A module that runs
again starts from the environment a cold start gives it (its own earlier writes taken back).
Each test saves a file, then compares with `fh_utils run` on the same tree."""

from __future__ import annotations

from tests.conftest import write
from tests.test_faithful import assert_matches_cold, save

APP = """
import os
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
import settings  # noqa: F401

def home(request):
    return JSONResponse([os.environ.get("MODE"), os.environ.get("FEATURE")])

app = Starlette(routes=[Route("/", home)])
"""


def test_environment_written_at_import_starts_over_when_the_module_runs_again(tmp_path, serve):
    write(tmp_path / "settings.py", "import os\nos.environ.setdefault('MODE', 'dev')\n"
          "os.environ['FEATURE'] = 'on'\n")
    write(tmp_path / "app.py", APP)
    server = serve("app.py")
    assert server.get().json() == ["dev", "on"]
    save(server, tmp_path / "settings.py", "import os\nos.environ.setdefault('MODE', 'prod')\n")
    assert_matches_cold(server, tmp_path)
    assert server.get().json() == ["prod", None]


def test_a_variable_the_environment_had_at_start_keeps_its_value(tmp_path, serve):
    """setdefault on a variable the server was started with: the start-up value wins, in the
    hot server as in a cold start with the same environment."""
    write(tmp_path / "settings.py", "import os\nos.environ.setdefault('MODE', 'dev')\n")
    write(tmp_path / "app.py", APP)
    server = serve("app.py", env={"MODE": "staging"})
    save(server, tmp_path / "settings.py", "import os\nos.environ.setdefault('MODE', 'x')\n"
         "VERSION = 2\n")
    assert server.get().json() == ["staging", None]


TICKER_APP = """
import threading
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
import ticker

def home(request):
    running = [t for t in threading.enumerate()
               if isinstance(getattr(t, "_args", None), tuple) and len(t._args) == 2
               and isinstance(t._args[1], threading.Event)]  # tick(stop), old runs' too
    return JSONResponse([ticker.VERSION, len(running)])

app = Starlette(routes=[Route("/", home)])
"""

TICKER = """
import threading
from fastcore.parallel import threaded

VERSION = {version}
STOP = threading.Event()

@threaded(daemon=True)
def tick(stop):
    while not stop.wait(0.05):
        pass

tick(STOP)
"""


def test_a_thread_an_installed_package_starts_for_project_code_is_the_projects(
        tmp_path, serve):
    """fastcore's @threaded starts the thread from its own code, with its own target wrapping
    the project's function: still the module's thread, so a re-run while it lives is not done
    in place (it would leave two running where a cold start has one)."""
    write(tmp_path / "ticker.py", TICKER.format(version=1))
    write(tmp_path / "app.py", TICKER_APP)
    server = serve("app.py")
    assert server.get().json() == [1, 1]
    save(server, tmp_path / "ticker.py", TICKER.format(version=2))
    assert_matches_cold(server, tmp_path)
    assert server.get().json() == [2, 1]


LAZY_CLIENT_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

_client = None

def client():
    global _client
    if _client is None:  # made on first use, from a module imported then
        from clients import Client
        _client = Client()
    return _client

def home(request):
    return JSONResponse(client().base)

app = Starlette(routes=[Route("/", home)])
"""

CLIENTS = """
BASE = "{base}"

class Client:
    def __init__(self):
        self.base = BASE
"""


def test_an_import_made_at_request_time_is_a_dependency(tmp_path, serve):
    """A client made lazily in a handler, from a module imported there: editing that module
    runs the handler's module again, as a cold start would start without the old client."""
    write(tmp_path / "clients.py", CLIENTS.format(base="v1"))
    write(tmp_path / "app.py", LAZY_CLIENT_APP)
    server = serve("app.py")
    assert server.get().json() == "v1"
    save(server, tmp_path / "clients.py", CLIENTS.format(base="v2"))
    assert_matches_cold(server, tmp_path)
    assert server.get().json() == "v2"


MEMO_APP = """
import functools
import json
from pathlib import Path
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

@functools.cache
def prices():
    return json.loads(Path("prices.json").read_text())

class Catalog:
    @functools.lru_cache(maxsize=None)
    def names(self):
        with open("names.txt") as f:
            return f.read().split()

CATALOG = Catalog()

def home(request):
    return JSONResponse([prices(), CATALOG.names()])

app = Starlette(routes=[Route("/", home)])
"""


def test_a_file_a_memoised_function_read_at_request_time_is_read_again(tmp_path, serve):
    """`functools.cache` keeps what a handler's helper read on its first call; a cold start has
    an empty cache and reads the file as it is now. Editing the file empties the cache."""
    write(tmp_path / "prices.json", '{"tea": 3}')
    write(tmp_path / "names.txt", "tea coffee")
    write(tmp_path / "app.py", MEMO_APP)
    server = serve("app.py")
    assert server.get().json() == [{"tea": 3}, ["tea", "coffee"]]
    write(tmp_path / "prices.json", '{"tea": 4, "cocoa": 5}')
    server.wait_text("cocoa")
    assert_matches_cold(server, tmp_path)
    write(tmp_path / "names.txt", "tea coffee cocoa")
    assert_matches_cold(server, tmp_path)
    assert server.get().json() == [{"tea": 4, "cocoa": 5}, ["tea", "coffee", "cocoa"]]
