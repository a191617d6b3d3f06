"""The file watcher: reports saves within a few milliseconds, and costs nothing while idle.

watchfiles' `RustNotify` collects changes in a thread of its own (inotify, FSEvents, ...), but
its `watch()` wakes every `step` milliseconds to look at them, taking the GIL each time: with
the 3 ms step a save needs to be live quickly, that is about 330 wake-ups a second while
nothing happens. Here, on Linux, the watcher thread sleeps in `poll()` on an inotify
descriptor of its own (the doorbell) until something under the watched directories changes,
then until nothing more happened for 1 ms and no source file is still open for writing,
and only then takes from `RustNotify` what it saw, up to a marker event of its own (so that
nothing of the burst is left behind when watchfiles' thread lags). Elsewhere, or when inotify
cannot be used (its watch limit), it falls back to watchfiles' loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import select
import shutil
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from watchfiles import Change

from fh_utils.adapters import IncompatibleVersion
from fh_utils.adapters.watchfiles import Notifier, notifier
from fh_utils.timing import (
    COLLECT_TIMEOUT_MS,
    DEBOUNCE_MS,
    LATE_GIVE_UP_MS,
    LATE_TIMEOUT_MS,
    WRITE_WAIT_MS,
)

__all__ = ["Watcher"]

logger = logging.getLogger("fh_utils")

Changes = set[tuple[Change, str]]

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)
_IN_MASK = (0x2 | 0x4 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800  # what watchfiles reports
            | 0x01000000 | 0x02000000)  # IN_ONLYDIR | IN_DONT_FOLLOW
_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_FROM, _IN_DELETE = 0x2, 0x8, 0x40, 0x200
_IN_CREATE, _IN_MOVED_TO, _IN_ISDIR, _IN_Q_OVERFLOW = 0x100, 0x80, 0x40000000, 0x4000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then the name)


class Watcher:
    """Watch `dirs` recursively; `report(changes)` is called in the watcher's thread.

    `ignore(path)` tells directories not to ring the doorbell for (virtual environments, .git,
    caches); `keep(change, path)` is watchfiles' filter. `stop` ends it. A burst is over once
    the doorbell stayed quiet for `quiet_ms`; without a doorbell, watchfiles' loop looks every
    `step_ms` (and that is its quiet window too). `reads(path)` tells the files besides `.py`
    sources that a reload reads (a template, a model's weights): like a source, one open for
    writing holds its burst (see `_burst`). It is asked in the watcher's thread.
    """

    def __init__(self, dirs: Iterable[Path], keep: Callable[[Change, str], bool],
                 ignore: Callable[[Path], bool], report: Callable[[Changes], None],
                 stop: threading.Event, step_ms: int = 3, quiet_ms: int | None = None,
                 reads: Callable[[str], bool] = lambda path: False) -> None:
        self.dirs = [Path(d) for d in dirs]
        self.keep = keep
        self.ignore = ignore
        self.report = report
        self.stop = stop
        self.step_ms = step_ms
        self.quiet_ms = step_ms if quiet_ms is None else quiet_ms
        self.reads = reads
        self.ready = threading.Event()  # set once changes are being seen
        self._repeats = Repeats()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):  # a full pipe rings already: never block
            os.set_blocking(fd, False)
        self._lock = threading.Lock()
        self._flushes: list[Callable[[], None]] = []  # asked for, not yet covered by a read
        self._covered: list[Callable[[], None]] = []  # covered: answered after this burst
        self._ended = False
        self._behind_since: float | None = None  # watchfiles lagging: see `_loop`

    def flush(self, done: Callable[[], None]) -> None:
        """Call `done` (in the watcher's thread) once every change made before this call has
        been reported, or filtered out: `fh_utils status --wait` knows of a save made a moment
        before it asked, which the debounce still holds.

        The kernel queues a change's inotify event before the write that made it returns, so
        an event made before this call is in the doorbell's queue, or was read already: this
        waits for the burst that reads it to be reported. Without the doorbell, it waits for
        one full round of watchfiles' loop (half a second when nothing changes).
        """
        with self._lock:
            if not self._ended:
                self._flushes.append(done)
                done = _nothing
                self._ring(b"f")
        done()

    def close(self) -> None:
        """Set `stop` and wake the thread now."""
        self.stop.set()
        with self._lock:
            if not self._ended:
                self._ring(b"x")

    def _ring(self, byte: bytes) -> None:
        """Wake the thread (under the lock: once it ended, the pipe's numbers may be reused)."""
        try:
            os.write(self._wake_w, byte)
        except OSError:  # full: it rings already
            pass

    def run(self) -> None:
        """The thread's body: until `stop`, whatever goes wrong (logged, then started over)."""
        try:
            while not self.stop.is_set():
                marker = _Marker.create() if _doorbell_possible() else None
                try:
                    # watchfiles first: whatever rings the doorbell, it has seen too
                    paths = [str(d) for d in self.dirs] + ([marker.dir] if marker else [])
                    with notifier(paths, force_polling=_polling_forced(),
                                  poll_delay_ms=_poll_delay_ms()) as notify:
                        doorbell = _Doorbell.create(self.dirs, self.ignore, self._read)
                        self.ready.set()
                        if doorbell is None or marker is None:
                            self._loop_without_doorbell(notify)
                        else:
                            with doorbell:
                                self._loop(doorbell, notify, marker)
                except IncompatibleVersion as exc:
                    logger.error("Not watching for changes: %s", exc)
                    self.ready.set()
                    return
                except Exception:
                    if self.stop.is_set():
                        return
                    logger.exception("The file watcher failed; restarting it")
                    self.stop.wait(0.5)
                finally:
                    if marker is not None:
                        marker.remove()
        finally:
            with self._lock:
                self._ended = True
                flushes, self._flushes = self._flushes + self._covered, []
                for fd in (self._wake_r, self._wake_w):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._answer(flushes)

    def _read(self, path: str) -> bool:
        """Whether a reload reads the file: a source, or one of `reads`."""
        return path.endswith(".py") or self.reads(path)

    def _take_flushes(self) -> list[Callable[[], None]]:
        with self._lock:
            flushes, self._flushes = self._flushes, []
        return flushes

    def _answer(self, flushes: list[Callable[[], None]]) -> None:
        for done in flushes:
            try:
                done()
            except Exception:
                logger.exception("A flush of the file watcher failed")

    def _loop(self, doorbell: _Doorbell, notify: Notifier, marker: _Marker) -> None:
        held: set[tuple[int, str]] = set()
        ringing = False
        while not self.stop.is_set():
            # watchfiles lagged past `LATE_TIMEOUT_MS`: what it has not handed over yet may be
            # a save that nothing rings for again. Look at once, until it caught up (or, if its
            # marker never shows up, `LATE_GIVE_UP_MS` later, until the next change rings).
            ringing = ringing or self._behind_since is not None
            if not self._burst(doorbell, marker, ringing):
                return
            # Nothing more for `quiet_ms`: the burst (an editor's atomic save) is over. Take
            # what watchfiles saw up to now, and nothing of it later: see `_collect`.
            changes = self._collect(notify, marker)
            if changes is None:
                return
            found = {(int(Change.added), path) for path in doorbell.take_found()}
            covered, self._covered = self._covered, []
            # What watchfiles saw may go past the quiet moment: a file a reload reads that a
            # writer has just truncated is held back, and reported with the burst that sees it
            # closed.
            ringing = _readable(doorbell.fd)
            if ringing:
                self._covered += self._take_flushes()  # (before the read: it covers them)
                doorbell.drain()
                marker.make()
            changes |= held
            held = {(change, path) for change, path in changes if path in doorbell.writing}
            changes -= held
            try:
                if changes or found:
                    self._report(changes | found)
            finally:
                if self._behind_since is None:
                    self._answer(covered)  # after the report: the session hears of it first
                else:  # what watchfiles has yet to hand over may be a save made before them
                    self._covered = covered + self._covered

    def _collect(self, notify: Notifier, marker: _Marker) -> set[tuple[int, str]] | None:
        """The changes watchfiles' thread has seen up to the burst's last marker; None when
        stopped.

        Its thread reads the same kernel events as the doorbell, but on its own schedule: under
        load it may not have read the last ones yet, and what it had already would be taken
        without them, leaving them behind until some later change (a save seen seconds late, or
        reported twice). So each time the doorbell is read, a marker is made in a directory
        only watchfiles watches, and changes are taken until the last one shows up: the events
        come in order, so whatever rang before it is in by then (usually at once: it was made
        `quiet_ms` ago). Collecting starts without sleeping between looks; when watchfiles lags,
        it steps, for `LATE_TIMEOUT_MS` at most, and what came is reported: the loop then looks
        again at once (`_behind_since`).
        """
        collected: set[tuple[int, str]] = set()
        started = time.monotonic()
        while True:
            late = time.monotonic() - started
            step = 0 if late < COLLECT_TIMEOUT_MS / 1000 else self.step_ms
            changes = notify.watch(DEBOUNCE_MS, step, COLLECT_TIMEOUT_MS, self.stop)
            if changes == "stop":
                return None
            if isinstance(changes, set):
                collected |= changes
                if any(path == marker.last for _, path in changes):
                    self._behind_since = None
                    break
            if late > LATE_TIMEOUT_MS / 1000:
                now = time.monotonic()
                self._behind_since = self._behind_since or started
                if now - self._behind_since > LATE_GIVE_UP_MS / 1000:
                    logger.warning("The file watcher has not seen its own marker for %.0f s: "
                                   "changes may be reported late", now - self._behind_since)
                    self._behind_since = None
                else:
                    logger.debug("The file watcher did not see its marker within %d ms",
                                 LATE_TIMEOUT_MS)
                break
        marker.clear()
        return {(change, path) for change, path in collected if not marker.owns(path)}

    def _burst(self, doorbell: _Doorbell, marker: _Marker, ringing: bool = False) -> bool:
        """Sleep until the doorbell rings (`ringing`: it has, and was read), then until it stays
        quiet for `quiet_ms` (at most `DEBOUNCE_MS`). False when stopped.

        A file written in place (truncated, then written) may be quiet for a moment
        half-written, when its writer is slow or the machine loaded: while a file a reload
        reads (a `.py` source, or one of `reads`: a model's weights) is open for writing, the
        burst goes on until its writer closes it (`WRITE_WAIT_MS` at most, counted from the
        quiet moment or from the `DEBOUNCE_MS` cap), so that no reload reads the half. Other
        files (a log the app keeps open) hold nothing.
        """
        deadline = write_deadline = None
        timeout: float | None = None
        if ringing:
            deadline, timeout = time.monotonic() + DEBOUNCE_MS / 1000, self.quiet_ms / 1000
        # poll(), not select(): select() fails on a descriptor numbered 1024 or more, which an
        # app with many open files (a database pool, a model's shards) reaches.
        poller = select.poll()
        poller.register(doorbell.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            events = poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.5)))
            ready = {fd for fd, _ in events}
            if self.stop.is_set():
                return False
            if self._wake_r in ready:  # flush() asked
                _empty(self._wake_r)
                ready.discard(self._wake_r)
                if not ready and not _readable(doorbell.fd):
                    # Every change made before those flushes was read: by a burst already
                    # reported (none going on), or by this one (answered after its report).
                    flushes = self._take_flushes()
                    if deadline is None:
                        self._answer(flushes)
                    else:
                        self._covered += flushes
                    continue
                ready.add(doorbell.fd)
            now = time.monotonic()
            if not ready:  # quiet for `timeout`
                if doorbell.writing:
                    write_deadline = write_deadline or now + WRITE_WAIT_MS / 1000
                    if now < write_deadline:
                        timeout = write_deadline - now
                        continue
                    logger.debug("Still open for writing: %s", ", ".join(doorbell.writing))
                doorbell.writing.clear()
                return True
            self._covered += self._take_flushes()  # (before the read: it covers them)
            doorbell.drain()
            marker.make()  # after what was read: see `_collect`
            deadline = deadline or now + DEBOUNCE_MS / 1000
            if now > deadline:
                # Changes that never stop (a log in the project) end the burst here, but a
                # file a reload reads still open for writing is held for its writer all the same.
                if doorbell.writing:
                    write_deadline = write_deadline or now + WRITE_WAIT_MS / 1000
                    if now < write_deadline:
                        timeout = self.quiet_ms / 1000
                        continue
                    logger.debug("Still open for writing: %s", ", ".join(doorbell.writing))
                doorbell.writing.clear()
                return True
            timeout = self.quiet_ms / 1000

    def _loop_without_doorbell(self, notify: Notifier) -> None:
        """watchfiles' own loop: it wakes every `step_ms` (and every 0.5 s to see `stop`)."""
        while not self.stop.is_set():
            flushes = self._take_flushes()
            try:
                changes = notify.watch(DEBOUNCE_MS, self.step_ms, 500, self.stop)
                if isinstance(changes, set):
                    self._report(changes)
            finally:
                self._answer(flushes)

    def _report(self, raw: Iterable[tuple[int, str]]) -> None:
        changes = {(Change(int(c)), p) for c, p in raw}
        kept = {(c, p) for c, p in changes if self.keep(c, p)}
        paths = {p for _, p in kept}
        new = {p for p in paths if not self._repeats.seen(Path(p))}
        if new != paths and logger.isEnabledFor(logging.DEBUG):
            logger.debug("Reported again, unchanged: %s", ", ".join(sorted(paths - new)))
        kept = {(c, p) for c, p in kept if p in new}
        if kept:
            if logger.isEnabledFor(logging.DEBUG):  # (a log the app writes: each request)
                logger.debug("Changed: %s", ", ".join(sorted(new)))
            self.report(kept)


class Repeats:
    """Changes reported again for what was reported already: not a save.

    watchfiles may hand one write's events over in two bursts (the truncation, then the
    bytes). Reported twice, the same save would run its modules or compute a pinned value
    twice, and count as a newer save that gives up a new worker starting for the first.
    Only the same file with the same size, time and (up to `DIGEST_SIZE`) bytes is a
    repeat: two real saves within one tick of the kernel's coarse clock still differ in
    their bytes.
    """

    DIGEST_SIZE = 1 << 20

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[tuple[int, int, int], bytes | None]] = {}

    def seen(self, path: Path) -> bool:
        """Whether `path` is as it was the last time it was asked about (and note it as now)."""
        try:
            st = path.stat()
            state = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            state = (0, 0, 0)
        digest = None
        if 0 < state[1] <= self.DIGEST_SIZE:
            try:
                digest = hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
            except OSError:  # gone meanwhile, or a directory
                pass
        before, self._seen[path] = self._seen.get(path), (state, digest)
        return before == (state, digest)


class _Marker:
    """Files made in a private directory that only watchfiles watches: each puts an event of
    ours in its queue, after every event that came before."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.last = ""  # the newest marker's path
        self._prefix = directory + os.sep
        self._count = 0

    @classmethod
    def create(cls) -> _Marker | None:
        """None where no private directory can be made (then there is no doorbell either)."""
        try:
            return cls(tempfile.mkdtemp(prefix="fh_utils-watch-"))
        except OSError as exc:
            logger.debug("Watching with watchfiles' own loop: %s", exc)
            return None

    def make(self) -> None:
        self._count += 1
        self.last = os.path.join(self.dir, str(self._count))
        os.close(os.open(self.last, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _IN_CLOEXEC, 0o600))

    def clear(self) -> None:
        """Remove the markers made so far (their removal is reported, and ignored, later)."""
        with os.scandir(self.dir) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

    def owns(self, path: str) -> bool:
        return path == self.dir or path.startswith(self._prefix)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _Doorbell:
    """An inotify descriptor watching every directory under the roots (but ignored ones)."""

    def __init__(self, fd: int, libc: ctypes.CDLL, ignore: Callable[[Path], bool],
                 read: Callable[[str], bool]) -> None:
        self.fd = fd
        self._libc = libc
        self._ignore = ignore
        self._read = read
        self._dirs: dict[int, Path] = {}
        self._found: set[str] = set()
        self.writing: set[str] = set()  # files a reload reads, created or written, not closed yet

    @classmethod
    def create(cls, roots: list[Path], ignore: Callable[[Path], bool],
               read: Callable[[str], bool]) -> _Doorbell | None:
        """None where inotify cannot be used (not Linux, polling forced, too many dirs)."""
        if not _doorbell_possible():
            return None
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        doorbell = cls(fd, libc, ignore, read)
        try:
            for root in roots:
                doorbell._add_tree(root)
        except OSError as exc:
            doorbell.close()
            logger.debug("Watching with watchfiles' own loop: %s", exc)
            return None
        return doorbell

    def __enter__(self) -> _Doorbell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass

    def _add_tree(self, root: Path, found: set[str] | None = None) -> None:
        for directory, subdirs, files in os.walk(root):
            path = Path(directory)
            subdirs[:] = [d for d in subdirs if not self._ignore(path / d)]
            self._add(path)
            if found is not None:
                found.update(str(path / name) for name in files)

    def take_found(self) -> set[str]:
        """Files found in directories created since the last call: made before they were
        watched (`mkdir -p a/b && touch a/b/c.py`), they may ring no bell of their own."""
        found, self._found = self._found, set()
        return found

    def _add(self, path: Path) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), _IN_MASK | _IN_CLOSE_WRITE)
        if wd < 0:
            code = ctypes.get_errno()
            if code in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                return  # gone already, or not ours to read
            raise OSError(code, f"inotify_add_watch {path}: {os.strerror(code)}")
        self._dirs[wd] = path

    def drain(self) -> None:
        """Read every pending event: watch directories created meanwhile, and note which
        files a reload reads are open for writing."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:  # watchfiles has its own queue: only the ringing
                    self.writing.clear()  # matters here (a close may have been lost)
                    continue
                parent = self._dirs.get(wd)
                if parent is None:
                    continue
                if mask & _IN_ISDIR:
                    if mask & (_IN_CREATE | _IN_MOVED_TO):
                        self._watch_new(parent / os.fsdecode(name))
                else:
                    path = str(parent / os.fsdecode(name))
                    if mask & (_IN_CLOSE_WRITE | _IN_DELETE | _IN_MOVED_FROM):
                        self.writing.discard(path)
                    elif ((mask & _IN_MODIFY or (mask & _IN_CREATE and not os.path.islink(path)))
                          and self._read(path)):
                        self.writing.add(path)  # (a new file is open: it is closed next)

    def _watch_new(self, directory: Path) -> None:
        if not self._ignore(directory):
            try:
                self._add_tree(directory, self._found)
            except OSError:
                pass


def _nothing() -> None:
    pass


def _empty(fd: int) -> None:
    """Read a non-blocking pipe's bytes until none are left."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _poll_delay_ms() -> int:
    value = os.environ.get("WATCHFILES_POLL_DELAY_MS", "")
    return int(value) if value.isdigit() else 300


def _doorbell_possible() -> bool:
    return sys.platform.startswith("linux") and not _polling_forced()


def _polling_forced() -> bool:
    """`WATCHFILES_FORCE_POLLING`, as watchfiles reads it (containers, network drives)."""
    value = os.environ.get("WATCHFILES_FORCE_POLLING") or ""
    return bool(value) and value.lower() not in ("false", "disable", "disabled")
