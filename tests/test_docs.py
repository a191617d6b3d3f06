"""The docs: the MkDocs site builds with --strict, docs/cli.md lists exactly the options that
`--help` lists, and every `fh_utils` command line in the docs and the README parses."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import uvicorn

from fh_utils.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FLAG = re.compile(r"--?[A-Za-z0-9][A-Za-z0-9-]*")


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index", "quickstart", "reloading", "pinning", "live", "errors", "caveats",
                 "migrating", "cli", "benchmarks"):
        path = site / ("index.html" if page == "index" else f"{page}/index.html")
        assert path.is_file(), f"{path} was not built"
    assert not (site / "gen_cli.py").exists()


def help_flags(command: str) -> set[str]:
    """The flags `python -m fh_utils COMMAND --help` prints in its option column."""
    result = subprocess.run(
        [sys.executable, "-m", "fh_utils", command, "--help"],
        capture_output=True, text=True, timeout=60, check=True, cwd=ROOT,
    )
    flags: set[str] = set()
    for line in result.stdout.splitlines():
        if re.match(r"  -", line):  # an option line; help text and its continuations follow
            column = re.split(r"\s{2,}", line.strip())[0]
            flags.update(FLAG.findall(column.split(" [")[0]))
    return flags


def documented_flags(command: str) -> set[str]:
    """The flags in the first column of the option table under `## \\`fh_utils COMMAND\\``."""
    text = (DOCS / "cli.md").read_text()
    section = text.split(f"## `fh_utils {command}`", 1)[1].split("\n## ", 1)[0]
    flags: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `-"):
            flags.update(FLAG.findall(line.split("|")[1]))
    return flags


def release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def documented_uvicorn() -> tuple[int, ...]:
    """The uvicorn release docs/cli.md was generated with (its header says)."""
    found = re.search(r"with uvicorn ([0-9][^\s:]*)", (DOCS / "cli.md").read_text())
    assert found, "docs/cli.md does not say which uvicorn it was generated with"
    return release(found[1])


@pytest.mark.parametrize("command", ["dev", "run", "status"])
def test_cli_reference_lists_exactly_the_options_of_help(command):
    in_help = help_flags(command)
    assert {"--help", "-h"} <= in_help and ("--port" in in_help) == (command != "status")
    on_page = documented_flags(command)
    if release(uvicorn.__version__) < documented_uvicorn():
        # The options are copied from the installed uvicorn: an older one (the lowest that
        # pyproject.toml allows) lacks some of the options the page lists.
        on_page &= in_help
    assert in_help == on_page, (
        f"docs/cli.md is out of date for `fh_utils {command}` "
        f"(missing: {sorted(in_help - on_page)}, extra: {sorted(on_page - in_help)}); "
        "run `python docs/gen_cli.py`"
    )


def command_lines() -> list[tuple[str, str]]:
    """(file, command) for each `fh_utils ...` command in bash blocks of the docs and README."""
    found = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for block in re.findall(r"```(?:bash|console)\n(.*?)```", path.read_text(), re.S):
            for line in block.splitlines():
                line = line.removeprefix("$ ")
                for part in line.split("&&"):
                    part = part.split(" #")[0].strip()
                    if re.match(r"(\S*python3? -m )?fh_utils ", part):
                        found.append((path.name, part))
    return found


COMMANDS = command_lines()


def test_the_docs_have_commands_to_check():
    assert len(COMMANDS) > 20


@pytest.mark.parametrize(("page", "line"), COMMANDS, ids=[f"{p}:{c}" for p, c in COMMANDS])
def test_documented_command_parses(page, line):
    """Option names, values and choices as the real parser takes them (nothing is run)."""
    args = shlex.split(line)
    args = args[args.index("fh_utils") + 1:]
    try:
        if args[0].startswith("-"):
            main.make_context("fh_utils", args)
            return
        command = main.commands.get(args[0])
        assert command is not None, f"{page}: no command {args[0]!r} in {line!r}"
        parent = main.make_context("fh_utils", [args[0]], resilient_parsing=True)
        ctx = command.make_context(args[0], args[1:], parent=parent)
    except click.exceptions.Exit as done:  # --help, --version
        assert done.exit_code == 0
        return
    except click.BadParameter as exc:
        if "does not exist" in exc.format_message():  # --env-file .env: the reader's own file
            return
        pytest.fail(f"{page}: {line!r} does not parse: {exc.format_message()}")
    except click.UsageError as exc:
        pytest.fail(f"{page}: {line!r} does not parse: {exc.format_message()}")
    path = ctx.params.get("path") or ""  # (fh_utils status has none)
    if path.startswith("examples/"):
        assert (ROOT / path).is_file(), f"{page}: {path} does not exist"
