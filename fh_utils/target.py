"""Turn what the user typed (`app.py`, `src/pkg/app.py`, `pkg.module:attr`) into an import."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AppTarget", "TargetError", "resolve_target"]

# What importlib can import by name: an identifier, or a file name with dashes in it
# (`counter-uuid.py`, as uvicorn and FastHTML's serve() accept).
_MODULE_PART = re.compile(r"[^\W\d][\w-]*\Z")


class TargetError(ValueError):
    """The user named an app that cannot be found; the message says exactly why."""


@dataclass(frozen=True)
class AppTarget:
    """Where the app lives: `module.attr`, and the directory to put on `sys.path`."""

    module: str
    attr: str = "app"
    factory: bool = False
    app_dir: Path = field(default_factory=Path.cwd)
    file: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.module}:{self.attr}"


def resolve_target(
    spec: str, attr: str = "app", factory: bool = False, app_dir: str | Path | None = None
) -> AppTarget:
    """Resolve a file path or `module:attr`.

    A file inside packages (directories with `__init__.py`) gets its dotted module name and the
    directory above the top package as its `sys.path` entry, so relative imports work. An
    import string is looked up in `app_dir` (default: the working directory), as uvicorn does:

    >>> resolve_target("src/shop/app.py")  # doctest: +SKIP
    AppTarget(module='shop.app', attr='app', app_dir=PosixPath('/abs/src'), ...)
    """
    path = Path(spec)
    if spec.endswith(".py") or path.is_file() or path.is_dir() or "/" in spec or "\\" in spec:
        return _from_file(path, attr, factory)
    module, colon, name = spec.partition(":")
    if colon and not name:
        raise TargetError(f"{spec!r}: expected 'module:attribute', the attribute is missing")
    if not module or not all(_MODULE_PART.match(part) for part in module.split(".")):
        raise TargetError(
            f"{spec!r} is neither a Python file nor an import string like 'package.module:app'"
        )
    if colon and not name.isidentifier():
        raise TargetError(f"{spec!r}: {name!r} is not a valid attribute name")
    directory = Path(app_dir).resolve() if app_dir else Path.cwd()
    return AppTarget(module=module, attr=name or attr, factory=factory, app_dir=directory)


def _from_file(path: Path, attr: str, factory: bool) -> AppTarget:
    if path.is_dir():
        if not (path / "__init__.py").is_file():
            raise TargetError(f"{path} is a directory, not a Python file")
        path = path / "__init__.py"
    if not path.exists():
        raise TargetError(f"{path} does not exist")
    if path.suffix != ".py":
        raise TargetError(f"{path} is not a Python file (expected a .py file)")
    path = path.resolve()
    parts = [] if path.stem == "__init__" else [path.stem]
    directory = path.parent
    while (directory / "__init__.py").is_file():
        parts.insert(0, directory.name)
        directory = directory.parent
    if not parts or not all(_MODULE_PART.match(p) for p in parts):
        raise TargetError(f"{path} cannot be imported: {'.'.join(parts)!r} is not a module name")
    return AppTarget(
        module=".".join(parts), attr=attr, factory=factory, app_dir=directory, file=path
    )
