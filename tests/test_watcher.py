"""fh_utils.watcher: changes reported in bursts, from new directories too, each in its own burst and
never half-written; close() ends it."""

from __future__ import annotations

import contextlib
import io
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from watchfiles import Change

from fh_utils.watch import watcher as watcher_module
from fh_utils.watch.watcher import Repeats, Watcher, _Doorbell, _Marker
from tests.conftest import wait_until, write

Reports = queue.Queue[set[tuple[Change, str]]]


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Reports, Watcher]]:
    with watching(tmp_path) as started:
        yield started


@contextlib.contextmanager
def watching(tmp_path: Path) -> Iterator[tuple[Reports, Watcher]]:
    reports: Reports = queue.Queue()
    stop = threading.Event()
    watcher = Watcher([tmp_path], keep=lambda change, path: not path.endswith(".log"),
                      ignore=lambda path: path.name == "node_modules", report=reports.put,
                      stop=stop, reads=lambda path: path.endswith(".json"))  # the app's data
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
    created = _Doorbell.create([root], lambda path: path.name == "node_modules",
                               lambda path: path.endswith(".py"))
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


class LaggingNotify:
    """watchfiles' thread behind the doorbell, as under load: the first look finds only what it
    had read by then (a stale change the doorbell does not watch, and the burst's first
    marker), the next look the rest."""

    def __init__(self, looks: list[set[tuple[int, str]]]) -> None:
        self.looks = looks

    def watch(self, debounce_ms: int, step_ms: int, timeout_ms: int, stop: object
              ) -> set[tuple[int, str]] | str:
        return self.looks.pop(0) if self.looks else "timeout"


def test_changes_are_collected_until_watchfiles_has_caught_up(tmp_path):
    # watchfiles' thread cannot be made to lag on purpose: this one look at the collection
    # step stands in for it (the stress test below runs the real thing).
    watcher = Watcher([tmp_path], keep=lambda change, path: True, ignore=lambda path: False,
                      report=lambda changes: None, stop=threading.Event())
    marker = _Marker.create()
    assert marker is not None
    try:
        stale = (int(Change.modified), str(tmp_path / "__pycache__" / "app.cpython-311.pyc"))
        saved = (int(Change.modified), str(tmp_path / "app.py"))
        marker.make()  # as each time the doorbell is read
        first = (int(Change.added), marker.last)
        marker.make()
        notify = LaggingNotify([{stale, first}, {saved, (int(Change.added), marker.last)}])
        assert watcher._collect(notify, marker) == {stale, saved}  # type: ignore[arg-type]
        assert not os.listdir(marker.dir)  # the markers are removed
    finally:
        marker.remove()
        watcher.close()
    assert not Path(marker.dir).exists()


@linux_only
def test_every_save_is_reported_in_its_own_burst_under_load(tmp_path, watched):
    # Files the doorbell ignores but watchfiles sees (node_modules here, __pycache__ in a
    # project) churn before each save, and two busy processes load the machine: a save must
    # never be reported late (with a later save) or not at all.
    reports, _ = watched
    churn = tmp_path / "node_modules"
    churn.mkdir()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for i in range(300):
            for j in range(10):
                (churn / f"m{j}.js").write_text(f"// {i}\n")
            saved = tmp_path / f"f{i}.py"
            saved.write_text(f"x = {i}\n")
            got = set()
            while str(saved) not in got:
                report = {path for _, path in reports.get(timeout=5)}
                assert not {p for p in report if p.endswith(".py")} - {str(saved)}, (
                    f"save {i}: reported with {sorted(report)}")
                got |= report
    finally:
        for process in busy:
            process.kill()
            process.wait()


@linux_only  # the hold needs the doorbell's IN_CLOSE_WRITE
def test_a_source_file_open_for_writing_is_reported_once_its_writer_closes_it(tmp_path,
                                                                              watched):
    reports, _ = watched
    target = tmp_path / "app.py"
    with open(target, "w") as file:
        file.write("first = 'half'\n")
        file.flush()  # truncated, then half written: a reload now would run the half
        with pytest.raises(queue.Empty):
            reports.get(timeout=0.5)
        file.write("second = 'half'\n")
    assert paths(reports, {target}) == {str(target)}


class Lagging:
    """watchfiles' notifier, handing nothing over until `until` (its thread lagging)."""

    def __init__(self, notify: Any) -> None:
        self.notify = notify
        self.until = 0.0

    def watch(self, *args: Any) -> Any:
        return "timeout" if time.monotonic() < self.until else self.notify.watch(*args)

    def __enter__(self) -> Lagging:
        self.notify.__enter__()
        return self

    def __exit__(self, *args: object) -> None:
        self.notify.__exit__(*args)


@pytest.fixture
def notifiers(monkeypatch: pytest.MonkeyPatch) -> list[Lagging]:
    """The watchers started from now on get a `Lagging` notifier: each is listed here."""
    made: list[Lagging] = []
    real = watcher_module.notifier

    def lagging(*args: Any, **kwargs: Any) -> Lagging:
        made.append(Lagging(real(*args, **kwargs)))
        return made[-1]

    monkeypatch.setattr(watcher_module, "notifier", lagging)
    return made


@linux_only  # without the doorbell, watchfiles' loop takes whatever comes, whenever
def test_a_save_watchfiles_hands_over_late_is_reported_with_nothing_else_changing(
        tmp_path, monkeypatch, notifiers):
    # Under load, watchfiles' thread may read a save later than the watcher's patience: the
    # save must not wait for some other change to ring the doorbell again.
    monkeypatch.setattr(watcher_module, "LATE_TIMEOUT_MS", 50)
    with watching(tmp_path) as (reports, watcher):
        notifiers[0].until = time.monotonic() + 0.5  # ten times the patience
        target = write(tmp_path / "app.py", "x = 1\n")
        # (`status --wait` asking meanwhile hears back once the save was reported)
        assert flushed(reports, watcher) == {str(target)}


@linux_only
def test_a_watcher_whose_marker_never_shows_up_says_so_and_goes_on(tmp_path, monkeypatch,
                                                                   caplog, notifiers):
    monkeypatch.setattr(watcher_module, "LATE_TIMEOUT_MS", 20)
    monkeypatch.setattr(watcher_module, "LATE_GIVE_UP_MS", 200)
    with watching(tmp_path) as (reports, _):
        notifiers[0].until = float("inf")
        write(tmp_path / "app.py", "x = 1\n")
        wait_until(lambda: "has not seen its own marker" in caplog.text, 10,
                   "the watcher giving up on its marker")
        notifiers[0].until = 0.0
        target = write(tmp_path / "other.py", "y = 2\n")  # rings: everything comes now
        assert paths(reports, {target, tmp_path / "app.py"}) == {str(target),
                                                                 str(tmp_path / "app.py")}


@linux_only  # the hold needs the doorbell's IN_CLOSE_WRITE
def test_a_file_the_app_reads_is_held_for_its_writer_and_other_files_are_not(tmp_path,
                                                                             watched):
    # A model's weights or a JSON file a module loads, half-written, would be loaded half.
    reports, _ = watched
    data, notes = tmp_path / "data.json", tmp_path / "notes.txt"
    with open(data, "w") as file:
        file.write('{"first": ')
        file.flush()
        with pytest.raises(queue.Empty):
            reports.get(timeout=0.5)
        file.write('"half"}')
    assert paths(reports, {data}) == {str(data)}
    with open(notes, "w") as file:  # read by nothing: its writer holds nothing
        file.write("first half")
        file.flush()
        assert paths(reports, {notes}) == {str(notes)}  # while still open


@linux_only  # the hold needs the doorbell's IN_CLOSE_WRITE
def test_a_source_file_open_for_writing_is_held_past_the_debounce_cap(tmp_path, watched,
                                                                     monkeypatch):
    # Another file written all the time (the server's own log, in the project folder) keeps the
    # burst going until its cap: a half-written source file must still wait for its writer.
    reports, _ = watched
    monkeypatch.setattr(watcher_module, "DEBOUNCE_MS", 100)
    target = tmp_path / "app.py"
    log = tmp_path / "server.log"
    with open(target, "w") as file, open(log, "a") as busy:
        file.write("first = 'half'\n")
        file.flush()
        window = time.monotonic() + 0.6
        while time.monotonic() < window:
            busy.write("GET / 200\n")
            busy.flush()
            time.sleep(0.002)  # pacing the writer, as requests do (not waiting on anything)
            try:
                report = reports.get_nowait()
            except queue.Empty:
                continue
            assert str(target) not in {path for _, path in report}, "reported half-written"
        file.write("second = 'half'\n")
    assert paths(reports, {target}) == {str(target)}


@linux_only  # the hold needs the doorbell's IN_CLOSE_WRITE
def test_a_source_file_truncated_while_a_burst_is_collected_waits_for_its_writer(
        tmp_path, watched, monkeypatch):
    # A burst of other changes (the server's log line for the last request) has just gone quiet
    # when an editor truncates app.py: what watchfiles hands over may already hold app.py.
    reports, _ = watched
    target = tmp_path / "app.py"
    collect = Watcher._collect
    writer: list[io.TextIOWrapper] = []

    def collect_as_the_editor_saves(self, *args):
        changes = collect(self, *args)
        if writer or changes is None:
            return changes
        writer.append(open(target, "w"))  # noqa: SIM115 (closed below)
        writer[0].write("first = 'half'\n")
        writer[0].flush()
        return changes | {(int(Change.modified), str(target))}  # (as watchfiles would have)

    monkeypatch.setattr(Watcher, "_collect", collect_as_the_editor_saves)
    (tmp_path / "server.log").write_text("GET / 200\n")
    try:
        with pytest.raises(queue.Empty):  # (the log alone is filtered out: no report)
            while str(target) not in {path for _, path in reports.get(timeout=0.5)}:
                pass
        assert writer, "no burst was collected"
        writer[0].write("second = 'half'\n")
    finally:
        for file in writer:
            file.close()
    assert paths(reports, {target}) == {str(target)}


@linux_only  # the hold needs the doorbell's IN_CLOSE_WRITE
def test_a_writer_that_keeps_the_file_open_delays_the_report_only_so_long(tmp_path, watched,
                                                                        monkeypatch):
    reports, _ = watched
    monkeypatch.setattr(watcher_module, "WRITE_WAIT_MS", 200)
    target = tmp_path / "app.py"
    with open(target, "w") as file:
        file.write("x = 1\n")
        file.flush()
        assert paths(reports, {target}) == {str(target)}  # while still open


def test_without_a_temporary_directory_the_watcher_runs_watchfiles_loop(tmp_path, monkeypatch):
    # No private directory for the markers (a read-only /tmp, which root here cannot make):
    # no doorbell, but saves are seen.
    def read_only(*args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    reports: Reports = queue.Queue()
    stop = threading.Event()
    watcher = Watcher([tmp_path], keep=lambda change, path: True, ignore=lambda path: False,
                      report=reports.put, stop=stop)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        assert watcher.ready.wait(10)
        (tmp_path / "app.py").write_text("x = 1\n")
        assert str(tmp_path / "app.py") in paths(reports, {tmp_path / "app.py"})
        (tmp_path / "app.py").write_text("x = 2\n")
        assert str(tmp_path / "app.py") in flushed(reports, watcher)
    finally:
        watcher.close()
        thread.join(5)
    assert not thread.is_alive()


@pytest.fixture
def many_open_files() -> Iterator[None]:
    """More than 1024 descriptors open, so the doorbell's is numbered above select()'s limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(wanted - 64)]
    try:
        yield
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.skipif(sys.platform != "linux", reason="the doorbell is Linux's inotify")
def test_a_doorbell_numbered_above_1024_still_rings(tmp_path, many_open_files, watched):
    """select() raises ValueError for a descriptor of 1024 or more; the watcher must not
    (`many_open_files` is set up before `watched` starts the watcher)."""
    reports, _ = watched
    probe = os.open(os.devnull, os.O_RDONLY)  # the next free number, at least
    os.close(probe)
    assert probe >= 1024
    saved = tmp_path / "mod.py"
    saved.write_text("x = 1\n")
    assert str(saved) in paths(reports, {saved})


def flushed(reports: Reports, watcher: Watcher, timeout: float = 10) -> set[str]:
    """flush(), then every path reported before it answered."""
    done = threading.Event()
    watcher.flush(lambda: (reports.put({(Change.added, "<flushed>")}), done.set()))
    seen: set[str] = set()
    while "<flushed>" not in seen:
        seen |= {path for _, path in reports.get(timeout=timeout)}
    assert done.is_set()
    return seen - {"<flushed>"}


def test_a_flush_answers_after_the_report_of_a_save_made_just_before_it(tmp_path, watched):
    # `fh_utils status --wait`: a save made a moment before the call is waited for, whatever
    # the debounce is doing; each flush is answered once that save was reported.
    reports, watcher = watched
    for i in range(200):
        saved = tmp_path / f"f{i % 5}.py"
        saved.write_text(f"x = {i}\n")
        assert str(saved) in flushed(reports, watcher), f"save {i} reported after the flush"


def test_a_flush_with_nothing_changed_answers_at_once_and_after_close(tmp_path, watched):
    reports, watcher = watched
    assert flushed(reports, watcher, timeout=2) == set()
    watcher.close()
    answered = threading.Event()
    watcher.flush(answered.set)  # the thread may be ending: answered now or as it ends
    assert answered.wait(5)


def test_a_repeat_is_the_same_file_with_the_same_bytes(tmp_path):
    repeats = Repeats()
    path = write(tmp_path / "weights.txt", "w1\n")
    assert not repeats.seen(path)
    assert repeats.seen(path)
    times = path.stat()
    write(path, "w2\n")  # the same size, at the same time: two saves within one clock tick
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert not repeats.seen(path)
    path.unlink()
    assert not repeats.seen(path)
    assert repeats.seen(path)
