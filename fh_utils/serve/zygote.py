"""The zygote: a pristine process that imports the installed packages once and forks workers.

The restart tier of reloading restarts the worker process with the listening socket kept open.
To make that cost only the project's own imports, a zygote process holds the listening socket
and the installed packages the app uses, imported once (`preload`), and never imports the
project. A worker that needs a successor asks it to `fork`: the child gets the socket, a
channel to the worker that asked (which tells it what to serve and when to start), and a
channel back to the zygote (to ask for its own successor one day).

`fh_utils dev` forks the zygote from its own process before the app is imported; `python
app.py` (`fh_utils.serve()`), whose process already ran the app, spawns a fresh interpreter.
The zygote ignores Ctrl+C and ends when the process that started it ends, stopping its workers
first. If the worker that serves dies unexpectedly, the zygote starts a new one.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import logging
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from fh_utils.serve import channel
from fh_utils.timing import THREADS_END_AT_FORK, WORKER_STOP

__all__ = ["Zygote", "available", "start"]

logger = logging.getLogger("fh_utils")

# What a forked worker runs: (what to serve, channel to the worker that asked or None, channel
# to the zygote, the listening socket) -> exit code. `fh_utils.serve.processes.worker_main`.
# A zygote in a fresh interpreter (spawned, or exec'd afresh) finds it by its import path: the
# zygote knows nothing of what its workers serve.
Worker = Callable[[Any, "socket.socket | None", socket.socket, socket.socket], int]


def _worker_path(worker: Worker) -> str:
    return f"{worker.__module__}:{worker.__qualname__}"


def _import_worker(path: str) -> Worker:
    module, _, name = path.partition(":")
    found: Worker = getattr(importlib.import_module(module), name)
    return found


# macOS: forking a process that has initialised Objective-C or Accelerate (numpy, torch and
# others import them) can crash the child. There the zygote is a fresh interpreter that imports
# none of the app's packages: each worker it forks imports them itself (a slower restart tier,
# never a crashed one). FH_UTILS_ZYGOTE_PRELOAD=0 does the same elsewhere (to try it, or for a
# package that is not fork-safe on Linux either).
PRELOAD = sys.platform != "darwin" and os.environ.get("FH_UTILS_ZYGOTE_PRELOAD", "1") != "0"


def thread_count() -> int:
    """This process's threads: native ones too (a BLAS or OpenMP pool, a client library's
    I/O thread), which `threading` does not list. Python's own count where the system does
    not say (no /proc)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def threads_end_at_fork(threads: int) -> bool:
    """Whether the threads beyond `threads` end when the process forks, as pools that register
    a `pthread_atfork` handler do (OpenBLAS stops its pool, and starts it again on its next
    call). A probe child is forked, and exits at once, touching nothing."""
    with warnings.catch_warnings():  # (Python 3.12+ warns of forking with threads)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + THREADS_END_AT_FORK
    while thread_count() > threads:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def spawned() -> bool:
    """Whether the zygote must be a fresh interpreter, not a fork of this process."""
    return not PRELOAD


def available() -> bool:
    """Whether this platform can fork workers (the restart tier needs `os.fork`)."""
    return hasattr(os, "fork") and hasattr(socket, "send_fds")


class Zygote:
    """A handle on the zygote: ask it to preload modules or to fork a worker."""

    def __init__(self, sock: socket.socket, pid: int | None = None) -> None:
        self.sock = sock
        self.pid = pid  # set in the process that started it (its parent)
        self._lock = threading.Lock()

    def preload(self, modules: Sequence[str], sys_path: Sequence[str], env_file: str | None
                ) -> None:
        """Import these installed modules in the zygote (in the background: it returns)."""
        with self._lock:
            channel.send(self.sock, ("preload", list(modules), list(sys_path), env_file))

    def fork(self, start: Any) -> socket.socket:
        """A new worker; returns the socket to talk to it. `start` is what it will serve
        (pickled; also what the zygote restarts with if that worker dies)."""
        ours, theirs = socket.socketpair()
        try:
            with self._lock:
                channel.send(self.sock, ("fork", pickle.dumps(start)), [theirs.fileno()])
        finally:
            theirs.close()
        return ours

    def serving(self) -> None:
        """This worker now serves: restart it if it dies."""
        with self._lock:
            channel.send(self.sock, ("serving",))

    def retiring(self) -> None:
        """This worker is stepping down on purpose."""
        with self._lock:
            channel.send(self.sock, ("retiring",))

    def stop(self, timeout: float = WORKER_STOP + 1.0) -> None:
        """Close the channel: the zygote stops its workers and exits (waited for if ours)."""
        self.sock.close()
        if self.pid is None:
            return
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    return
                time.sleep(0.01)
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ChildProcessError, ProcessLookupError):  # already gone
            pass


def start(listener: socket.socket, *, spawn: bool, log_config: dict[str, Any] | None,
          worker: Worker) -> Zygote:
    """Start the zygote with `listener`. Forked from this process (which must not have
    imported the project yet), or with `spawn` a fresh interpreter."""
    ours, theirs = socket.socketpair()
    if spawn:
        theirs.set_inheritable(True)
        listener.set_inheritable(True)
        spec = {"control": theirs.fileno(), "listener": listener.fileno(),
                "log_config": log_config, "worker": _worker_path(worker)}
        # Ctrl+C is not the zygote's: it stays blocked until its handler ignores it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            # stdin is inherited, never read here: a worker forked later reads it when a
            # handler stops at `breakpoint()` (pdb needs the terminal).
            process = subprocess.Popen(
                [sys.executable, "-m", "fh_utils.serve.zygote", json.dumps(spec)],
                pass_fds=(theirs.fileno(), listener.fileno()),
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        return Zygote(ours, process.pid)
    pid = os.fork()
    if pid == 0:  # the zygote
        code = 1
        try:
            ours.close()
            _Zygote(theirs, listener, worker, log_config).run()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    theirs.close()
    return Zygote(ours, pid)


@dataclass
class _Child:
    link: socket.socket  # the zygote's end of the child's channel
    start: bytes
    serving: bool = False
    retiring: bool = False


class _Zygote:
    """The zygote's loop: preload, fork on request, reap, replace a worker that died."""

    def __init__(self, control: socket.socket, listener: socket.socket,
                 worker: Worker | str, log_config: dict[str, Any] | None = None) -> None:
        self.control = control
        self.listener = listener
        self.worker = worker
        self.log_config = log_config
        # What was preloaded, from where: installed packages that change afterwards (an
        # upgrade, a `pip install`, a .pth file) make the zygote start afresh.
        self.preloaded: tuple[list[str], list[str], str | None] | None = None
        self.site_stamp: dict[str, int] = {}
        self.children: dict[int, _Child] = {}
        self.selector = selectors.DefaultSelector()
        self.selector.register(control, selectors.EVENT_READ)
        self.excluded: set[str] = set()
        self.environ = dict(os.environ)  # before the env file: each worker starts from it
        self._child_r = self._child_w = -1

    def run(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the main process's business
        signal.signal(signal.SIGTERM, lambda *_: self._stop_and_exit())
        # A child that exits wakes the loop (through this pipe); nothing else does, so an
        # idle zygote costs nothing.
        self._child_r, self._child_w = os.pipe()
        for fd in (self._child_r, self._child_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._child_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(self._child_r, selectors.EVENT_READ)
        while True:
            self._poll(None)
            self._reap()

    def _poll(self, timeout: float | None) -> None:
        for key, _ in self.selector.select(timeout):
            sock = key.fileobj
            if sock == self._child_r:
                with contextlib.suppress(OSError):
                    os.read(self._child_r, 4096)
                continue
            assert isinstance(sock, socket.socket)
            try:
                received = channel.recv(sock)
            except (OSError, EOFError):
                received = None
            if received is None:
                if sock is self.control:
                    self._stop_and_exit()
                self.selector.unregister(sock)
                continue
            message, fds = received
            self._handle(sock, message, fds)

    def _handle(self, sock: socket.socket, message: Any, fds: list[int]) -> None:
        kind = message[0]
        if kind == "fork" and fds:
            if self.preloaded is not None and site_stamp(sys.path) != self.site_stamp:
                self._exec_fresh(pending=(fds[0], message[1]))
            self._fork(socket.socket(fileno=fds[0]), message[1])
        elif kind == "preload" and sock is self.control:
            self._preload(*message[1:])
        elif kind in ("serving", "retiring"):
            for child in self.children.values():
                if child.link is sock:
                    setattr(child, kind, True)

    def _fork(self, link: socket.socket | None, start: bytes) -> None:
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # a worker
            code = 1
            try:
                ours.close()
                self._become_worker()
                worker = _import_worker(self.worker) if isinstance(self.worker, str) else (
                    self.worker)  # imported in the worker: the zygote stays pristine
                code = worker(pickle.loads(start), link, theirs, self.listener)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        if link is not None:
            link.close()
        self.children[pid] = _Child(ours, start)
        self.selector.register(ours, selectors.EVENT_READ)

    def _become_worker(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for fd in (self._child_r, self._child_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if os.environ != self.environ:  # the worker loads the env file as it is now
            os.environ.clear()
            os.environ.update(self.environ)
        self.selector.close()
        self.control.close()
        for child in self.children.values():
            child.link.close()

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            with contextlib.suppress(Exception):
                self.selector.unregister(child.link)
            child.link.close()
            if child.serving and not child.retiring:
                code = os.waitstatus_to_exitcode(status)
                logger.error("The worker process [%d] exited unexpectedly (%s): starting a "
                             "new one", pid, f"code {code}" if code >= 0 else f"signal {-code}")
                self._fork(None, child.start)
            elif child.serving and not any(c.serving for c in self.children.values()):
                self._stop_and_exit()  # it was stopped on purpose, and no one took over

    def _preload(self, modules: list[str], sys_path: list[str], env_file: str | None) -> None:
        sys.path[:] = sys_path
        if not PRELOAD:
            return
        self.preloaded = (modules, sys_path, env_file)
        self.site_stamp = site_stamp(sys_path)
        if env_file:
            from fh_utils.reload.envfile import EnvFile

            with contextlib.suppress(Exception):
                EnvFile(env_file).load()
        threads = thread_count()
        for name in modules:
            if name in sys.modules or name in self.excluded:
                continue
            self._poll(0)  # a fork request does not wait for the preload
            with contextlib.suppress(BaseException):  # SystemExit at import, too
                importlib.import_module(name)
            if thread_count() > threads and not threads_end_at_fork(threads):
                # Forking now could copy a lock that thread holds, or leave the library
                # waiting for a pool the child does not have: start over fresh without that
                # module (each worker imports it itself).
                logger.debug("Not preloading %s: its import started threads that live on "
                             "across a fork", name)
                self.excluded.add(name)
                self._exec_fresh()

    def _exec_fresh(self, pending: tuple[int, bytes] | None = None) -> NoReturn:
        """Start over as a fresh interpreter (the same process: its workers stay its
        children), then preload again; `pending` is a fork request to serve first, before
        anything is imported."""
        if pending is not None:
            logger.warning("Installed packages changed since the zygote imported them: it "
                           "starts afresh, and this worker imports them anew")
        for sock in (self.control, self.listener, *(c.link for c in self.children.values())):
            sock.set_inheritable(True)
        if pending is not None:
            os.set_inheritable(pending[0], True)
        worker = self.worker if isinstance(self.worker, str) else _worker_path(self.worker)
        spec = {"control": self.control.fileno(), "listener": self.listener.fileno(),
                "excluded": sorted(self.excluded), "worker": worker,
                "log_config": self.log_config, "preload": self.preloaded,
                "children": [[pid, c.link.fileno(), _text(c.start), c.serving, c.retiring]
                             for pid, c in self.children.items()],
                "pending": [pending[0], _text(pending[1])] if pending else None}
        signal.set_wakeup_fd(-1)
        os.execve(sys.executable,
                  [sys.executable, "-m", "fh_utils.serve.zygote", json.dumps(spec)], self.environ)

    def _stop_and_exit(self) -> NoReturn:
        for pid in list(self.children):
            with contextlib.suppress(Exception):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP
        while self.children and time.monotonic() < deadline:
            self._reap_quietly()
            time.sleep(0.01)
        for pid in list(self.children):
            with contextlib.suppress(Exception):
                os.kill(pid, signal.SIGKILL)
        self._reap_quietly()
        os._exit(0)

    def _reap_quietly(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(Exception):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    del self.children[pid]


def site_stamp(sys_path: Sequence[str]) -> dict[str, int]:
    """When each directory of installed packages on `sys_path` last changed (a package added,
    removed or upgraded changes its listing), and each .pth file in them. The project's own
    directories are not in it: an editor's save changes those all the time."""
    stamp: dict[str, int] = {}
    for entry in sys_path:
        if os.path.basename(entry) not in ("site-packages", "dist-packages"):
            continue
        try:
            stamp[entry] = os.stat(entry).st_mtime_ns
            with os.scandir(entry) as found:
                for item in found:
                    if item.name.endswith(".pth"):
                        stamp[item.path] = item.stat().st_mtime_ns
        except OSError:
            continue
    return stamp


def _text(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _supervise(control: socket.socket, pid: int) -> None:
    """What the first server becomes once a worker took over: wait for Ctrl+C (or for the
    zygote to end), then end the session: closing the channel stops the zygote and workers."""

    def stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        os.waitpid(pid, 0)
    except SystemExit:
        pass
    control.close()
    Zygote(socket.socket(), pid).stop()


def _main() -> None:
    """`python -m fh_utils.serve.zygote SPEC`: a spawned (or fresh) zygote, or a supervisor."""
    spec = json.loads(sys.argv[1])
    if "supervise" not in spec:  # a zygote: Ctrl+C is the main process's business
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if "supervise" in spec:
        _supervise(socket.socket(fileno=spec["supervise"]), spec["pid"])
        return
    if spec.get("log_config"):
        import logging.config

        logging.config.dictConfig(spec["log_config"])
    control = socket.socket(fileno=spec["control"])
    listener = socket.socket(fileno=spec["listener"])
    zygote = _Zygote(control, listener, spec["worker"], spec.get("log_config"))
    zygote.excluded = set(spec.get("excluded", ()))
    for pid, fd, start, serving, retiring in spec.get("children") or ():  # (after an exec)
        child = _Child(socket.socket(fileno=fd), base64.b64decode(start), serving, retiring)
        zygote.children[pid] = child
        zygote.selector.register(child.link, selectors.EVENT_READ)
    if spec.get("pending"):
        fd, start = spec["pending"]
        zygote._fork(socket.socket(fileno=fd), base64.b64decode(start))
    if spec.get("preload"):
        zygote._preload(*spec["preload"])
    zygote.run()


if __name__ == "__main__":
    _main()
