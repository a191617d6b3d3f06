"""The release matrix: ruff, mypy and pytest in fresh virtualenvs that uv fills from this
repository's own files (`.[test]`), nothing else.

    nox                    the whole matrix, one session after another (scripts/test.sh)
    nox -s newest-3.13     one configuration
    nox -s quick           the edit-test loop: Python 3.11, newest deps, its venv kept
    nox -- -k header -x    arguments after `--` go to pytest

newest-3.11, newest-3.12, newest-3.13: the newest releases pyproject.toml allows.
lowest-3.11: the lowest release of each dependency pyproject.toml names (uv's
`--resolution lowest-direct`), so the lower bounds there are tested, not guessed.

Interpreters are found by absolute path under pyenv's root (pyenv's shims answer only for its
global version), else as `pythonX.Y` on PATH; none is ever downloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import nox

os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")
nox.options.default_venv_backend = "uv"
nox.options.error_on_missing_interpreters = True  # a missing Python fails, never skips
if hasattr(nox.options, "download_python"):
    nox.options.download_python = "never"

NEWEST = ("3.11", "3.12", "3.13")
LOWEST = "3.11"  # requires-python's lower bound
nox.options.sessions = [*(f"newest-{v}" for v in NEWEST), f"lowest-{LOWEST}"]

# Printed by every session, so a log says what was tested.
REPORTED = ("ipython", "uvicorn", "watchfiles", "python-fasthtml", "starlette", "click",
            "pytest", "ruff", "mypy")


def _pyenv_root() -> Path | None:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    if shutil.which("pyenv"):
        out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    return None


def interpreter(version: str) -> str:
    """The newest pyenv CPython `version` (X.Y) by absolute path, else `pythonX.Y` on PATH."""
    root = _pyenv_root()
    if root is not None:
        found = []
        for exe in (root / "versions").glob(f"{version}.*/bin/python{version}"):
            match = re.fullmatch(rf"{re.escape(version)}\.(\d+)", exe.parent.parent.name)
            if match and os.access(exe, os.X_OK):  # plain releases: not 3.13.0t, 3.13-dev
                found.append((int(match[1]), str(exe)))
        if found:
            return max(found)[1]
    return shutil.which(f"python{version}") or version


def _step(session: nox.Session, what: str, *args: str, **kwargs: object) -> None:
    start = time.monotonic()
    session.run(*args, **kwargs)  # type: ignore[arg-type]
    session.log(f"[time] {session.name}: {what} took {time.monotonic() - start:.1f} s")


def _check(session: nox.Session, *resolution: str) -> None:
    start = time.monotonic()
    for tool in ("MYPY", "RUFF"):  # caches in the venv: a fresh venv checks from scratch
        session.env[f"{tool}_CACHE_DIR"] = os.path.join(
            session.virtualenv.location, f".{tool.lower()}_cache")
    # Bytecode compiled at install, as pip does: uv leaves none by default, and servers that
    # write none (the benchmarks' do not) then compile every import from source at each start.
    _step(session, "install", "uv", "pip", "install", "--compile-bytecode", *resolution,
          "-e", ".[test]")
    session.run("python", "-VV")
    session.run("uv", "pip", "list", "--format", "freeze")
    session.run("python", "-c", "from importlib.metadata import version\n"
                f"for name in {REPORTED!r}: print(f'[version] {{name}}=={{version(name)}}')")
    _step(session, "ruff", "ruff", "check", "fh_utils", "tests", "noxfile.py")
    _step(session, "mypy", "mypy")  # strict, on fh_utils/ (pyproject.toml)
    _step(session, "pytest", "pytest", *session.posargs)
    session.log(f"[time] {session.name}: session took {time.monotonic() - start:.1f} s")


def _newest(session: nox.Session) -> None:
    _check(session)


def _lowest(session: nox.Session) -> None:
    _check(session, "--resolution", "lowest-direct")


for _version in NEWEST:
    nox.session(name=f"newest-{_version}", python=interpreter(_version))(_newest)
nox.session(name=f"lowest-{LOWEST}", python=interpreter(LOWEST))(_lowest)


@nox.session(python=interpreter(NEWEST[0]), reuse_venv=True)
def quick(session: nox.Session) -> None:
    """One Python, the venv kept between runs: an install that is already there is a no-op."""
    _check(session)
