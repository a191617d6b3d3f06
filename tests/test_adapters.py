"""The private parts of uvicorn and watchfiles that fh_utils relies on are there, in the shape
it uses, in the installed versions; a changed shape fails with the package and its version."""

from __future__ import annotations

import pytest
import uvicorn
import watchfiles

from fh_utils.adapters import IncompatibleVersion
from fh_utils.adapters import uvicorn as uvicorn_adapter
from fh_utils.adapters import watchfiles as watchfiles_adapter


def test_installed_uvicorn_has_the_shape_fh_utils_uses():
    uvicorn_adapter.check()  # IncompatibleVersion names what changed, and the version


def test_installed_watchfiles_has_the_shape_fh_utils_uses(tmp_path):
    watchfiles_adapter.check.cache_clear()
    watchfiles_adapter.check()
    with watchfiles_adapter.notifier([str(tmp_path)], force_polling=False,
                                     poll_delay_ms=50) as notify:
        (tmp_path / "a.py").write_text("x = 1\n")
        changes = notify.watch(50, 5, 5000, None)
    assert isinstance(changes, set)
    assert any(path.endswith("a.py") for _, path in changes)


def test_a_changed_rustnotify_is_named_with_the_watchfiles_version(monkeypatch):
    class RustNotify:  # a constructor that took keyword arguments instead
        def __init__(self, watch_paths, *, debug=False):
            pass

    monkeypatch.setattr(watchfiles_adapter._rust_notify, "RustNotify", RustNotify)
    watchfiles_adapter.check.cache_clear()
    with pytest.raises(IncompatibleVersion) as caught:
        watchfiles_adapter.notifier(["."], force_polling=False, poll_delay_ms=50)
    watchfiles_adapter.check.cache_clear()
    message = str(caught.value)
    assert f"watchfiles {watchfiles.__version__}" in message
    assert "RustNotify(watch_paths, debug, force_polling" in message


@pytest.mark.parametrize("attribute", ["_captured_signals", "server_state", "servers"])
def test_a_changed_uvicorn_server_is_named_with_the_uvicorn_version(monkeypatch, attribute):
    server = uvicorn.Server(uvicorn.Config(lambda *a: None))
    server.servers = []
    setattr(server, attribute, "something else")
    access = {"_captured_signals": uvicorn_adapter.captured_signals,
              "server_state": uvicorn_adapter.connections,
              "servers": uvicorn_adapter.listeners}[attribute]
    with pytest.raises(IncompatibleVersion) as caught:
        access(server)
    assert f"uvicorn {uvicorn.__version__}" in str(caught.value)


def test_a_changed_uvicorn_command_is_named_with_the_uvicorn_version(monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["uvicorn.main"], "main", lambda: None)
    with pytest.raises(IncompatibleVersion) as caught:
        uvicorn_adapter.command()
    assert f"uvicorn {uvicorn.__version__}" in str(caught.value)
    assert "uvicorn.main:main" in str(caught.value)
