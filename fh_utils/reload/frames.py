"""Who asked: the first caller outside the standard library, a project file or not.

A directory listing, a logging handler or an `atexit` callback made while a project module runs
is the module's own only if the module's code asked for it, directly or through the standard
library (`glob`, `logging.basicConfig`): not when an installed package does its own lazy set-up
on first use, which a re-run would not repeat.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import FrameType

__all__ = ["asked_by_project"]

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
