"""fh_utils.watcher: changes reported in bursts, from new directories too; close() ends it."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchfiles import Change

from fh_utils.watcher import Watcher, _Doorbell

Reports = queue.Queue[set[tuple[Change, str]]]


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Reports, Watcher]]:
    reports: Reports = queue.Queue()
    stop = threading.Event()
    watcher = Watcher([tmp_path], keep=lambda change, path: not path.endswith(".log"),
                      ignore=lambda path: path.name == "node_modules", report=reports.put,
                      stop=stop)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    assert watcher.ready.wait(10)
    try:
        yield reports, watcher
    finally:
        watcher.close()
        thread.join(5)
    assert not thread.is_alive(), "close() did not end the watcher"


def paths(reports: Reports, want: set[Path], timeout: float = 10) -> set[str]:
    """Every path reported until all of `want` were, or fail after `timeout` seconds."""
    seen: set[str] = set()
    while not {str(p) for p in want} <= seen:
        seen |= {path for _, path in reports.get(timeout=timeout)}
    return seen


def test_a_burst_is_one_report_and_new_directories_are_watched(tmp_path, watched):
    reports, _ = watched
    (tmp_path / "log.log").write_text("ignored by the filter\n")
    files = [tmp_path / f"f{i}.py" for i in range(5)]
    for path in files:
        path.write_text("x = 1\n")
    seen = paths(reports, set(files))
    assert str(tmp_path / "log.log") not in seen
    late = tmp_path / "late" / "deeper"
    late.mkdir(parents=True)  # created after the watcher started: watched from now on
    (late / "mod.py").write_text("y = 2\n")
    paths(reports, {late / "mod.py"})


# The doorbell is inotify (Linux); elsewhere the watcher runs watchfiles' own loop, which the
# tests above cover.
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")


def doorbell(root: Path, monkeypatch: pytest.MonkeyPatch) -> _Doorbell:
    monkeypatch.delenv("WATCHFILES_FORCE_POLLING", raising=False)  # which turns it off
    created = _Doorbell.create([root], lambda path: path.name == "node_modules")
    assert created is not None
    return created


@linux_only
def test_the_doorbell_watches_directories_but_ignored_ones(tmp_path, monkeypatch):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "node_modules" / "lib").mkdir(parents=True)
    with doorbell(tmp_path, monkeypatch) as bell:
        watched_dirs = set(bell._dirs.values())
    assert watched_dirs == {tmp_path, tmp_path / "src", tmp_path / "src" / "pkg"}


@linux_only
def test_files_made_in_a_new_directory_before_it_was_watched_are_found(tmp_path, monkeypatch):
    with doorbell(tmp_path, monkeypatch) as bell:
        late = tmp_path / "late" / "deeper"
        late.mkdir(parents=True)  # all of it before the doorbell reads the first event
        (late / "mod.py").write_text("y = 2\n")
        (tmp_path / "late" / "node_modules").mkdir()
        (tmp_path / "late" / "node_modules" / "x.js").write_text("//\n")
        bell.drain()
        assert bell.take_found() == {str(late / "mod.py")}
        assert bell.take_found() == set()
        assert late in set(bell._dirs.values())
