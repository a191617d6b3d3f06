"""`fh_utils run`: production mode. Plain uvicorn: no watcher, no IPython, no live endpoint."""

from __future__ import annotations

from typing import Any

import uvicorn

from fh_utils.target import AppTarget

__all__ = ["run_production"]


def run_production(target: AppTarget, workers: int | None = None, **kwargs: Any) -> None:
    """Serve `target` with `uvicorn.run`, as `uvicorn module:attr` would.

    The app is given as an import string with its directory, so `workers` > 1 works.
    """
    uvicorn.run(
        target.label,
        app_dir=str(target.app_dir),
        factory=target.factory,
        workers=workers,
        **kwargs,
    )
