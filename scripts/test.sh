#!/usr/bin/env bash
# Installs everything the test suite needs from the project's own files, then runs all of it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# The browser tests drive Debian's Chromium (never a browser download by Playwright).
if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
python3 -m ruff check fh_utils tests
python3 -m mypy  # strict, on fh_utils/ (pyproject.toml)
python3 -m pytest "$@"
