"""Open in editor: which editor, its file:line syntax, and the endpoint the overlay's links call
(only the project's files, only from the server's own pages, only through an allowed host)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from fh_utils.browser.editor import Editor, find_editor
from fh_utils.browser.live import LIVE_PATH, LiveReloadMiddleware, editor_href
from tests import test_live_browser as browser_tests
from tests.conftest import RELOAD_TIMEOUT, wait_until, write
from tests.test_live_browser import WAIT_MS, fasthtml_app

new_page, project = browser_tests.new_page, browser_tests.project


@pytest.mark.parametrize(("argv", "expected"), [
    (["code"], ["code", "-r", "-g", "/p/app.py:12:3"]),
    (["/usr/bin/cursor", "-r"], ["/usr/bin/cursor", "-r", "-g", "/p/app.py:12:3"]),
    (["vim"], ["vim", "+12", "/p/app.py"]),
    (["nvim"], ["nvim", "+12", "/p/app.py"]),
    (["emacsclient", "-n"], ["emacsclient", "-n", "+12", "/p/app.py"]),
    (["idea"], ["idea", "--line", "12", "/p/app.py"]),
    (["pycharm"], ["pycharm", "--line", "12", "/p/app.py"]),
    (["subl"], ["subl", "/p/app.py:12:3"]),
    (["zed"], ["zed", "/p/app.py:12:3"]),
    (["myeditor", "--open", "{file}@{line},{column}"], ["myeditor", "--open", "/p/app.py@12,3"]),
    (["unknown-editor"], ["unknown-editor", "/p/app.py"]),
])
def test_each_editor_gets_its_own_file_and_line_syntax(argv, expected):
    assert Editor(tuple(argv), "test").command(Path("/p/app.py"), 12, 3) == expected


def test_terminal_editors_are_told_apart():
    assert Editor(("vim",), "").terminal and Editor(("/usr/bin/nano",), "").terminal
    assert not Editor(("code",), "").terminal and not Editor(("emacs",), "").terminal
    assert Editor(("emacs", "-nw"), "").terminal


def fake_editors(directory: Path, *names: str) -> Path:
    """Scripts named like editors that write their arguments, one a line, to NAME.args."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = directory / name
        path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{directory}/{name}.args.tmp"\n'
                        f'mv "{directory}/{name}.args.tmp" "{directory}/{name}.args"\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return directory


def test_the_editor_is_the_option_then_the_variables_then_the_first_found_on_path(tmp_path):
    bin_ = fake_editors(tmp_path / "bin", "cursor", "emacs")
    env = {"PATH": str(bin_)}
    found = find_editor(environ=env)
    assert found == Editor((str(bin_ / "cursor"),), "PATH")  # no code: cursor comes next
    assert find_editor(environ={**env, "EDITOR": "nano"}) == Editor(("nano",), "$EDITOR")
    assert find_editor(environ={**env, "EDITOR": "nano", "VISUAL": "code -r"}) == Editor(
        ("code", "-r"), "$VISUAL")
    assert find_editor(environ={**env, "VISUAL": "code", "FH_UTILS_EDITOR": "'my ed' -x"}
                       ) == Editor(("my ed", "-x"), "$FH_UTILS_EDITOR")
    assert find_editor("vim", environ={**env, "FH_UTILS_EDITOR": "code"}) == Editor(
        ("vim",), "--editor")
    assert find_editor(environ={"PATH": str(tmp_path / "empty")}) is None


# -- the endpoint, in process ---------------------------------------------------------------------
@pytest.fixture
def opener(tmp_path: Path, monkeypatch) -> tuple[TestClient, Path]:
    """The middleware over a project in tmp_path, with a fake `vim` as the editor."""
    root = tmp_path / "project"
    write(root / "app.py", "x = 1\n")
    write(tmp_path / "outside.py", "secret = 1\n")
    write(root / ".venv" / "lib" / "site-packages" / "pkg.py", "y = 1\n")
    editors = fake_editors(tmp_path / "bin", "vim")
    monkeypatch.chdir(root)
    app = LiveReloadMiddleware(Starlette(), roots=[root], editor=str(editors / "vim"))
    return TestClient(app, base_url="http://127.0.0.1:5001"), editors


def test_the_endpoint_opens_a_project_file_at_its_line(opener):
    client, editors = opener
    response = client.post(editor_href("app.py", 7), headers={"origin": "http://127.0.0.1:5001"})
    assert response.status_code == 204, response.text
    args = wait_until(lambda: (editors / "vim.args").exists() and
                      (editors / "vim.args").read_text(), RELOAD_TIMEOUT, "the fake editor")
    assert args == f"+7\n{Path.cwd() / 'app.py'}\n"
    # A link followed from one of the server's pages (no Origin on a GET) works too.
    followed = client.get(editor_href("app.py", 1), headers={"sec-fetch-site": "same-origin"})
    assert followed.status_code == 204


@pytest.mark.parametrize(("headers", "file", "status"), [
    ({"origin": "http://evil.example"}, "app.py", 403),
    ({"origin": "http://127.0.0.1:5002"}, "app.py", 403),
    ({"sec-fetch-site": "cross-site"}, "app.py", 403),
    ({}, "app.py", 403),  # no Origin, no Sec-Fetch-Site: not one of our pages
    ({"origin": "http://127.0.0.1:5001"}, "../outside.py", 403),
    ({"origin": "http://127.0.0.1:5001"}, "/etc/passwd", 403),
    ({"origin": "http://127.0.0.1:5001"}, ".venv/lib/site-packages/pkg.py", 403),
    ({"origin": "http://127.0.0.1:5001"}, "missing.py", 404),
])
def test_the_endpoint_refuses_other_sites_and_files_outside_the_project(opener, headers, file,
                                                                        status):
    client, editors = opener
    response = client.post(editor_href(file, 1), headers=headers)
    assert response.status_code == status, response.text
    assert not (editors / "vim.args").exists()


def test_no_editor_found_says_what_to_do(tmp_path: Path, monkeypatch, caplog):
    write(tmp_path / "app.py", "x = 1\n")
    monkeypatch.chdir(tmp_path)
    for name in ("FH_UTILS_EDITOR", "VISUAL", "EDITOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    client = TestClient(LiveReloadMiddleware(Starlette(), roots=[tmp_path]))
    with caplog.at_level("WARNING", logger="fh_utils"):
        for _ in range(2):
            response = client.post(editor_href("app.py", 1),
                                   headers={"origin": "http://testserver"})
            assert response.status_code == 500
            assert "set FH_UTILS_EDITOR (or VISUAL, EDITOR) or pass --editor" in response.text
    assert [r.getMessage() for r in caplog.records] == [response.text]  # logged once


# -- a real server, a real browser ----------------------------------------------------------------
def test_overlay_links_open_the_editor_at_the_line(project: Path, serve, new_page, tmp_path):
    editors = fake_editors(tmp_path / "bin", "code")
    app = write(project / "app.py", fasthtml_app("fine"))
    server = serve("app.py", "--live", env={"FH_UTILS_EDITOR": str(editors / "code")})
    page = new_page()
    page.goto(server.url)
    broken = fasthtml_app("broken") + "\nvalue = (1,\n"
    write(app, broken)
    line = broken.lstrip("\n").splitlines().index("value = (1,") + 1
    link = page.locator("#fh-utils-live-overlay .where a")
    link.wait_for(timeout=WAIT_MS)
    assert link.text_content() == f"app.py:{line}"
    link.click()
    args = wait_until(lambda: (editors / "code.args").exists() and
                      (editors / "code.args").read_text(), RELOAD_TIMEOUT, "the fake editor")
    assert args == f"-r\n-g\n{app.resolve()}:{line}:1\n"
    server.wait_log(f"Opened app.py:{line} in code")


def test_editor_option_and_hosts_on_a_real_server(project: Path, serve, tmp_path):
    editors = fake_editors(tmp_path / "bin", "idea")
    write(project / "app.py", fasthtml_app("fine"))
    server = serve("app.py", "--live", "--editor", f"{editors / 'idea'}")
    url = editor_href("app.py", 4)
    refused = server.client.post(url, headers={"host": "evil.example",
                                               "origin": "http://evil.example"})
    assert refused.status_code == 403  # fh_utils.hosts: not an allowed host
    assert server.client.post(url, headers={"origin": "http://evil.example"}).status_code == 403
    assert not (editors / "idea.args").exists()
    origin = f"http://127.0.0.1:{server.port}"
    assert server.client.post(url, headers={"origin": origin}).status_code == 204
    args = wait_until(lambda: (editors / "idea.args").exists() and
                      (editors / "idea.args").read_text(), RELOAD_TIMEOUT, "the fake editor")
    assert args == f"--line\n4\n{(project / 'app.py').resolve()}\n"


def test_without_live_there_is_no_endpoint(project: Path, serve, tmp_path):
    editors = fake_editors(tmp_path / "bin", "code")
    write(project / "app.py", fasthtml_app("fine"))
    server = serve("app.py", env={"FH_UTILS_EDITOR": str(editors / "code")})
    origin = f"http://127.0.0.1:{server.port}"
    response = server.client.post(f"{LIVE_PATH}/open?file=app.py&line=1",
                                  headers={"origin": origin})
    assert response.status_code in (404, 405)
    assert not (editors / "code.args").exists()


def test_a_plain_link_opens_the_editor_and_the_page_stays(project: Path, serve, new_page,
                                                          tmp_path):
    """As the error page's links do (no script: a GET with `Sec-Fetch-Site: same-origin`)."""
    editors = fake_editors(tmp_path / "bin", "vim")
    write(project / "app.py", fasthtml_app("linked"))
    server = serve("app.py", "--live", "--editor", str(editors / "vim"))
    page = new_page()
    page.goto(server.url)
    page.evaluate("""href => {
        const a = document.createElement("a");
        a.id = "open"; a.href = href; a.textContent = "app.py:3";
        document.body.append(a);
        window.before = true;
    }""", editor_href("app.py", 3))
    page.click("#open")
    args = wait_until(lambda: (editors / "vim.args").exists() and
                      (editors / "vim.args").read_text(), RELOAD_TIMEOUT, "the fake editor")
    assert args == f"+3\n{(project / 'app.py').resolve()}\n"
    assert page.evaluate("window.before") is True  # a 204: the browser stayed on the page
    assert page.url.rstrip("/") == server.url


def test_the_error_page_links_to_the_failing_line_in_the_editor(tmp_path, serve):
    """The page served while the app cannot load names file:line as a link (with --live)."""
    bin_ = fake_editors(tmp_path / "bin", "myeditor")
    write(tmp_path / "app.py", "x = 1\nraise RuntimeError('broken at import')\n")
    server = serve("app.py", "--live", "--editor", str(bin_ / "myeditor"))
    page = server.get().text
    href = editor_href("app.py", 2)
    assert f'<a href="{href.replace("&", "&amp;")}">app.py:2</a>' in page
    opened = server.client.get(href, headers={"Sec-Fetch-Site": "same-origin"})
    assert opened.status_code == 204
    args = bin_ / "myeditor.args"
    wait_until(args.exists, RELOAD_TIMEOUT, "the editor to be run")
    assert args.read_text().split() == [str(tmp_path / "app.py")]


def test_fasthtml_live_without_the_option_is_told_at_start_up(tmp_path, serve):
    write(tmp_path / "app.py", """
        from fasthtml.common import fast_app, P

        app, rt = fast_app(live=True)

        @rt("/")
        def get():
            return P("hello")
    """)
    server = serve("app.py")
    assert "is built with fast_app(live=True)" in server.log
    assert "pass --live" in server.log
