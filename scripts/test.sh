#!/usr/bin/env bash
# Installs everything the test suite needs from the project's own files, then runs all of it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
python3 -m ruff check fh_utils tests
python3 -m pytest "$@"
