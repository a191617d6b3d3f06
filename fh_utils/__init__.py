"""fh_utils: a dev server that reloads edited modules in the same process."""

from __future__ import annotations

__version__ = "0.6.0"

__all__ = ["__version__"]
