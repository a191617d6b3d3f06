"""End-to-end: `fh_utils dev` in a subprocess, files edited on disk, real HTTP requests."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx

from tests.conftest import wait_until, write

FASTHTML_APP = """
from fasthtml.common import fast_app, P

app, rt = fast_app()

@rt("/")
def get():
    return P("{text}")
"""


def ran(path: Path) -> list[str]:
    """Lines modules appended to a file outside the reloaded code: what really executed."""
    return path.read_text().split() if path.exists() else []


def test_route_body_edit_route_added_and_removed(tmp_path, serve):
    app = write(tmp_path / "app.py", FASTHTML_APP.format(text="version one"))
    server = serve("app.py")
    assert "version one" in server.get().text

    write(app, FASTHTML_APP.format(text="version two"))
    server.wait_text("version two")
    assert "Reloaded app.py in" in server.log

    write(app, FASTHTML_APP.format(text="version two") + '\n@rt("/extra")\ndef get():\n'
          '    return P("extra page")\n')
    server.wait_text("extra page", "/extra")

    write(app, FASTHTML_APP.format(text="version three"))
    wait_until(lambda: server.get("/extra").status_code == 404, 10, "/extra to be gone")
    assert "version three" in server.get().text


def test_helper_function_and_from_import_constant(tmp_path, serve):
    write(tmp_path / "helpers.py", """
        CONST = "alpha"
        def shout(s):
            return s.upper()
    """)
    write(tmp_path / "app.py", """
        from fasthtml.common import fast_app, P
        from helpers import CONST, shout

        app, rt = fast_app()

        @rt("/")
        def get():
            return P(shout("hi"), CONST)
    """)
    server = serve("app.py")
    assert "HI" in server.get().text and "alpha" in server.get().text

    write(tmp_path / "helpers.py", """
        CONST = "beta"
        def shout(s):
            return s.upper() + "!!"
    """)
    body = server.wait_text("beta")
    assert "HI!!" in body
    assert "Reloaded helpers.py (+1 dependent) in" in server.log


def test_method_edit_reaches_instance_created_before_reload(tmp_path, serve):
    # `store` imports nothing from the project, so it never re-runs and keeps the instance.
    write(tmp_path / "store.py", "things = {}\n")
    model = """
        class Thing:
            created = 0
            def __init__(self):
                Thing.created += 1
            def describe(self):
                return "{text}"
    """
    write(tmp_path / "models.py", model.format(text="old method"))
    write(tmp_path / "app.py", """
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        import store
        from models import Thing

        def home(request):
            thing = store.things.setdefault("one", Thing())
            same = isinstance(thing, Thing)
            return PlainTextResponse(f"{thing.describe()} id={id(thing)} {same}")

        app = Starlette(routes=[Route("/", home)])
    """)
    server = serve("app.py")
    first = server.get().text
    assert first.startswith("old method")
    thing_id = first.split("id=")[1].split()[0]

    write(tmp_path / "models.py", model.format(text="new method"))
    body = server.wait_text("new method")
    assert f"id={thing_id} True" in body  # the same instance, moved onto the new class


def test_three_module_chain_only_deepest_changes(tmp_path, serve):
    log = tmp_path / "ran.txt"
    for name, body in {
        "c.py": "VALUE = 'c1'",
        "b.py": "from c import VALUE\nB = 'b+' + VALUE",
        "other.py": "OTHER = 1",
    }.items():
        write(tmp_path / name, f"open({str(log)!r}, 'a').write('{name[0]} ')\n{body}\n")
    write(tmp_path / "app.py", f"""
        open({str(log)!r}, "a").write("app ")
        from starlette.responses import PlainTextResponse
        from b import B
        import other

        async def app(scope, receive, send):
            await PlainTextResponse(B)(scope, receive, send)
    """)
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify")
    assert server.get().text == "b+c1"
    assert ran(log) == ["app", "b", "c", "o"]

    write(tmp_path / "c.py", f"open({str(log)!r}, 'a').write('c ')\nVALUE = 'c2'\n")
    server.wait_text("b+c2")
    # A cold start's order (app.py runs until it imports b, which runs until it imports c);
    # `other` did not re-run.
    assert ran(log)[4:] == ["app", "b", "c"]
    assert "Reloaded c.py (+2 dependents) in" in server.log


def test_two_files_saved_together_reload_in_cold_start_order(tmp_path, serve):
    log = tmp_path / "ran.txt"
    write(tmp_path / "helpers.py", f"open({str(log)!r}, 'a').write('helpers ')\nCONST = 1\n")
    app_src = """
        open({log!r}, "a").write("app ")
        from starlette.responses import PlainTextResponse
        from helpers import CONST
        EXPECTED = {expected}

        async def app(scope, receive, send):
            await PlainTextResponse(f"{{CONST}}/{{EXPECTED}}")(scope, receive, send)
    """
    write(tmp_path / "app.py", app_src.format(log=str(log), expected=1))
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("app.py", "--no-verify")
    assert server.get().text == "1/1"

    # app.py is written first: whatever the order of the saves, app.py runs until it imports
    # helpers, which then runs (the new one), as a cold start runs them.
    write(tmp_path / "app.py", app_src.format(log=str(log), expected=2))
    write(tmp_path / "helpers.py", f"open({str(log)!r}, 'a').write('helpers ')\nCONST = 2\n")
    server.wait_text("2/2")
    runs = ran(log)[2:]
    assert runs[-2:] == ["app", "helpers"]


def test_module_imported_lazily_in_handler_then_edited(tmp_path, serve):
    write(tmp_path / "lazy.py", "VALUE = 'lazy one'\n")
    write(tmp_path / "app.py", """
        from starlette.responses import PlainTextResponse

        async def app(scope, receive, send):
            import lazy
            await PlainTextResponse(lazy.VALUE)(scope, receive, send)
    """)
    server = serve("app.py")
    assert server.get().text == "lazy one"  # first imported now, after start-up
    write(tmp_path / "lazy.py", "VALUE = 'lazy two'\n")
    server.wait_text("lazy two")


def test_package_with_relative_imports_in_src_layout(tmp_path, serve):
    pkg = tmp_path / "src" / "shop"
    write(pkg / "__init__.py", "from . import util\n")
    write(pkg / "util.py", "def price():\n    return 10\n")
    write(pkg / "views.py", "from .util import price\ndef page():\n    return f'price {price()}'\n")
    write(pkg / "app.py", """
        from starlette.responses import PlainTextResponse
        from .views import page
        from . import util

        async def app(scope, receive, send):
            await PlainTextResponse(page() + " " + __name__)(scope, receive, send)
    """)
    server = serve("src/shop/app.py")
    assert server.get().text == "price 10 shop.app"
    write(pkg / "util.py", "def price():\n    return 25\n")
    server.wait_text("price 25 shop.app")
    assert "Reloaded src/shop/util.py" in server.log


def test_same_second_same_size_edit(tmp_path, serve):
    app = write(tmp_path / "app.py", FASTHTML_APP.format(text="AAAA"))
    server = serve("app.py")
    stat = app.stat()
    write(app, FASTHTML_APP.format(text="BBBB"))
    os.utime(app, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    assert app.stat().st_size == stat.st_size
    server.wait_text("BBBB")


def test_syntax_error_keeps_old_app_then_fix_recovers(tmp_path, serve):
    app = write(tmp_path / "app.py", FASTHTML_APP.format(text="good one"))
    server = serve("app.py")
    write(app, FASTHTML_APP.format(text="broken") + "\nx = (\n")
    log = server.wait_log("Reload failed: app.py:9: SyntaxError")
    assert "'(' was never closed" in log
    response = server.get()
    assert response.status_code == 200 and "good one" in response.text

    write(app, FASTHTML_APP.format(text="good two"))
    server.wait_text("good two")


def test_exception_at_import_restores_namespace_then_fix(tmp_path, serve):
    write(tmp_path / "app.py", """
        from starlette.responses import PlainTextResponse
        VERSION = 1

        async def app(scope, receive, send):
            added = "ADDED" in globals()
            await PlainTextResponse(f"v{VERSION} added={added}")(scope, receive, send)
    """)
    server = serve("app.py")
    assert server.get().text == "v1 added=False"

    write(tmp_path / "app.py", """
        from starlette.responses import PlainTextResponse
        VERSION = 2
        ADDED = True
        raise RuntimeError("boom at import")
    """)
    log = server.wait_log("Reload failed: app.py:4: RuntimeError: boom at import")
    assert 'File "' in log and "fh_utils" not in log.split("Reload failed")[1].split("\n", 2)[1]
    assert server.get().text == "v1 added=False"  # exact old namespace: ADDED is gone

    write(tmp_path / "app.py", """
        from starlette.responses import PlainTextResponse
        async def app(scope, receive, send):
            await PlainTextResponse("fixed")(scope, receive, send)
    """)
    server.wait_text("fixed")


def test_system_exit_and_keyboard_interrupt_at_top_level(tmp_path, serve):
    app = write(tmp_path / "app.py", FASTHTML_APP.format(text="still here"))
    server = serve("app.py")
    write(app, "import sys\nsys.exit(3)\n")
    server.wait_log("Reload failed: app.py:2: SystemExit: 3")
    write(app, "raise KeyboardInterrupt\n")
    server.wait_log("Reload failed: app.py:1: KeyboardInterrupt")
    assert server.proc.poll() is None
    assert "still here" in server.get().text
    write(app, FASTHTML_APP.format(text="back again"))
    server.wait_text("back again")


def test_module_without_usable_app_is_a_failed_reload(tmp_path, serve):
    app = write(tmp_path / "app.py", FASTHTML_APP.format(text="usable"))
    server = serve("app.py")
    write(app, "")  # an editor's in-place write caught while the file is empty
    server.wait_log("Reload failed: app.py: AppNotFound: module 'app' has no attribute 'app'")
    write(app, "app = None\n")
    server.wait_log("is NoneType, not an ASGI application")
    assert "usable" in server.get().text
    write(app, FASTHTML_APP.format(text="usable again"))
    server.wait_text("usable again")


def test_deleted_module_fails_like_a_cold_start_until_it_comes_back(tmp_path, serve):
    helpers = write(tmp_path / "helpers.py", "WORD = 'kept'\n")
    write(tmp_path / "app.py", """
        from starlette.responses import PlainTextResponse
        import helpers

        async def app(scope, receive, send):
            await PlainTextResponse(helpers.WORD)(scope, receive, send)
    """)
    server = serve("app.py")
    helpers.unlink()  # app.py imports it: a cold start fails, so this reload fails
    server.wait_log("Reload failed: app.py:2: ModuleNotFoundError: No module named 'helpers'")
    assert server.get().text == "kept"  # the last good version keeps serving
    write(helpers, "WORD = 'restored'\n")
    server.wait_text("restored")


def test_broken_at_startup_serves_error_page_then_recovers(tmp_path, serve):
    write(tmp_path / "helpers.py", "def f():\n    return 1 / 0\nVALUE = f()\n")
    write(tmp_path / "app.py", """
        from starlette.responses import PlainTextResponse
        from helpers import VALUE

        async def app(scope, receive, send):
            await PlainTextResponse(f"value {VALUE}")(scope, receive, send)
    """)
    server = serve("app.py")
    response = server.get()
    assert response.status_code == 500
    assert "helpers.py:2: ZeroDivisionError: division by zero" in response.text
    assert "Could not load app:app: helpers.py:2: ZeroDivisionError" in server.log

    write(tmp_path / "helpers.py", "VALUE = 42\n")
    server.wait_text("value 42")
    assert server.get().status_code == 200


def test_lifespan_runs_once_per_swap(tmp_path, serve):
    counts = tmp_path / "lifespan.txt"
    app_src = """
        import contextlib
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        @contextlib.asynccontextmanager
        async def lifespan(app):
            open({counts!r}, "a").write("start ")
            yield {{"label": "{label}"}}
            open({counts!r}, "a").write("stop ")

        def home(request):
            return PlainTextResponse(request.state.label)

        app = Starlette(routes=[Route("/", home)], lifespan=lifespan)
    """
    write(tmp_path / "app.py", app_src.format(counts=str(counts), label="gen0"))
    # Counts this process's lifespans: the fresh-process check's worker would add its own.
    server = serve("app.py", "--no-verify")
    assert server.get().text == "gen0"
    for n in range(1, 4):
        write(tmp_path / "app.py", app_src.format(counts=str(counts), label=f"gen{n}"))
        server.wait_text(f"gen{n}")
        wait_until(lambda n=n: ran(counts).count("stop") == n, 10, f"{n} shutdowns")
        assert ran(counts).count("start") == n + 1
    assert server.stop() == 0
    assert ran(counts) == ["start", "start", "stop", "start", "stop", "start", "stop", "stop"]


def test_failing_lifespan_startup_keeps_old_app(tmp_path, serve):
    app_src = """
        import contextlib
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        @contextlib.asynccontextmanager
        async def lifespan(app):
            if {fail}:
                raise RuntimeError("database unreachable")
            yield

        app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("{label}"))],
                        lifespan=lifespan)
    """
    write(tmp_path / "app.py", app_src.format(fail=False, label="first"))
    server = serve("app.py")
    write(tmp_path / "app.py", app_src.format(fail=True, label="second"))
    server.wait_log("Lifespan startup failed, the previous app keeps serving")
    assert "database unreachable" in server.log
    assert server.get().text == "first"


def test_no_failed_request_through_twenty_reloads(tmp_path, serve):
    app = write(tmp_path / "app.py", FASTHTML_APP.format(text="count 0"))
    server = serve("app.py")
    stop = threading.Event()
    results: dict[str, int] = {"ok": 0, "errors": 0, "5xx": 0}

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as keepalive:
            while not stop.is_set():
                for client in (keepalive, None):
                    try:
                        if client is None:  # a fresh connection each time, too
                            response = httpx.get(server.url + "/", timeout=10)
                        else:
                            response = client.get("/")
                    except httpx.HTTPError:
                        results["errors"] += 1
                        continue
                    results["5xx" if response.status_code >= 500 else "ok"] += 1

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for n in range(1, 21):
            write(app, FASTHTML_APP.format(text=f"count {n}"))
            server.wait_text(f"count {n}")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert server.log.count("Reloaded app.py") >= 20
    assert results["errors"] == 0 and results["5xx"] == 0
    assert results["ok"] > 0  # the hammer ran (how often depends on the machine's load)


def test_fastapi_app(tmp_path, serve):
    src = """
        from fastapi import FastAPI
        app = FastAPI()

        @app.get("/")
        def root():
            return {{"message": "{text}"}}
    """
    write(tmp_path / "main.py", src.format(text="fastapi one"))
    server = serve("main.py")
    assert server.get().json() == {"message": "fastapi one"}
    write(tmp_path / "main.py", src.format(text="fastapi two"))
    server.wait_text("fastapi two")


def test_app_factory_is_called_again_after_reload(tmp_path, serve):
    calls = tmp_path / "calls.txt"
    src = """
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        def create_app():
            open({calls!r}, "a").write("call ")
            return Starlette(routes=[Route("/", lambda r: PlainTextResponse("{text}"))])
    """
    write(tmp_path / "factory.py", src.format(calls=str(calls), text="made once"))
    # Counts the runs of this process: a fresh-process check would add its own.
    server = serve("factory:create_app", "--no-verify", "--factory")
    assert server.get().text == "made once"
    write(tmp_path / "factory.py", src.format(calls=str(calls), text="made twice"))
    server.wait_text("made twice")
    assert ran(calls) == ["call", "call"]


def test_asgi2_and_wsgi_apps_are_adapted(tmp_path, serve):
    write(tmp_path / "old.py", """
        class app:  # ASGI 2: a class taking the scope, whose instances are called
            def __init__(self, scope):
                self.scope = scope
            async def __call__(self, receive, send):
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"asgi2 one"})
    """)
    write(tmp_path / "legacy.py", """
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"wsgi one"]
    """)
    asgi2 = serve("old.py")
    wsgi = serve("legacy.py", "--interface", "wsgi")
    assert asgi2.get().text == "asgi2 one" and wsgi.get().text == "wsgi one"
    (tmp_path / "old.py").write_text((tmp_path / "old.py").read_text().replace("one", "two"))
    (tmp_path / "legacy.py").write_text(
        (tmp_path / "legacy.py").read_text().replace("one", "two"))
    asgi2.wait_text("asgi2 two")
    wsgi.wait_text("wsgi two")
