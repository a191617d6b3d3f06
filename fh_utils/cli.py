"""The `fh_utils` command: turns options into a call of a typed function, nothing more.

Both commands take every uvicorn command-line option that makes sense for them, copied from
the installed uvicorn so names, types, defaults and help stay the same. Each option can also come
from an environment variable `FH_UTILS_<OPTION>` (`FH_UTILS_PORT`, `FH_UTILS_ROOT_PATH`, ...);
an explicit flag wins.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

import click
import uvicorn

from fh_utils import __version__
from fh_utils import status as status_client
from fh_utils.adapters import uvicorn as uvicorn_adapter
from fh_utils.target import AppTarget, TargetError, resolve_target

__all__ = ["main", "uvicorn_kwargs"]

_UVICORN: click.Command = uvicorn_adapter.command()  # the `uvicorn` command itself
# uvicorn options fh_utils defines itself, or that the commands below never take.
_NOT_COPIED = {"app", "reload", "version", "factory", "port"}
_RELOAD_OPTIONS = ("reload_dirs", "reload_includes", "reload_excludes", "reload_delay")
_DEV_ONLY = ("escalate", "verify", "keep_connections", "timeout_lifespan", "allowed_hosts",
             "live_morph", "editor", "log_format")

# Options that exist on a command but cannot apply there: refused with the reason.
DEV_REFUSED = {
    "workers": "fh_utils dev serves one process that reloads in place; "
    "use `fh_utils run --workers N` for several workers",
    "timeout_worker_healthcheck": "it applies to --workers, which fh_utils dev does not use",
}
RUN_REFUSED = {
    "reload_dirs": "fh_utils run is production mode and never reloads; use `fh_utils dev`",
    "reload_includes": "fh_utils run is production mode and never reloads; use `fh_utils dev`",
    "reload_excludes": "fh_utils run is production mode and never reloads; use `fh_utils dev`",
    "reload_delay": "fh_utils run is production mode and never reloads; use `fh_utils dev`",
    "reload": "fh_utils run is production mode and never reloads; use `fh_utils dev`",
    "live": "live browser refresh exists only in `fh_utils dev --live`",
    "clear": "fh_utils run does not reload, so there is nothing to clear between reloads",
}


# Where fh_utils dev gives an option a wider meaning than uvicorn's text says.
DEV_HELP = {
    "reload_dirs": "Watch this directory instead of the working directory and the app's "
    "directory (repeatable).",
    "reload_includes": "Also watch this directory, or react to files matching this glob "
    "pattern (repeatable). Every file not excluded is reported already; with --reload full "
    "the default is uvicorn's '*.py'.",
    "reload_excludes": "Never react to, or reload code from, this directory or files matching "
    "this glob pattern (repeatable). Editor swap files, .git, .venv, __pycache__ and "
    "node_modules are always excluded.",
}


def _refused_help(refused: dict[str, str]) -> dict[str, str]:
    return {name: f"Refused here: {reason}." for name, reason in refused.items()}


def _env(option: str) -> str:
    return "FH_UTILS_" + option.lstrip("-").replace("-", "_").upper()


def _copy(param: click.Parameter, **changes: Any) -> click.Option:
    option = copy.copy(param)
    assert isinstance(option, click.Option)
    option.envvar = _env(option.opts[0])
    option.show_envvar = False
    option.show_default = True
    for key, value in changes.items():
        setattr(option, key, value)
    return option


def _uvicorn_options(
    skip: set[str], helps: dict[str, str] | None = None
) -> Callable[[click.Command], click.Command]:
    def add(command: click.Command) -> click.Command:
        for param in _UVICORN.params:
            if isinstance(param, click.Option) and param.name not in skip | _NOT_COPIED:
                # uvicorn 0.55 parses --header in a callback of its own (into tuples, with its
                # own error); before, it passed the strings on. fh_utils parses them itself,
                # the same way whichever uvicorn is installed.
                option = _copy(param, callback=None) if param.name == "headers" else _copy(param)
                if helps and param.name in helps:
                    option.help = helps[param.name]
                command.params.append(option)
        return command

    return add


def _common(command: click.Command) -> click.Command:
    """PATH, --app, --factory, --port: the same on both commands."""
    factory = next(p for p in _UVICORN.params if p.name == "factory")
    command.params[:0] = [
        click.Argument(["path"]),
        click.Option(["--app", "attr"], default="app", show_default=True, envvar=_env("app"),
                     help="Name of the ASGI app (or factory) in the module; "
                     "`module:attr` in PATH wins."),
        _copy(factory),
        click.Option(["--port"], type=int, default=5001, show_default=True,
                     envvar=[_env("port"), "PORT"],
                     help="Bind socket to this port (also from $PORT, as FastHTML's serve)."),
    ]
    return command


def _refuse(ctx: click.Context, refused: dict[str, str], values: dict[str, Any]) -> None:
    for name, reason in refused.items():
        if name not in values:
            continue
        source = ctx.get_parameter_source(name)
        if source in (click.core.ParameterSource.COMMANDLINE,
                      click.core.ParameterSource.ENVIRONMENT):
            flag = next(p.opts[0] for p in ctx.command.params if p.name == name)
            raise click.UsageError(f"{flag} cannot be used here: {reason}.")


def uvicorn_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """Option values (as click gives them) → keyword arguments for `uvicorn.Config`."""
    kwargs = {
        k: v for k, v in values.items()
        if k not in {"path", "attr", "factory", "app_dir", "reload", "live", "clear", "workers",
                     "timeout_worker_healthcheck", *_RELOAD_OPTIONS, *_DEV_ONLY}
    }
    kwargs["headers"] = [tuple(h.split(":", 1)) for h in values.get("headers") or ()]
    for header in kwargs["headers"]:
        if len(header) != 2:
            raise click.BadParameter(f"{header[0]!r} is not 'Name: value'", param_hint="--header")
    if kwargs.get("log_config") is None:
        kwargs.pop("log_config", None)
    return kwargs


def _target(values: dict[str, Any]) -> AppTarget:
    try:
        return resolve_target(values["path"], values["attr"], values["factory"],
                              app_dir=values.get("app_dir") or None)
    except TargetError as exc:
        raise click.UsageError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fh_utils",
                      message=f"%(prog)s %(version)s (uvicorn {uvicorn.__version__})")
def main() -> None:
    """fh_utils: a dev server that makes each saved edit live in the same process."""


@_common
@_uvicorn_options(skip=set(), helps={**DEV_HELP, **_refused_help(DEV_REFUSED)})
@main.command(context_settings={"show_default": True})
@click.option("--reload", "reload", type=click.Choice(["fast", "full", "no"]), default="fast",
              envvar=_env("reload"),
              help="fast: re-run changed modules in place; full: restart the process on "
              "change, like uvicorn --reload; no: do not watch.")
@click.option("--live/--no-live", default=False, envvar=_env("live"),
              help="Refresh open browser pages after each reload and show errors in the page.")
@click.option("--live-morph/--no-live-morph", default=True, envvar=_env("live_morph"),
              help="With --live, update open pages in place (scroll, focus and typed input "
              "kept); --no-live-morph reloads them instead.")
@click.option("--editor", default=None, envvar=_env("editor"),
              help="Command that opens file:line links of the --live overlay (default: "
              "$VISUAL, $EDITOR, or code, cursor, vim, emacs or idea found on PATH).")
@click.option("--clear/--no-clear", default=False, envvar=_env("clear"),
              help="Clear the terminal before each reload, so only the latest output shows.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              envvar=_env("log_format"),
              help="json: also print each reload's outcome as one JSON object a line on "
              "stdout (the events of `fh_utils status`; the log stays on stderr).")
@click.option("--escalate/--no-escalate", default=True, envvar=_env("escalate"),
              help="When a reload in place cannot serve what a fresh start would, re-import "
              "the project or restart the worker process by itself.")
@click.option("--verify/--no-verify", default=None, envvar=_env("verify"),
              help="After each reload in place, start the edited project in a fresh worker "
              "in the background and compare; if it serves something else, it takes over. "
              "Default: on, unless a fresh start takes over 2 s (a model loaded at import); "
              "--verify checks even then.  [default: on]")
@click.option("--keep-connections/--no-keep-connections", default=False,
              envvar=_env("keep_connections"),
              help="Leave the previous app's WebSockets and streams open after a reload "
              "(by default they are closed with 1012, so clients reconnect to the new code).")
@click.option("--timeout-lifespan", type=float, default=30.0, envvar=_env("timeout_lifespan"),
              help="Seconds an app's lifespan startup or shutdown may take; a startup that "
              "takes longer is a failed reload.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, envvar=_env("allowed_host"),
              help="Also accept requests for this Host header (a proxy or tunnel name; "
              "'.example.com' for a domain and its subdomains; '*' for any). localhost and IP "
              "addresses are always accepted (repeatable).")
@click.pass_context
def dev(ctx: click.Context, /, **values: Any) -> None:
    """Serve PATH (app.py, src/pkg/app.py or module:attr), reloading edits in place."""
    _refuse(ctx, DEV_REFUSED, values)
    if values["reload"] != "full" and ctx.get_parameter_source("reload_delay") in (
        click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT
    ):
        raise click.UsageError("--reload-delay cannot be used here: it applies to --reload full.")
    target = _target(values)
    from fh_utils.serve.processes import run_dev
    from fh_utils.serve.session import DevOptions  # imports IPython: only here

    kwargs = uvicorn_kwargs(values)
    run_dev(
        DevOptions(
            target=target,
            host=kwargs.pop("host"),
            port=kwargs.pop("port"),
            log_level=kwargs.pop("log_level"),
            log_format=values["log_format"],
            reload=values["reload"],
            live=values["live"],
            live_morph=values["live_morph"],
            editor=values["editor"],
            clear=values["clear"],
            reload_dirs=list(values["reload_dirs"]),
            reload_includes=list(values["reload_includes"]),
            reload_excludes=list(values["reload_excludes"]),
            reload_delay=values["reload_delay"],
            escalate=values["escalate"],
            verify=values["verify"],
            keep_connections=values["keep_connections"],
            timeout_lifespan=values["timeout_lifespan"],
            allowed_hosts=list(values["allowed_hosts"]),
            uvicorn=kwargs,
        )
    )


@_common
@_uvicorn_options(skip=set(), helps=_refused_help(RUN_REFUSED))
@main.command(context_settings={"show_default": True})
@click.option("--reload", "reload", is_flag=True, hidden=True)
@click.option("--live", is_flag=True, hidden=True)
@click.option("--clear", is_flag=True, hidden=True)
@click.pass_context
def run(ctx: click.Context, /, **values: Any) -> None:
    """Serve PATH in production: plain uvicorn, no watcher, no reload machinery."""
    _refuse(ctx, RUN_REFUSED, values)
    target = _target(values)
    kwargs = uvicorn_kwargs(values)
    kwargs["log_level"] = kwargs.get("log_level")
    from fh_utils.serve.production import run_production

    if "timeout_worker_healthcheck" in values:  # an option of uvicorn 0.37 and later only
        kwargs["timeout_worker_healthcheck"] = values["timeout_worker_healthcheck"]
    run_production(target, workers=values["workers"], **kwargs)


@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--wait", is_flag=True,
              help="First wait until every save made before this call is live or has failed.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the outcome as one JSON object (the event of the last reload).")
@click.option("--url", default=None, envvar=status_client.URL_ENV,
              help="The dev server's address (default: http://127.0.0.1 and $FH_UTILS_PORT, "
              "$PORT or 5001).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              envvar=status_client.TIMEOUT_ENV, help="Seconds to wait at most; then exit 2.")
def status(wait: bool, as_json: bool, url: str | None, timeout: float) -> None:
    """Print the outcome of the last reload of a running `fh_utils dev`: exit 0 when it is
    live, 1 when it failed, 2 when no server answers."""
    sys.exit(status_client.run(url, wait=wait, as_json=as_json, timeout=timeout))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
