"""`fh_utils status`: ask a running dev server whether the last save is live.

A client of `fh_utils.serve.events` with nothing but the standard library. With `wait`, the
server first waits until every save made before the request is live or has failed. While a
reload hands over to a new worker process (the restart tier), the old one answers 503 or
drops the connection: the request is made again, to the new worker, until `timeout`.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["DEFAULT_URL", "LIVE", "FAILED", "NO_SERVER", "Status", "describe", "status"]

DEFAULT_URL = "http://127.0.0.1:5001"  # fh_utils dev's default host and port
STATUS_PATH = "/__fh_utils_live__/status"  # fh_utils.serve.events.STATUS_PATH
LIVE, FAILED, NO_SERVER = 0, 1, 2  # the exit codes


@dataclass
class Status:
    """What the server said: `code` (LIVE, FAILED, NO_SERVER), its `event`, or `error`."""

    code: int
    event: dict[str, Any] | None = None
    error: str | None = None


def status(url: str = DEFAULT_URL, *, wait: bool = False, timeout: float = 60.0) -> Status:
    """The last reload's outcome at the dev server at `url` (after every save made before the
    call is applied, with `wait`)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Status(NO_SERVER, error=f"{url!r} is not an http:// URL")
    path = parts.path.rstrip("/") + STATUS_PATH + (f"?wait={timeout:g}" if wait else "")
    deadline = time.monotonic() + timeout
    answered = False  # once a server answered, a dropped connection is a hand-over
    while True:
        kind = (http.client.HTTPSConnection if parts.scheme == "https"
                else http.client.HTTPConnection)
        connection = kind(parts.hostname, parts.port, timeout=timeout + 5)
        try:
            connection.request("GET", path, headers={"Accept": "application/json"})
            response = connection.getresponse()
            body = response.read()
        except ConnectionRefusedError as exc:
            if not answered:
                return Status(NO_SERVER, error=f"no server answers at {url} ({exc.strerror})")
            error = f"no server answers at {url} ({exc.strerror})"
        except (ConnectionError, http.client.RemoteDisconnected,
                http.client.BadStatusLine) as exc:
            error = f"the connection to {url} was closed ({exc})"
        except (OSError, http.client.HTTPException) as exc:
            message = "timed out" if isinstance(exc, socket.timeout) else str(exc)
            return Status(NO_SERVER, error=f"no answer from {url}: {message}")
        else:
            answered = True
            if response.status == 200:
                try:
                    event = json.loads(body)
                except ValueError:
                    return Status(NO_SERVER, error=f"{url} is not an fh_utils dev server")
                return Status(LIVE if event.get("live") else FAILED, event)
            if response.status == 404:
                return Status(NO_SERVER, error=f"{url} is not an fh_utils dev server "
                              "(no status endpoint)")
            error = _text(body) or f"HTTP {response.status}"
            if response.status != 503:  # 503: handed over to a new worker, ask it
                return Status(NO_SERVER, error=f"{url} answered {response.status}: {error}")
        finally:
            connection.close()
        if time.monotonic() > deadline:
            return Status(NO_SERVER, error=error)
        answered = True
        time.sleep(0.02)


def describe(result: Status) -> str:
    """`result` for a person: one line, and the traceback of a failure."""
    if result.event is None:
        return f"fh_utils status: {result.error}"
    event = result.event
    errors = event.get("browser_errors") or 0
    tail = f"; {errors} browser error{'s' if errors != 1 else ''} since" if errors else ""
    if not event.get("ok"):
        error = event.get("error") or {}
        text = f"failed: {error.get('summary', 'the last reload failed')}{tail}"
        return f"{text}\n{error['traceback']}" if error.get("traceback") else text
    files = ", ".join(event.get("files") or [])
    if event.get("event") == "load":
        what = f"loaded {event.get('app', 'the app')}" + (
            " in a new worker" if event.get("tier") == "restart" else "")
    else:
        how = {"in place": "in place", "re-import": "by re-importing the project",
               "restart": "by restarting the worker"}.get(event.get("tier") or "", "")
        what = f"reloaded {files or 'the app'} {how}".rstrip()
        if event.get("cause"):
            what += f" ({event['cause']})"
    ms = f" in {event['ms']} ms" if event.get("ms") else ""
    at = f" at {event['time']}" if event.get("time") else ""
    return f"live: {what}{ms}{at}{tail}"


def _text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()
    return str(data.get("error", "")) if isinstance(data, dict) else ""
