"""fh_utils: a dev server that reloads edited modules in the same process.

`fh_utils dev app.py` serves the app and makes each saved edit live without restarting;
`no_reload_cache`, `no_reload` and `on_reload` keep expensive objects across reloads. In a
notebook, `%load_ext fh_utils` then `%fh app` serves an app from the kernel
(`fh_utils.notebook.magics`).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

from fh_utils.reload.pinning import no_reload, no_reload_cache, on_reload
from fh_utils.serve.script import serve

__version__ = "0.6.0"

__all__ = ["__version__", "load_ipython_extension", "no_reload", "no_reload_cache",
           "on_reload", "serve", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext fh_utils` (IPython and uvicorn are imported only now)."""
    from fh_utils.notebook import magics as jupyter

    jupyter.load_ipython_extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """`%unload_ext fh_utils`."""
    from fh_utils.notebook import magics as jupyter

    jupyter.unload_ipython_extension(ipython)


# Public names kept their old import paths when the package was split into folders
# (`from fh_utils.cache import no_reload_cache` in an app written for 0.6).
_MOVED = {
    "fh_utils.cache": "fh_utils.reload.pinning",
    "fh_utils.serving": "fh_utils.serve.script",
    "fh_utils.live": "fh_utils.browser.live",
    "fh_utils.jupyter": "fh_utils.notebook.magics",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module that now holds its names (the same object)."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name in _MOVED else None

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system returns what sys.modules holds under the name once this returns.
        sys.modules[module.__name__] = importlib.import_module(_MOVED[module.__name__])


sys.meta_path.append(_MovedModules())
