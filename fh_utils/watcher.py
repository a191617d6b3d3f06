"""The file watcher: reports saves within a few milliseconds, and costs nothing while idle.

watchfiles' `RustNotify` collects changes in a thread of its own (inotify, FSEvents, ...), but
its `watch()` wakes every `step` milliseconds to look at them, taking the GIL each time: with
the 3 ms step a save needs to be live quickly, that is about 330 wake-ups a second while
nothing happens. Here, on Linux, the watcher thread sleeps in `select()` on an inotify
descriptor of its own (the doorbell) until something under the watched directories changes,
and only then asks `RustNotify.watch()` to collect the burst (it returns once nothing more
happened for `step` ms). Elsewhere, or when inotify cannot be used (its watch limit), it falls
back to watchfiles' loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from watchfiles import Change
from watchfiles._rust_notify import RustNotify  # the documented Rust backend (watchfiles docs)

__all__ = ["Watcher"]

logger = logging.getLogger("fh_utils")

Changes = set[tuple[Change, str]]

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)
_IN_MASK = (0x2 | 0x4 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800  # what watchfiles reports
            | 0x01000000 | 0x02000000)  # IN_ONLYDIR | IN_DONT_FOLLOW
_IN_CREATE, _IN_MOVED_TO, _IN_ISDIR, _IN_Q_OVERFLOW = 0x100, 0x80, 0x40000000, 0x4000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then the name)
DEBOUNCE_MS = 1_600  # a burst of changes is reported after this long at most (watchfiles')
COLLECT_TIMEOUT_MS = 20  # waiting, without sleeping, for watchfiles to report what rang
LATE_TIMEOUT_MS = 2_000  # then waiting for it, stepping, when it lags (a loaded machine)


class Watcher:
    """Watch `dirs` recursively; `report(changes)` is called in the watcher's thread.

    `ignore(path)` tells directories not to ring the doorbell for (virtual environments, .git,
    caches); `keep(change, path)` is watchfiles' filter. `stop` ends it.
    """

    def __init__(self, dirs: Iterable[Path], keep: Callable[[Change, str], bool],
                 ignore: Callable[[Path], bool], report: Callable[[Changes], None],
                 stop: threading.Event, step_ms: int = 3) -> None:
        self.dirs = [Path(d) for d in dirs]
        self.keep = keep
        self.ignore = ignore
        self.report = report
        self.stop = stop
        self.step_ms = step_ms
        self.ready = threading.Event()  # set once changes are being seen
        self._wake_r, self._wake_w = os.pipe()

    def close(self) -> None:
        """Set `stop` and wake the thread now."""
        self.stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def run(self) -> None:
        """The thread's body: until `stop`, whatever goes wrong (logged, then started over)."""
        try:
            while not self.stop.is_set():
                try:
                    # watchfiles first: whatever rings the doorbell, it has seen too
                    with RustNotify([str(d) for d in self.dirs], False, _polling_forced(),
                                    _poll_delay_ms(), True, False) as notify:
                        doorbell = _Doorbell.create(self.dirs, self.ignore)
                        self.ready.set()
                        if doorbell is None:
                            self._loop_without_doorbell(notify)
                        else:
                            with doorbell:
                                self._loop(doorbell, notify)
                except Exception:
                    if self.stop.is_set():
                        return
                    logger.exception("The file watcher failed; restarting it")
                    self.stop.wait(0.5)
        finally:
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _loop(self, doorbell: _Doorbell, notify: RustNotify) -> None:
        while not self.stop.is_set():
            if not self._burst(doorbell):
                return
            # Nothing more for `step_ms`: the burst (an editor's atomic save) is over, and
            # watchfiles has most likely seen it too: collect at once (a zero step, no
            # sleeping). Under load its thread may lag: then wait for it, stepping, a while
            # longer (a change that rang only the doorbell, such as a bare chmod on some
            # systems, costs that wait).
            changes = notify.watch(DEBOUNCE_MS, 0, COLLECT_TIMEOUT_MS, self.stop)
            if changes == "timeout":
                changes = notify.watch(DEBOUNCE_MS, self.step_ms, LATE_TIMEOUT_MS, self.stop)
            found = {(int(Change.added), path) for path in doorbell.take_found()}
            if isinstance(changes, set) or found:
                self._report((changes if isinstance(changes, set) else set()) | found)

    def _burst(self, doorbell: _Doorbell) -> bool:
        """Sleep until the doorbell rings, then until it stays quiet for `step_ms` (at most
        `DEBOUNCE_MS`). False when stopped."""
        deadline = None
        timeout: float | None = None
        while True:
            ready, _, _ = select.select([doorbell.fd, self._wake_r], [], [], timeout)
            if self._wake_r in ready or self.stop.is_set():
                return False
            if not ready:
                return True  # quiet for step_ms
            doorbell.drain()
            now = time.monotonic()
            deadline = deadline or now + DEBOUNCE_MS / 1000
            if now > deadline:
                return True
            timeout = self.step_ms / 1000

    def _loop_without_doorbell(self, notify: RustNotify) -> None:
        """watchfiles' own loop: it wakes every `step_ms` (and every 0.5 s to see `stop`)."""
        while not self.stop.is_set():
            changes = notify.watch(DEBOUNCE_MS, self.step_ms, 500, self.stop)
            if isinstance(changes, set):
                self._report(changes)

    def _report(self, raw: Iterable[tuple[int, str]]) -> None:
        changes = {(Change(int(c)), p) for c, p in raw}
        kept = {(c, p) for c, p in changes if self.keep(c, p)}
        if kept:
            self.report(kept)


class _Doorbell:
    """An inotify descriptor watching every directory under the roots (but ignored ones)."""

    def __init__(self, fd: int, libc: ctypes.CDLL, ignore: Callable[[Path], bool]) -> None:
        self.fd = fd
        self._libc = libc
        self._ignore = ignore
        self._dirs: dict[int, Path] = {}
        self._found: set[str] = set()

    @classmethod
    def create(cls, roots: list[Path], ignore: Callable[[Path], bool]) -> _Doorbell | None:
        """None where inotify cannot be used (not Linux, polling forced, too many dirs)."""
        if not sys.platform.startswith("linux") or _polling_forced():
            return None
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        doorbell = cls(fd, libc, ignore)
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
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), _IN_MASK)
        if wd < 0:
            code = ctypes.get_errno()
            if code in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                return  # gone already, or not ours to read
            raise OSError(code, f"inotify_add_watch {path}: {os.strerror(code)}")
        self._dirs[wd] = path

    def drain(self) -> None:
        """Read every pending event; watch directories created meanwhile."""
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
                if mask & _IN_Q_OVERFLOW:
                    continue  # watchfiles has its own queue: only the ringing matters here
                parent = self._dirs.get(wd)
                if parent is not None and mask & _IN_ISDIR and mask & (_IN_CREATE | _IN_MOVED_TO):
                    child = parent / os.fsdecode(name)
                    if not self._ignore(child):
                        try:
                            self._add_tree(child, self._found)
                        except OSError:
                            pass


def _poll_delay_ms() -> int:
    value = os.environ.get("WATCHFILES_POLL_DELAY_MS", "")
    return int(value) if value.isdigit() else 300


def _polling_forced() -> bool:
    """`WATCHFILES_FORCE_POLLING`, as watchfiles reads it (containers, network drives)."""
    value = os.environ.get("WATCHFILES_FORCE_POLLING") or ""
    return bool(value) and value.lower() not in ("false", "disable", "disabled")
