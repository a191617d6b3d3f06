"""Tests for fh_utils.cache.

A reload is simulated the way the reload engine does it: `engine.before_rerun`, clear the
module's namespace (keeping what IPython's superreload keeps), `importlib.reload`,
`engine.batch_done`. What a loader ran is appended to a file outside the reloaded module, so it
proves what executed.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
import textwrap
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fh_utils.cache import no_reload, no_reload_cache, on_reload

from fh_utils import cache

TIMEOUT = 10

LOADER = """
from fh_utils.cache import no_reload_cache

def record(what):
    with open(RUNS, "a") as f:
        print(what, file=f)

@no_reload_cache
def load_model():
    record("load")
    return object()

MODEL = load_model()
"""


class Module:
    """A module file in tmp_path, imported and re-executed like the reload engine does."""

    def __init__(self, tmp_path: Path, source: str) -> None:
        self.name = f"fh_cache_test_{uuid.uuid4().hex[:12]}"
        self.path = tmp_path / f"{self.name}.py"
        self.runs_file = tmp_path / f"{self.name}.runs"
        self.write(source)

    def write(self, source: str) -> None:
        source = textwrap.dedent(source).replace("RUNS", repr(str(self.runs_file)))
        self.path.write_text(source)
        importlib.invalidate_caches()

    def load(self) -> types.ModuleType:
        return importlib.import_module(self.name)

    def reexec(self, done: bool = True) -> types.ModuleType:
        module = sys.modules[self.name]
        cache.engine.before_rerun(self.name)
        keep = ("__name__", "__loader__", "__spec__", "__file__")
        saved = {key: module.__dict__[key] for key in keep}
        module.__dict__.clear()
        module.__dict__.update(saved)
        importlib.reload(module)
        if done:
            cache.engine.batch_done()
        return module

    def runs(self) -> list[str]:
        return self.runs_file.read_text().splitlines() if self.runs_file.exists() else []


MakeModule = Callable[[str], Module]
Messages = Callable[[], list[str]]


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    cache.engine.reset_for_tests()
    yield
    cache.engine.reset_for_tests()


@pytest.fixture
def dev() -> None:
    cache.engine.activate()


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeModule]:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an edit within a second: no old .pyc
    created: list[Module] = []

    def make(source: str) -> Module:
        created.append(Module(tmp_path, source))
        return created[-1]

    yield make
    for module in created:
        sys.modules.pop(module.name, None)


@pytest.fixture
def messages(caplog: pytest.LogCaptureFixture) -> Messages:
    caplog.set_level(logging.INFO, logger="fh_utils")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "fh_utils"]


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def run_threads(target: Callable[[int], None], count: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive()


# --- no_reload_cache in dev mode ---------------------------------------------------------------


def test_values_survive_reexecution(dev: None, make_module: MakeModule, messages: Messages) -> None:
    m = make_module(LOADER)
    module = m.load()
    first = module.MODEL
    for _ in range(3):
        module = m.reexec()
    assert m.runs() == ["load"]
    assert module.MODEL is first
    assert messages() == []


def test_edited_body_recomputes_and_logs_once(
    dev: None, make_module: MakeModule, messages: Messages
) -> None:
    m = make_module(LOADER)
    first = m.load().MODEL
    m.write(LOADER.replace('record("load")', 'record("load v2")'))
    module = m.reexec()
    assert m.runs() == ["load", "load v2"]
    assert module.MODEL is not first
    module = m.reexec()
    assert m.runs() == ["load", "load v2"]
    assert messages() == ["load_model() changed: cache cleared"]


def test_unrelated_line_above_does_not_recompute(
    dev: None, make_module: MakeModule, messages: Messages
) -> None:
    m = make_module(LOADER)
    m.load()
    m.write("import os\nX = 1\n\n" + LOADER + "\nY = 2\n")
    m.reexec()
    assert m.runs() == ["load"]
    assert messages() == []


@pytest.mark.parametrize(
    ("decorator", "recomputes"),
    [
        ("@no_reload_cache(maxsize=128)", False),  # the default, spelled out
        ("@no_reload_cache(128, False)", False),
        ("@no_reload_cache(maxsize=2)", True),
        ("@no_reload_cache(typed=True)", True),
    ],
)
def test_decorator_arguments_count_as_code(
    dev: None, make_module: MakeModule, decorator: str, recomputes: bool
) -> None:
    m = make_module(LOADER)
    m.load()
    m.write(LOADER.replace("@no_reload_cache", decorator))
    m.reexec()
    assert m.runs() == (["load", "load"] if recomputes else ["load"])


def test_changed_default_recomputes(dev: None, make_module: MakeModule) -> None:
    source = LOADER.replace("def load_model():", 'def load_model(size="small"):')
    m = make_module(source)
    m.load()
    m.write(source.replace('"small"', '"large"'))
    m.reexec()
    assert m.runs() == ["load", "load"]


def test_positional_and_keyword_arguments(dev: None, make_module: MakeModule) -> None:
    m = make_module(
        """
        from fh_utils.cache import no_reload_cache

        @no_reload_cache
        def add(a, b=0):
            with open(RUNS, "a") as f:
                print(a, b, file=f)
            return a + b
        """
    )
    add = m.load().add
    assert [add(1, 2), add(1, 2), add(1, b=2), add(a=1, b=2), add(1, b=2), add(3)] == [3] * 6
    assert m.runs() == ["1 2", "1 2", "1 2", "3 0"]  # like lru_cache: each call shape is a key
    assert add.cache_info() == (2, 4, 128, 4)
    add = m.reexec().add
    assert (add(1, b=2), add(3)) == (3, 3)
    assert len(m.runs()) == 4


@pytest.mark.parametrize(("maxsize", "typed"), [(2, True), (1, False), (0, False), (None, False)])
def test_same_semantics_as_lru_cache(
    dev: None, make_module: MakeModule, maxsize: int | None, typed: bool
) -> None:
    m = make_module(
        f"""
        from fh_utils.cache import no_reload_cache

        @no_reload_cache(maxsize={maxsize}, typed={typed})
        def ident(x):
            with open(RUNS, "a") as f:
                print(repr(x), file=f)
            return x
        """
    )
    ident = m.load().ident
    computed: list[str] = []

    @functools.lru_cache(maxsize=maxsize, typed=typed)
    def reference(x: Any) -> Any:
        computed.append(repr(x))
        return x

    for x in [1, 1.0, 1, 2, 3, 1, "a", 2, 1.0, 1]:
        assert ident(x) == reference(x)
        assert ident.cache_info() == reference.cache_info()
        assert m.runs() == computed
    assert ident.cache_parameters() == reference.cache_parameters()


def test_dev_wrapper_is_a_plain_function(dev: None, make_module: MakeModule) -> None:
    load_model = make_module(LOADER).load().load_model
    assert type(load_model) is types.FunctionType
    assert load_model.__name__ == "load_model"
    assert load_model.__wrapped__.__name__ == "load_model"
    assert load_model.cache_info().currsize == 1


def test_old_reference_patched_like_the_engine_follows(dev: None, make_module: MakeModule) -> None:
    m = make_module(LOADER)
    old = m.load().load_model
    m.write(LOADER.replace('record("load")', 'record("load v2")'))
    module = m.reexec()
    new = module.load_model
    # What the reload engine does to an old function still referenced elsewhere.
    old.__code__, old.__defaults__, old.__kwdefaults__ = new.__code__, None, None
    old.__dict__.update(new.__dict__)
    assert old.__code__.co_freevars == new.__code__.co_freevars
    for old_cell, new_cell in zip(old.__closure__, new.__closure__, strict=True):
        old_cell.cell_contents = new_cell.cell_contents
    assert old() is module.MODEL
    assert old.__wrapped__ is new.__wrapped__
    assert m.runs() == ["load", "load v2"]


def test_failed_reexecution_restored_by_the_engine_keeps_values(
    dev: None, make_module: MakeModule, messages: Messages
) -> None:
    source = LOADER.replace("MODEL = load_model()", "")
    m = make_module(source)
    module = m.load()
    first = module.load_model()
    saved = dict(module.__dict__)
    m.write(source.replace('record("load")', 'record("load v2")') + "\n1 / 0\n")
    with pytest.raises(ZeroDivisionError):
        m.reexec()
    module.__dict__.clear()
    module.__dict__.update(saved)
    assert module.load_model() is first
    assert m.runs() == ["load"]
    assert messages() == []


def test_failed_first_import_then_fresh_import_reuses_the_value(
    dev: None, make_module: MakeModule, messages: Messages
) -> None:
    # What the engine does when the app fails at start-up: Python drops the module from
    # sys.modules, and the fixed file is imported afresh as a new module object.
    m = make_module(LOADER + "\n1 / 0\n")
    with pytest.raises(ZeroDivisionError):
        m.load()
    assert m.name not in sys.modules
    m.write(LOADER)
    module = m.load()
    first = module.MODEL
    assert m.runs() == ["load"]  # computed by the failed import, same code: reused
    assert m.reexec().MODEL is first  # and the same entry after the next reload
    assert m.runs() == ["load"]
    assert messages() == []


def test_pin_from_a_failed_first_import_is_not_returned(dev: None, make_module: MakeModule) -> None:
    # The failed import's function sees that module's globals, where LATE was never defined.
    source = "from fh_utils.cache import no_reload\n\n@no_reload\ndef handler():\n    return LATE\n"
    m = make_module(source + "1 / 0\nLATE = 'late'\n")
    with pytest.raises(ZeroDivisionError):
        m.load()
    m.write(source + "LATE = 'late'\n")
    module = m.load()
    assert module.handler() == "late"
    handler = module.handler
    assert m.reexec().handler is handler  # pinned from the first good execution on


def test_same_name_defined_twice_keeps_two_caches(
    dev: None, make_module: MakeModule, messages: Messages
) -> None:
    m = make_module(
        """
        from fh_utils.cache import no_reload_cache

        routes = []

        @no_reload_cache
        def get():
            with open(RUNS, "a") as f:
                print("first", file=f)
            return "first"
        routes.append(get)

        @no_reload_cache
        def get():
            with open(RUNS, "a") as f:
                print("second", file=f)
            return "second"
        routes.append(get)
        """
    )
    routes = m.load().routes
    assert [route() for route in routes] == ["first", "second"]
    routes = m.reexec().routes
    assert [route() for route in routes] == ["first", "second"]
    assert m.runs() == ["first", "second"]
    assert messages() == []


def test_function_defined_inside_a_function_is_a_plain_lru_cache(dev: None) -> None:
    @no_reload_cache
    def square(x: int) -> int:
        return x * x

    assert isinstance(square, functools._lru_cache_wrapper)


# --- one computation at a time -----------------------------------------------------------------

GATED = """
from fh_utils.cache import no_reload_cache

@no_reload_cache
def load(name, gate):
    gate()
    with open(RUNS, "a") as f:
        print("load", name, file=f)
    return object()
"""


def test_concurrent_first_calls_compute_once(dev: None, make_module: MakeModule) -> None:
    m = make_module(GATED)
    load = m.load().load
    started, release = threading.Event(), threading.Event()

    def gate() -> None:
        started.set()
        assert release.wait(TIMEOUT)

    barrier = threading.Barrier(8)
    results: dict[int, object] = {}

    def worker(i: int) -> None:
        barrier.wait(TIMEOUT)
        results[i] = load("m", gate)

    threads = run_threads(worker, 8)
    assert started.wait(TIMEOUT)
    wait_until(lambda: load.cache_info().hits == 7)  # the seven others wait for the first call
    release.set()
    join(threads)
    assert m.runs() == ["load m"]
    assert len(results) == 8
    assert len({id(value) for value in results.values()}) == 1


def test_exception_reaches_every_waiter_and_is_not_cached(
    dev: None, make_module: MakeModule
) -> None:
    m = make_module(GATED)
    load = m.load().load
    started, release = threading.Event(), threading.Event()
    attempts: list[int] = []

    def gate() -> None:
        attempts.append(1)
        started.set()
        assert release.wait(TIMEOUT)
        if len(attempts) == 1:
            raise ValueError("first attempt fails")

    barrier = threading.Barrier(8)
    outcomes: dict[int, BaseException] = {}

    def worker(i: int) -> None:
        barrier.wait(TIMEOUT)
        try:
            load("m", gate)
        except ValueError as error:
            outcomes[i] = error

    threads = run_threads(worker, 8)
    assert started.wait(TIMEOUT)
    wait_until(lambda: load.cache_info().hits == 7)
    release.set()
    join(threads)
    assert len(outcomes) == 8
    assert len({id(error) for error in outcomes.values()}) == 1
    assert m.runs() == []
    load("m", gate)  # a later call retries
    assert len(attempts) == 2
    assert m.runs() == ["load m"]


def test_different_arguments_compute_in_parallel(dev: None, make_module: MakeModule) -> None:
    m = make_module(GATED)
    load = m.load().load
    started, release = threading.Event(), threading.Event()

    def slow_gate() -> None:
        started.set()
        assert release.wait(TIMEOUT)

    slow = run_threads(lambda i: load("slow", slow_gate), 1)
    assert started.wait(TIMEOUT)
    fast = run_threads(lambda i: load("fast", lambda: None), 1)
    join(fast)  # finished while "slow" is still computing
    assert m.runs() == ["load fast"]
    release.set()
    join(slow)
    assert m.runs() == ["load fast", "load slow"]


def test_recursive_call_with_same_arguments_raises(dev: None, make_module: MakeModule) -> None:
    m = make_module(
        """
        from fh_utils.cache import no_reload_cache

        @no_reload_cache
        def again(n):
            return again(n)
        """
    )
    again = m.load().again
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            again(1)
        except RecursionError as error:
            errors.append(error)

    join(run_threads(call, 1))
    assert len(errors) == 1


# --- cleanup -----------------------------------------------------------------------------------

CLEANED = """
from fh_utils.cache import no_reload_cache

def record(what):
    with open(RUNS, "a") as f:
        print(what, file=f)

def close(value):
    record("close " + value)
    if value == "bad":
        raise RuntimeError("cannot close")

@no_reload_cache(maxsize=3, cleanup=close)
def connect(name):
    record("open " + name)
    return name
"""


def test_cleanup_runs_for_dropped_values(
    dev: None, make_module: MakeModule, messages: Messages
) -> None:
    m = make_module(CLEANED)
    connect = m.load().connect
    for name in ["a", "bad", "c", "d"]:  # "a" is evicted by "d"
        connect(name)
    assert m.runs()[-1] == "close a"
    connect.cache_clear()
    assert m.runs()[-3:] == ["close bad", "close c", "close d"]  # one failure stops nothing
    assert connect.cache_info() == (0, 0, 3, 0)
    assert "cleanup of a connect() value failed" in messages()
    connect("e")
    m.write(CLEANED.replace('record("open " + name)', 'record("open2 " + name)'))
    connect = m.reexec().connect
    assert m.runs()[-1] == "open e"  # values are dropped when the new code is first called
    connect("e")
    assert m.runs()[-2:] == ["close e", "open2 e"]


# --- on_reload -----------------------------------------------------------------------------------


def test_on_reload_runs_once_per_reexecution(
    dev: None, make_module: MakeModule, messages: Messages
) -> None:
    m = make_module(
        """
        from fh_utils.cache import on_reload

        def record(what):
            with open(RUNS, "a") as f:
                print(what, file=f)

        record("exec")
        on_reload(lambda: record("first"))

        @on_reload
        def broken():
            raise RuntimeError("boom")

        on_reload(lambda: record("last"), module=__name__)
        """
    )
    m.load()
    cache.engine.before_rerun("some_other_module")
    assert m.runs() == ["exec"]
    m.reexec()
    m.reexec()
    assert m.runs() == ["exec", "last", "first", "exec", "last", "first", "exec"]
    failure = f"on_reload callback broken of {m.name} failed"
    assert messages() == [failure, failure]


# --- no_reload -----------------------------------------------------------------------------------

PINNED = """
from fh_utils.cache import no_reload, no_reload_cache

@no_reload
def handler():
    return "v1"

@no_reload
class Registry:
    items = []

    def size(self):
        return len(self.items)
"""


def test_no_reload_keeps_identity_and_state(
    dev: None, make_module: MakeModule, messages: Messages
) -> None:
    m = make_module(PINNED)
    module = m.load()
    handler, registry = module.handler, module.Registry
    handler.calls = 1
    registry.items.append("x")
    instance = registry()
    m.write("import os\n" + PINNED)  # moving lines is not an edit
    module = m.reexec()
    assert module.handler is handler and module.handler.calls == 1
    assert module.Registry is registry and module.Registry.items == ["x"]
    assert isinstance(instance, module.Registry)
    assert messages() == []


def test_no_reload_ignores_edits_and_logs_once_per_reload(
    dev: None, make_module: MakeModule, messages: Messages
) -> None:
    m = make_module(PINNED)
    module = m.load()
    handler, registry = module.handler, module.Registry
    m.write(PINNED.replace('"v1"', '"v2"').replace("len(self.items)", "len(self.items) + 1"))
    m.reexec(done=False)
    module = m.reexec()  # two executions in one batch
    assert module.handler is handler and module.handler() == "v1"
    assert module.Registry is registry and module.Registry().size() == 0
    expected = [
        "handler is pinned by @no_reload: edits ignored until restart",
        "Registry is pinned by @no_reload: edits ignored until restart",
    ]
    assert messages() == expected
    m.reexec()
    assert messages() == expected * 2


def test_no_reload_below_no_reload_cache_keeps_values(
    dev: None, make_module: MakeModule, messages: Messages
) -> None:
    source = LOADER.replace("@no_reload_cache\n", "@no_reload_cache\n@no_reload\n")
    source = source.replace("import no_reload_cache", "import no_reload, no_reload_cache")
    m = make_module(source)
    first = m.load().MODEL
    m.write(source.replace('record("load")', 'record("load v2")'))
    assert m.reexec().MODEL is first
    assert m.runs() == ["load"]
    assert messages() == ["load_model is pinned by @no_reload: edits ignored until restart"]


def test_no_reload_above_no_reload_cache_is_an_error(dev: None, make_module: MakeModule) -> None:
    source = LOADER.replace("@no_reload_cache\n", "@no_reload\n@no_reload_cache\n")
    m = make_module(source.replace("import no_reload_cache", "import no_reload, no_reload_cache"))
    with pytest.raises(TypeError, match="put @no_reload below it"):
        m.load()


# --- outside dev mode ----------------------------------------------------------------------------


@pytest.mark.parametrize(("maxsize", "typed"), [(128, False), (2, True), (0, False), (None, False)])
def test_outside_dev_mode_is_lru_cache(maxsize: int | None, typed: bool) -> None:
    def ident(x: Any) -> Any:
        return x

    ours = no_reload_cache(maxsize, typed, cleanup=print)(ident)
    reference = functools.lru_cache(maxsize, typed)(ident)
    assert type(ours) is type(reference)
    for x in [1, 1.0, 1, 2, 3, 1, "a", 2]:
        assert ours(x) == reference(x)
        assert ours.cache_info() == reference.cache_info()
    assert ours.cache_parameters() == reference.cache_parameters()
    assert isinstance(no_reload_cache(ident), functools._lru_cache_wrapper)


def test_outside_dev_mode_is_identity(make_module: MakeModule) -> None:
    def callback() -> None:
        raise AssertionError("not registered outside dev mode")

    class Thing:
        pass

    assert no_reload(callback) is callback
    assert no_reload(Thing) is Thing
    assert on_reload(callback) is callback
    cache.engine.before_rerun(__name__)
    module = make_module(LOADER).load()
    assert isinstance(module.load_model, functools._lru_cache_wrapper)


def test_user_mistakes_are_named() -> None:
    with pytest.raises(TypeError, match="maxsize must be an int or None, not '3'"):
        no_reload_cache("3")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="cleanup must be callable"):
        no_reload_cache(cleanup=1)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="expects a function or a class"):
        no_reload(object())
