"""`fh_utils status`: ask a running dev server whether the last save is live.

A client of `fh_utils.serve.events`, with nothing but the standard library: an agent runs it
after each save, so `fh_utils.__main__` hands it the command line before importing click,
uvicorn or the reload machinery (`fh_utils.cli` has the same command, for `--help`). With
`wait`, the server first waits until every save made before the request is live or has failed.
While a reload hands over to a new worker process (the restart tier), the old one answers 503
or drops the connection: the request is made again, to the new worker, until `timeout`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any, NamedTuple
from urllib.parse import urlsplit

__all__ = ["DEFAULT_URL", "FAILED", "LIVE", "NO_SERVER", "TIMEOUT_ENV", "URL_ENV", "Status", "ask",
           "describe", "main", "run"]

DEFAULT_URL = "http://127.0.0.1:5001"  # fh_utils dev's default host and port
STATUS_PATH = "/__fh_utils_live__/status"  # fh_utils.serve.events.STATUS_PATH
LIVE, FAILED, NO_SERVER = 0, 1, 2  # the exit codes
URL_ENV, TIMEOUT_ENV = "FH_UTILS_URL", "FH_UTILS_STATUS_TIMEOUT"
FLAGS, VALUES = ("--wait", "--json"), ("--url", "--timeout")  # `main` parses these


class Status(NamedTuple):
    """What the server said: `code` (LIVE, FAILED, NO_SERVER), its `event`, or `error`."""

    code: int
    event: dict[str, Any] | None = None
    error: str | None = None


def ask(url: str = DEFAULT_URL, *, wait: bool = False, timeout: float = 60.0) -> Status:
    """The last reload's outcome at the dev server at `url` (after every save made before the
    call is applied, with `wait`)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Status(NO_SERVER, error=f"{url!r} is not an http:// URL")
    path = parts.path.rstrip("/") + STATUS_PATH + (f"?wait={timeout:g}" if wait else "")
    deadline = time.monotonic() + timeout
    answered = False  # once a server answered, a dropped connection is a hand-over
    while True:
        try:
            code, body = _get(parts.hostname, parts.port, parts.scheme == "https", path,
                              timeout + 5)
        except ConnectionRefusedError as exc:
            error = f"no server answers at {url} ({exc.strerror})"
            if not answered:
                return Status(NO_SERVER, error=error)
        except (ConnectionError, _Dropped) as exc:
            error = f"the connection to {url} was closed ({exc})"
        except OSError as exc:
            message = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            return Status(NO_SERVER, error=f"no answer from {url}: {message}")
        else:
            if code == 200:
                try:
                    event = json.loads(body)
                except ValueError:
                    return Status(NO_SERVER, error=f"{url} is not an fh_utils dev server")
                return Status(LIVE if event.get("live") else FAILED, event)
            if code == 404:
                return Status(NO_SERVER, error=f"{url} is not an fh_utils dev server "
                              "(no status endpoint)")
            error = _text(body) or f"HTTP {code}"
            if code != 503:  # 503: handed over to a new worker, ask it
                return Status(NO_SERVER, error=f"{url} answered {code}: {error}")
        if time.monotonic() > deadline:
            return Status(NO_SERVER, error=error)
        answered = True
        time.sleep(0.02)


class _Dropped(Exception):
    """The connection closed before a whole answer came."""


def _get(host: str, port: int | None, tls: bool, path: str, timeout: float
         ) -> tuple[int, bytes]:
    """`GET path` over HTTP/1.1 with `Connection: close`: (status, body). A socket of our own,
    not http.client: its imports (email, ssl) would double the command's start-up."""
    sock = socket.create_connection((host, port or (443 if tls else 80)), timeout=timeout)
    try:
        if tls:
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        name = f"[{host}]" if ":" in host else host
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}{'' if port is None else f':{port}'}"
                     "\r\nAccept: application/json\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    finally:
        sock.close()
    head, found, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not found or len(status) < 2 or not status[0].startswith(b"HTTP/"):
        raise _Dropped("no answer")
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return int(status[1]), body


def _unchunk(body: bytes) -> bytes:
    out = []
    while body:
        size, _, rest = body.partition(b"\r\n")
        length = int(size.split(b";")[0] or b"0", 16)
        if not length:
            break
        out.append(rest[:length])
        body = rest[length + 2:]
    return b"".join(out)


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



def main(argv: list[str]) -> int | None:
    """`fh_utils status ARGS`, parsed here without click (it would add a third to the start-up):
    None when the arguments need click's parser (`--help`, a mistake); else the exit code."""
    options: dict[str, str | bool] = {"wait": False, "json": False}
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, equals, value = arg.partition("=")
        if name in FLAGS and not equals:
            options[name[2:]] = True
        elif name in VALUES:
            if not equals:
                if not args:
                    return None
                value = args.pop(0)
            options[name[2:]] = value
        else:
            return None
    try:
        timeout = float(options.get("timeout") or os.environ.get(TIMEOUT_ENV) or 60.0)
    except ValueError:
        return None
    url = options.get("url") or os.environ.get(URL_ENV)
    return run(str(url) if url else None, wait=bool(options["wait"]),
               as_json=bool(options["json"]), timeout=timeout)


def run(url: str | None, *, wait: bool, as_json: bool, timeout: float) -> int:
    """Ask, print the answer (stdout; an error on stderr) and return the exit code."""
    if url is None:
        port = os.environ.get("FH_UTILS_PORT") or os.environ.get("PORT") or "5001"
        url = f"http://127.0.0.1:{port}"
    result = ask(url, wait=wait, timeout=timeout)
    if as_json and result.event is not None:
        print(json.dumps(result.event), flush=True)
    else:
        print(describe(result), file=sys.stdout if result.event else sys.stderr, flush=True)
    return result.code
