"""`%load_ext fh_utils` and `%fh` in a real IPython kernel (ipykernel), driven cell by cell by
nbclient, with real HTTP to the server the kernel runs and real files edited on disk."""

from __future__ import annotations

import json
import queue
import re
import shutil
import socket
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from websockets.sync.client import ClientConnection, connect

from fh_utils.browser.live import LIVE_PATH, MARKER
from tests.conftest import RELOAD_TIMEOUT, child_env, free_port, wait_until, write

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "notebook"
CELL_TIMEOUT = 60
WAIT_MS = RELOAD_TIMEOUT * 1000


class Kernel:
    """An IPython kernel started in `cwd` with `$PORT` set; cells run one at a time."""

    def __init__(self, cwd: Path, port: int, nb: Any = None, bytecode: bool = True) -> None:
        self.cwd = cwd
        self.port = port
        self.nb = nb if nb is not None else nbformat.v4.new_notebook()
        self.client = NotebookClient(self.nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
        # A cold kernel (the oracle) writes no bytecode (`tests.test_faithful.cold_server`
        # says why).
        env = child_env({"PORT": str(port),
                         **({} if bytecode else {"PYTHONDONTWRITEBYTECODE": "1"})})
        self._setup = self.client.setup_kernel(env=env)
        self._setup.__enter__()
        self.running = True

    def run_cell(self, index: int) -> str:
        """Run the notebook's cell `index`; returns its output as text."""
        cell = self.nb.cells[index]
        self.client.execute_cell(cell, index)
        return output_text(cell)

    def run(self, source: str) -> str:
        """Add a code cell and run it; returns its output as text."""
        self.nb.cells.append(nbformat.v4.new_code_cell(textwrap.dedent(source).strip()))
        return self.run_cell(len(self.nb.cells) - 1)

    def fails(self, source: str) -> str:
        """Run a cell that must fail; returns the error."""
        with pytest.raises(CellExecutionError) as failed:
            self.run(source)
        return str(failed.value)

    def output_after_cell(self, text: str, timeout: float = RELOAD_TIMEOUT) -> str:
        """Output sent while no cell runs (under the last cell that ran), until `text`."""
        seen: list[str] = []

        def arrived() -> bool:
            try:
                message = run_sync(self.client.kc.iopub_channel.get_msg)(timeout=0.05)
            except queue.Empty:
                return False
            if message["msg_type"] == "stream":
                seen.append(message["content"]["text"])
            return text in "".join(seen)

        wait_until(arrived, timeout, lambda: f"{text!r} in the kernel's output: {seen}")
        return "".join(seen)

    def shutdown(self) -> None:
        if self.running:
            self.running = False
            self._setup.__exit__(None, None, None)


def output_text(cell: Any) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            parts.append(output.data.get("text/plain", ""))
            parts.append(output.data.get("text/html", ""))
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
    return "\n".join(parts)


def page_text(page: str) -> list[str]:
    """The page's title, headings and paragraphs (not the live script, whose port differs)."""
    return [text for _, text in re.findall(r"<(title|h1|p)>([^<]*)</", page)]


def live_socket(port: int) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{port}{LIVE_PATH}", origin=f"http://127.0.0.1:{port}",
                   open_timeout=10)


def next_type(ws: ClientConnection) -> str:
    """The type of the next message the live socket pushes (after its `hello`)."""
    while True:
        message = json.loads(ws.recv(timeout=RELOAD_TIMEOUT))
        if message["type"] != "hello":
            return str(message["type"])


def refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.ConnectError:
        return True
    return False


def test_example_notebook_serves_swaps_and_reloads_a_project_module(tmp_path):
    """examples/notebook/app.ipynb, cell by cell: serve, redefine a route and run %fh again
    (same server and port), edit greetings.py on disk (reloaded between cells), stop."""
    work = tmp_path / "notebook"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("__pycache__", ".ipynb*"))
    nb = nbformat.read(work / "app.ipynb", as_version=4)
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    assert [nb.cells[i].source.splitlines()[-1] for i in code] == [
        "%load_ext fh_utils", '    return Titled("Notebook demo", P(greeting("notebook")))',
        "%fh app --live", "%fh app --live", "%fh --stop"]
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    kernel = Kernel(work, port, nb)
    try:
        out = kernel.run_cell(code[0])
        assert f"Will watch for changes in these directories: ['{work}']" in out
        kernel.run_cell(code[1])
        assert refused(url)  # nothing is served before %fh

        out = kernel.run_cell(code[2])
        assert f"Serving app at {url}" in out
        assert '<iframe id="fh-utils-' in out and f'src="{url}"' in out
        assert f'<a href="{url}"' in out
        page = httpx.get(url).text
        assert "Hello, notebook!" in page and MARKER.decode() in page  # --live

        with live_socket(port) as ws:
            client = httpx.Client()
            assert "Hello, notebook!" in client.get(url).text
            kernel.run_cell(code[3])  # the route redefined, %fh again
            assert next_type(ws) == "reload"  # after the cell, on the same socket
            page = client.get(url).text  # the same keep-alive connection: no new server
            assert "Added in a later cell." in page and "Hello, notebook!" in page

            greetings = work / "greetings.py"
            greetings.write_text(greetings.read_text().replace("Hello", "Howdy"))
            wait_until(lambda: "Howdy, notebook!" in client.get(url).text, RELOAD_TIMEOUT,
                       "the edited greetings.py served")
            assert next_type(ws) == "reload"
            out = kernel.output_after_cell("Reloaded greetings.py in")
            assert out.count("Reloaded greetings.py") == 1, out
            client.close()

            # A fresh kernel running the same cells on the same tree serves the same page.
            cold_port = free_port()
            cold = Kernel(work, cold_port, nbformat.read(work / "app.ipynb", as_version=4),
                          bytecode=False)
            try:
                for index in code[:4]:
                    cold.run_cell(index)
                cold_page = httpx.get(f"http://127.0.0.1:{cold_port}/").text
            finally:
                cold.shutdown()
            assert page_text(cold_page) == page_text(httpx.get(url).text)
            assert "Howdy, notebook!" in page_text(cold_page)

            out = kernel.run_cell(code[4])
            assert f"stopped the server on port {port}" in out
            assert refused(url)
    finally:
        kernel.shutdown()


LIFESPAN_APP = """
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def make(name):
    @asynccontextmanager
    async def lifespan(app):
        with open("events.log", "a") as log:
            log.write(f"start {name}\\n")
        yield
        with open("events.log", "a") as log:
            log.write(f"stop {name}\\n")

    async def home(request):
        return PlainTextResponse(name)

    return Starlette(routes=[Route("/", home)], lifespan=lifespan)
"""


def test_swaps_run_lifespans_and_project_apps_follow_their_module(tmp_path):
    """A new app object: its lifespan starts, the old one's shuts down. An app imported from a
    project module: a save serves the module's new app. A cell that writes a project file:
    the reload is logged in its output, a broken file is rolled back. Kernel shutdown stops
    the server, running the lifespan shutdown."""
    write(tmp_path / "lifespans.py", LIFESPAN_APP)
    write(tmp_path / "shop.py", """
        from lifespans import make

        app = make("shop 1")
    """)
    events = tmp_path / "events.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    kernel = Kernel(tmp_path, port)
    try:
        kernel.run("%load_ext fh_utils")
        assert "needs the app to serve" in kernel.fails("%fh")
        assert "NameError" in kernel.fails("%fh nosuch")
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            error = kernel.fails(f"from lifespans import make\napp = make('one')\n"
                                 f"%fh app --port {taken}")
        assert "pass --port N (or --port 0 for a free port)" in error

        kernel.run("%fh app")
        assert httpx.get(url).text == "one"
        kernel.run("app = make('two')\n%fh app")
        assert httpx.get(url).text == "two"
        wait_until(lambda: events.read_text().splitlines() == ["start one", "start two",
                                                               "stop one"],
                   RELOAD_TIMEOUT, lambda: f"lifespans in order: {events.read_text()!r}")
        assert "already serving" in kernel.fails(f"%fh app --port {free_port()}")

        kernel.run("from shop import app as shop_app\n%fh shop_app")
        assert httpx.get(url).text == "shop 1"
        shop = tmp_path / "shop.py"
        shop.write_text(shop.read_text().replace("shop 1", "shop 2"))
        wait_until(lambda: httpx.get(url).text == "shop 2", RELOAD_TIMEOUT,
                   "the app shop.py makes now")
        assert "True" in kernel.run("import shop\nprint(shop_app is shop.app)")
        wait_until(lambda: events.read_text().count("stop shop 1") == 1, RELOAD_TIMEOUT,
                   "the replaced app's lifespan shutdown")

        out = kernel.run("""
            from pathlib import Path
            Path("shop.py").write_text('app = make("shop 3"')
        """)
        assert "Reload failed: shop.py:1: SyntaxError" in out
        assert httpx.get(url).text == "shop 2"
        out = kernel.run("""
            Path("shop.py").write_text('from lifespans import make\\napp = make("shop 3")\\n')
        """)
        assert "Reloaded shop.py in" in out
        assert httpx.get(url).text == "shop 3"
    finally:
        kernel.shutdown()
    assert refused(url)
    assert events.read_text().splitlines()[-1] == "stop shop 3", events.read_text()


def test_requests_wait_while_a_reload_runs_in_the_kernel(tmp_path):
    """A module re-runs on the kernel's main thread (sleeping at import, here): a request made
    meanwhile, async or in the thread pool, waits and gets the new code, never a module
    half-executed."""
    module = """
        import time
        from pathlib import Path

        VALUE = {n}
        Path("reloading.txt").write_text(str(VALUE))
        time.sleep(1.0)
        DONE = VALUE
    """
    write(tmp_path / "slow.py", module.format(n=1))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    kernel = Kernel(tmp_path, port)
    try:
        kernel.run("%load_ext fh_utils")
        kernel.run("""
            from starlette.applications import Starlette
            from starlette.responses import PlainTextResponse
            from starlette.routing import Route

            import slow

            async def value(request):
                return PlainTextResponse(str(slow.DONE))

            def value_in_thread(request):
                return PlainTextResponse(str(slow.DONE))

            app = Starlette(routes=[Route("/", value), Route("/sync", value_in_thread)])
            %fh app
        """)
        assert httpx.get(url).text == "1"
        replacement = tmp_path / "slow.tmp"
        replacement.write_text(textwrap.dedent(module.format(n=2)))
        replacement.replace(tmp_path / "slow.py")
        wait_until(lambda: (tmp_path / "reloading.txt").read_text() == "2", RELOAD_TIMEOUT,
                   "slow.py re-running")
        with ThreadPoolExecutor(2) as pool:
            answers = [pool.submit(httpx.get, url + path, timeout=10) for path in ("/", "/sync")]
            assert [a.result().text for a in answers] == ["2", "2"]
        assert "Reloaded slow.py in" in kernel.output_after_cell("Reloaded slow.py in")

        # A cell awaiting lets the kernel's loop run: the save still waits for the cell.
        out = kernel.run(f"""
            import asyncio
            from pathlib import Path

            Path("slow.py").write_text({textwrap.dedent(module.format(n=3))!r})
            await asyncio.sleep(1.5)
            print("during the cell:", slow.DONE)
        """)
        assert "during the cell: 2" in out
        assert out.index("during the cell: 2") < out.index("Reloaded slow.py in")
        assert httpx.get(url).text == "3"
    finally:
        kernel.shutdown()


def test_the_iframe_in_a_browser_fits_its_page_and_refreshes_after_each_cell(tmp_path):
    """The HTML `%fh` displays, in Chromium: the iframe shows the app, takes the height the
    FastHTML page reports, and with --live refreshes after a cell that changed the page."""
    from playwright.sync_api import Page, sync_playwright

    from tests.conftest import CHROMIUM, CHROMIUM_ARGS

    # Playwright's sync API runs an event loop of its own: it gets a thread of its own, so
    # that nbclient's loop in this one is left alone.
    browser_thread = ThreadPoolExecutor(1)

    def in_browser(step: Callable[[], Any]) -> Any:
        return browser_thread.submit(step).result(timeout=2 * RELOAD_TIMEOUT)

    playwright = in_browser(lambda: sync_playwright().start())
    port = free_port()
    kernel = Kernel(tmp_path, port)
    try:
        browser = in_browser(lambda: playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS))
        kernel.run("%load_ext fh_utils")
        kernel.run("""
            from fasthtml.common import H1, P, fast_app

            app, rt = fast_app()

            @rt("/")
            def get():
                return H1("first"), *[P(f"line {i}") for i in range(20)]
        """)
        kernel.run("%fh app --live")
        shown = kernel.nb.cells[-1].outputs[0].data["text/html"]

        def open_page() -> Page:
            page: Page = browser.new_page()
            page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"),
                       lambda route: route.abort())
            page.set_content(f"<!doctype html><html><body>{shown}</body></html>")
            page.frame_locator("iframe").locator("h1", has_text="first").wait_for(
                timeout=WAIT_MS)
            page.wait_for_function(  # 400 px at first, then the page's own height
                "() => parseInt(document.querySelector('iframe').style.height) > 400",
                timeout=WAIT_MS)
            return page

        page = in_browser(open_page)
        kernel.run("""
            @rt("/")
            def get():
                return H1("second")
        """)
        in_browser(lambda: page.frame_locator("iframe").locator("h1", has_text="second")
                   .wait_for(timeout=WAIT_MS))
    finally:
        kernel.shutdown()
        in_browser(playwright.stop)
        browser_thread.shutdown()


def test_watch_adds_a_directory_outside_the_notebook(tmp_path):
    """`%fh app --watch ../lib`: a library the notebook imported from elsewhere is reloaded
    too (it was imported before the directory was watched)."""
    notebook, lib = tmp_path / "notebook", tmp_path / "lib"
    write(lib / "greet.py", 'def greet():\n    return "hello from lib"\n')
    notebook.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    kernel = Kernel(notebook, port)
    try:
        kernel.run("%load_ext fh_utils")
        out = kernel.run("""
            import sys
            sys.path.insert(0, "../lib")
            import greet
            from starlette.applications import Starlette
            from starlette.responses import PlainTextResponse
            from starlette.routing import Route

            async def home(request):
                return PlainTextResponse(greet.greet())

            app = Starlette(routes=[Route("/", home)])
            %fh app --watch ../lib
        """)
        assert f"Will watch for changes in these directories: ['{notebook}', '{lib}']" in out
        assert httpx.get(url).text == "hello from lib"
        write(lib / "greet.py", 'def greet():\n    return "edited in lib"\n')
        wait_until(lambda: httpx.get(url).text == "edited in lib", RELOAD_TIMEOUT,
                   "the edited library served")
        out = kernel.run("%fh app --watch ../lib")  # watched already: nothing starts again
        assert "Will watch" not in out
    finally:
        kernel.shutdown()
