"""Each example in examples/, copied to tmp_path, served by `fh_utils dev`, edited on disk.

examples/model_app has its own test in test_cache_e2e.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import DevServer, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def copy_example(name: str, tmp_path: Path) -> Path:
    work = tmp_path / name
    shutil.copytree(EXAMPLES / name, work, ignore=shutil.ignore_patterns("__pycache__"))
    return work


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path.name}"
    path.write_text(text.replace(old, new))


def test_minimal_fasthtml_helper_edit(tmp_path, serve):
    work = copy_example("minimal", tmp_path)
    server: DevServer = serve("app.py", cwd=work)
    assert "Hello, world!" in server.get().text

    edit(work / "helpers.py", '"coffee", "bread", "cheese"', '"coffee", "bread", "olives"')
    server.wait_text("<li>olives</li>")
    assert "Reloaded helpers.py (+1 dependent) in" in server.log

    edit(work / "app.py", 'greeting("world")', 'greeting("fh_utils")')
    server.wait_text("Hello, fh_utils!")


def test_starlette_page_read_at_import_and_route_edit(tmp_path, serve):
    work = copy_example("starlette_app", tmp_path)
    server: DevServer = serve("app.py", cwd=work)
    assert "<h1>Hello from Starlette</h1>" in server.get().text
    assert server.get("/api/hello?name=you").json() == {"message": "Hello, you!"}

    edit(work / "page.html", "Hello from Starlette", "Edited page")
    server.wait_text("<h1>Edited page</h1>")
    assert "Reloaded page.html in" in server.log

    edit(work / "app.py", 'f"Hello, {name}!"', 'f"Hi, {name}."')
    server.wait_text('"Hi, you."', "/api/hello?name=you")


def test_fastapi_router_edit_reaches_routes_and_openapi(tmp_path, serve):
    work = copy_example("fastapi_app", tmp_path)
    server: DevServer = serve("app.py", cwd=work)
    assert server.get("/").json()["message"] == "Hello from FastAPI"
    assert server.get("/items/0").json() == {"name": "coffee", "price": 3.5}

    items = work / "items.py"
    edit(items, "    price: float\n", "    price: float\n    in_stock: bool = True\n")
    edit(items, 'Item(name="coffee", price=3.5)', 'Item(name="tea", price=3.0, in_stock=False)')
    wait_until(lambda: server.get("/items/0").json().get("name") == "tea", 15,
               "the edited item at /items/0")
    assert server.get("/items/0").json() == {"name": "tea", "price": 3.0, "in_stock": False}
    assert "in_stock" in server.get("/openapi.json").text
    assert "Reloaded items.py (+1 dependent) in" in server.log


def test_src_layout_package_with_relative_imports(tmp_path, serve):
    work = copy_example("src_layout", tmp_path)
    server: DevServer = serve("src/shop/app.py", cwd=work)
    assert "coffee: 3.50 €" in server.get().text
    assert "Loaded shop.app:app in" in server.log

    edit(work / "src" / "shop" / "catalog.py", '("cheese", 600)', '("olives", 475)')
    server.wait_text("olives: 4.75 €")

    edit(work / "src" / "shop" / "prices.py", 'CURRENCY = "€"', 'CURRENCY = "EUR"')
    server.wait_text("coffee: 3.50 EUR")
    assert "Reloaded src/shop/prices.py (+1 dependent) in" in server.log
