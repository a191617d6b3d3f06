"""Only the developer's own pages may talk to the dev server: a `Host` allow-list.

A dev server shows tracebacks and source code, and its live socket pushes them. A page on
`attacker.example` whose DNS name is rebound to 127.0.0.1 sends requests with
`Host: attacker.example`; an `Origin == Host` check alone lets those through. As Vite and
webpack-dev-server do, `HostGuard` refuses (403) every request whose `Host` is not:

- `localhost` or a name under `.localhost`, or an IP address (a rebinding attack needs a name);
- the host the server is bound to;
- one of `--allowed-host` (`FH_UTILS_ALLOWED_HOST`): a name, `.example.com` for the domain and
  every name under it (a proxy, a tunnel), or `*` for every host.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Sequence

from fh_utils.asgi import ASGIApp, Receive, Scope, Send

__all__ = ["ALLOWED_HOST_ENV", "HostGuard", "allowed_hosts", "host_allowed"]

ALLOWED_HOST_ENV = "FH_UTILS_ALLOWED_HOST"  # names separated by spaces or commas


def allowed_hosts(explicit: Sequence[str] | str | None) -> list[str]:
    """The hosts allowed besides the always allowed ones: `explicit` when given (it wins),
    else `$FH_UTILS_ALLOWED_HOST`. The one place every entry point resolves them."""
    if explicit is None:
        explicit = os.environ.get(ALLOWED_HOST_ENV, "")
    values = [explicit] if isinstance(explicit, str) else list(explicit)
    return [name for value in values for name in value.replace(",", " ").split()]

logger = logging.getLogger("fh_utils")


def _hostname(host: str) -> str:
    """`Host` header -> the name without port or brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host: str | None, allowed: Iterable[str] = (), bound: str | None = None) -> bool:
    """Whether a request with this `Host` header may reach the app (see the module's doc)."""
    if host is None:  # HTTP/1.0 without Host: not a browser
        return True
    name = _hostname(host)
    if not name or _is_ip(name) or name == "localhost" or name.endswith(".localhost"):
        return True
    if bound is not None and name == _hostname(bound):
        return True
    for entry in allowed:
        entry = entry.strip().lower()
        if entry == "*" or entry == name:
            return True
        if entry.startswith(".") and (name == entry[1:] or name.endswith(entry)):
            return True
    return False


_VERDICTS = 64  # Host header values whose verdict is remembered


class HostGuard:
    """ASGI middleware: requests and WebSockets with a `Host` not allowed get 403."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = (), bound: str | None = None,
                 *, hint: str = "--allowed-host {name}") -> None:
        self.app = app
        self.allowed = allowed_hosts(list(allowed))
        self.bound = bound
        self.hint = hint  # how the entry point that started this server allows a host
        self._told: set[str] = set()
        self._verdicts: dict[str | None, bool] = {}  # by Host header: one parse per value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = None
        for key, value in scope.get("headers", ()):
            if key == b"host":
                host = value.decode("latin-1")
                break
        allowed = self._verdicts.get(host)
        if allowed is None:
            allowed = host_allowed(host, self.allowed, self.bound)
            if len(self._verdicts) >= _VERDICTS:  # (a client may send any Host it likes)
                self._verdicts.clear()
            self._verdicts[host] = allowed
        if allowed:
            await self.app(scope, receive, send)
            return
        name = _hostname(host or "")
        if name not in self._told:
            self._told.add(name)
            logger.warning("Refused a request for host %r: %s", name, self._how(name))
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        how = self._how(name)
        body = f"Blocked request: host {name!r} is not allowed. {how[0].upper()}{how[1:]}.\n"
        data = body.encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    def _how(self, name: str) -> str:
        return (f"start the server with {self.hint.format(name=name)} "
                f"(or set {ALLOWED_HOST_ENV}={name}) to allow it")
