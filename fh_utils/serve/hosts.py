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
from collections.abc import Iterable

from fh_utils.asgi import ASGIApp, Receive, Scope, Send

__all__ = ["HostGuard", "host_allowed"]

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


class HostGuard:
    """ASGI middleware: requests and WebSockets with a `Host` not allowed get 403."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = (), bound: str | None = None
                 ) -> None:
        self.app = app
        self.allowed = [a for value in allowed for a in value.replace(",", " ").split()]
        self.bound = bound
        self._told: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = None
        for key, value in scope.get("headers", ()):
            if key == b"host":
                host = value.decode("latin-1")
                break
        if host_allowed(host, self.allowed, self.bound):
            await self.app(scope, receive, send)
            return
        name = _hostname(host or "")
        if name not in self._told:
            self._told.add(name)
            logger.warning("Refused a request for host %r: add --allowed-host %s to allow it",
                           name, name)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = (f"Blocked request: host {name!r} is not allowed. Start the server with "
                f"--allowed-host {name} to allow it.\n").encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
