"""fh_utils: a dev server that reloads edited modules in the same process.

`fh_utils dev app.py` serves the app and makes each saved edit live without restarting;
`no_reload_cache`, `no_reload` and `on_reload` keep expensive objects across reloads.
"""

from __future__ import annotations

from fh_utils.cache import no_reload, no_reload_cache, on_reload
from fh_utils.serving import serve

__version__ = "0.6.0"

__all__ = ["__version__", "no_reload", "no_reload_cache", "on_reload", "serve"]
