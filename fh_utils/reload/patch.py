"""Move objects that outlive a reload onto the new code.

After a module re-executes, functions and classes created by the previous run may still be
referenced elsewhere (`from helpers import f` in a module that did not re-run, an instance
made before the edit, a route table). These rules update them in place, as IPython's
autoreload does, with the guards IPython lacks:

- an old object is only updated from a new one of the same qualified name, so `f = foo`
  edited to `f = bar` never overwrites `foo` (IPython issue 14944);
- a function whose free variables changed keeps its code (`__code__` cannot take a different
  closure); one that keeps them gets the new code *and* the new cell contents, so a
  `functools.wraps` wrapper calls the new inner function;
- every update is guarded on its own: one failure (an `__eq__` that raises, a read-only
  attribute) skips that update only;
- instances are moved to a changed class with one heap walk for all changed classes, and no
  walk at all when no class body changed.
"""

from __future__ import annotations

import enum
import gc
import logging
import types
from collections.abc import Callable
from typing import Any

from fh_utils.reload.compare import same_function

__all__ = ["Patcher"]

logger = logging.getLogger("fh_utils")

_FUNC_ATTRS = ("__code__", "__defaults__", "__kwdefaults__", "__doc__", "__dict__",
               "__annotations__")
_SKIP_CLASS_KEYS = frozenset({"__dict__", "__weakref__", "__module__", "__qualname__"})


class Patcher:
    """One batch of updates; `moved_instances` is how many objects changed class."""

    def __init__(self, class_changed: Callable[[type], bool | None] | None = None) -> None:
        # class_changed(old) says whether the class body's code changed; None when unknown.
        self._class_changed = class_changed
        self._classes: dict[type, type] = {}
        self._seen: set[int] = set()
        self.moved_instances = 0
        self.skipped: list[str] = []

    def update(self, old: Any, new: Any) -> None:
        if old is new or id(old) in self._seen:
            return
        self._seen.add(id(old))
        try:
            if isinstance(old, type) and isinstance(new, type):
                self._update_class(old, new)
            elif isinstance(old, types.FunctionType) and isinstance(new, types.FunctionType):
                self._update_function(old, new)
            elif isinstance(old, property) and isinstance(new, property):
                for part in ("fget", "fset", "fdel"):
                    self.update(getattr(old, part), getattr(new, part))
            elif type(old) is type(new) and isinstance(
                old, classmethod | staticmethod | types.MethodType
            ):
                self.update(old.__func__, new.__func__)
        except Exception as exc:  # never let one object stop the batch
            self._skip(old, exc)

    def finish(self) -> None:
        """Move instances of changed classes, with one walk over the heap."""
        if not self._classes:
            return
        mapping = self._classes
        for ref in gc.get_referrers(*mapping):
            new = mapping.get(type(ref))
            if new is None:
                continue
            try:
                object.__setattr__(ref, "__class__", new)
                self.moved_instances += 1
            except (TypeError, AttributeError):
                pass  # a different __slots__ layout: the instance keeps its class
        self._classes = {}

    # -- rules ---------------------------------------------------------------------------
    def _update_function(self, old: types.FunctionType, new: types.FunctionType) -> None:
        if old.__qualname__ != new.__qualname__:
            return
        if old.__code__.co_freevars != new.__code__.co_freevars:
            self.skipped.append(f"{_where(old)} (its closure variables changed)")
            return
        for name in _FUNC_ATTRS:
            try:
                setattr(old, name, getattr(new, name))
            except (AttributeError, TypeError, ValueError):
                pass
        for old_cell, new_cell in zip(old.__closure__ or (), new.__closure__ or ()):
            try:
                value = new_cell.cell_contents
            except ValueError:  # empty cell
                continue
            try:
                current = old_cell.cell_contents
            except ValueError:
                current = None
            if current is not value:
                self.update(current, value)
                old_cell.cell_contents = value

    def _update_class(self, old: type, new: type) -> None:
        if old.__qualname__ != new.__qualname__ or issubclass(old, enum.Enum):
            return
        known = self._class_changed(old) if self._class_changed else None
        changed = False
        old_keys = set(old.__dict__)
        for key, new_value in list(new.__dict__.items()):
            if key in _SKIP_CLASS_KEYS:
                continue
            if key not in old_keys:
                changed = True
                _try_setattr(old, key, new_value)
                continue
            old_value = old.__dict__[key]
            if not _same_member(old_value, new_value):
                changed = True
            if (isinstance(old_value, types.FunctionType)
                    and isinstance(new_value, types.FunctionType)
                    and old_value.__code__.co_freevars != new_value.__code__.co_freevars):
                # The old function cannot take the new closure, but the class can take the
                # new function (a dataclass __init__ after a field with a default_factory).
                _try_setattr(old, key, new_value)
            elif _patchable(old_value) and type(old_value) is type(new_value):
                self.update(old_value, new_value)
            else:
                _try_setattr(old, key, new_value)
        for key in old_keys - set(new.__dict__) - _SKIP_CLASS_KEYS:
            changed = True
            try:
                delattr(old, key)
            except (AttributeError, TypeError):
                pass
        if changed if known is None else known:
            self._classes[old] = new

    def _skip(self, old: Any, exc: BaseException) -> None:
        self.skipped.append(f"{_where(old)} ({type(exc).__name__}: {exc})")


def _patchable(value: Any) -> bool:
    return isinstance(
        value, type | types.FunctionType | property | classmethod | staticmethod
    )


def _same_member(a: Any, b: Any) -> bool:
    if isinstance(a, classmethod | staticmethod) and type(a) is type(b):
        a, b = a.__func__, b.__func__
    if isinstance(a, types.FunctionType) and isinstance(b, types.FunctionType):
        return same_function(a, b)
    if isinstance(a, property) and isinstance(b, property):
        return all(
            _same_member(getattr(a, p), getattr(b, p)) for p in ("fget", "fset", "fdel")
        )
    if isinstance(a, type) and isinstance(b, type):
        return a.__qualname__ == b.__qualname__  # nested classes are compared on their own
    try:
        return bool(a == b)
    except Exception:
        return False


def _try_setattr(obj: Any, key: str, value: Any) -> None:
    try:
        setattr(obj, key, value)
    except (AttributeError, TypeError):
        pass


def _where(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__name__)}"
