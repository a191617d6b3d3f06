"""uvicorn's private parts that fh_utils uses, and nothing else of uvicorn's internals.

- the `uvicorn` click command's parameters, so `fh_utils dev` and `run` take every uvicorn
  option with uvicorn's own names, types, defaults and help;
- `Server._captured_signals`, the signals a server was asked to stop by (re-raised when it
  has stopped);
- `Server.server_state.connections` and `Server.servers`: the open connections and the
  listening servers, for a worker that steps down while a newer one takes the socket;
- the event loop a config runs (`Config.get_loop_factory` from uvicorn 0.36, the event loop
  policy `Config.setup_event_loop` sets before).

Each is checked by shape on first use; `check()` checks them all (the tests call it).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click
import uvicorn
from uvicorn.server import HANDLED_SIGNALS

from fh_utils.adapters import IncompatibleVersion

__all__ = ["HANDLED_SIGNALS", "VERSION", "captured_signals", "check", "command",
           "connections", "listeners", "loop_factory"]

VERSION: str = uvicorn.__version__

# The options of `uvicorn` that fh_utils defines differently or refers to by name.
_NEEDED_OPTIONS = {"host", "port", "headers", "factory", "log_level", "workers",
                   "reload_dirs", "reload_includes", "reload_excludes", "reload_delay",
                   "env_file", "interface", "lifespan"}


def command() -> click.Command:
    """The `uvicorn` command itself (`uvicorn.main:main`)."""
    module = sys.modules.get("uvicorn.main")
    found = getattr(module, "main", None)
    if not isinstance(found, click.Command):
        raise IncompatibleVersion("uvicorn", VERSION, "the click command uvicorn.main:main")
    names = {p.name for p in found.params}
    missing = sorted(_NEEDED_OPTIONS - names)
    if missing:
        raise IncompatibleVersion("uvicorn", VERSION,
                                  f"the options {', '.join(missing)} of the uvicorn command")
    return found


def captured_signals(server: uvicorn.Server) -> list[int]:
    """The signals that asked `server` to stop, in order (uvicorn re-raises them at exit)."""
    found = getattr(server, "_captured_signals", None)
    if not isinstance(found, list):
        raise IncompatibleVersion("uvicorn", VERSION, "Server._captured_signals (a list)")
    return found


def connections(server: uvicorn.Server) -> Iterable[Any]:
    """The connections (protocol objects with `.client` and `.shutdown()`) open now."""
    state = getattr(server, "server_state", None)
    found = getattr(state, "connections", None)
    if not isinstance(found, set | list):
        raise IncompatibleVersion("uvicorn", VERSION, "Server.server_state.connections")
    return found


def listeners(server: uvicorn.Server) -> list[asyncio.AbstractServer]:
    """The listening servers; none before start-up."""
    found = getattr(server, "servers", [])
    if not isinstance(found, list):
        raise IncompatibleVersion("uvicorn", VERSION, "Server.servers (a list)")
    return found


def loop_factory(config: uvicorn.Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop uvicorn would run (uvloop where `--loop auto` finds it): uvicorn 0.36 made
    that a loop factory; before, `setup_event_loop` set the event loop policy instead (None)."""
    get_loop_factory = getattr(config, "get_loop_factory", None)
    if get_loop_factory is not None:
        factory: Callable[[], asyncio.AbstractEventLoop] | None = get_loop_factory()
        return factory
    setup = getattr(config, "setup_event_loop", None)
    if setup is None:
        raise IncompatibleVersion("uvicorn", VERSION,
                                  "Config.get_loop_factory (or, before 0.36, setup_event_loop)")
    setup()
    return None


def check() -> None:
    """Raise `IncompatibleVersion` unless everything above has the shape fh_utils uses."""
    command()
    server = uvicorn.Server(uvicorn.Config(_no_app))
    captured_signals(server)
    connections(server)
    listeners(server)


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("fh_utils.adapters.uvicorn.check() serves nothing")
