"""fh_utils.effects: what a module run changes outside its namespace is recorded and undone."""

from __future__ import annotations

import asyncio
import atexit
import logging
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator

import pytest

from fh_utils.reload import effects


@pytest.fixture(autouse=True)
def installed() -> Iterator[None]:
    effects.install()
    yield
    effects.uninstall()


def test_logging_handlers_filters_levels_and_disable_are_undone_and_redone() -> None:
    logger = logging.getLogger("fh_utils_test_audit")
    kept = logging.NullHandler()
    logger.addHandler(kept)  # before the run: never undone
    handler, filt = logging.NullHandler(), logging.Filter("x")
    record = effects.Record("audit")
    with effects.recording(record):
        logger.addHandler(handler)
        logger.addHandler(handler)  # added once, recorded once
        logger.addFilter(filt)
        logger.setLevel(logging.INFO)
        logging.disable(logging.WARNING)
        logger.removeHandler(kept)
    assert logger.handlers == [handler] and logger.filters == [filt]
    record.undo()
    assert logger.handlers == [kept] and logger.filters == []
    assert logger.level == logging.NOTSET and logging.root.manager.disable == 0
    record.redo()
    assert logger.handlers == [handler] and logger.level == logging.INFO
    assert logging.root.manager.disable == logging.WARNING
    record.undo()
    logger.removeHandler(kept)


def test_atexit_signal_handlers_sys_path_meta_path_and_warnings_filters() -> None:
    def bye() -> None:
        raise AssertionError("unregistered before exit")

    class Finder:
        def find_spec(self, *args: object) -> None:
            return None

    finder = Finder()
    previous_usr1 = signal.getsignal(signal.SIGUSR1)
    handler = lambda *a: None  # noqa: E731
    record = effects.Record("mod")
    filters_before = list(warnings.filters)
    with effects.recording(record):
        atexit.register(bye)
        signal.signal(signal.SIGUSR1, handler)
        sys.path.insert(0, "/nowhere/fh_utils_test")
        sys.meta_path.append(finder)
        warnings.simplefilter("ignore", category=UserWarning)
    assert signal.getsignal(signal.SIGUSR1) is handler
    record.undo()
    atexit.unregister(bye)  # (already gone; harmless)
    assert signal.getsignal(signal.SIGUSR1) == previous_usr1
    assert "/nowhere/fh_utils_test" not in sys.path and finder not in sys.meta_path
    assert warnings.filters == filters_before


def test_an_atexit_callback_undone_does_not_run_at_exit() -> None:
    code = (
        "import atexit\n"
        "from fh_utils.reload import effects\n"
        "effects.install()\n"
        "record = effects.Record('mod')\n"
        "with effects.recording(record):\n"
        "    atexit.register(print, 'first run')\n"
        "record.undo()\n"
        "with effects.recording(effects.Record('mod')):\n"
        "    atexit.register(print, 'second run')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.split("\n")[:-1] == ["second run"]


def test_nested_runs_each_keep_their_own_list_changes() -> None:
    outer, inner = effects.Record("outer"), effects.Record("inner")
    with effects.recording(outer):
        sys.path.append("/outer/a")
        with effects.recording(inner):
            sys.path.append("/inner")
        sys.path.append("/outer/b")
    inner.undo()  # the inner module runs again alone: only its entry goes
    assert "/outer/a" in sys.path and "/outer/b" in sys.path and "/inner" not in sys.path
    outer.undo()
    assert not any(p.startswith("/outer") for p in sys.path)


def test_what_a_cached_computation_starts_is_not_the_modules() -> None:
    record = effects.Record("mod")
    stop = threading.Event()
    with effects.recording(record), effects.detached():
        threading.Thread(target=stop.wait, daemon=True).start()
    assert record.alive_threads() == []
    stop.set()


def test_threads_are_recorded_but_pool_workers_are_not() -> None:
    import concurrent.futures

    stop = threading.Event()
    record = effects.Record("mod")
    with effects.recording(record), concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: None).result()
        own = threading.Thread(target=stop.wait, daemon=True, name="poller")
        own.start()
    assert record.alive_threads() == [own]
    stop.set()
    assert record.join_threads(5) == []


def test_tasks_created_while_recording_are_cancelled_by_discard() -> None:
    async def main() -> tuple[bool, bool]:
        effects.install_task_factory(asyncio.get_running_loop())
        record = effects.Record("game")
        with effects.recording(record):
            mine = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
        other = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
        assert record.cancel_tasks() == 1
        await asyncio.sleep(0)
        result = mine.cancelled(), other.cancelled()
        other.cancel()
        return result

    assert asyncio.run(main()) == (True, False)


def test_signal_chain_keeps_the_servers_handler_and_calls_the_apps() -> None:
    calls: list[str] = []
    chain = effects.SignalChain(signal.SIGUSR2, lambda sig, frame: calls.append("server"))
    record = effects.Record("app")
    try:
        with effects.recording(record):
            previous = signal.signal(signal.SIGUSR2, lambda sig, frame: calls.append("app"))
        assert previous == chain.dispatch
        signal.raise_signal(signal.SIGUSR2)
        assert calls == ["server", "app"]
        record.undo()  # the module runs again: its handler goes
        signal.raise_signal(signal.SIGUSR2)
        assert calls == ["server", "app", "server"]
    finally:
        chain.close()
    assert signal.getsignal(signal.SIGUSR2) != chain.dispatch
