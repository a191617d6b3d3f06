"""Every option reaches every entry point that can use it: `fh_utils dev` (in place and
`--reload full`), `python app.py` with `fh_utils.serve()`, and `%fh` in a notebook."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx

from fh_utils.serve.processes import _NOT_FOR_CHILD, _from_json, _to_json
from fh_utils.serve.session import DevOptions
from fh_utils.target import AppTarget
from tests.conftest import RELOAD_TIMEOUT, free_port, wait_until, write
from tests.test_live_editor import fake_editors
from tests.test_notebook import Kernel

PAGE_APP = """
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

async def home(request):
    return HTMLResponse("<!doctype html><html><head><title>t</title></head>"
                        "<body><p>home</p></body></html>")

app = Starlette(routes=[Route("/", home)])
"""

HANGING_LIFESPAN_APP = """
import asyncio
import contextlib
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

@contextlib.asynccontextmanager
async def lifespan(app):
    await asyncio.sleep(3600)
    yield

async def home(request):
    return PlainTextResponse("started")

app = Starlette(routes=[Route("/", home)], lifespan=lifespan)
"""


def test_a_reload_full_child_gets_every_dev_option():
    """Each field of DevOptions (those of today and any added later) crosses to the process
    that uvicorn's reloader starts, but for what that reloader does itself."""
    values: dict[str, object] = {}
    for f in dataclasses.fields(DevOptions):
        if f.name == "target":
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            values[f.name] = not default
        elif isinstance(default, float | int):
            values[f.name] = default + 7
        elif isinstance(default, str) or default is None:
            values[f.name] = f"changed-{f.name}"
        elif isinstance(default, tuple | list):
            values[f.name] = [f"changed-{f.name}"]
    values["reload"] = "full"
    options = DevOptions(target=AppTarget("app", "app", False, Path("/p")), **values)
    child = _from_json(json.loads(json.dumps(_to_json(options))))
    for f in dataclasses.fields(DevOptions):
        if f.name in _NOT_FOR_CHILD:
            continue
        got, sent = getattr(child, f.name), getattr(options, f.name)
        assert (list(got) if isinstance(got, tuple) else got) == sent, f.name
    assert child.target == options.target
    assert child.reload == "no"  # uvicorn's reloader restarts it; it does not watch


def test_reload_full_serves_with_the_live_editor_host_and_lifespan_options(tmp_path, serve):
    write(tmp_path / "app.py", PAGE_APP)
    editors = fake_editors(tmp_path / "bin", "idea")
    server = serve("app.py", "--reload", "full", "--live", "--no-live-morph",
                   "--editor", str(editors / "idea"), "--allowed-host", "dev.example")
    page = server.get().text
    assert 'data-fh-utils-morph="0"' in page  # --no-live-morph reached the child
    assert server.client.get("/", headers={"host": "dev.example"}).status_code == 200
    refused = server.client.get("/", headers={"host": "other.example"})
    assert refused.status_code == 403
    assert "--allowed-host other.example" in refused.text
    from fh_utils.browser.live import editor_href

    origin = f"http://127.0.0.1:{server.port}"
    opened = server.client.post(editor_href("app.py", 4), headers={"origin": origin})
    assert opened.status_code == 204
    args = wait_until(lambda: (editors / "idea.args").exists() and
                      (editors / "idea.args").read_text(), RELOAD_TIMEOUT, "the editor")
    assert args.split() == ["--line", "4", str((tmp_path / "app.py").resolve())]


def test_reload_full_takes_timeout_lifespan(tmp_path, serve):
    write(tmp_path / "app.py", HANGING_LIFESPAN_APP)
    server = serve("app.py", "--reload", "full", "--timeout-lifespan", "0.5")
    page = server.get()
    assert "did not finish within 0.5 s" in page.text, page.text


def test_serve_takes_allowed_hosts_and_names_its_own_argument(tmp_path, serve):
    write(tmp_path / "app.py", PAGE_APP + "\nfrom fh_utils import serve\n"
          "serve(allowed_hosts=['dev.example'])\n")
    server = serve("app.py", command=None)
    assert server.client.get("/", headers={"host": "dev.example"}).status_code == 200
    refused = server.client.get("/", headers={"host": "other.example"})
    assert refused.status_code == 403
    assert "serve(allowed_hosts=['other.example'])" in refused.text
    assert "FH_UTILS_ALLOWED_HOST=other.example" in refused.text


def test_serve_reads_the_allowed_host_variable(tmp_path, serve):
    write(tmp_path / "app.py", PAGE_APP + "\nfrom fh_utils import serve\nserve()\n")
    server = serve("app.py", command=None, env={"FH_UTILS_ALLOWED_HOST": "env.example"})
    assert server.client.get("/", headers={"host": "env.example"}).status_code == 200
    assert server.client.get("/", headers={"host": "other.example"}).status_code == 403


def test_dev_reads_the_allowed_host_variable(tmp_path, serve):
    write(tmp_path / "app.py", PAGE_APP)
    server = serve("app.py", env={"FH_UTILS_ALLOWED_HOST": "env.example, .tunnel.example"})
    assert server.client.get("/", headers={"host": "env.example"}).status_code == 200
    assert server.client.get("/", headers={"host": "a.tunnel.example"}).status_code == 200
    assert server.client.get("/", headers={"host": "other.example"}).status_code == 403


def test_the_notebook_magic_takes_allowed_hosts(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    kernel = Kernel(tmp_path, port)
    try:
        kernel.run("%load_ext fh_utils")
        kernel.run(PAGE_APP + f"\n%fh app --port {port} --allowed-host dev.example\n")
        assert httpx.get(url, headers={"host": "dev.example"}).status_code == 200
        refused = httpx.get(url, headers={"host": "other.example"})
        assert refused.status_code == 403
        assert "%fh --allowed-host other.example" in refused.text
    finally:
        kernel.shutdown()
