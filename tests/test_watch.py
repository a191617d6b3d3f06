"""WatchSpec: which directories are watched and which changed paths count (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest
from watchfiles import Change

from fh_utils.watch.filters import WatchSpec, ignored_by_default

ALL_CHANGES = (Change.added, Change.modified, Change.deleted)

IGNORED = [
    ".venv/lib/python3.11/site-packages/pkg/mod.py",
    "venv/bin/activate",
    ".git/index",
    ".git/refs/heads/main",
    "__pycache__/app.cpython-311.pyc",
    "pkg/__pycache__/mod.cpython-311.pyc",
    "node_modules/htmx.org/dist/htmx.js",
    ".mypy_cache/3.11/app.data.json",
    ".pytest_cache/v/cache/lastfailed",
    ".ruff_cache/0.6.0/123",
    "lib/site-packages/thing.py",
    ".app.py.swp",
    ".app.py.swx",
    "app.py.swp",
    "app.py~",
    ".#app.py",
    "#app.py#",
    "4913",
    "5036",  # vim's next probe when 4913 exists
    "app.pyc",
]

COUNTED = [
    "app.py",
    "pkg/mod.py",
    "templates/page.html",
    "config.json",
    ".env",
    "static/style.css",
    "prompts/system.txt",
    "pyproject.toml",
    "4914",
]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "src" / "shop").mkdir(parents=True)
    (tmp_path / "templates").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "docs").mkdir()
    return tmp_path


@pytest.mark.parametrize("change", ALL_CHANGES)
@pytest.mark.parametrize("name", IGNORED)
def test_default_ignores(project: Path, name: str, change: Change) -> None:
    spec = WatchSpec(project, cwd=project)
    assert spec(change, str(project / name)) is False
    assert spec.ignores(project / name)


@pytest.mark.parametrize("change", ALL_CHANGES)
@pytest.mark.parametrize("name", COUNTED)
def test_everything_else_counts(project: Path, name: str, change: Change) -> None:
    # Not only *.py: a file a module read, a static file or the env file may matter.
    spec = WatchSpec(project, cwd=project)
    assert spec(change, str(project / name)) is True


def test_default_dirs_are_cwd_and_app_dir(project: Path, tmp_path_factory) -> None:
    assert WatchSpec(project / "src", cwd=project).dirs == [project]
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    assert set(WatchSpec(elsewhere, cwd=project).dirs) == {project, elsewhere}


def test_project_inside_a_directory_named_like_an_ignored_one(tmp_path: Path) -> None:
    root = tmp_path / "venv" / "node_modules" / "proj"
    root.mkdir(parents=True)
    spec = WatchSpec(root, cwd=root)
    assert spec(Change.modified, str(root / "app.py"))
    assert not spec(Change.modified, str(root / ".venv" / "x.py"))
    assert not ignored_by_default(root / "app.py", [root])
    assert ignored_by_default(root / ".git" / "HEAD", [root])


def test_include_directory_and_glob_matching_directories(project: Path, tmp_path_factory
                                                         ) -> None:
    outside = tmp_path_factory.mktemp("shared")
    spec = WatchSpec(project / "src", includes=[str(outside)], cwd=project)
    assert set(spec.dirs) == {project, outside}
    assert spec(Change.modified, str(outside / "lib.py"))

    # Like uvicorn: a pattern's matches in the working directory that are directories are
    # watched (here they already are, inside it); the pattern itself stays a pattern.
    (project / "plugins_a").mkdir()
    spec = WatchSpec(outside, includes=["plugins_*"], cwd=project)
    assert set(spec.dirs) == {project, outside}
    assert spec.include_patterns == ["plugins_*"]


def test_exclude_directory(project: Path) -> None:
    spec = WatchSpec(project, excludes=["data"], cwd=project)
    assert spec.exclude_dirs == [project / "data"]
    assert not spec(Change.modified, str(project / "data" / "rows.json"))
    assert not spec(Change.added, str(project / "data" / "deep" / "mod.py"))
    assert spec(Change.modified, str(project / "database.py"))


def test_excluded_directory_is_not_watched(project: Path) -> None:
    docs = project / "docs"
    spec = WatchSpec(project / "src", includes=[str(docs)], excludes=[str(project / "src")],
                     cwd=docs)
    assert spec.dirs == [docs]


def test_exclude_glob_patterns(project: Path) -> None:
    spec = WatchSpec(project, excludes=["*.log", "data/*", "*_local.py"], cwd=project)
    assert not spec(Change.modified, str(project / "server.log"))
    assert not spec(Change.modified, str(project / "sub" / "debug.log"))
    assert not spec(Change.modified, str(project / "settings_local.py"))
    assert not spec(Change.modified, str(project / "data" / "x.json"))  # a directory, too
    assert spec(Change.modified, str(project / "settings.py"))
    assert spec(Change.modified, str(project / "logs.py"))


def test_glob_naming_directories_excludes_them(project: Path) -> None:
    (project / "migrations_v1").mkdir()
    spec = WatchSpec(project, excludes=["migrations_*"], cwd=project)
    assert project / "migrations_v1" in spec.exclude_dirs
    assert not spec(Change.modified, str(project / "migrations_v1" / "m001.py"))


def test_excluding_python_files(project: Path) -> None:
    spec = WatchSpec(project, excludes=["*.py"], cwd=project)
    assert not spec(Change.modified, str(project / "app.py"))
    assert spec(Change.modified, str(project / "templates" / "page.html"))


def test_include_pattern_drops_the_same_default_exclude(project: Path) -> None:
    swap = str(project / "notes.swp")
    assert not WatchSpec(project, cwd=project)(Change.modified, swap)
    assert WatchSpec(project, includes=["*.sw?"], cwd=project)(Change.modified, swap)


def test_exclude_wins_over_include_pattern_unless_it_names_the_file(project: Path) -> None:
    spec = WatchSpec(project, includes=["*.html"], excludes=["templates/*"], cwd=project)
    assert not spec(Change.modified, str(project / "templates" / "page.html"))
    spec = WatchSpec(project, includes=["templates/page.html"], excludes=["templates"],
                     cwd=project)
    assert spec(Change.modified, str(project / "templates" / "page.html"))
    assert not spec(Change.modified, str(project / "templates" / "other.html"))


def test_relative_values_are_relative_to_the_working_directory(project: Path) -> None:
    spec = WatchSpec(project, excludes=["./data"], cwd=project)
    assert spec.exclude_dirs == [project / "data"]
    spec = WatchSpec(project, includes=["src"], cwd=project)
    assert spec.dirs == [project]


def test_reload_dir_replaces_the_default_directories(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "app").mkdir()
    spec = WatchSpec(tmp_path / "app", cwd=tmp_path, reload_dirs=[src])
    assert spec.dirs == [src.resolve()]
    assert WatchSpec(tmp_path / "app", cwd=tmp_path).dirs == [tmp_path.resolve()]
