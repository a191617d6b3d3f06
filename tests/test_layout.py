"""The package's own imports: no circles, and no import from a lower layer to a higher one.

Every `import` and `from ... import` of an fh_utils module counts, wherever it stands (at the
top, inside a function, under `TYPE_CHECKING`): a lazy import is a dependency all the same. The
floors (the longest chain of imports) count only what runs: not what `TYPE_CHECKING` guards.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fh_utils

PACKAGE = Path(fh_utils.__file__).parent

# Top to bottom: a module may import its own layer's modules and the layers below it.
LAYERS = [
    ("faces", ("fh_utils", "fh_utils.__main__", "fh_utils.cli", "fh_utils.serve.script",
               "fh_utils.notebook")),
    ("serve", ("fh_utils.serve",)),
    ("browser", ("fh_utils.browser",)),
    ("reload", ("fh_utils.reload",)),
    ("watch", ("fh_utils.watch",)),
    ("leaves", ("fh_utils.target", "fh_utils.asgi", "fh_utils.timing", "fh_utils.adapters")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str], *, typing: bool = True) -> set[str]:
    """The fh_utils modules that `name` imports (without `typing`: those that run)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    guarded = set()
    if not typing:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                guarded.update(id(inner) for inner in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known
            # `from package import module` imports the module; the package is its parent.
            found.update(submodules if len(submodules) == len(node.names) else {base})
            found.update(submodules)
    return {m for m in found if m in known and m != name}


def graph(*, typing: bool = True) -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found), typing=typing) for name, path in found.items()}


def layer(name: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer): the longest prefix wins
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = name == prefix or name.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best[1]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in edges[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def floors(edges: dict[str, set[str]]) -> int:
    """The longest chain of imports, counted in modules (the graph has no cycles)."""
    depth: dict[str, int] = {}

    def walk(node: str) -> int:
        if node not in depth:
            depth[node] = 1 + max((walk(dep) for dep in edges[node]), default=0)
        return depth[node]

    return max(walk(node) for node in edges)


def test_no_import_circles() -> None:
    assert cycles(graph()) == []


def test_no_import_goes_up_a_layer() -> None:
    upward = [f"{name} ({LAYERS[layer(name)][0]}) imports {dep} ({LAYERS[layer(dep)][0]})"
              for name, deps in graph().items() for dep in sorted(deps)
              if layer(dep) < layer(name)]
    assert upward == []


def test_fewer_floors_than_the_flat_package_had() -> None:
    assert floors(graph(typing=False)) < 12  # the flat package of 0.6 had 12


def test_the_checks_see_a_circle_and_an_upward_import() -> None:
    """The checks above can fail: a made-up graph with both faults."""
    edges = {"fh_utils.reload.engine": {"fh_utils.serve.session"},
             "fh_utils.serve.session": {"fh_utils.reload.engine"}}
    assert cycles(edges) == [["fh_utils.reload.engine", "fh_utils.serve.session"]]
    assert layer("fh_utils.serve.session") < layer("fh_utils.reload.engine")


def test_lazy_and_relative_imports_count(tmp_path: Path) -> None:
    source = ("def f():\n    from fh_utils.serve import zygote\n"
              "from .graph import ModuleGraph\n")
    path = PACKAGE / "reload" / "engine.py"
    known = {"fh_utils.serve.zygote", "fh_utils.reload.graph", "fh_utils.serve"}
    fake = tmp_path / "engine.py"
    fake.write_text(source)
    found = imports("fh_utils.reload.engine", fake, known)
    assert found == {"fh_utils.serve.zygote", "fh_utils.reload.graph"}
    assert path.exists()
