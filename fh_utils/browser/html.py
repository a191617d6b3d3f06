"""Where the live script goes in an HTML document, found the way a browser's tokenizer would.

`Rewriter` takes a document whole or in chunks and returns what may be sent so far. It puts the
script before the last `</body>` that closes the body (one inside an inline script's string, a
comment, a `<textarea>` or `<title>` does not count), or at the end when there is none; drops
inline scripts `strip` says to drop (FastHTML's own live reload); and adds nothing when the
document already has a script carrying `marker`. Streamed, it holds back only what it cannot
decide yet: an inline script until its end (it may be dropped), a tag cut by the chunk boundary,
and everything from a `</body>` on (a later one may be the last).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["Rewriter"]

# Elements whose content is text to the tokenizer: a `</body>` in them is not a tag.
_RAW = ("script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes",
        "noscript")
_DATA = re.compile(rb"<!--|</body(?=[\s/>])|<(" + "|".join(_RAW).encode() + rb")(?=[\s/>])",
                   re.I)
_END = {name.encode(): re.compile(rb"</" + name.encode() + rb"(?=[\s/>])", re.I)
        for name in _RAW}
_TAIL = 16  # longer than any token searched for: it may straddle two chunks


class Rewriter:
    """Adds `script` to one HTML document fed in order; see the module's doc."""

    def __init__(self, script: bytes, marker: bytes,
                 strip: Callable[[bytes], bool] = lambda code: False) -> None:
        self._script = script
        self._marker = marker
        self._strip = strip
        self._buf = b""  # not sent yet
        self._pos = 0  # scanned up to here (in _buf)
        self._raw: bytes | None = None  # inside this raw-text element
        self._comment = False
        self._open = 0  # where the raw element's start tag begins
        self._content: int | None = None  # where its content begins, once the tag is complete
        self._body_end: int | None = None  # the last `</body` seen, not sent yet
        self.found = False  # a script with the marker is there: add nothing

    def feed(self, chunk: bytes, final: bool) -> bytes:
        """The next part of the document; returns what can be sent now (all of it if final)."""
        self._buf += chunk
        self._scan()
        if final:
            out, self._buf = self._buf, b""
            if not self.found:
                at = len(out) if self._body_end is None else self._body_end
                out = out[:at] + self._script + out[at:]
            self._body_end = None
            self._pos = 0
            return out
        hold = self._pos
        if self._raw == b"script":
            hold = min(hold, self._open)
        if self._body_end is not None:
            hold = min(hold, self._body_end)
        out, self._buf = self._buf[:hold], self._buf[hold:]
        self._pos -= hold
        self._open -= hold
        if self._content is not None:
            self._content -= hold
        if self._body_end is not None:
            self._body_end -= hold
        return out

    def _scan(self) -> None:
        buf, pos = self._buf, self._pos
        while True:
            if self._comment:
                at = buf.find(b"-->", pos)
                if at < 0:
                    pos = max(pos, len(buf) - 2)
                    break
                self._comment, pos = False, at + 3
            elif self._raw is not None:
                if self._content is None:  # the start tag is not complete yet
                    gt = buf.find(b">", pos)
                    if gt < 0:
                        pos = len(buf)
                        break
                    if self._raw == b"script" and self._marker in buf[self._open:gt]:
                        self.found = True
                    self._content = pos = gt + 1
                    continue
                end = _END[self._raw].search(buf, pos)
                if end is None:
                    pos = max(pos, len(buf) - _TAIL)
                    break
                gt = buf.find(b">", end.end())
                if gt < 0:
                    pos = end.start()
                    break
                pos = gt + 1
                if self._raw == b"script" and self._strip(buf[self._content:end.start()]):
                    buf = buf[:self._open] + buf[pos:]
                    pos = self._open
                self._raw, self._content = None, None
            else:
                match = _DATA.search(buf, pos)
                if match is None:
                    pos = max(pos, len(buf) - _TAIL)
                    break
                pos = match.end()
                if match.group(1):
                    self._raw, self._open, self._content = match.group(1).lower(), \
                        match.start(), None
                elif match.group(0) == b"<!--":
                    self._comment = True
                    pos -= 2  # `<!-->` and `<!--->` are whole (empty) comments
                else:
                    self._body_end = match.start()
        self._buf, self._pos = buf, pos
