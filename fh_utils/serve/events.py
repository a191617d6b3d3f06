"""Reload events for tools: is the last save live, and did it fail?

Every outcome is one JSON object (`EventFeed.publish`), kept in memory, printed one a line
with `--log-format json`, and served under the live path, behind the same Host check as the
rest (`fh_utils.serve.hosts`):

- `GET /__fh_utils_live__/events`: the events kept, one JSON object a line (`?follow=1`: then
  each new one as it happens, until the server stops);
- `GET /__fh_utils_live__/status`: the last load or reload's event, with `live` and
  `browser_errors` (errors the pages reported since); `?wait=SECONDS` first waits until every
  save made before the request is live or has failed (`fh_utils status --wait`).

Kinds (`"event"`): `load` (the app at start-up), `reload`, `static` (CSS, JS, images: no
Python ran), `browser` (an error in a `--live` page). Each has `seq` (per server process) and
`time` (ISO 8601, UTC); a `load` or `reload` has `ok`, and either `files`, `tier`, `cause`,
`ms` and `reran` (the modules re-executed, in order), or `error` (`kind`, `message`, `file`,
`line`, `summary`, the traceback's last lines as `traceback`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import parse_qs

from fh_utils.asgi import ASGIApp, Receive, Scope, Send
from fh_utils.browser.live import LIVE_PATH
from fh_utils.reload.errors import Failure, display_path

if TYPE_CHECKING:
    from fh_utils.reload.engine import Outcome

__all__ = ["EVENTS_PATH", "STATUS_PATH", "EventFeed", "EventsMiddleware", "failure_fields",
           "stdout_echo"]

logger = logging.getLogger("fh_utils")

EVENTS_PATH = LIVE_PATH + "/events"
STATUS_PATH = LIVE_PATH + "/status"
KEEP = 200  # events kept for GET .../events
TRACEBACK_LINES = 40  # the end of a traceback: where the error is
WAIT_LIMIT = 600.0  # ?wait= at most, in seconds

Settle = Callable[[float], Awaitable[bool]]
_END = object()


def failure_fields(failure: Failure) -> dict[str, Any]:
    """A failure as the `error` of an event (the traceback's last `TRACEBACK_LINES` lines)."""
    lines = failure.traceback.splitlines()
    trimmed = "\n".join(["...", *lines[-TRACEBACK_LINES:]] if len(lines) > TRACEBACK_LINES
                        else lines)
    return {"kind": failure.kind, "message": failure.message, "file": failure.file,
            "line": failure.line, "summary": failure.summary, "traceback": trimmed}


class EventFeed:
    """The session's events: a `DevListener` (`fh_utils.serve.session`), plus `publish` for
    any other kind (a check against a fresh process adds its own with one call).

    `settle(timeout)` waits until every save made before the call is applied (False: not
    within `timeout`); `retiring()` says this process handed over to a newer worker. `echo`
    gets each event as a line of JSON (`--log-format json`).
    """

    def __init__(self, settle: Settle | None = None, *,
                 retiring: Callable[[], bool] = lambda: False,
                 echo: TextIO | None = None) -> None:
        self.settle = settle
        self.retiring = retiring
        self.echo = echo
        self.events: deque[dict[str, Any]] = deque(maxlen=KEEP)
        self.outcome: dict[str, Any] | None = None  # the last load or reload
        self.browser_errors = 0  # since that outcome
        self.verification: dict[str, Any] | None = None  # its fresh-process check, once done
        self._seq = 0
        self._files: list[str] = []  # of the reload that just ended
        self._ms = 0
        self._followers: set[asyncio.Queue[object]] = set()

    # -- in ------------------------------------------------------------------------------------
    def publish(self, event: dict[str, Any]) -> dict[str, Any]:
        """Stamp `event` (`{"event": kind, ...}`) with `seq` and `time`, keep it, print it with
        `--log-format json`, and send it to followers. Returns the stamped event."""
        self._seq += 1
        stamped = {"event": event.get("event", "note"), "seq": self._seq,
                   "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                   **{k: v for k, v in event.items() if k != "event"}}
        self.events.append(stamped)
        if stamped["event"] in ("load", "reload"):
            self.outcome = stamped
            self.verification = None
            self.browser_errors = 0
        elif stamped["event"] == "verify":
            self.verification = stamped
        if self.echo is not None:
            try:
                self.echo.write(json.dumps(stamped) + "\n")
                self.echo.flush()
            except (OSError, ValueError):  # the terminal went away
                self.echo = None
        for queue in self._followers:
            queue.put_nowait(stamped)
        return stamped

    def finished(self, outcome: Outcome, started: float) -> None:
        """A reload that began at `started` (`time.perf_counter()`) ended with `outcome`; the
        listeners hear of it next (its event says which files, and how long it took)."""
        self._files = list(outcome.changed)
        self._ms = round((time.perf_counter() - started) * 1000)

    def loaded(self, label: str, ms: float, tier: str | None = None) -> None:
        """The app was loaded at start-up (`tier` "restart": by a new worker)."""
        event: dict[str, Any] = {"event": "load", "ok": True, "app": label, "ms": round(ms)}
        if tier is not None:
            event["tier"] = tier
        self.publish(event)

    def browser_error(self, report: dict[str, Any]) -> None:
        """A `--live` page reported an error (`fh_utils.browser.live`)."""
        self.browser_errors += 1
        self.publish({"event": "browser", **report})

    # -- DevListener ---------------------------------------------------------------------
    async def reloaded(self, outcome: Outcome) -> None:
        self.publish({"event": "reload", "ok": True, "files": list(outcome.changed),
                      "tier": outcome.tier, "cause": outcome.cause, "ms": self._ms,
                      "reran": list(outcome.reran)})

    async def failed(self, failure: Failure) -> None:
        kind = "reload" if self.outcome is not None else "load"
        event: dict[str, Any] = {"event": kind, "ok": False}
        if kind == "reload":
            event["files"] = self._files
            event["ms"] = self._ms
        self.publish({**event, "error": failure_fields(failure)})

    async def static_changed(self, paths: list[Path]) -> None:
        self.publish({"event": "static", "files": [display_path(p) for p in paths]})

    # -- out -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The last outcome, `live` (it did not fail) and the pages' errors since."""
        last = self.outcome or {"event": "load", "ok": True}
        status = {**last, "live": bool(last.get("ok")), "browser_errors": self.browser_errors}
        if self.verification is not None:  # the fresh-process check of that reload
            status["verify"] = self.verification
        return status

    async def close(self) -> None:
        """End every follower's stream (the server stops)."""
        for queue in self._followers:
            queue.put_nowait(_END)

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI endpoint for `EVENTS_PATH` and `STATUS_PATH` (see the module's doc)."""
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(send, 405, {"error": "use GET"})
            return
        if _route_path(scope) == EVENTS_PATH:
            if _query(scope, "follow") in ("1", "true", "yes"):
                await self._follow(receive, send)
            else:
                await _respond(send, 200, list(self.events))
            return
        wait = _query(scope, "wait")
        if wait is not None:
            try:
                timeout = min(WAIT_LIMIT, max(0.0, float(wait or WAIT_LIMIT)))
            except ValueError:
                await _respond(send, 400, {"error": "wait is a number of seconds"})
                return
            settled = True if self.settle is None else await self.settle(timeout)
            if self.retiring():  # a newer worker serves from now on: ask it
                await _respond(send, 503, {"error": "handed over to a new worker; ask again"})
                return
            if not settled:
                await _respond(send, 504, {"error": f"not settled within {timeout:g} s"})
                return
        await _respond(send, 200, self.status())

    async def _follow(self, receive: Receive, send: Send) -> None:
        queue: asyncio.Queue[object] = asyncio.Queue()
        for event in self.events:
            queue.put_nowait(event)
        self._followers.add(queue)

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            queue.put_nowait(_END)

        watcher = asyncio.get_running_loop().create_task(until_disconnect())
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/x-ndjson"),
                                    (b"cache-control", b"no-store")]})
            while (item := await queue.get()) is not _END:
                await send({"type": "http.response.body",
                            "body": json.dumps(item).encode() + b"\n", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except OSError:  # the client went away while we were sending
            pass
        finally:
            self._followers.discard(queue)
            watcher.cancel()


class EventsMiddleware:
    """ASGI middleware: answers `EVENTS_PATH` and `STATUS_PATH` from `feed`, ahead of the
    app (a status request is never held while a reload runs); everything else passes."""

    def __init__(self, app: ASGIApp, feed: EventFeed) -> None:
        self.app = app
        self.feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _route_path(scope) in (EVENTS_PATH, STATUS_PATH):
            await self.feed.serve(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def stdout_echo(log_format: str) -> TextIO | None:
    """Where `--log-format` prints events: stdout for `json` (the log stays on stderr)."""
    return sys.stdout if log_format == "json" else None


async def _respond(send: Send, status: int, data: Any) -> None:
    if isinstance(data, list):
        body = b"".join(json.dumps(item).encode() + b"\n" for item in data)
        kind = b"application/x-ndjson"
    else:
        body = json.dumps(data).encode() + b"\n"
        kind = b"application/json"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind), (b"cache-control", b"no-store"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _query(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1"),
                      keep_blank_values=True).get(name)
    return values[0] if values else None
