"""The `--env-file` as part of a reload: its variables in `os.environ`, changed atomically.

uvicorn loads the env file into `os.environ` once. Under `fh_utils dev` a change to it is
applied like a code change: the variables that changed are set (or removed) when the batch
runs, put back if the batch fails, and the modules and caches that read them re-run.
Variables the real environment set to another value win, as with `load_dotenv`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["EnvFile"]

Changes = dict[str, str | None]  # variable -> new value (None: removed)


class EnvFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()
        values = self._read()
        # Set in the real environment with another value: they win.
        self._kept = {k for k, v in os.environ.items() if values.get(k) != v}
        self._applied: dict[str, str] = {}  # what this file put into os.environ

    def load(self) -> None:
        """Put the file's variables into `os.environ` (start-up)."""
        self.apply(self.changes())

    def changes(self) -> Changes:
        """What would change in `os.environ` if the file, as it is now, were applied."""
        values = self._read()
        changes: Changes = {k: None for k in self._applied if k not in values}
        for key, value in values.items():
            if self._applied.get(key) != value:
                changes[key] = value
        return changes

    def apply(self, changes: Changes) -> Changes:
        """Make `changes` in `os.environ`; returns what `apply` takes to undo them."""
        undo: Changes = {}
        for key, value in changes.items():
            undo[key] = self._applied.get(key)
            if value is None:
                self._applied.pop(key, None)
                os.environ.pop(key, None)
            else:
                self._applied[key] = value
                os.environ[key] = value
        return undo

    def _read(self) -> dict[str, str]:
        from dotenv import dotenv_values  # installed with uvicorn[standard]

        if not self.path.is_file():
            return {}
        kept: set[str] = getattr(self, "_kept", set())
        return {k: v for k, v in dotenv_values(self.path).items()
                if v is not None and k not in kept}
