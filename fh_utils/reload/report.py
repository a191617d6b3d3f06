"""The log lines a reload leaves: one per reload, in words a user can act on.

Their wording is a contract (tests and users' scripts read it): `Reloaded a.py (+1 dependent)
in 3 ms`, `... by re-importing the project (cause) ...`, `... by restarting the worker (cause;
pinned values were not kept) ...`, `Reload failed: file:line: Kind: message`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from fh_utils.reload.errors import Failure

if TYPE_CHECKING:
    from fh_utils.reload.engine import Outcome

__all__ = ["connections", "log_reloaded", "short", "with_traceback"]

logger = logging.getLogger("fh_utils")


def log_reloaded(outcome: Outcome, started: float) -> None:
    """The line a reload that served logs (and, at debug level, what re-ran)."""
    if not outcome.changed and not outcome.reran:
        return  # only os.environ changed, and the note said so
    dependents = outcome.dependents
    how = "" if outcome.tier == "in place" else (
        f" by re-importing the project ({outcome.cause})" if outcome.tier == "re-import"
        else f" by restarting the worker ({outcome.cause}; pinned values were not kept)")
    logger.info(
        "Reloaded %s%s%s in %d ms",
        ", ".join(outcome.changed),
        f" (+{dependents} dependent{'s' if dependents != 1 else ''})"
        if dependents and outcome.tier == "in place" else "",
        how,
        (time.perf_counter() - started) * 1000,
    )
    logger.debug("Re-executed, in order: %s (their own code: %.1f ms)",
                 ", ".join(outcome.reran), outcome.module_seconds * 1000)


def with_traceback(failure: Failure, summary: str | None = None) -> str:
    """The summary line, then the traceback when there is one."""
    summary = failure.summary if summary is None else summary
    return f"{summary}\n{failure.traceback}" if failure.traceback else summary


def short(message: str) -> str:
    """The first sentence of an error message, for a log line."""
    first = message.strip().splitlines()[0] if message.strip() else message
    first = first.split(". ")[0].rstrip(".")
    return first if len(first) <= 120 else first[:117] + "..."


def connections(sockets: int, streams: int) -> str:
    """`3 connections (2 WebSockets, 1 stream)`."""
    parts = []
    if sockets:
        parts.append(f"{sockets} WebSocket{'s' if sockets != 1 else ''}")
    if streams:
        parts.append(f"{streams} stream{'s' if streams != 1 else ''}")
    total = sockets + streams
    return f"{total} connection{'s' if total != 1 else ''} ({', '.join(parts)})"
