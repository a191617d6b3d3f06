"""The escalation fixture: a project whose edits need each tier of reloading.

    app.py       FastHTML app; imports the others and serves `/` (no model load)
    helpers.py   a helper module (pandas in the heavy fixture)
    db.py        SQLAlchemy: an in-memory SQLite engine and `class Base(DeclarativeBase)`
    models.py    a declarative model; an edit adds a column. Run again in place, SQLAlchemy
                 refuses to declare the table twice on the same metadata; a fresh process
                 loads it, so the project is re-imported (the re-import tier)
    status.py    an Enum; an edit adds a member, which no in-place update can carry to the
                 existing members: the project is re-imported (the re-import tier)
    ticker.py    optional: starts a daemon thread at import (an endless loop); an edit here
                 cannot be faithful in place while that thread runs: the worker restarts
                 (the restart tier). With it, a models.py edit restarts the worker too (the
                 re-import finds the thread alive), so the re-import tier is measured on a copy
                 without ticker.py.

Installed imports dominate start-up in the heavy fixture (numpy, pandas, SQLAlchemy,
FastHTML). The light fixture (`--quick`) has no numpy/pandas; without SQLAlchemy installed
(it is in no extra), there is no db.py or models.py.

The page shows one marker per edit kind (`app-e000`, the model's columns, the enum's members,
`tick-e000`), so "the new marker is served" is "the edit is live".
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "EscalationSpec", "edit", "generate"]


@dataclass(frozen=True)
class EscalationSpec:
    heavy: bool = True  # numpy and pandas
    orm: bool = True  # db.py and models.py (SQLAlchemy)
    thread: bool = False  # ticker.py and its thread (then every re-import is a restart too)


@dataclass(frozen=True)
class Kind:
    file: str
    tier: str  # the tier the edit needs: "in place", "re-import", "restart"
    what: str  # for the table


KINDS = {
    "app": Kind("app.py", "in place", "app.py (the route)"),
    "column": Kind("models.py", "re-import", "models.py, a column added to a SQLAlchemy model"),
    "member": Kind("status.py", "re-import", "status.py, a member added to an Enum"),
    "thread": Kind("ticker.py", "restart", "ticker.py, whose daemon thread runs"),
}
NEW_COLUMN = "    # new columns go above this line\n"
NEW_MEMBER = "    # new members go above this line\n"


def edit(root: Path, kind: str, n: int) -> str:
    """Make the n-th edit of `kind`; returns the text the page will then show."""
    if kind in ("app", "thread"):
        marker = {"app": "app", "thread": "tick"}[kind]
        path = root / KINDS[kind].file
        token = f"{marker}-e{n:03d}"
        text, count = re.subn(rf"{marker}-e\d{{3}}", token, path.read_text())
        if count != 1:
            raise RuntimeError(f"{path.name} holds {marker!r} {count} times, not once")
        path.write_text(text)
        return token
    path = root / KINDS[kind].file
    text = path.read_text()
    if kind == "column":  # one more column per edit
        token = f"col_e{n:03d}"
        line = f"    {token}: Mapped[int | None] = mapped_column(default={n})\n"
        anchor = NEW_COLUMN
    elif kind == "member":  # one more member per edit
        token = f"MEMBER_E{n:03d}"
        line = f'    {token} = "{token.lower()}"\n'
        anchor = NEW_MEMBER
    else:
        raise KeyError(kind)
    if text.count(anchor) != 1:
        raise RuntimeError(f"{path.name} holds the anchor {anchor.strip()!r} not once")
    if token in text:
        raise RuntimeError(f"{path.name} holds {token} already: number edits from the last")
    path.write_text(text.replace(anchor, line + anchor))
    return token


def generate(root: Path, spec: EscalationSpec) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "app.py": _app(spec),
        "helpers.py": _helpers(spec),
        "status.py": _status(),
    }
    if spec.orm:
        files.update({"db.py": _db(), "models.py": _models()})
    if spec.thread:
        files["ticker.py"] = _ticker()
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def _app(spec: EscalationSpec) -> str:
    imports = ["import helpers", "import status"]
    if spec.orm:
        imports.append("import models")
    if spec.thread:
        imports.append("import ticker")
    if spec.heavy:
        imports = ["import numpy as np", "import pandas as pd", *imports]
    if spec.orm:
        imports += ["from db import engine", "from sqlalchemy import func, select",
                    "from sqlalchemy.orm import Session"]
    imports.append("from fasthtml.common import H1, Li, P, Titled, Ul, fast_app")
    if spec.heavy:
        data = ("FRAME = pd.DataFrame(np.arange(1000, dtype=float).reshape(100, 10))\n"
                "SUMMARY = helpers.summary(FRAME)\n")
    else:
        data = "SUMMARY = helpers.summary([[float(i * 10 + j) for j in range(10)] " \
               "for i in range(100)])\n"
    if spec.orm:
        setup = ("models.Base.metadata.create_all(engine)\n"
                 "with Session(engine) as session:\n"
                 "    session.add(models.Item(name='first'))\n"
                 "    session.commit()\n")
        rows = ("    with Session(engine) as session:\n"
                "        rows = session.scalar(select(func.count()).select_from(models.Item))\n")
        rows_p = "P(models.describe()), P(f'{rows} rows'), "
    else:
        setup, rows, rows_p = "", "", ""
    tick_p = "P(ticker.label())," if spec.thread else ""
    return f'''\
"""The escalation benchmark app. Generated by benchmarks/escalation.py."""

{chr(10).join(imports)}

{data}{setup}
app, rt = fast_app()


@rt("/")
def get():
{rows}    return Titled(
        "fh_utils escalation benchmark",
        H1("app-e000"),
        P(helpers.label()),
        P(status.describe()), {rows_p}{tick_p}
        Ul(Li(SUMMARY)),
    )
'''


def _helpers(spec: EscalationSpec) -> str:
    if spec.heavy:
        return '''\
"""Helpers app.py imports."""

import pandas as pd


def label() -> str:
    return "helper-e000"


def summary(frame: pd.DataFrame) -> str:
    return f"{frame.shape[0]}x{frame.shape[1]}, mean {frame.to_numpy().mean():.2f}"
'''
    return '''\
"""Helpers app.py imports."""

import statistics


def label() -> str:
    return "helper-e000"


def summary(rows) -> str:
    flat = [x for row in rows for x in row]
    return f"{len(rows)}x{len(rows[0])}, mean {statistics.fmean(flat):.2f}"
'''


def _db() -> str:
    return '''\
"""The database: an in-memory SQLite engine and the declarative base."""

from sqlalchemy import create_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import StaticPool

engine = create_engine("sqlite://", connect_args={"check_same_thread": False},
                       poolclass=StaticPool)


class Base(DeclarativeBase):
    pass
'''


def _models() -> str:
    return f'''\
"""A declarative model: a column added here needs the project re-imported."""

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from db import Base


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
{NEW_COLUMN}

def describe() -> str:
    return "columns: " + ", ".join(Item.__table__.columns.keys())
'''


def _status() -> str:
    return f'''\
"""An Enum: a member added here needs the project re-imported."""

import enum


class Status(enum.Enum):
    DRAFT = "draft"
{NEW_MEMBER}

def describe() -> str:
    return "members: " + ", ".join(Status.__members__)
'''


def _ticker() -> str:
    return '''\
"""Starts a daemon thread at import: an endless loop, as a metrics or polling thread would."""

import threading
import time

TICKS = 0


def _tick() -> None:
    global TICKS
    while True:
        time.sleep(0.05)
        TICKS += 1


threading.Thread(target=_tick, name="ticker", daemon=True).start()


def label() -> str:
    return "tick-e000"
'''


# --- the floor of a restart: the project's own imports and the app's start-up ---------------
#
#   python -m benchmarks.escalation probe           (in the fixture) the installed modules app.py
#                                                   loads, as JSON: what the zygote preloads
#   python -m benchmarks.escalation floor NAMES     import those, then time `import app`, the
#                                                   lifespan startup and a first `GET /`


def _installed_modules() -> list[str]:
    """Like `Reloader.loaded_packages`: every loaded module that is not the project's."""
    root = Path.cwd().resolve()
    names = []
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        file = getattr(module, "__file__", None)
        if top.startswith("_") or top == "benchmarks":
            continue
        if isinstance(file, str) and Path(file).resolve().is_relative_to(root):
            continue
        names.append(name)
    return sorted(names)


async def _start_and_serve(app: Any) -> int:
    """The lifespan startup, then one `GET /` straight through ASGI; returns the status."""
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await events.put({"type": "lifespan.startup"})
    started = asyncio.get_running_loop().create_future()

    async def lifespan_send(message: dict[str, Any]) -> None:
        if message["type"].startswith("lifespan.startup") and not started.done():
            started.set_result(message)

    state: dict[str, Any] = {}
    lifespan = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"},
                                          "state": state}, events.get, lifespan_send))
    message = await started
    if message["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"lifespan startup failed: {message}")
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
             "query_string": b"", "root_path": "", "headers": [(b"host", b"127.0.0.1")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "state": dict(state)}
    await app(scope, receive, send)
    lifespan.cancel()
    return status[0]


def _main(argv: list[str]) -> None:
    if argv[0] == "probe":
        import app  # noqa: F401

        print(json.dumps(_installed_modules()))
        return
    names = json.loads(Path(argv[1]).read_text())
    started = time.perf_counter()
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - as the zygote: a module that fails is skipped
            pass
    preloaded = time.perf_counter()
    import app

    imported = time.perf_counter()
    status = asyncio.run(_start_and_serve(app.app))
    served = time.perf_counter()
    print(json.dumps({"installed_s": preloaded - started, "import_s": imported - preloaded,
                      "startup_s": served - imported, "status": status}))
    sys.stdout.flush()
    os._exit(0)  # nothing to wait for (the fixture's daemon thread)


if __name__ == "__main__":
    _main(sys.argv[1:])
