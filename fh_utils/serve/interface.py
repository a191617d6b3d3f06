"""The user's app as ASGI 3, whatever it is written as (uvicorn's `--interface` rules)."""

from __future__ import annotations

import inspect
from typing import Any

from uvicorn.middleware import wsgi
from uvicorn.middleware.asgi2 import ASGI2Middleware

__all__ = ["as_asgi3"]

_WSGIMiddleware: Any = getattr(wsgi, "WSGIMiddleware")  # noqa: B009  # uvicorn's, or a2wsgi's


def as_asgi3(app: Any, interface: str) -> Any:
    """Wrap an ASGI 2 or WSGI app so the switch can call it as ASGI 3 (uvicorn's rules)."""
    if interface == "auto":
        if inspect.isclass(app):
            interface = "asgi3" if hasattr(app, "__await__") else "asgi2"
        elif inspect.isfunction(app):
            interface = "asgi3" if inspect.iscoroutinefunction(app) else "asgi2"
        else:
            call = getattr(app, "__call__", None)  # noqa: B004
            interface = "asgi3" if inspect.iscoroutinefunction(call) else "asgi2"
    if interface == "asgi2":
        return ASGI2Middleware(app)
    if interface == "wsgi":
        return _WSGIMiddleware(app)
    return app
