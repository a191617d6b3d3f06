"""Who asked: the first caller outside the standard library, a project file or not.

A directory listing, a logging handler or an `atexit` callback made while a project module runs
is the module's own only if the module's code asked for it, directly or through the standard
library (`glob`, `logging.basicConfig`): not when an installed package does its own lazy set-up
on first use, which a re-run would not repeat.
"""

from __future__ import annotations

import inspect
import os
import sys
import sysconfig
import types
from collections.abc import Callable
from pathlib import Path
from types import FrameType

__all__ = ["asked_by_project", "clear_memo", "memoised_caller", "project_code"]

_paths = sysconfig.get_paths()
_STDLIB = str(Path(_paths["stdlib"]).resolve()) + os.sep
_IMPORTLIB = _STDLIB + "importlib" + os.sep
_SITE = tuple({str(Path(_paths[k]).resolve()) + os.sep for k in ("purelib", "platlib")})
_OWN = str(Path(__file__).resolve().parent) + os.sep


def asked_by_project(is_project_file: Callable[[str], bool], skip: int = 1) -> bool:
    """Whether the first frame above the caller (`skip` frames up) that is neither the standard
    library nor fh_utils is in a project file. `importlib` (metadata scans of `sys.path`) and
    installed packages are never the project."""
    frame: FrameType | None = sys._getframe(skip + 1)
    while frame is not None:
        file = frame.f_code.co_filename
        if file.startswith(_SITE) or file.startswith(_IMPORTLIB):
            return False
        if not (file.startswith(_OWN) or file.startswith(_STDLIB) or not os.path.isabs(file)):
            return is_project_file(file)
        frame = frame.f_back
    return False


def project_code(is_project_file: Callable[[str], bool]) -> types.CodeType | None:
    """The code of the innermost project frame running now, if any."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if is_project_file(frame.f_code.co_filename):
            return frame.f_code
        frame = frame.f_back
    return None


def memoised_caller(is_project_file: Callable[[str], bool], skip: int = 1
                    ) -> tuple[str, str] | None:
    """The memoised project function this call runs in, as (module, name): one whose module
    (or one of the module's classes) holds a wrapper with `cache_clear` around its code, as
    `functools.cache`, `lru_cache` and cachetools' `cached` make. None when there is none."""
    frame: FrameType | None = sys._getframe(skip + 1)
    while frame is not None:
        code = frame.f_code
        if is_project_file(code.co_filename):
            found = _memo_holding(frame.f_globals, code)
            if found is not None:
                return found
        frame = frame.f_back
    return None


def _memo_holding(namespace: dict[str, object], code: types.CodeType
                  ) -> tuple[str, str] | None:
    module = str(namespace.get("__name__", ""))
    for name, value in list(namespace.items()):
        if _wraps(value, code):
            return module, name
        if isinstance(value, type) and value.__module__ == module:
            for attr, member in list(vars(value).items()):
                if _wraps(member, code):
                    return module, f"{name}.{attr}"
    return None


def _wraps(obj: object, code: types.CodeType) -> bool:
    if not callable(getattr(obj, "cache_clear", None)):
        return False
    try:
        inner = inspect.unwrap(obj)  # type: ignore[arg-type]
    except ValueError:  # a cycle of __wrapped__
        return False
    return getattr(inner, "__code__", None) is code


def clear_memo(module: str, name: str) -> bool:
    """Empty that memoised function's cache (`memoised_caller`'s names); False if it is gone."""
    target: object = sys.modules.get(module)
    for part in name.split("."):
        target = getattr(target, part, None)
    clear = getattr(target, "cache_clear", None)
    if not callable(clear):
        return False
    clear()
    return True
