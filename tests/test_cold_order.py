"""Cold-start order: a batch runs its modules in the order a fresh import of the edited tree
runs them (the import system orders them), so run order alone never makes the hot server
differ from a cold start. Each test saves a file, then compares with `fh_utils run`."""

from __future__ import annotations

from tests.conftest import write
from tests.test_faithful import assert_matches_cold, save

# The Flask-style split: the app module builds the app, then imports the views at the bottom;
# the views import the route decorator back from it.
MAIN = """
from fasthtml.common import fast_app

app, rt = fast_app()

@rt("/health")
def health():
    return "ok"

import views  # noqa: E402,F401  (registers the pages on rt)
"""

VIEWS = """
from main import rt

@rt("/")
def index():
    return "{index}"

@rt("/about")
def about():
    return "{about}"
"""


def test_views_imported_at_the_bottom_of_the_app_module(tmp_path, serve):
    write(tmp_path / "main.py", MAIN)
    write(tmp_path / "views.py", VIEWS.format(index="home v1", about="about v1"))
    server = serve("main.py")
    assert server.get().text == "home v1"
    save(server, tmp_path / "views.py", VIEWS.format(index="home v2", about="about v2"))
    assert_matches_cold(server, tmp_path, ("/", "/about", "/health"), app="main.py")
    assert server.get("/about").text == "about v2"
    # The app module itself saved: the same order again.
    save(server, tmp_path / "main.py", MAIN.replace('"ok"', '"fine"'))
    assert_matches_cold(server, tmp_path, ("/", "/about", "/health"), app="main.py")


STARLETTE_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
{imports}

def home(request):
    return JSONResponse({body})

app = Starlette(routes=[Route("/", home)])
"""

# A package whose __init__ owns a registry and imports the submodules that fill it.
PLUGINS_INIT = """
REGISTRY = []
from . import alpha, beta  # noqa: E402
"""
PLUGIN = """
from plugins import REGISTRY

REGISTRY.append("{name}")
"""


def test_a_package_init_that_imports_the_submodules_filling_its_registry(tmp_path, serve):
    write(tmp_path / "plugins" / "__init__.py", PLUGINS_INIT)
    write(tmp_path / "plugins" / "alpha.py", PLUGIN.format(name="alpha 1"))
    write(tmp_path / "plugins" / "beta.py", PLUGIN.format(name="beta 1"))
    write(tmp_path / "app.py", STARLETTE_APP.format(imports="import plugins",
                                                     body="plugins.REGISTRY"))
    server = serve("app.py")
    assert server.get().json() == ["alpha 1", "beta 1"]
    save(server, tmp_path / "plugins" / "alpha.py", PLUGIN.format(name="alpha 2"))
    assert_matches_cold(server, tmp_path)
    assert server.get().json() == ["alpha 2", "beta 1"]


def test_a_constant_moved_between_two_loaded_modules_in_one_save(tmp_path, serve):
    """units.py gets SPEED from limits.py, which it never imported before this save: it must
    run after limits.py, whatever the graph recorded before said."""
    write(tmp_path / "limits.py", "SPEED = 30\n")
    write(tmp_path / "units.py", "UNIT = 'km/h'\n")
    write(tmp_path / "app.py", STARLETTE_APP.format(
        imports="import units\nimport limits",
        body="[units.UNIT, getattr(units, 'SPEED', None), getattr(limits, 'SPEED', None)]"))
    server = serve("app.py")
    assert server.get().json() == ["km/h", None, 30]
    # One save: SPEED moves from limits.py to units.py, and limits.py now takes it from there;
    # the other way round: units.py imports from limits.py a name limits.py only now has.
    write(tmp_path / "limits.py", "from units import SPEED  # noqa: F401\nLIMIT = SPEED * 2\n")
    save(server, tmp_path / "units.py", "UNIT = 'km/h'\nSPEED = 50\n")
    assert_matches_cold(server, tmp_path)
    write(tmp_path / "units.py", "from limits import SPEED, UNIT  # noqa: F401\n")
    save(server, tmp_path / "limits.py", "SPEED = 70\nUNIT = 'mph'\n")
    assert_matches_cold(server, tmp_path)
    assert server.get().json() == ["mph", 70, 70]


def test_a_submodule_nothing_imports_any_more_is_not_an_attribute(tmp_path, serve):
    write(tmp_path / "shop" / "__init__.py", "from . import cart, legacy  # noqa: F401\n")
    write(tmp_path / "shop" / "cart.py", "ITEMS = 1\n")
    write(tmp_path / "shop" / "legacy.py", "OLD = True\n")
    write(tmp_path / "app.py", STARLETTE_APP.format(
        imports="import shop\nimport sys",
        body="[hasattr(shop, 'legacy'), 'shop.legacy' in sys.modules, shop.cart.ITEMS]"))
    server = serve("app.py")
    assert server.get().json() == [True, True, 1]
    save(server, tmp_path / "shop" / "__init__.py", "from . import cart  # noqa: F401\n")
    assert_matches_cold(server, tmp_path)
    assert server.get().json() == [False, False, 1]
