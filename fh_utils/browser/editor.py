"""Open a file at a line in the developer's editor, as Vite's launch-editor does.

The editor is the first of: `--editor`, `$FH_UTILS_EDITOR`, `$VISUAL`, `$EDITOR`, then `code`,
`cursor`, `vim`, `emacs` or `idea` found on PATH. A value may carry arguments (`"code -r"`) or
say where the file and line go (`"myeditor --open {file}:{line}"`); otherwise the editor's name
picks the syntax: `code -r -g app.py:12:1`, `vim +12 app.py`, `idea --line 12 app.py`, ...
An editor that runs in a terminal (vim, nano, ...) takes over the terminal the server runs in,
as launch-editor does; the others start detached.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DETECTED", "Editor", "EditorError", "find_editor"]

logger = logging.getLogger("fh_utils")

# Looked for on PATH, in this order, when no variable names an editor.
DETECTED = ("code", "cursor", "vim", "emacs", "idea")

_GOTO = {"code", "code-insiders", "codium", "vscodium", "cursor", "windsurf", "trae",
         "positron"}  # `-r -g file:line:column`
_COLON = {"subl", "sublime", "sublime_text", "atom", "zed", "hx", "helix", "micro", "lapce",
          "fleet"}  # `file:line:column`
_LINE_FLAG = {"idea", "idea64", "pycharm", "pycharm64", "charm", "webstorm", "phpstorm",
              "goland", "rider", "clion", "rubymine", "rustrover", "studio", "appcode",
              "mate", "kate"}  # `--line N file`
_PLUS = {"vim", "vi", "nvim", "gvim", "mvim", "nano", "gedit", "kak", "emacs",
         "emacsclient", "xemacs"}  # `+N file`
_TERMINAL = {"vim", "vi", "nvim", "nano", "micro", "hx", "helix", "kak"}


class EditorError(Exception):
    """No editor could be found or started; the message says what to do."""


@dataclass(frozen=True)
class Editor:
    """An editor command line, and where it came from (for messages)."""

    argv: tuple[str, ...]
    source: str  # "--editor", "$VISUAL", "PATH", ...

    @property
    def name(self) -> str:
        """The program's name without directory or extension: `code`, `vim`."""
        base = Path(self.argv[0]).name.lower()
        for ext in (".exe", ".cmd", ".bat", ".sh"):
            base = base.removesuffix(ext)
        return base

    @property
    def terminal(self) -> bool:
        """Runs in the terminal (vim, nano): it gets the server's terminal."""
        return self.name in _TERMINAL or (self.name == "emacs" and
                                          bool({"-nw", "-t", "--no-window-system"}
                                               & set(self.argv[1:])))

    def command(self, file: Path, line: int, column: int | None = None) -> list[str]:
        """The command line that opens `file` at `line` (and `column`)."""
        col = column or 1
        if any("{file}" in arg for arg in self.argv):
            return [arg.replace("{file}", str(file)).replace("{line}", str(line))
                    .replace("{column}", str(col)) for arg in self.argv]
        argv, name = list(self.argv), self.name
        if name in _GOTO:
            return [*argv, *([] if {"-r", "--reuse-window"} & set(argv) else ["-r"]),
                    "-g", f"{file}:{line}:{col}"]
        if name in _COLON:
            return [*argv, f"{file}:{line}:{col}"]
        if name in _LINE_FLAG:
            return [*argv, "--line", str(line), str(file)]
        if name in _PLUS:
            return [*argv, f"+{line}", str(file)]
        if name in ("notepad++",):
            return [*argv, f"-n{line}", str(file)]
        return [*argv, str(file)]  # an editor we do not know: at least the file

    async def open(self, file: Path, line: int, column: int | None = None) -> None:
        """Start the editor on `file` at `line`; does not wait for it to exit."""
        argv = self.command(file, line, column)
        io = None if self.terminal else subprocess.DEVNULL
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=io, stdout=io, stderr=io, start_new_session=not self.terminal)
        except OSError as exc:
            raise EditorError(f"could not start the editor {shlex.join(argv)!r} "
                              f"(from {self.source}): {exc}") from None
        asyncio.get_running_loop().create_task(_reap(process, argv))


async def _reap(process: asyncio.subprocess.Process, argv: list[str]) -> None:
    code = await process.wait()
    if code:
        logger.warning("The editor exited with status %d: %s", code, shlex.join(argv))


def find_editor(option: str | None = None, environ: Mapping[str, str] | None = None,
                detected: Sequence[str] = DETECTED) -> Editor | None:
    """The editor to use: the option, the variables, then the first of `detected` on PATH."""
    env = os.environ if environ is None else environ
    for source, value in (("--editor", option), ("$FH_UTILS_EDITOR", env.get("FH_UTILS_EDITOR")),
                          ("$VISUAL", env.get("VISUAL")), ("$EDITOR", env.get("EDITOR"))):
        if value and value.strip():
            try:
                argv = shlex.split(value)
            except ValueError:
                argv = [value]
            return Editor(tuple(argv), source)
    for name in detected:
        found = shutil.which(name, path=env.get("PATH"))
        if found:
            return Editor((found,), "PATH")
    return None
