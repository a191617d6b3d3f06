"""watchfiles' Rust backend, `RustNotify`: the only way to take changes with a timeout and a
step of our own per call, on one set of watches (`watchfiles.watch()` fixes both for its whole
life). Private: its constructor takes six positional arguments, checked here by name.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Protocol

import watchfiles
from watchfiles import _rust_notify

from fh_utils.adapters import IncompatibleVersion

__all__ = ["Notifier", "check", "notifier"]

VERSION: str = getattr(watchfiles, "__version__", "?")
# RustNotify(watch_paths, debug, force_polling, poll_delay_ms, recursive, ignore_permission_denied)
_INIT = ("watch_paths", "debug", "force_polling", "poll_delay_ms", "recursive",
         "ignore_permission_denied")
# .watch(debounce_ms, step_ms, timeout_ms, stop_event)
_WATCH = ("debounce_ms", "step_ms", "timeout_ms", "stop_event")


class Notifier(Protocol):
    """What fh_utils uses of a `RustNotify`."""

    def watch(self, debounce_ms: int, step_ms: int, timeout_ms: int, stop_event: Any
              ) -> set[tuple[int, str]] | str: ...

    def close(self) -> None: ...

    def __enter__(self) -> Notifier: ...

    def __exit__(self, *args: object) -> None: ...


def _parameters(function: Any) -> tuple[str, ...]:
    try:
        names = tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return ()
    return tuple(n for n in names if n != "self")


@functools.cache
def check() -> None:
    """Raise `IncompatibleVersion` unless `RustNotify` has the shape used below."""
    notify = getattr(_rust_notify, "RustNotify", None)
    if notify is None:
        raise IncompatibleVersion("watchfiles", VERSION, "watchfiles._rust_notify.RustNotify")
    if _parameters(notify) != _INIT:
        raise IncompatibleVersion("watchfiles", VERSION,
                                  f"RustNotify({', '.join(_INIT)})")
    if _parameters(getattr(notify, "watch", None)) != _WATCH:
        raise IncompatibleVersion("watchfiles", VERSION,
                                  f"RustNotify.watch({', '.join(_WATCH)})")


def notifier(paths: list[str], *, force_polling: bool, poll_delay_ms: int) -> Notifier:
    """Watch `paths` recursively from a thread of watchfiles' own (not started by us)."""
    check()
    notify: Notifier = _rust_notify.RustNotify(paths, False, force_polling, poll_delay_ms,
                                               True, False)
    return notify
