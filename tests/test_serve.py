"""`fh_utils.serve()`: `python app.py` with serve() at the bottom, as with FastHTML."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import wait_until, write

APP = """
from fasthtml.common import fast_app, P
from fh_utils import serve, no_reload_cache
from helpers import WORD

open({runs!r}, "a").write("module ")

@no_reload_cache
def load_model():
    open({runs!r}, "a").write("load ")
    return object()

MODEL = load_model()
app, rt = fast_app()

@rt("/")
def get():
    return P("{text} " + WORD + f" model={{id(MODEL)}} name={{__name__}}")

serve(host="127.0.0.1"{extra})
"""


def app_source(runs, text, extra=""):
    return APP.format(runs=str(runs), text=text, extra=extra)


def runs_of(path):
    return path.read_text().split() if path.exists() else []


def test_python_app_py_serves_once_and_reloads_from_the_importable_module(tmp_path, serve):
    runs = tmp_path / "runs.txt"
    write(tmp_path / "helpers.py", "WORD = 'word1'\n")
    write(tmp_path / "app.py", app_source(runs, "first"))
    # Counts the runs of this process: a fresh-process check would add its own (serve()
    # reads FH_UTILS_VERIFY as --no-verify does).
    server = serve("app.py", command=None, env={"FH_UTILS_VERIFY": "false"})
    body = server.get().text
    assert "first word1" in body and "name=app" in body
    assert runs_of(runs) == ["module", "load"]  # start-up work ran once
    model = body.split("model=")[1].split()[0]

    write(tmp_path / "app.py", app_source(runs, "second"))
    body = server.wait_text("second word1")
    assert f"model={model}" in body and "name=app" in body
    assert runs_of(runs) == ["module", "load", "module"]  # the model was kept

    write(tmp_path / "helpers.py", "WORD = 'word2'\n")  # imported before serve() was called
    server.wait_text("second word2")
    assert "Reloaded helpers.py (+1 dependent)" in server.log
    assert server.log.count("Uvicorn running on") == 1


def test_serve_is_a_no_op_on_import_and_under_fh_utils_dev(tmp_path, serve):
    runs = tmp_path / "runs.txt"
    write(tmp_path / "helpers.py", "WORD = 'w'\n")
    write(tmp_path / "app.py", app_source(runs, "imported"))
    done = subprocess.run([sys.executable, "-c", "import app; print('imported')"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "imported", done.stderr

    server = serve("app.py")  # serve() at the bottom runs as module `app`: nothing happens
    assert "imported w" in server.get().text
    write(tmp_path / "app.py", app_source(runs, "edited"))
    server.wait_text("edited w")
    assert server.log.count("Uvicorn running on") == 1


def test_serve_reload_false_does_not_watch(tmp_path, serve):
    runs = tmp_path / "runs.txt"
    write(tmp_path / "helpers.py", "WORD = 'w'\n")
    write(tmp_path / "app.py", app_source(runs, "static", ", reload=False"))
    fixed = serve("app.py", command=None)
    watching = serve("app.py")
    write(tmp_path / "app.py", app_source(runs, "changed", ", reload=False"))
    watching.wait_text("changed w")  # the edit was seen by a watching server...
    assert "static w" in fixed.get().text  # ...but not by serve(reload=False)
    assert "Will watch" not in fixed.log
    wait_until(lambda: fixed.proc.poll() is None, 1, "the server to keep running")


def test_dashed_file_names_are_served_by_dev_and_by_serve(tmp_path, serve):
    page = """
        from starlette.responses import PlainTextResponse
        from fh_utils import serve

        async def app(scope, receive, send):
            await PlainTextResponse("{text}")(scope, receive, send)

        serve()
    """
    write(tmp_path / "counter-uuid.py", page.format(text="dashed one"))
    dev = serve("counter-uuid.py")
    assert dev.get().text == "dashed one"
    script = serve("counter-uuid.py", command=None)
    assert script.get().text == "dashed one"
    assert "serving this machine only (127.0.0.1)" in script.log
    write(tmp_path / "counter-uuid.py", page.format(text="dashed two"))
    dev.wait_text("dashed two")
    script.wait_text("dashed two")
    assert "Reloaded counter-uuid.py in" in dev.log


def test_serve_restarts_the_worker_when_a_thread_cannot_be_stopped(tmp_path, serve):
    """`python app.py`: the zygote is a fresh interpreter (the script already ran the app)."""
    write(tmp_path / "poller.py", """
        import threading, time
        RATE = 1
        threading.Thread(target=lambda: time.sleep(3600), daemon=True, name="poller").start()
    """)
    write(tmp_path / "app.py", """
        import threading
        from starlette.responses import PlainTextResponse
        from fh_utils import serve
        import poller

        async def app(scope, receive, send):
            alive = sum(t.name == "poller" for t in threading.enumerate())
            await PlainTextResponse(f"rate={poller.RATE} pollers={alive}")(scope, receive, send)

        serve()
    """)
    server = serve("app.py", command=None)
    assert server.get().text == "rate=1 pollers=1"
    write(tmp_path / "poller.py", (tmp_path / "poller.py").read_text().replace("= 1", "= 2"))
    assert server.wait_text("rate=2") == "rate=2 pollers=1"
    assert "Reloaded poller.py by restarting the worker (thread 'poller'" in server.log
    assert server.stop() == 0
