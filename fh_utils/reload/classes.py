"""Keep class objects across re-runs: a re-run class statement updates the old class.

When a module runs again, each `class` statement would make a new class object, and instances
made before the edit would keep the old one: `isinstance(old, Thing)` is False against the
new class, and a method using `super()` (whose hidden `__class__` cell now names the new
class) raises `TypeError` on them. Moving instances to the new class needs a walk over the
whole heap.

`ClassKeeper` avoids both for ordinary classes: while a batch re-runs modules, the class
statement builds the new class as usual, then copies its namespace and bases into the class
object of the previous run, points the new methods' `__class__` cells at it, and returns
that object. Instances, subclasses and references everywhere keep one class, with the new
code. Everything is recorded so that a batch that fails puts the old classes back exactly.

A class is kept only where nothing but the class itself got hold of the new object while its
statement ran: a cold start's class is a new object, so whatever a `__set_name__`,
`__init_subclass__` or metaclass keyed by it, registered or bound to it must find the class
that answers, never an old one with the previous run's entries. The new object's references
tell: anything beyond its own (its MRO, its descriptors, its methods' `__class__` cell)
holds it, and the new object is used. A kept class is also taken out of its bases' subclass
lists at once (`__subclasses__()` would list it twice until the next full garbage collection).

Classes are not kept (a new class object is made, and `fh_utils.reload.patch` moves old
instances to it) when something holds the new object (above), when their metaclass is not
`type` or `abc.ABCMeta` (an ORM model, a pydantic model: the metaclass may keep what it
computed for the new class anywhere), when `__slots__` or the bases cannot change in place,
or when the class is pinned by `@no_reload`. An enum is kept as it is when its members did
not change.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import enum
import sys
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any, cast

__all__ = ["ClassKeeper"]

_SKIP = frozenset({"__dict__", "__weakref__"})
# Members that references elsewhere may hold and that the reload engine patches on commit.
_MEMBERS = (types.FunctionType, classmethod, staticmethod, property)
_KEPT_METACLASSES = (type, abc.ABCMeta)


class ClassKeeper:
    """One batch: which old classes may be kept, and what was changed to keep them."""

    def __init__(self, is_pinned: Callable[[object], bool] = lambda obj: False) -> None:
        self._is_pinned = is_pinned
        self._old: dict[str, dict[str, type]] = {}  # module name -> qualname -> class
        self._saved: list[tuple[type, dict[str, Any], tuple[type, ...]]] = []
        self.members: list[tuple[Any, Any]] = []  # (old member, new member): patch on commit
        self.kept = 0

    def expect(self, module_name: str, previous: dict[str, Any]) -> None:
        """`module_name` is about to run again; `previous` is what its last run left."""
        table: dict[str, type] = {}
        todo = [v for v in previous.values() if isinstance(v, type)]
        while todo:
            cls = todo.pop()
            if (cls.__module__ != module_name or "<locals>" in cls.__qualname__
                    or cls.__qualname__ in table):
                continue
            table[cls.__qualname__] = cls
            todo.extend(v for v in vars(cls).values() if isinstance(v, type))
        self._old[module_name] = table

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Class statements run in this block keep their previous class objects."""
        original = builtins.__build_class__

        def __build_class__(func: Any, name: str, *bases: Any, **kwargs: Any) -> Any:  # noqa: N807
            new = original(func, name, *bases, **kwargs)
            module = getattr(func, "__globals__", {}).get("__name__")
            table = self._old.get(module) if isinstance(module, str) else None
            if table is None or not isinstance(new, type):
                return new
            old = table.pop(getattr(func, "__qualname__", name), None)
            if old is None or old is new:
                return new
            held = _held(_outside_references(new))  # (before `new` is on the call's stack)
            return self._adopt(old, new, held)

        setattr(builtins, "__build_class__", __build_class__)  # noqa: B010
        try:
            yield
        finally:
            setattr(builtins, "__build_class__", original)  # noqa: B010

    def rollback(self) -> None:
        """Put every kept class back as it was before the batch."""
        for cls, namespace, bases in reversed(self._saved):
            with contextlib.suppress(TypeError):
                if cls.__bases__ != bases:
                    cls.__bases__ = bases
            _set_namespace(cls, namespace)
        self._saved.clear()
        self.members.clear()

    # -- keeping one class ---------------------------------------------------------------
    def _adopt(self, old: type, new: type, held: bool) -> type:
        if self._is_pinned(old):
            return new  # @no_reload hands the pinned class back itself
        if isinstance(old, enum.EnumMeta) or isinstance(new, enum.EnumMeta):
            return self._adopt_enum(old, new)  # (its members hold it: they are its own)
        if held or not self._may_keep(old, new):
            return new
        saved = dict(vars(old))
        bases = old.__bases__
        try:
            if bases != new.__bases__:
                old.__bases__ = new.__bases__
            _set_namespace(old, dict(vars(new)))
        except (TypeError, AttributeError):
            with contextlib.suppress(TypeError):
                old.__bases__ = bases
            _set_namespace(old, saved)
            return new
        self._saved.append((old, saved, bases))
        for key, value in vars(new).items():
            before = saved.get(key)
            if key not in _SKIP and before is not value and isinstance(before, _MEMBERS):
                self.members.append((before, value))
        _repoint_class_cells(new, old)
        _detach(new)
        if isinstance(old, abc.ABCMeta):
            abc.update_abstractmethods(cast("type[Any]", old))
            old._abc_caches_clear()  # type: ignore[attr-defined]
        self.kept += 1
        return old

    def _adopt_enum(self, old: type, new: type) -> type:
        if type(old) is not type(new) or _members(old) != _members(new):
            return new  # a changed enum cannot be kept: the reload engine escalates
        saved = dict(vars(old))
        changed = {k: v for k, v in vars(new).items()
                   if isinstance(v, types.FunctionType | property | classmethod | staticmethod)
                   and saved.get(k) is not v}
        for key, value in changed.items():
            type.__setattr__(old, key, value)
            if isinstance(saved.get(key), _MEMBERS):
                self.members.append((saved[key], value))
        self._saved.append((old, saved, old.__bases__))
        _repoint_class_cells(new, old)
        self.kept += 1
        return old

    @property
    def kept_classes(self) -> list[type]:
        """The classes this batch kept (with the new code)."""
        return [cls for cls, _, _ in self._saved]

    @staticmethod
    def _may_keep(old: type, new: type) -> bool:
        if type(old) is not type(new) or type(new) not in _KEPT_METACLASSES:
            return False
        return vars(old).get("__slots__") == vars(new).get("__slots__")


def _own_references(cls: type) -> int:
    """How many references to `cls` it holds itself: its MRO, the descriptors of its layout
    (`__dict__`, `__weakref__`, slots) and its methods' `__class__` cell."""
    count = 1  # cls.__mro__
    cells: set[int] = set()
    for value in vars(cls).values():
        if isinstance(value, types.GetSetDescriptorType | types.MemberDescriptorType):
            count += value.__objclass__ is cls
            continue
        for function in _functions(value):
            for cell in function.__closure__ or ():
                with contextlib.suppress(ValueError):
                    if cell.cell_contents is cls:
                        cells.add(id(cell))
    return count + len(cells)


def _outside_references(cls: type) -> tuple[int, int]:
    """(strong, weak) references to `cls` beyond its own (with the caller's one name for it)."""
    return sys.getrefcount(cls) - _own_references(cls), weakref.getweakrefcount(cls)


def _calibrate() -> tuple[int, int]:
    probe = type("_Probe", (), {})  # held by one name, as the new class in __build_class__
    return _outside_references(probe)


def _held(references: tuple[int, int]) -> bool:
    """Whether something other than the class itself got hold of a new class while its
    statement ran (a `__set_name__` or `__init_subclass__` that keeps its owner, weakly or
    not): `references` are its `_outside_references`, taken where one name holds it."""
    return references[0] > _UNHELD[0] or references[1] > _UNHELD[1]


def _detach(new: type) -> None:
    """Take the unused new class out of its bases' subclass lists, which hold it until the
    next full garbage collection: `Base.__subclasses__()` must list the kept class once. Its
    base becomes a private class of the same built-in layout; one that cannot change (slots),
    or a class right under a built-in, keeps its bases."""
    builtin = next(cls for cls in new.__mro__ if not cls.__flags__ & _HEAPTYPE)
    if new.__bases__ == (builtin,):
        return  # only a built-in lists it (which its layout may not let go of)
    holder = _DETACHED.get(builtin)
    if holder is None:
        with contextlib.suppress(TypeError):  # a built-in that cannot be subclassed again
            holder = _DETACHED[builtin] = type(f"_Unused{builtin.__name__.title()}",
                                               (builtin,), {"__module__": __name__})
    if holder is not None:
        with contextlib.suppress(TypeError):
            new.__bases__ = (holder,)


_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement
_DETACHED: dict[type, type] = {}  # built-in layout -> the base of unused new classes


def _members(cls: type) -> list[tuple[str, Any]]:
    return [(name, member.value) for name, member in cls.__members__.items()]  # type: ignore[attr-defined]


def _set_namespace(cls: type, namespace: dict[str, Any]) -> None:
    """Make `cls`'s own attributes exactly `namespace` (bar the layout descriptors)."""
    for key in [k for k in vars(cls) if k not in namespace and k not in _SKIP]:
        with contextlib.suppress(AttributeError, TypeError):
            delattr(cls, key)
    for key, value in namespace.items():
        if key in _SKIP or vars(cls).get(key, _MISSING) is value:
            continue
        setattr(cls, key, value)


_MISSING = object()


def _repoint_class_cells(new: type, old: type) -> None:
    """Methods of `new` that use `super()` name their class in a `__class__` cell: `old`."""
    for value in vars(new).values():
        for function in _functions(value):
            code = function.__code__
            if "__class__" not in code.co_freevars or function.__closure__ is None:
                continue
            cell = function.__closure__[code.co_freevars.index("__class__")]
            with contextlib.suppress(ValueError):
                if cell.cell_contents is new:
                    cell.cell_contents = old


def _functions(value: Any) -> list[types.FunctionType]:
    if isinstance(value, types.FunctionType):
        return [value]
    if isinstance(value, classmethod | staticmethod):
        return _functions(value.__func__)
    if isinstance(value, property):
        return [f for part in (value.fget, value.fset, value.fdel) for f in _functions(part)]
    try:  # functools.cached_property keeps `func`; a decorator's wrapper, `__wrapped__`
        inner = getattr(value, "func", None) or getattr(value, "__wrapped__", None)
    except Exception:
        return []
    return _functions(inner) if isinstance(inner, types.FunctionType) else []


_UNHELD = _calibrate()  # a class nothing else holds (one weak reference: its base's list)
