"""State owned by a module outside the batch, written by one inside it: the owner runs again
first, as on a cold start (every module starts from empty state), or the batch goes up a tier.
Each test saves the writer, then compares with `fh_utils run` on the same tree."""

from __future__ import annotations

from tests.conftest import write
from tests.test_cold_order import STARLETTE_APP as APP
from tests.test_faithful import assert_matches_cold, save

HANDLERS = """
from registry import HANDLERS

def {name}():
    return "{text}"

HANDLERS["{name}"] = {name}
"""


def test_a_registry_filled_by_another_module_drops_a_renamed_key(tmp_path, serve):
    write(tmp_path / "registry.py", "HANDLERS = {}\n")
    write(tmp_path / "handlers.py", HANDLERS.format(name="greet", text="hi"))
    write(tmp_path / "app.py", APP.format(
        imports="import handlers  # noqa: F401\nfrom registry import HANDLERS",
        body="{k: f() for k, f in sorted(HANDLERS.items())}"))
    server = serve("app.py")
    assert server.get().json() == {"greet": "hi"}
    save(server, tmp_path / "handlers.py", HANDLERS.format(name="welcome", text="hello"))
    assert_matches_cold(server, tmp_path)
    assert server.get().json() == {"welcome": "hello"}


def test_a_counter_another_module_increments_at_import_counts_once(tmp_path, serve):
    write(tmp_path / "stats.py", "LOADS = [0]\n")
    write(tmp_path / "page.py", "from stats import LOADS\nLOADS[0] += 1\nTITLE = 'one'\n")
    write(tmp_path / "app.py", APP.format(imports="import page\nimport stats",
                                          body="[page.TITLE, stats.LOADS[0]]"))
    server = serve("app.py")
    assert server.get().json() == ["one", 1]
    save(server, tmp_path / "page.py", "from stats import LOADS\nLOADS[0] += 1\nTITLE = 'two'\n")
    assert_matches_cold(server, tmp_path)
    assert server.get().json() == ["two", 1]


BASE = """
class Plugin:
    registry = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Plugin.registry.append(cls.__name__)
"""


def test_a_subclass_registry_on_a_base_class_forgets_a_renamed_subclass(tmp_path, serve):
    write(tmp_path / "base.py", BASE)
    write(tmp_path / "plugins.py", "from base import Plugin\n\nclass Csv(Plugin):\n    pass\n")
    write(tmp_path / "app.py", APP.format(imports="import plugins  # noqa: F401\nimport base",
                                          body="base.Plugin.registry"))
    server = serve("app.py")
    assert server.get().json() == ["Csv"]
    save(server, tmp_path / "plugins.py",
         "from base import Plugin\n\nclass Json(Plugin):\n    pass\n")
    assert_matches_cold(server, tmp_path)
    assert server.get().json() == ["Json"]


def test_an_unrelated_edit_runs_no_owner_again(tmp_path, serve):
    """The owner runs again only when the batch wrote into it: a plain edit stays in place,
    dependents only."""
    write(tmp_path / "registry.py", "HANDLERS = {}\n")
    write(tmp_path / "handlers.py", HANDLERS.format(name="greet", text="hi"))
    write(tmp_path / "app.py", APP.format(
        imports="import handlers  # noqa: F401\nfrom registry import HANDLERS\nTEXT = 'a'",
        body="[TEXT, sorted(HANDLERS)]"))
    server = serve("app.py", "--log-level", "debug")
    save(server, tmp_path / "app.py", (tmp_path / "app.py").read_text().replace(
        "TEXT = 'a'", "TEXT = 'b'"))
    assert_matches_cold(server, tmp_path)
    log = server.wait_log("Re-executed, in order:")
    assert "Re-executed, in order: app (" in log
