"""fh_utils: a dev server that reloads edited modules in the same process.

`fh_utils dev app.py` serves the app and makes each saved edit live without restarting;
`no_reload_cache`, `no_reload` and `on_reload` keep expensive objects across reloads. In a
notebook, `%load_ext fh_utils` then `%fh app` serves an app from the kernel
(`fh_utils.jupyter`).
"""

from __future__ import annotations

from typing import Any

from fh_utils.cache import no_reload, no_reload_cache, on_reload
from fh_utils.serving import serve

__version__ = "0.6.0"

__all__ = ["__version__", "load_ipython_extension", "no_reload", "no_reload_cache",
           "on_reload", "serve", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext fh_utils` (IPython and uvicorn are imported only now)."""
    from fh_utils import jupyter

    jupyter.load_ipython_extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """`%unload_ext fh_utils`."""
    from fh_utils import jupyter

    jupyter.unload_ipython_extension(ipython)
