"""fh_utils: a dev server that reloads edited modules in the same process.

`fh_utils dev app.py` serves the app and makes each saved edit live without restarting;
`no_reload_cache`, `no_reload` and `on_reload` keep expensive objects across reloads. In a
notebook, `%load_ext fh_utils` then `%fh app` serves an app from the kernel
(`fh_utils.notebook.magics`).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from fh_utils.serve.script import serve

if TYPE_CHECKING:
    from fh_utils.reload.pinning import no_reload, no_reload_cache, on_reload

__version__ = "0.6.0"

__all__ = ["__version__", "load_ipython_extension", "no_reload", "no_reload_cache",
           "on_reload", "serve", "unload_ipython_extension"]


# Imported when first used: `fh_utils status`, which an agent runs after every save, starts
# without them (they bring the reload machinery's imports, asyncio among them).
_PINNING = ("no_reload", "no_reload_cache", "on_reload")


def __getattr__(name: str) -> Any:
    if name in _PINNING:
        from fh_utils.reload import pinning

        value = getattr(pinning, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PINNING})


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


class _MovedModules:  # a meta path finder and loader (importlib.abc costs 20 ms to import)
    """Imports an old module path as the module that now holds its names (the same object)."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        # (typeshed's loader protocol still asks for the long-deprecated load_module)
        return importlib.machinery.ModuleSpec(name, cast(Any, self)) if name in _MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module, replaced in exec_module

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system returns what sys.modules holds under the name once this returns.
        sys.modules[module.__name__] = importlib.import_module(_MOVED[module.__name__])


sys.meta_path.append(_MovedModules())
