"""The slow part: a text model that takes seconds to load, kept across reloads.

`load_model()` stands in for loading real weights: it imports a few libraries, "trains" a
word-bigram model on the docstrings of the Python standard library (a second or so of real
work, no network) and then sleeps 3 s for the weights it does not have. Under `fh_utils dev`,
`@no_reload_cache` keeps the loaded model while you edit `app.py` or any other line of this
file; only an edit of `load_model` itself loads it again.
"""

from __future__ import annotations

import ast
import sysconfig
import time
from collections import Counter, defaultdict
from pathlib import Path

from fh_utils import no_reload_cache


class BigramModel:
    """Continues a prompt with the word that most often follows the last one."""

    def __init__(self, name: str, following: dict[str, Counter[str]], files: int) -> None:
        self.name = name
        self.following = following
        self.files = files

    @property
    def vocabulary(self) -> int:
        return len(self.following)

    def complete(self, prompt: str, words: int = 12) -> str:
        out = prompt.split()
        used: set[tuple[str, str]] = set()
        for _ in range(words):
            if not out:
                break
            choices = [w for w, _ in self.following.get(out[-1].lower(), Counter()).most_common()
                       if (out[-1].lower(), w) not in used]
            if not choices:
                break
            used.add((out[-1].lower(), choices[0]))
            out.append(choices[0])
        return " ".join(out)


@no_reload_cache
def load_model(name: str = "stdlib-bigrams", max_files: int = 400) -> BigramModel:
    """Seconds of work: imports, training on the stdlib's docstrings, then the 'weights'."""
    print(f"models.py: loading {name} ...", flush=True)
    started = time.perf_counter()

    import pydantic  # heavy-ish imports a real loader would pay for too
    from fastapi.encoders import jsonable_encoder

    class Config(pydantic.BaseModel):
        name: str
        max_files: int

    config = Config(name=name, max_files=max_files)
    following: dict[str, Counter[str]] = defaultdict(Counter)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[: config.max_files]
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                words = (ast.get_docstring(node) or "").lower().split()
                for a, b in zip(words, words[1:]):
                    following[a][b] += 1
    time.sleep(3)  # stands in for reading the weights from disk

    model = BigramModel(config.name, dict(following), len(files))
    elapsed = time.perf_counter() - started
    print(f"models.py: {jsonable_encoder(config)} loaded in {elapsed:.1f} s "
          f"({model.vocabulary} words)", flush=True)
    return model
