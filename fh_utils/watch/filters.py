"""What to watch and which changes count: the directories, `--reload-include`, `--reload-exclude`.

Includes and excludes take directories or glob patterns, as uvicorn's do: a value naming an
existing directory is a directory (an include is watched, an exclude is skipped with everything
under it); any other value is a pattern matched against the end of a changed path
(`Path.match`: `*.html`, `templates/*`), and directories it matches in the working directory
count as directories too. Where uvicorn only reacts to `*.py` by default, fh_utils lets every
other file through as well: the reloader decides whether it matters (a file a module read while
it ran, a static file, the env file). A default exclude pattern named again by an include is
dropped, and an exclude pattern wins over an include pattern unless the changed path ends with
the include exactly (all as in uvicorn).
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import watchfiles

__all__ = ["DEFAULT_EXCLUDES", "IGNORED_DIRS", "WatchSpec", "ignored_by_default"]

# Directories nothing under which is ever reloaded or reported.
IGNORED_DIRS = frozenset(
    {".venv", "venv", ".git", ".hg", ".svn", "__pycache__", "node_modules", "site-packages",
     "dist-packages", ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache",
     ".hypothesis", ".idea", ".ipynb_checkpoints", ".eggs"}
)

# Editor swap, backup and temporary files, bytecode.
DEFAULT_EXCLUDES = (
    "*.py[cod]", "*.sw?", "*~", ".#*", "#*#", "4913", ".DS_Store", "*.___jb_???___",
    "flycheck_*",
)


def _vim_probe(name: str) -> bool:
    # Vim checks it may write a directory by creating 4913, or 4913 + 123 * n if that exists.
    return name.isdigit() and int(name) >= 4913 and (int(name) - 4913) % 123 == 0


def ignored_by_default(path: Path, roots: Iterable[Path] = ()) -> bool:
    """True for paths no default setup reacts to (`IGNORED_DIRS` count below the root only)."""
    return _ignored(path, _below(path, roots), IGNORED_DIRS, DEFAULT_EXCLUDES)


def _below(path: Path, roots: Iterable[Path]) -> tuple[str, ...]:
    """The parts of `path` below the root holding it: a project inside ~/venv/ is a project."""
    # Strings, not Paths: asked for every module at start-up and every change reported.
    text = str(path)
    for root in roots:
        prefix = str(root).rstrip(os.sep) + os.sep
        if text + os.sep == prefix:
            return ()
        if text.startswith(prefix):
            return tuple(text[len(prefix):].split(os.sep))
    return path.parts


def _inside(path: Path, dirs: Iterable[Path]) -> bool:
    """Whether `path` is one of `dirs` or lies below one (all absolute and resolved)."""
    text = str(path) + os.sep
    return any(text.startswith(str(d).rstrip(os.sep) + os.sep) for d in dirs)


@functools.lru_cache(maxsize=64)
def _matcher(patterns: tuple[str, ...]) -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    """`path.match(p) for p in patterns`, faster: the patterns of one part match the name,
    all at once (one regular expression); the others go to `Path.match`."""
    seps = tuple(filter(None, (os.sep, os.altsep)))
    names = [p for p in patterns if not any(sep in p for sep in seps)]
    rest = tuple(p for p in patterns if p not in names)
    if not names:
        return None, rest
    joined = "|".join(fnmatch.translate(os.path.normcase(p)) for p in names)
    return re.compile(f"(?:{joined})"), rest


def _ignored(path: Path, parts: Sequence[str], dirs: Iterable[str], patterns: Iterable[str]
             ) -> bool:
    if any(part in dirs for part in parts) or _vim_probe(path.name):
        return True
    by_name, rest = _matcher(tuple(patterns))
    if by_name is not None and by_name.match(os.path.normcase(path.name)):
        return True
    return any(path.match(pattern) for pattern in rest)


class WatchSpec:
    """The directories to watch and the filter that decides which changed paths matter.

    The working directory and the app's directory are watched (unless excluded, or replaced by
    `reload_dirs`), with the directories named by `includes`.

    >>> spec = WatchSpec(Path("."), includes=["*.html"], excludes=["*.log", "data"])
    >>> spec(watchfiles.Change.modified, str(Path.cwd() / "app.py.swp"))
    False
    """

    def __init__(
        self,
        app_dir: Path,
        includes: Sequence[str | Path] = (),
        excludes: Sequence[str | Path] = (),
        cwd: Path | None = None,
        reload_dirs: Sequence[str | Path] = (),
    ) -> None:
        cwd = (cwd or Path.cwd()).resolve()
        include_patterns, include_dirs = _resolve(includes, cwd)
        exclude_patterns, exclude_dirs = _resolve(excludes, cwd)
        self.include_patterns = [p for p in include_patterns if p not in exclude_patterns]
        self.exclude_patterns = [
            *(d for d in DEFAULT_EXCLUDES if d not in include_patterns), *exclude_patterns
        ]
        self.ignored_dirs = IGNORED_DIRS - set(include_patterns)
        self.exclude_dirs = exclude_dirs
        dirs: list[Path] = []
        # --reload-dir replaces the defaults (the working directory and the app's), as uvicorn's.
        base = [Path(d).resolve() for d in reload_dirs] or [cwd, app_dir.resolve()]
        for d in (*base, *include_dirs):
            if any(d.is_relative_to(e) for e in exclude_dirs):
                continue
            if not any(d.is_relative_to(seen) for seen in dirs):
                dirs = [s for s in dirs if not s.is_relative_to(d)] + [d]
        self.dirs = dirs or [cwd]

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        """The filter handed to watchfiles: True when a change to `path` may matter."""
        return not self.ignores(Path(path))

    def ignores(self, path: Path) -> bool:
        """True when nothing at `path` (absolute) may trigger a reload or be reloaded."""
        text = str(path)
        if any(text.endswith(pattern) for pattern in self.include_patterns):
            return False
        if _inside(path, self.exclude_dirs):
            return True
        return _ignored(path, _below(path, self.dirs), self.ignored_dirs, self.exclude_patterns)


def _resolve(values: Iterable[str | Path], cwd: Path) -> tuple[list[str], list[Path]]:
    """Split `--reload-include`/`--reload-exclude` values into patterns and directories."""
    patterns: list[str] = []
    dirs: list[Path] = []
    for value in values:
        text = str(value)
        path = Path(text) if Path(text).is_absolute() else cwd / text
        if path.is_dir():
            dirs.append(path.resolve())
            continue
        patterns.append(text)
        if text == ".*" or Path(text).is_absolute():  # `.*` means hidden files, not directories
            continue
        try:
            dirs.extend(match.resolve() for match in cwd.glob(text) if match.is_dir())
        except (ValueError, NotImplementedError, OSError):
            pass
    return list(dict.fromkeys(patterns)), list(dict.fromkeys(dirs))
