"""End-to-end tests of `no_reload_cache`, `no_reload` and `on_reload` under a real `fh_utils dev`.

Every loader appends a line to a file in tmp_path, outside the reloaded modules, so the file
proves what really ran; the servers are subprocesses and the edits are real writes on disk.
"""

from __future__ import annotations

import ast
import functools
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from tests.conftest import RELOAD_TIMEOUT, wait_until, write

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def count(path: Path, prefix: str) -> int:
    return sum(line.startswith(prefix) for line in lines(path))


RECORD = """
def record(what):
    with open(RUNS, "a") as f:
        print(what, file=f)
"""


def source(template: str, runs: Path, **replacements: str) -> str:
    """A module's source: RECORD inlined, RUNS and the other upper-case markers replaced."""
    text = template.replace("RECORD", RECORD).replace("RUNS", repr(str(runs)))
    for marker in sorted(replacements, key=len, reverse=True):  # PINNED_TEXT before TEXT
        text = text.replace(marker, replacements[marker])
    return text


# --- the loader in app.py itself ---------------------------------------------------------

APP_WITH_LOADER = """
import os
from fasthtml.common import fast_app
from fh_utils import no_reload, no_reload_cache, on_reload
RECORD
record("exec")

@no_reload_cache(cleanup=lambda model: record("cleanup " + model["id"]))
def load_model():
    record("LOAD_LINE")
    return {"id": os.urandom(4).hex()}

MODEL = load_model()
on_reload(lambda: record("on_reload"))

@no_reload
class Registry:
    items = []
    REGISTRY_EXTRA

@no_reload
def pinned():
    return "PINNED_TEXT"

Registry.items.append(1)
app, rt = fast_app()

@rt("/")
def get():
    return (f"TEXT model={MODEL['id']} pinned={pinned()} registry={id(Registry)} "
            f"items={len(Registry.items)} extra={hasattr(Registry, 'extra')}")
"""


def fields(body: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", body))


def test_loader_in_app_py_survives_unrelated_edits_pins_and_callbacks(tmp_path, serve):
    runs = tmp_path / "runs.txt"
    defaults = {"LOAD_LINE": "load", "PINNED_TEXT": "first", "REGISTRY_EXTRA": "pass"}

    def write_app(text: str, **changes: str) -> None:
        write(tmp_path / "app.py",
              source(APP_WITH_LOADER, runs, TEXT=text, **{**defaults, **changes}))

    write_app("v0")
    # Counts this process's runs: the fresh-process check's worker would add its own.
    server = serve("app.py", "--no-verify")
    first = fields(server.wait_text("v0 "))
    assert lines(runs) == ["exec", "load"]
    assert first["pinned"] == "first" and first["items"] == "1"

    # Unrelated edits of the module that defines the loader and calls it at import time.
    reloads = 5
    for n in range(1, reloads + 1):
        write_app(f"v{n}")
        now = fields(server.wait_text(f"v{n} "))
        assert now["model"] == first["model"] and now["registry"] == first["registry"]
    assert count(runs, "load") == 1, lines(runs)
    executions = count(runs, "exec")
    assert executions >= reloads + 1
    # on_reload: exactly once before each re-execution, never for the first execution.
    assert count(runs, "on_reload") == executions - 1
    assert now["items"] == str(executions)  # the pinned class kept its state
    assert "changed: cache cleared" not in server.log
    assert "pinned by @no_reload" not in server.log

    # Edits of pinned code are ignored, and the log says so once per reload.
    executions = count(runs, "exec")
    write_app("v6", PINNED_TEXT="second", REGISTRY_EXTRA="extra = 1")
    now = fields(server.wait_text("v6 "))
    assert now["pinned"] == "first" and now["extra"] == "False"
    assert now["registry"] == first["registry"] and now["model"] == first["model"]
    reran = count(runs, "exec") - executions
    log = server.wait_log("pinned is pinned by @no_reload: edits ignored until restart")
    assert log.count("pinned is pinned by @no_reload") == reran
    assert log.count("Registry is pinned by @no_reload") == reran
    write_app("v7", PINNED_TEXT="second", REGISTRY_EXTRA="extra = 1")
    server.wait_text("v7 ")
    reran = count(runs, "exec") - executions
    assert server.log.count("pinned is pinned by @no_reload") == reran >= 2

    # The loader's own body changes: the value is dropped (its cleanup runs) and recomputed.
    write_app("v8", LOAD_LINE="load again", PINNED_TEXT="second", REGISTRY_EXTRA="extra = 1")
    now = fields(server.wait_text("v8 "))
    assert now["model"] != first["model"]
    assert "load_model() changed: cache cleared" in server.log
    assert count(runs, "load") == 2
    assert f"cleanup {first['model']}" in lines(runs)
    assert count(runs, "on_reload") == count(runs, "exec") - 1


# --- the loader in a helper module; arguments, cache_clear and cleanup -------------------

MODELS = """
from fh_utils import no_reload_cache
RECORD
record("exec models")
VERSION = "VERSION_TEXT"

@no_reload_cache(maxsize=None, cleanup=lambda value: record("cleanup " + value))
def load_model(name, size=1, *, device="cpu"):
    record(f"LOAD_WORD {name} {size} {device}")
    return f"{name}/{size}/{device}"
"""

# Positional and keyword spellings, repeated: lru_cache keys them apart, so must we.
CALLS = [
    (("a",), {}),
    (("a", 2), {}),
    (("a",), {"size": 2}),
    ((), {"name": "a"}),
    (("b",), {"device": "gpu"}),
    (("a",), {}),
    (("a", 2), {}),
]

HELPER_APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
import models

def home(request):
    values = [models.load_model(*args, **kwargs) for args, kwargs in CALLS]
    return PlainTextResponse(" ".join(values) + " " + models.VERSION)

def info(request):
    return PlainTextResponse(repr(tuple(models.load_model.cache_info())))

def clear(request):
    models.load_model.cache_clear()
    return PlainTextResponse("cleared")

app = Starlette(routes=[Route("/", home), Route("/info", info), Route("/clear", clear)])
"""


def test_loader_in_helper_module_with_arguments_cache_clear_and_cleanup(tmp_path, serve):
    runs = tmp_path / "runs.txt"
    write(tmp_path / "app.py", source(HELPER_APP, runs, CALLS=repr(CALLS)))

    def write_models(version: str, load_word: str = "load") -> None:
        write(tmp_path / "models.py",
              source(MODELS, runs, VERSION_TEXT=version, LOAD_WORD=load_word))

    # What functools.lru_cache does with the same calls.
    computed: list[str] = []

    @functools.cache
    def reference(name, size=1, *, device="cpu"):
        computed.append(f"{name}/{size}/{device}")
        return computed[-1]

    values = " ".join(reference(*args, **kwargs) for args, kwargs in CALLS)
    expected_loads = [f"load {value.replace('/', ' ')}" for value in computed]
    expected_info = repr(tuple(reference.cache_info()))
    assert len(computed) == 5

    write_models("m0")
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify")
    assert server.get().text == f"{values} m0"
    assert [line for line in lines(runs) if line.startswith("load")] == expected_loads
    assert server.get("/info").text == expected_info

    # N reloads of the defining module (and of app.py, which imports it): nothing recomputes.
    for n in range(1, 6):
        write_models(f"m{n}")
        assert server.wait_text(f" m{n}") == f"{values} m{n}"
    assert count(runs, "exec models") >= 6
    assert count(runs, "load") == 5
    hits, misses, maxsize, size = ast.literal_eval(server.get("/info").text)
    assert (misses, maxsize, size) == (5, None, 5) and hits >= 2 + 5 * 7  # 1 GET per version

    # The loader's body changes: every value is dropped through cleanup, then recomputed.
    write_models("m6", load_word="reload")
    assert server.wait_text(" m6") == f"{values} m6"
    assert server.log.count("load_model() changed: cache cleared") == 1
    reloaded = sorted(line for line in lines(runs) if line.startswith("reload"))
    assert reloaded == sorted("re" + line for line in expected_loads)
    cleaned = sorted(line for line in lines(runs) if line.startswith("cleanup"))
    assert cleaned == sorted(f"cleanup {value}" for value in computed)

    # cache_clear(): the cleanup runs for each value, statistics restart, the next call loads.
    assert server.get("/clear").text == "cleared"
    assert count(runs, "cleanup") == 10
    assert server.get("/info").text == repr((0, 0, None, 0))
    assert server.get().text == f"{values} m6"
    assert count(runs, "reload") == 10
    assert server.get("/info").text == expected_info


# --- concurrent first calls; an exception is not cached -------------------------------------

GATED_APP = """
import os
import time
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from fh_utils import no_reload_cache
RECORD
GATES = GATES_DIR

@no_reload_cache
def load(name):
    record("compute " + name)
    # Block until the test opens the gate, so that concurrent callers really overlap.
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(GATES, name)):
        if time.monotonic() > deadline:
            raise TimeoutError("the gate never opened")
        time.sleep(0.005)
    # Not by reading RUNS: the engine would count that file as a dependency of the cache.
    failed_once = os.path.join(GATES, name + ".failed")
    if name.startswith("fail") and not os.path.exists(failed_once):
        open(failed_once, "w").close()
        raise RuntimeError(f"first attempt at {name} failed")
    return f"{name}-{os.urandom(4).hex()}"

def work(request):  # sync: Starlette runs it in its thread pool
    try:
        return PlainTextResponse(load(request.path_params["name"]))
    except RuntimeError as exc:
        return PlainTextResponse(f"error: {exc}", status_code=500)

async def info(request):  # async: answers on the event loop while the pool is busy
    return PlainTextResponse(repr(tuple(load.cache_info())))

app = Starlette(routes=[Route("/load/{name}", work), Route("/info", info)])
"""


def concurrently(url: str, paths: list[str]) -> tuple[list[threading.Thread], list[httpx.Response]]:
    responses: list[httpx.Response] = []

    def get(path: str) -> None:
        responses.append(httpx.get(url + path, timeout=TIMEOUT))

    threads = [threading.Thread(target=get, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    return threads, responses


def test_concurrent_first_calls_compute_once_and_errors_are_not_cached(tmp_path, serve):
    runs, gates = tmp_path / "runs.txt", tmp_path / "gates"
    gates.mkdir()
    write(tmp_path / "app.py", source(GATED_APP, runs, GATES_DIR=repr(str(gates))))
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify")

    def info_is(expected: tuple[int, ...]) -> bool:
        return server.get("/info").text == repr(expected)

    # 8 requests at once: one computes, 7 wait for it (counted as hits while it still runs).
    threads, responses = concurrently(server.url, ["/load/model"] * 8)
    wait_until(lambda: info_is((7, 1, 128, 0)), TIMEOUT, "8 overlapping calls")
    assert count(runs, "compute model") == 1
    (gates / "model").touch()
    for thread in threads:
        thread.join(TIMEOUT)
    assert [r.status_code for r in responses] == [200] * 8
    assert len({r.text for r in responses}) == 1
    assert count(runs, "compute model") == 1
    assert server.get("/load/model").text == responses[0].text
    assert info_is((8, 1, 128, 1))

    # The first attempt raises: every caller of that attempt gets the error, nothing is cached.
    threads, responses = concurrently(server.url, ["/load/failing"] * 4)
    wait_until(lambda: info_is((11, 2, 128, 1)), TIMEOUT, "4 overlapping calls")
    (gates / "failing").touch()
    for thread in threads:
        thread.join(TIMEOUT)
    assert [r.status_code for r in responses] == [500] * 4
    assert {r.text for r in responses} == {"error: first attempt at failing failed"}
    assert count(runs, "compute failing") == 1
    retry = server.get("/load/failing")  # the next request computes again, and succeeds
    assert retry.status_code == 200 and retry.text.startswith("failing-")
    assert count(runs, "compute failing") == 2
    assert server.get("/load/failing").text == retry.text
    assert count(runs, "compute failing") == 2


# --- outside `fh_utils dev` ------------------------------------------------------------------

PLAIN_SCRIPT = """
import ast
import functools
import sys
import fh_utils
from fh_utils import no_reload, no_reload_cache, on_reload
RECORD

@no_reload_cache
def bare(x, y=0):
    record(f"bare {x} {y}")
    if x < 0:
        raise ValueError(x)
    return x + y

@no_reload_cache(maxsize=2, typed=True)
def sized(x):
    record(f"sized {x!r}")
    return x

def callback():
    record("callback")

@no_reload
class Pinned:
    pass

def pinned_function():
    pass

assert type(bare) is functools._lru_cache_wrapper, type(bare)
assert type(sized) is functools._lru_cache_wrapper, type(sized)
assert sized.cache_parameters() == {"maxsize": 2, "typed": True}
assert no_reload(pinned_function) is pinned_function and isinstance(Pinned, type)
assert on_reload(callback) is callback
reference = functools.lru_cache(lambda x, y=0: x + y)
for args, kwargs in [((1,), {}), ((1,), {}), ((1, 2), {}), ((1,), {"y": 2}), ((1,), {})]:
    assert bare(*args, **kwargs) == reference(*args, **kwargs)
assert bare.cache_info() == reference.cache_info(), (bare.cache_info(), reference.cache_info())
for x in [1, 1.0, 2, 3, 1]:
    sized(x)
for _ in range(2):
    try:
        bare(-1)
    except ValueError:
        pass
bare.cache_clear()
bare(1)
assert "IPython" not in sys.modules, "plain imports must not pay for IPython"
print("plain ok")
"""


def test_outside_dev_mode_the_decorators_are_lru_cache_and_identity(tmp_path):
    runs = tmp_path / "runs.txt"
    write(tmp_path / "plain_app.py", source(PLAIN_SCRIPT, runs))
    result = subprocess.run([sys.executable, "plain_app.py"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "plain ok"
    assert lines(runs) == [
        "bare 1 0", "bare 1 2", "bare 1 2",  # positional and keyword are different keys
        "sized 1", "sized 1.0", "sized 2", "sized 3", "sized 1",  # typed; maxsize=2 evicts
        "bare -1 0", "bare -1 0",  # an exception is not cached
        "bare 1 0",  # cache_clear()
    ]
    # on_reload registered nothing, and no reload engine ever ran the callback.
    assert "callback" not in lines(runs)


# --- examples/model_app under fh_utils dev ---------------------------------------------------


def test_model_example_app_edit_does_not_reload_the_model(tmp_path, serve):
    work = tmp_path / "model_app"
    shutil.copytree(ROOT / "examples" / "model_app", work,
                    ignore=shutil.ignore_patterns("__pycache__"))
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify", cwd=work)
    loading = "models.py: loading stdlib-bigrams"
    assert server.log.count(loading) == 1
    assert "Complete a sentence" in server.get().text
    completion = re.search(r'<p id="completion">(.*?)</p>', server.get("/?prompt=return a").text)
    assert completion and completion.group(1).startswith("return a ")

    app = work / "app.py"
    app.write_text(app.read_text().replace('H1("Complete a sentence")', 'H1("Edited heading")'))
    body = server.wait_text("Edited heading", timeout=RELOAD_TIMEOUT)
    assert "Reloaded app.py in" in server.log
    assert server.log.count(loading) == 1  # the model was not loaded again
    assert "changed: cache cleared" not in server.log
    assert completion.group(1) in server.get("/?prompt=return a").text
    assert 'id="completion"' in body


# --- the app fails at start-up after the model loaded ----------------------------------------

BROKEN_AT_START = """
import os
from starlette.responses import PlainTextResponse
from fh_utils import no_reload_cache
RECORD

@no_reload_cache
def load_model():
    record("load")
    return os.urandom(4).hex()

MODEL = load_model()
BREAK

async def app(scope, receive, send):
    await PlainTextResponse(f"model={MODEL} TEXT")(scope, receive, send)
"""


def test_start_up_failure_after_the_load_then_fix_loads_once(tmp_path, serve):
    runs = tmp_path / "runs.txt"

    def write_app(text: str, brk: str = "") -> None:
        write(tmp_path / "app.py", source(BROKEN_AT_START, runs, TEXT=text, BREAK=brk))

    write_app("v0", 'raise RuntimeError("broken after the load")')
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify")
    assert server.get().status_code == 500
    assert lines(runs) == ["load"]

    write_app("v1")  # fixed: a fresh import of app.py, which finds the model loaded
    first = fields(server.wait_text(" v1"))["model"]
    write_app("v2")
    assert fields(server.wait_text(" v2"))["model"] == first
    assert lines(runs) == ["load"]
