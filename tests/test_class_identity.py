"""Classes keep their identity across a re-run (old instances follow the edit), but nothing may
answer for a class that a cold start would not have: what was keyed by, registered from or
bound to the class while its statement ran. Each test saves the module that defines the class
(the module that holds what was registered does not run again unless a rule says so), then
compares with `fh_utils run` on the same tree. The fresh-process check is off: the rules alone
must get there."""

from __future__ import annotations

from tests.conftest import write
from tests.test_cold_order import STARLETTE_APP as APP
from tests.test_faithful import assert_matches_cold, save

# A field that records, at class creation, which fields each model has: keyed by its owner.
FIELDS = """
FIELDS = {}

class Field:
    def __set_name__(self, owner, name):
        FIELDS.setdefault(owner, []).append(name)
"""


def test_what_a_descriptor_recorded_for_its_owner_is_the_new_body(tmp_path, serve):
    write(tmp_path / "fields.py", FIELDS)
    write(tmp_path / "models.py", "from fields import Field\n\nclass User:\n    name = Field()\n")
    write(tmp_path / "app.py", APP.format(imports="import fields\nimport models",
                                          body="fields.FIELDS.get(models.User, [])"))
    server = serve("app.py", "--no-verify")
    assert server.get().json() == ["name"]
    save(server, tmp_path / "models.py", "from fields import Field\n\nclass User:\n"
         "    name = Field()\n    email = Field()\n")
    assert_matches_cold(server, tmp_path)
    assert server.get().json() == ["name", "email"]


def test_a_registry_elsewhere_forgets_a_class_no_longer_registered(tmp_path, serve):
    # The registration of User is the same object again (the class is kept): that alone must
    # not hide that Post's registration is gone.
    write(tmp_path / "registry.py", "MODELS = {}\n")
    models = ("from registry import MODELS\n\nclass User:\n    table = 'users'\n\n"
              "MODELS['user'] = User\n")
    write(tmp_path / "models.py", models + "\nclass Post:\n    pass\n\nMODELS['post'] = Post\n")
    write(tmp_path / "app.py", APP.format(imports="import models  # noqa: F401\nimport registry",
                                          body="{k: v.__name__ for k, v in "
                                               "sorted(registry.MODELS.items())}"))
    server = serve("app.py", "--no-verify")
    assert server.get().json() == {"post": "Post", "user": "User"}
    save(server, tmp_path / "models.py", models.replace("'users'", "'people'"))
    assert_matches_cold(server, tmp_path)
    assert server.get().json() == {"user": "User"}


def test_subclasses_are_listed_once_as_on_a_cold_start(tmp_path, serve):
    # Plugin discovery through __subclasses__(): each kept subclass once, none twice. The app
    # turns the garbage collector off (as some do, for speed): the new class objects a re-run
    # made and did not keep are then never collected.
    write(tmp_path / "base.py", "import gc\n\ngc.disable()\n\nclass Page:\n    title = ''\n")
    pages = "from base import Page\n\nclass Home(Page):\n    title = '{home}'\n"
    write(tmp_path / "pages.py", pages.format(home="home") + (
        "\nclass Error(Exception):\n    pass\n\nclass NotFound(Error):\n    pass\n"))
    write(tmp_path / "app.py", APP.format(
        imports="import base\nimport pages",
        body="[sorted(c.title for c in base.Page.__subclasses__()), "
             "[c.__name__ for c in pages.Error.__subclasses__()]]"))
    server = serve("app.py", "--no-verify")
    assert server.get().json() == [["home"], ["NotFound"]]
    save(server, tmp_path / "pages.py", pages.format(home="welcome") + (
        "\nclass Error(Exception):\n    code = 1\n\nclass NotFound(Error):\n    pass\n"))
    assert_matches_cold(server, tmp_path)
    assert server.get().json() == [["welcome"], ["NotFound"]]
