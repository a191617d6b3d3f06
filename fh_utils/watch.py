"""What to watch and which changes count: `--reload-include` / `--reload-exclude`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import watchfiles

__all__ = ["WatchSpec"]


class WatchSpec:
    """The directories to watch and the filter that decides which changed paths matter.

    By default the working directory and the app's directory are watched; `includes` adds
    directories, `excludes` removes directories (files under them never trigger anything
    and their modules are never reloaded).
    """

    def __init__(
        self,
        app_dir: Path,
        includes: Sequence[str | Path] = (),
        excludes: Sequence[str | Path] = (),
        cwd: Path | None = None,
    ) -> None:
        cwd = (cwd or Path.cwd()).resolve()
        dirs: list[Path] = []
        for d in (cwd, app_dir, *(Path(i) for i in includes)):
            d = d.resolve()
            if not any(d.is_relative_to(seen) for seen in dirs):
                dirs = [s for s in dirs if not s.is_relative_to(d)] + [d]
        self.dirs = dirs
        self.exclude_dirs = [Path(e).resolve() for e in excludes]
        self._default = watchfiles.DefaultFilter()

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        """The filter handed to watchfiles: True when a change to `path` matters."""
        if not self._default(change, path):
            return False
        p = Path(path)
        return not any(p.is_relative_to(e) for e in self.exclude_dirs)
