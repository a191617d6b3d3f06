"""`fh_utils.serve()`: a drop-in for FastHTML's `serve()` that reloads in place."""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Sequence
from typing import Any

__all__ = ["serve"]

# `import fh_utils` imports this module: what it needs only when serving is imported then
# (`fh_utils status`, which an agent runs after every save, pays for every import here).

_serving = False  # one server per process: a reloaded module calling serve() again is a no-op


def serve(
    appname: str | None = None,
    app: str = "app",
    host: str | None = None,
    port: int | None = None,
    reload: bool = True,
    reload_includes: Sequence[str] | str | None = None,
    reload_excludes: Sequence[str] | str | None = None,
    live: bool = False,
    procs: int | None = None,
    allowed_hosts: Sequence[str] | str | None = None,
    verify: bool | None = None,
    **kwargs: Any,
) -> None:
    """Serve the app of the calling script with in-place reloading; FastHTML's `serve()` API.

    Put `serve()` at the bottom of `app.py` and run `python app.py`. Like FastHTML's, it does
    nothing unless called from the `__main__` module, so importing `app.py` (from tests, from
    `fh_utils dev`, or on each reload) never starts a server. The script's module becomes the
    importable module `app` without running again, so its start-up work (a model load) happens
    once, and every reload re-executes `app.py` as `app`.

    `reload=False` serves without watching; `live=True` refreshes open pages after each reload.
    `allowed_hosts` are Host headers accepted besides localhost and IP addresses (a proxy or
    tunnel name, `.example.com`, `*`), as `--allowed-host` (default: `$FH_UTILS_ALLOWED_HOST`).
    `verify` checks each reload in place against a fresh process, as `--verify/--no-verify`
    (default: `$FH_UTILS_VERIFY`, else on unless a fresh start takes over 2 s).
    `port` defaults to `$PORT` or 5001. `host` defaults to 127.0.0.1, not FastHTML's
    `0.0.0.0`: a dev server shows tracebacks and source, so it serves this machine only unless
    you pass `host="0.0.0.0"`. Other keyword arguments go to `uvicorn.Config` (`root_path`,
    `ssl_keyfile`, `log_level`, ...).
    """
    global _serving
    caller = sys._getframe(1).f_globals
    if caller.get("__name__") == "__main__":
        main = sys.modules["__main__"]
    else:  # FastHTML also serves a module whose function is called from __main__
        back = sys._getframe(2) if _has_frame(2) else None
        if back is None or back.f_globals.get("__name__") != "__main__":
            return
        main = sys.modules[caller["__name__"]]
        appname = appname or caller["__name__"]
    if _serving:
        return
    _serving = True

    import logging
    from pathlib import Path

    from fh_utils.serve.hosts import allowed_hosts as resolve_hosts
    from fh_utils.serve.processes import run_dev
    from fh_utils.serve.session import DevOptions  # imports IPython: only when serving
    from fh_utils.target import AppTarget, TargetError, resolve_target

    if procs not in (None, 1):
        logging.getLogger("fh_utils").warning(
            "serve(procs=%s) is not supported in dev mode: serving one process "
            "(use `fh_utils run --workers N` in production)", procs)
    file = getattr(main, "__file__", None)
    if appname:
        directory = Path(file).resolve().parent if file else Path.cwd()
        target = AppTarget(module=appname, attr=app, app_dir=directory)
    elif file:
        try:
            target = resolve_target(file, app)
        except TargetError as exc:
            raise SystemExit(f"fh_utils.serve(): {exc}") from None
    else:
        raise RuntimeError("serve() cannot tell which module to serve: pass appname=")
    if target.module not in sys.modules and main.__name__ == "__main__":
        _adopt(main, target.module)
    notes: tuple[str, ...] = ()
    if host is None:
        host = "127.0.0.1"
        notes = ("serve(): serving this machine only (127.0.0.1); pass host='0.0.0.0' to "
                 "serve the network",)
    options = DevOptions(
        notes=notes,
        target=target,
        host=host,
        project_loaded=True,  # the script ran: the zygote must be a fresh interpreter
        port=port or int(os.getenv("PORT", "5001")),
        log_level=kwargs.pop("log_level", "info"),
        reload="fast" if reload else "no",
        live=live,
        reload_includes=_listify(reload_includes),
        reload_excludes=_listify(reload_excludes),
        allowed_hosts=resolve_hosts(allowed_hosts),
        host_hint="serve(allowed_hosts=['{name}'])",
        verify=verify if verify is not None else _env_flag("FH_UTILS_VERIFY"),
        uvicorn=kwargs,
    )
    try:
        run_dev(options)
    finally:
        _serving = False


def _adopt(main: types.ModuleType, name: str) -> None:
    """Make the running script the importable module `name`, without running it again."""
    import importlib.util
    from pathlib import Path

    file = str(Path(main.__file__ or "").resolve())
    old = main.__name__
    main.__name__ = name
    main.__spec__ = importlib.util.spec_from_file_location(name, file)
    main.__package__ = name.rpartition(".")[0]
    for value in list(vars(main).values()):
        if isinstance(value, type | types.FunctionType) and value.__module__ == old:
            value.__module__ = name
    sys.modules[name] = main
    from fh_utils.reload import pinning as cache

    cache.engine.rename_module(old, name)


def _env_flag(name: str) -> bool | None:
    """A boolean environment variable as click reads one; None when unset or empty."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    return value in ("1", "true", "t", "yes", "y", "on")


def _listify(value: Sequence[str] | str | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _has_frame(depth: int) -> bool:
    try:
        sys._getframe(depth + 1)
    except ValueError:
        return False
    return True
