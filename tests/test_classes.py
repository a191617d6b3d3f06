"""fh_utils.classes: a re-run class statement updates the class object of the previous run."""

from __future__ import annotations

import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fh_utils.reload.classes import ClassKeeper

Rerun = Callable[[str], ClassKeeper]


@pytest.fixture
def module() -> Iterator[types.ModuleType]:
    mod = types.ModuleType("fh_utils_classes_test")
    sys.modules[mod.__name__] = mod
    yield mod
    del sys.modules[mod.__name__]


def run(mod: types.ModuleType, source: str) -> None:
    exec(compile(textwrap.dedent(source), f"{mod.__name__}.py", "exec"), mod.__dict__)


@pytest.fixture
def rerun(module: types.ModuleType) -> Rerun:
    """Run the module again the way the reload engine does, with a keeper."""

    def again(source: str, pinned: Callable[[object], bool] = lambda obj: False) -> ClassKeeper:
        keeper = ClassKeeper(pinned)
        previous = dict(module.__dict__)
        keeper.expect(module.__name__, previous)
        module.__dict__.clear()
        module.__dict__["__name__"] = previous["__name__"]
        with keeper.active():
            run(module, source)
        return keeper

    return again


HIERARCHY = """
import abc
from dataclasses import dataclass

class Base:
    def hello(self):
        return "base-{n}"

class Sub(Base):
    def hello(self):
        return "sub+" + super().hello()

class Shape(abc.ABC):
    @abc.abstractmethod
    def area(self): ...

class Square(Shape):
    def area(self):
        return {n}

@dataclass
class Point:
    x: int = {n}
"""


def test_old_instances_follow_with_super_and_isinstance(module: Any, rerun: Rerun) -> None:
    run(module, HIERARCHY.format(n=1))
    sub, square, point = module.Sub(), module.Square(), module.Point()
    classes = module.Base, module.Sub, module.Shape, module.Square, module.Point
    keeper = rerun(HIERARCHY.format(n=2))
    assert (module.Base, module.Sub, module.Shape, module.Square, module.Point) == classes
    assert sub.hello() == "sub+base-2"  # super() inside the new method names the kept class
    assert isinstance(sub, module.Sub) and isinstance(sub, module.Base)
    assert square.area() == 2 and isinstance(square, module.Shape)
    assert module.Point() == module.Point(2) and point.x == 1  # __init__ does not run again
    assert keeper.kept == 5
    assert [(old.__qualname__, new.__qualname__) for old, new in keeper.members][:2] == [
        ("Base.hello", "Base.hello"), ("Sub.hello", "Sub.hello")]


def test_rollback_puts_every_class_back(module: Any, rerun: Rerun) -> None:
    run(module, HIERARCHY.format(n=1))
    sub = module.Sub()
    keeper = rerun(HIERARCHY.format(n=2) + "\nclass Late:\n    pass\n")
    keeper.rollback()
    assert sub.hello() == "sub+base-1"
    assert "y" not in module.Point.__dataclass_fields__
    assert set(module.Point.__dataclass_fields__) == {"x"}


def test_classes_not_kept_get_a_new_object(module: Any, rerun: Rerun) -> None:
    source = """
        import enum
        class Meta(type):
            pass
        class WithMeta(metaclass=Meta):
            pass
        class Registry:
            seen = []
            def __init_subclass__(cls):
                Registry.seen.append(cls)
        class Plugin(Registry):
            pass
        class Slotted:
            __slots__ = ({slots})
        class Color(enum.Enum):
            RED = {red}
        class Pinned:
            pass
    """
    run(module, source.format(slots="'a',", red=1))
    old = {name: getattr(module, name) for name in
           ("WithMeta", "Plugin", "Slotted", "Color", "Pinned", "Registry")}
    pinned = old["Pinned"]
    rerun(source.format(slots="'a', 'b'", red=1), pinned=lambda obj: obj is pinned)
    assert module.WithMeta is not old["WithMeta"]  # a metaclass registered the new class
    assert module.Plugin is not old["Plugin"]  # __init_subclass__ kept the new class
    assert module.Slotted is not old["Slotted"]  # another layout
    assert module.Pinned is not pinned  # @no_reload hands the pinned one back itself
    assert module.Color is old["Color"] and module.Color.RED is old["Color"].RED
    red = module.Color.RED
    rerun(source.format(slots="'a', 'b'", red=2))
    assert module.Color is not old["Color"] and module.Color.RED is not red  # members changed


def test_a_registry_base_is_kept_but_not_its_subclasses(module: Any, rerun: Rerun) -> None:
    source = """
        class Registry:
            seen = []
            def __init_subclass__(cls):
                Registry.seen.append(cls)
        class Plugin(Registry):
            label = "{label}"
    """
    run(module, source.format(label="one"))
    registry = module.Registry
    rerun(source.format(label="two"))
    assert module.Registry is registry  # its own statement: nothing registered it
    assert module.Registry.seen == [module.Plugin]  # the registry holds the new subclass


def test_a_class_is_kept_unless_its_statement_handed_the_new_one_out(module: Any,
                                                                      rerun: Rerun) -> None:
    source = """
        import weakref
        OWNERS = {{}}
        SUBCLASSES = weakref.WeakSet()
        NAMES = []
        class Field:
            def __set_name__(self, owner, name):
                OWNERS.setdefault(owner, []).append(name)
        class Model:
            name = Field()
            {extra} = Field()
        class Weak:
            def __init_subclass__(cls):
                SUBCLASSES.add(cls)
        class Tracked(Weak):
            pass
        class Named:
            def __init_subclass__(cls):
                NAMES.append(cls.__name__)
        class ByName(Named):
            pass
    """
    run(module, source.format(extra="email"))
    old = {name: getattr(module, name) for name in ("Model", "Tracked", "ByName", "Field")}
    rerun(source.format(extra="phone"))
    # A cold start's class is new: what was keyed by it while its statement ran must be found
    # under the class that answers, with the new body's entries only.
    assert module.Model is not old["Model"]
    assert module.OWNERS[module.Model] == ["name", "phone"]
    assert module.Tracked is not old["Tracked"] and module.Tracked in module.SUBCLASSES
    # Nothing held on to these: kept, old instances follow.
    assert module.ByName is old["ByName"] and module.NAMES == ["ByName"]
    assert module.Field is old["Field"]


def test_a_kept_class_is_listed_once_by_its_bases(module: Any, rerun: Rerun) -> None:
    source = """
        class Base:
            pass
        class Child(Base):
            x = {x}
        class Error(Exception):
            pass
        class NotFound(Error):
            x = {x}
    """
    run(module, source.format(x=1))
    child, not_found = module.Child, module.NotFound
    rerun(source.format(x=2))
    assert module.Child is child and module.Child.x == 2
    assert module.Base.__subclasses__() == [child]  # not the new object made meanwhile
    assert module.NotFound is not_found and module.Error.__subclasses__() == [not_found]
