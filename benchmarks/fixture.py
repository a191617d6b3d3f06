"""The app every benchmark serves, generated into a temporary directory.

    app.py       FastHTML app; imports the others, loads the model, serves `/`
    helpers.py   a helper module app.py imports (pandas in the heavy fixture)
    model.py     `load_model()`: heavy imports plus a simulated multi-second load, guarded by
                 `fh_utils.no_reload_cache` (under plain uvicorn it is an lru_cache, so every
                 restart pays for it again)
    shapes.py    20 classes and a module-level function (the heap-size edits)
    big.py       optional: millions of live objects, imported by app.py, never edited
    extra/       optional: a package of N extra project modules; app.py imports the package,
                 whose __init__ imports them all (app.py itself stays the same size)

The page at `/` shows one marker per edit kind (`app-e000`, `helper-e000`, `fn-e000`,
`cls-e000`); an edit rewrites one marker, so "the new marker is served" is "the edit is live".
The heavy fixture imports numpy and pandas (the `bench` extra); the light one (for `--quick`)
only the standard library, so the smoke test needs nothing beyond the test extra.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EDITS", "Edit", "FixtureSpec", "edit", "generate"]


@dataclass(frozen=True)
class FixtureSpec:
    heavy: bool = True  # import numpy and pandas
    load_seconds: float = 2.0  # the simulated model load
    extra_modules: int = 0  # project modules app.py imports on top of the others
    heap_objects: int = 0  # live objects allocated by big.py (0: no big.py)


@dataclass(frozen=True)
class Edit:
    """One kind of edit: which file, which marker."""

    file: str
    marker: str
    what: str  # for the table

    def token(self, n: int) -> str:
        return f"{self.marker}-e{n:03d}"


EDITS = {
    "app": Edit("app.py", "app", "app.py (the route)"),
    "helper": Edit("helpers.py", "helper", "helpers.py (imported by app.py)"),
    "function": Edit("shapes.py", "fn", "function body in shapes.py (20 classes)"),
    "class": Edit("shapes.py", "cls", "class body in shapes.py (20 classes)"),
}


def edit(root: Path, kind: str, n: int) -> str:
    """Rewrite the marker of `kind` to its n-th value; returns the text the page will show."""
    e = EDITS[kind]
    path = root / e.file
    text, count = re.subn(rf"{e.marker}-e\d{{3}}", e.token(n), path.read_text())
    if count != 1:
        raise RuntimeError(f"{e.file} holds the marker {e.marker!r} {count} times, not once")
    path.write_text(text)
    return e.token(n)


def generate(root: Path, spec: FixtureSpec) -> Path:
    """Write the fixture into `root` (created); returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "model.py": _model(spec),
        "helpers.py": _helpers(spec),
        "shapes.py": _shapes(),
        "app.py": _app(spec),
    }
    if spec.heap_objects:
        files["big.py"] = _big(spec.heap_objects)
    if spec.extra_modules:
        files["extra/__init__.py"] = _extra_package(spec.extra_modules)
        for i in range(spec.extra_modules):
            files[f"extra/m{i:03d}.py"] = _extra(i)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _model(spec: FixtureSpec) -> str:
    if spec.heavy:
        imports = "import numpy as np\nimport pandas as pd\n"
        body = "return np.arange(1000, dtype=float).reshape(100, 10)"
    else:
        imports = "import json\nimport statistics\n"
        body = "return [[float(i * 10 + j) for j in range(10)] for i in range(100)]"
    kind = "numpy/pandas" if spec.heavy else "stdlib"
    return f'''\
"""The model: {kind} imports and a {spec.load_seconds} s load."""

import time

{imports}
from fh_utils import no_reload_cache

LOAD_SECONDS = {spec.load_seconds!r}


@no_reload_cache
def load_model():
    time.sleep(LOAD_SECONDS)  # stands in for reading weights from disk
    {body}
'''


def _helpers(spec: FixtureSpec) -> str:
    if spec.heavy:
        summary = '''\
def summary(weights) -> str:
    frame = pd.DataFrame(weights)
    return f"{frame.shape[0]}x{frame.shape[1]} weights, mean {frame.to_numpy().mean():.2f}"
'''
        imports = "import pandas as pd\n"
    else:
        summary = '''\
def summary(weights) -> str:
    flat = [x for row in weights for x in row]
    return f"{len(weights)}x{len(weights[0])} weights, mean {statistics.fmean(flat):.2f}"
'''
        imports = "import statistics\n"
    return f'''\
"""Helpers app.py imports: an edit here re-runs this module, then app.py."""

{imports}

def label() -> str:
    return "helper-e000"


{summary}'''


def _shapes() -> str:
    parts = ['"""20 classes and a function: edit the function, or one class body."""\n\n',
             'def describe() -> str:\n    return "fn-e000"\n']
    for i in range(20):
        name = "cls-e000" if i == 7 else f"Shape{i:02d}"
        parts.append(textwrap.dedent(f'''

            class Shape{i:02d}:
                sides = {i}

                def __init__(self, size: float = 1.0) -> None:
                    self.size = size

                def area(self) -> float:
                    return self.size * self.sides

                def name(self) -> str:
                    return "{name}"
            '''))
    return "".join(parts)


def _big(n: int) -> str:
    return f'''\
"""{n:,} live objects (lists, dicts and slotted instances, all tracked by the garbage
collector), standing in for a big model held in Python objects. Never edited."""


class Row:
    __slots__ = ("key", "value")

    def __init__(self, key, value):
        self.key, self.value = key, value


N = {n}
OBJECTS = [[i] for i in range(N // 3)]
OBJECTS += [{{"k": i}} for i in range(N // 3)]
OBJECTS += [Row(i, None) for i in range(N - 2 * (N // 3))]
'''


def _extra_package(n: int) -> str:
    names = ", ".join(f"m{i:03d}" for i in range(n))
    wrapped = textwrap.fill(names, 92, initial_indent="    ", subsequent_indent="    ")
    return f'''\
"""{n} extra project modules; app.py imports this package, which imports them all."""

from extra import (
{wrapped},
)

MODULES = (
{wrapped},
)
'''


def _extra(i: int) -> str:
    return f'''\
"""Extra project module {i}."""

from dataclasses import dataclass

CONSTANT = {i}


@dataclass
class Record{i:03d}:
    name: str
    value: int = {i}


def compute(x: int) -> int:
    return x * {i} + CONSTANT
'''


def _app(spec: FixtureSpec) -> str:
    imports = ["import helpers", "import shapes"]
    if spec.heavy:
        imports = ["import numpy as np", "import pandas as pd", *imports]
    if spec.heap_objects:
        imports.append("import big")
    imports.append("from fasthtml.common import H1, Li, P, Titled, Ul, fast_app")
    imports.append("from model import load_model")
    extras = ""
    if spec.extra_modules:
        imports.append("import extra")
        extras = ("EXTRAS = extra.MODULES\n"
                  "EXTRA_TOTAL = sum(m.compute(2) for m in EXTRAS)\n")
    heap = "P(f'{big.N:,} objects alive'),\n        " if spec.heap_objects else ""
    extra_p = "P(f'{len(EXTRAS)} extra modules, total {EXTRA_TOTAL}'),\n        " \
        if spec.extra_modules else ""
    frame = ("FRAME = pd.DataFrame(np.asarray(WEIGHTS))\n" if spec.heavy else "")
    return f'''\
"""The benchmark app: a FastHTML page over a slow model. Generated by benchmarks/fixture.py."""

{chr(10).join(imports)}

WEIGHTS = load_model()  # seconds the first time; a cache hit on every in-place reload
{frame}SUMMARY = helpers.summary(WEIGHTS)
{extras}
app, rt = fast_app()


@rt("/")
def get():
    return Titled(
        "fh_utils benchmark",
        H1("app-e000"),
        P(helpers.label()),
        P(shapes.describe()),
        P(shapes.Shape07().name()),
        {heap}{extra_p}Ul(Li(SUMMARY), Li(f"area {{shapes.Shape03(2.0).area()}}")),
    )
'''
