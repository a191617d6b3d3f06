"""The command line: parsing, user mistakes, and what it must not import."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from fh_utils.cli import main
from fh_utils.target import TargetError, resolve_target
from tests.conftest import write


def test_plain_import_and_help_do_not_import_ipython():
    code = (
        "import sys, fh_utils, fh_utils.cache, fh_utils.cli;"
        "from click.testing import CliRunner;"
        "CliRunner().invoke(fh_utils.cli.main, ['dev', '--help']);"
        "print('IPython' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_file_inside_packages_resolves_to_dotted_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "src" / "shop" / "__init__.py", "")
    write(tmp_path / "src" / "shop" / "web" / "__init__.py", "")
    write(tmp_path / "src" / "shop" / "web" / "app.py", "app = None\n")
    target = resolve_target("src/shop/web/app.py", "api")
    assert target.module == "shop.web.app"
    assert target.attr == "api"
    assert target.app_dir == (tmp_path / "src").resolve()
    assert resolve_target("shop.web.app:application").attr == "application"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.py", "missing.py does not exist"),
        ("notes.txt", "notes.txt is not a Python file"),
        ("pkg.mod:", "the attribute is missing"),
        ("pkg.mod:1x", "'1x' is not a valid attribute name"),
        ("not a module", "is neither a Python file nor an import string"),
    ],
)
def test_user_mistakes_get_one_clear_line(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TargetError, match=message):
        resolve_target(spec)
    result = CliRunner().invoke(main, ["dev", spec])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_dev_help_lists_options():
    result = CliRunner().invoke(main, ["dev", "--help"])
    assert result.exit_code == 0
    for option in ("--app", "--factory", "--host", "--port", "--log-level", "--reload-include",
                   "--reload-exclude"):
        assert option in result.output
    assert "5001" in result.output


def test_startup_log_names_watched_directories(tmp_path, serve):
    write(tmp_path / "app.py", "async def app(scope, receive, send):\n    pass\n")
    server = serve("app.py")
    assert f"Will watch for changes in these directories: ['{tmp_path}']" in server.log
    assert "Loaded app:app in" in server.log
