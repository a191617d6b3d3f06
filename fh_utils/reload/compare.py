"""Compare code the way a person reading the source would: line numbers do not count."""

from __future__ import annotations

import hashlib
import types
from typing import Any

__all__ = ["code_digest", "same_code", "same_function"]


def same_code(a: types.CodeType, b: types.CodeType) -> bool:
    """True when two code objects do the same thing, ignoring where in the file they stand.

    Code objects compare unequal when only their line numbers moved, so adding a line at the
    top of a module would make every function look edited. This compares bytecode, names and
    constants (nested code objects recursively) and ignores positions.
    """
    if a is b:
        return True
    if (
        a.co_code != b.co_code
        or a.co_names != b.co_names
        or a.co_varnames != b.co_varnames
        or a.co_freevars != b.co_freevars
        or a.co_cellvars != b.co_cellvars
        or a.co_flags != b.co_flags
        or a.co_argcount != b.co_argcount
        or a.co_posonlyargcount != b.co_posonlyargcount
        or a.co_kwonlyargcount != b.co_kwonlyargcount
        or a.co_name != b.co_name
        or len(a.co_consts) != len(b.co_consts)
    ):
        return False
    return all(_same_value(x, y) for x, y in zip(_consts(a), _consts(b)))


def same_function(a: Any, b: Any) -> bool:
    """True when two functions have the same code, defaults and keyword defaults."""
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    if not isinstance(code_a, types.CodeType) or not isinstance(code_b, types.CodeType):
        return False
    return (
        same_code(code_a, code_b)
        and _same_value(a.__defaults__, b.__defaults__)
        and _same_value(a.__kwdefaults__, b.__kwdefaults__)
    )


def code_digest(code: types.CodeType) -> str:
    """A digest that is equal for code `same_code` finds the same, in any process (what a
    fresh process compiled against what this one runs)."""
    digest = hashlib.sha1(usedforsecurity=False)
    _feed(digest, code)
    return digest.hexdigest()[:16]


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, types.CodeType):
        for part in (value.co_code, value.co_names, value.co_varnames, value.co_freevars,
                     value.co_cellvars, value.co_flags, value.co_argcount,
                     value.co_posonlyargcount, value.co_kwonlyargcount, value.co_name):
            digest.update(repr(part).encode())
        for const in _consts(value):
            _feed(digest, const)
    elif isinstance(value, (tuple, frozenset)):
        digest.update(f"{type(value).__name__}{len(value)}(".encode())
        for item in (value if isinstance(value, tuple) else sorted(value, key=repr)):
            _feed(digest, item)
        digest.update(b")")
    else:
        digest.update(("L" if value is _LINE else repr(value)).encode())


_LINE = object()


def _consts(code: types.CodeType) -> tuple[Any, ...]:
    """Constants, with a class body's own line number (`__firstlineno__`, 3.13+) left out."""
    if "__firstlineno__" not in code.co_names:
        return code.co_consts
    return tuple(_LINE if c == code.co_firstlineno and type(c) is int else c
                 for c in code.co_consts)


def _same_value(x: Any, y: Any) -> bool:
    if isinstance(x, types.CodeType) and isinstance(y, types.CodeType):
        return same_code(x, y)
    if type(x) is not type(y):
        return False
    if isinstance(x, tuple):
        return len(x) == len(y) and all(_same_value(i, j) for i, j in zip(x, y))
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_same_value(x[k], y[k]) for k in x)
    try:
        return bool(x == y)
    except Exception:  # an __eq__ that raises or returns an array: treat as changed
        return False
