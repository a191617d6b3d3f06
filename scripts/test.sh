#!/usr/bin/env bash
# Installs everything the tests need from the project's own files, then runs all of them:
# nox + uv in a venv of their own (.nox/_tools), then noxfile.py's matrix, each session in a
# fresh virtualenv: ruff, mypy and pytest with the newest dependencies on Python 3.11, 3.12 and
# 3.13, and with the lowest ones pyproject.toml allows on 3.11. Nothing installed in the
# machine's own python is used.
#
#   scripts/test.sh                  the whole matrix (what CI runs)
#   scripts/test.sh --quick          the edit-test loop: one Python, its venv kept between runs
#   scripts/test.sh [--quick] ARGS   ARGS go to pytest (e.g. -x -k header)
set -euo pipefail
cd "$(dirname "$0")/.."

sessions=()
if [ "${1:-}" = "--quick" ]; then
    shift
    sessions=(-s quick)
fi

tools=.nox/_tools
if ! "$tools/bin/python" -c 'import nox, uv' 2>/dev/null; then
    rm -rf "$tools"
    python3 -m venv "$tools"
fi
"$tools/bin/python" -m pip install --quiet --disable-pip-version-check 'nox>=2025.5.1' 'uv>=0.5'

# The browser tests drive Debian's Chromium (never a browser download by Playwright).
if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

start=$SECONDS
status=0
"$tools/bin/nox" --no-color "${sessions[@]}" -- "$@" || status=$?
echo "scripts/test.sh: nox took $((SECONDS - start)) s (exit $status)"
exit $status
