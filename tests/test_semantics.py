"""What works in a cold start keeps working after an in-place reload."""

from __future__ import annotations

import textwrap

from tests.conftest import write

JSON_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
import store
{imports}

def home(request):
{body}

app = Starlette(routes=[Route("/", home)])
"""


def json_app(tmp_path, imports: str, body: str) -> None:
    # `store` imports nothing from the project, so it never re-runs: objects kept there were
    # made before the reload and show whether they follow the new code.
    write(tmp_path / "store.py", "kept = {}\n")
    body = "\n".join("    " + line for line in body.strip().splitlines())
    write(tmp_path / "app.py", JSON_APP.format(imports=imports, body=body))


def test_module_attributes_source_and_tracebacks_follow_the_new_file(tmp_path, serve):
    info = '''
        """Docstring {n}."""
        def fails():
            raise ValueError("from version {n}")
    '''
    write(tmp_path / "info.py", info.format(n=1))
    json_app(tmp_path, "import inspect, traceback\nimport info", """
try:
    info.fails()
except ValueError:
    tb = traceback.format_exc()
return JSONResponse({"name": info.__name__, "file": info.__file__, "doc": info.__doc__,
    "package": info.__package__, "source": inspect.getsource(info.fails), "tb": tb})
""")
    server = serve("app.py")
    first = server.get().json()
    assert first["doc"] == "Docstring 1." and first["name"] == "info"

    moved = "# two lines\n# further down\n" + textwrap.dedent(info.format(n=2)).lstrip()
    write(tmp_path / "info.py", moved)
    server.wait_text('"doc":"Docstring 2."')
    data = server.get().json()
    assert data["name"] == "info" and data["package"] == ""
    assert data["file"] == str(tmp_path / "info.py")
    assert 'raise ValueError("from version 2")' in data["source"]
    assert 'line 5, in fails\n    raise ValueError("from version 2")' in data["tb"]

    write(tmp_path / "info.py", "def fails():\n    raise ValueError('no docstring')\n")
    server.wait_text("no docstring")
    assert server.get().json()["doc"] is None  # not ModuleType's own docstring


def test_circular_package_getattr_import_module_and_decorators(tmp_path, serve):
    pkg = tmp_path / "pkg"
    write(pkg / "__init__.py", """
        from . import views
        TITLE = "pkg title"
        def __getattr__(name):
            if name == "dynamic":
                return "dynamic " + views.label()
            raise AttributeError(name)
    """)
    views = """
        import functools
        import importlib
        import pkg

        def logged(fn):
            @functools.wraps(fn)
            def wrapper(*args):
                return "logged:" + fn(*args)
            return wrapper

        @logged
        def label():
            return "{text}"

        def title():
            return pkg.TITLE

        plugin = importlib.import_module("pkg.plugin")
    """
    write(pkg / "views.py", views.format(text="label one"))
    write(pkg / "plugin.py", "NAME = 'plugin one'\n")
    json_app(tmp_path, "import pkg\nfrom pkg.views import label", """
store.kept.setdefault("label", label)
return JSONResponse({"dynamic": pkg.dynamic, "kept": store.kept["label"](),
    "title": pkg.views.title(), "plugin": pkg.views.plugin.NAME})
""")
    server = serve("app.py")
    assert server.get().json() == {"dynamic": "dynamic logged:label one",
                                   "kept": "logged:label one", "title": "pkg title",
                                   "plugin": "plugin one"}

    write(pkg / "views.py", views.format(text="label two"))
    server.wait_text("label two")
    assert server.get().json() == {"dynamic": "dynamic logged:label two",
                                   "kept": "logged:label two", "title": "pkg title",
                                   "plugin": "plugin one"}

    write(pkg / "plugin.py", "NAME = 'plugin two'\n")  # found through importlib.import_module
    server.wait_text("plugin two")
    assert "Reloaded pkg/plugin.py (+" in server.log

    write(pkg / "__init__.py", """
        from . import views
        TITLE = "new title"
        def __getattr__(name):
            if name == "dynamic":
                return "dynamic " + views.label()
            raise AttributeError(name)
    """)
    server.wait_text("new title")
    assert "dynamic logged:label two" in server.get().text


def test_unpatchable_objects_are_skipped_not_fatal(tmp_path, serve):
    tricky = """
        class Angry:
            def __eq__(self, other):
                raise RuntimeError("do not compare me")
            __hash__ = object.__hash__

        class Holder:
            marker = Angry()
            def value(self):
                return "{value}"

        def make():
            x = 1
{closure}
            return inner

        closure = make()

        def foo():
            return "foo"

        def bar():
            return "bar"

        f = {alias}
    """
    one = "            def inner():\n                return x"
    two = "            y = 2\n            def inner():\n                return x + y"
    write(tmp_path / "tricky.py", tricky.format(value="v1", closure=one, alias="foo"))
    json_app(tmp_path, "import tricky", """
kept = store.kept
kept.setdefault("holder", tricky.Holder())
kept.setdefault("f", tricky.f)
kept.setdefault("closure", tricky.closure)
return JSONResponse({"value": kept["holder"].value(), "f": kept["f"](),
    "closure": kept["closure"](), "new_closure": tricky.closure(), "alias": tricky.f()})
""")
    server = serve("app.py")
    assert server.get().json() == {"value": "v1", "f": "foo", "closure": 1,
                                   "new_closure": 1, "alias": "foo"}

    write(tmp_path / "tricky.py", tricky.format(value="v2", closure=two, alias="bar"))
    server.wait_text('"value":"v2"')
    assert server.get().json() == {
        "value": "v2",  # the instance made before the reload runs the new method
        "f": "foo",  # the old `f` was foo: never overwritten with bar's code
        "closure": 1,  # closure variables changed: the old closure keeps its code
        "new_closure": 3,
        "alias": "bar",
    }
    assert "Could not update in place: tricky.make.<locals>.inner" in server.log
