"""The `fh_utils` command: turns options into a call of a typed function, nothing more."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fh_utils import __version__
from fh_utils.target import TargetError, resolve_target

__all__ = ["main"]

LOG_LEVELS = ["critical", "error", "warning", "info", "debug", "trace"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fh_utils")
def main() -> None:
    """fh_utils: a dev server that makes each saved edit live in the same process."""


@main.command()
@click.argument("path")
@click.option("--app", "attr", default="app", show_default=True,
              help="Name of the ASGI app (or factory) in the module.")
@click.option("--factory", is_flag=True, default=False,
              help="Treat the attribute as a factory that returns the app.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind to this address.")
@click.option("--port", type=int, default=5001, show_default=True, envvar="PORT",
              show_envvar=True, help="Bind to this port.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True,
              help="Log level.")
@click.option("--reload-include", "reload_includes", multiple=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Also watch this directory (repeatable).")
@click.option("--reload-exclude", "reload_excludes", multiple=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Never reload from this directory (repeatable).")
def dev(
    path: str,
    attr: str,
    factory: bool,
    host: str,
    port: int,
    log_level: str,
    reload_includes: tuple[Path, ...],
    reload_excludes: tuple[Path, ...],
) -> None:
    """Serve PATH (app.py, src/pkg/app.py or module:attr), reloading edits in place."""
    try:
        target = resolve_target(path, attr, factory)
    except TargetError as exc:
        raise click.UsageError(str(exc)) from None
    for directory in reload_includes:
        if not directory.is_dir():
            raise click.BadParameter(
                f"{directory} is not a directory", param_hint="--reload-include"
            )
    from fh_utils.dev import DevOptions, run_dev  # imports IPython: only here

    run_dev(
        DevOptions(
            target=target,
            host=host,
            port=port,
            log_level=log_level,
            reload_includes=[str(d) for d in reload_includes],
            reload_excludes=[str(d) for d in reload_excludes],
        )
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
