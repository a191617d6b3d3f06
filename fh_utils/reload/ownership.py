"""Which project modules outside a batch had their state written by it.

A cold start runs every module once, from empty state. A batch runs a few again; when one of
them writes into state that a module outside the batch owns (a registry dict, a counter, a list
on a base class that `__init_subclass__` fills, an attribute of a settings object), that owner
keeps what the previous runs wrote too: stale keys, counters that go on counting. A fingerprint
of each module's state, taken before and after the batch, tells which owners were written,
whatever library or pattern wrote them; the engine then runs those owners again, before the
modules that write into them (`fh_utils.reload.engine`).

A class the batch kept (`fh_utils.reload.classes`) counts as a new object, as on a cold start:
an owner holding it runs again even though its identity did not change.

The fingerprint is shallow and costs a few microseconds a module: the identity of each global;
for each dict, list and set among them, the identities of their items; and the same for the
dicts, lists and sets held by the classes the module defines and by instances of project
classes. A write deeper down (a list in a dict in a dict) is not seen.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Fingerprints", "fingerprint"]

Fingerprint = tuple[Any, ...]


def _items(value: Any, ident: Callable[[Any], Any] = id) -> Any:
    """A container's identity and its items' identities; None for anything else."""
    kind = type(value)
    if kind is dict:
        return id(value), tuple(map(ident, value)), tuple(map(ident, value.values()))
    if kind is list:
        return id(value), tuple(map(ident, value))
    if kind is set:
        return id(value), frozenset(map(ident, value))
    return None


def _members(owner: Any) -> Iterable[tuple[str, Any]]:
    try:
        return list(vars(owner).items())
    except TypeError:  # no __dict__ (slots, builtins)
        return ()


def fingerprint(module: types.ModuleType, is_project_class: Callable[[type], bool],
                ident: Callable[[Any], Any] = id) -> Fingerprint:
    """What a write into `module`'s state changes (see the module's doc); `ident` gives
    each object's identity."""
    name = module.__name__
    parts: list[Any] = []
    for key, value in list(vars(module).items()):
        if key.startswith("__") and key.endswith("__"):
            continue  # the module's own bookkeeping (__builtins__, __loader__, ...)
        parts.append((key, ident(value)))
        items = _items(value, ident)
        if items is not None:
            parts.append(items)
            continue
        if isinstance(value, type):
            if getattr(value, "__module__", None) != name:
                continue
            owner: Any = value
        elif is_project_class(type(value)):
            owner = value
        else:
            continue
        for attribute, held in _members(owner):
            items = _items(held, ident)
            if items is not None:
                parts.append((key, attribute, items))
    return tuple(parts)


class Fingerprints:
    """The fingerprints of some modules, to compare after a batch ran."""

    def __init__(self, modules: Iterable[types.ModuleType],
                 is_project_class: Callable[[type], bool]) -> None:
        self._is_project_class = is_project_class
        self._before = {m.__name__: (m, fingerprint(m, is_project_class)) for m in modules}

    def written(self, renewed: Iterable[object] = ()) -> list[str]:
        """The modules whose state changed since (in the order they were given).

        `renewed` are objects the batch made again but kept the identity of (the classes
        `fh_utils.reload.classes` keeps): on a cold start each is a new object, so state that
        holds one was written, whoever put it there."""
        ids = {id(obj) for obj in renewed}

        def ident(obj: Any) -> Any:
            return ("renewed", id(obj)) if id(obj) in ids else id(obj)

        return [name for name, (module, before) in self._before.items()
                if fingerprint(module, self._is_project_class, ident if ids else id) != before]
