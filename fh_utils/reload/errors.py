"""What went wrong in the user's code, told without fh_utils' own frames."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Failure", "describe", "display_path"]

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_HIDDEN = ("<frozen importlib.", os.sep + os.path.join("importlib", "__init__.py"),
           os.path.join("IPython", "extensions", "autoreload.py"))


@dataclass(frozen=True)
class Failure:
    """A failed load or reload: where, what, and the traceback a person needs."""

    file: str | None
    line: int | None
    kind: str  # "SyntaxError"
    message: str  # "invalid syntax"
    traceback: str

    @property
    def error(self) -> str:
        """`SyntaxError: invalid syntax`."""
        return f"{self.kind}: {self.message}" if self.message else self.kind

    @property
    def summary(self) -> str:
        """`app.py:12: SyntaxError: invalid syntax`, the line the log and the page lead with."""
        if self.file is None:
            return self.error
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.error}"


def display_path(path: str | Path) -> str:
    """A path relative to the working directory when it lies under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def describe(exc: BaseException, is_project_file: Callable[[Path], bool]) -> Failure:
    """Summarise `exc`: file and line in the user's code, and the filtered traceback."""
    te = traceback.TracebackException.from_exception(exc)
    _filter(te, set())
    file = line = None
    if isinstance(exc, SyntaxError) and exc.filename:
        file, line = exc.filename, exc.lineno
    else:
        frames = list(te.stack)
        project = [f for f in frames if is_project_file(Path(f.filename))]
        if project or frames:
            frame = (project or frames)[-1]
            file, line = frame.filename, frame.lineno
    message = str(exc) if not isinstance(exc, SyntaxError) else (exc.msg or str(exc))
    return Failure(
        file=display_path(file) if file else None,
        line=line,
        kind=type(exc).__name__,
        message=message,
        traceback="".join(te.format()).rstrip("\n"),
    )


def _filter(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if not _hidden(f.filename)]
    )
    for chained in (te.__cause__, te.__context__):
        if chained is not None:
            _filter(chained, seen)


def _hidden(filename: str) -> bool:
    return filename.startswith(_PACKAGE_DIR + os.sep) or any(h in filename for h in _HIDDEN)
