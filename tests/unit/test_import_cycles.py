"""No import cycles inside prism.*: the layering, checked from the source.

The graph is built from every module's AST, not by importing it, so it also
sees imports inside functions and under `if TYPE_CHECKING:` (a cycle hidden
behind a lazy import is still a cycle in the design). Importing `a.b.c` also
runs the `__init__` of `a` and `a.b`, so an import reaches those packages
too, except the importer's own enclosing packages (already being imported
when it runs). The module files come from pyproject's package-dir mapping, so
a new top-level package is checked as soon as it is mapped.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def prism_modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every .py under pyproject's mapped prism packages."""
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    out: dict[str, Path] = {}
    for package, folder in setup["package-dir"].items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join((package, *rel))] = path
    return out


def _is_package(name: str, files: Mapping[str, Path]) -> bool:
    return files[name].name == "__init__.py"


def imported_names(name: str, source: str, files: Mapping[str, Path]) -> set[str]:
    """The modules of `files` that module `name` imports anywhere in `source`."""
    package = name if _is_package(name, files) else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            targets.add(module)
            # `from pkg import mod` imports the submodule pkg.mod.
            targets.update(f"{module}.{alias.name}" for alias in node.names)
    out: set[str] = set()
    own = set(_ancestors(name))
    for target in targets:
        for mod in (*_ancestors(target), target):
            if mod in files and mod != name and mod not in own:
                out.add(mod)
    return out


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(files: Mapping[str, Path]) -> dict[str, set[str]]:
    return {n: imported_names(n, p.read_text(encoding="utf-8"), files) for n, p in files.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One concrete cycle per tangle, each as a path that starts and ends at
    the same module."""
    return [_path_within(graph, set(c)) for c in tangles(graph)]


def tangles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The modules that import each other, directly or not: the strongly
    connected components (Tarjan) of more than one module, or of one that
    imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path_within(graph: Mapping[str, Iterable[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, ())):
                if w not in component:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_prism_has_no_import_cycles() -> None:
    graph = import_graph(prism_modules())
    found = tangles(graph)
    assert not found, "import cycles inside prism.*:\n" + "\n".join(
        f"{' -> '.join(_path_within(graph, set(t)))}  (tangled: {', '.join(t)})" for t in found
    )


def test_the_graph_sees_the_imports_it_must() -> None:
    files = prism_modules()
    # The graph is real: every package is there, and known imports are
    # edges, also a function-level one.
    for package in ("prism.fabric", "prism.wrapper", "prism.driver", "prism.wrapper.sources"):
        assert package in files
    graph = import_graph(files)
    assert "prism.wrapper.store" in graph["prism.wrapper.apply"]
    assert "prism.fabric.errors" in graph["prism.driver.errors"]
    source = "def f():\n    from prism.wrapper.store import Store\n"
    assert imported_names("prism.wrapper.cli", source, files) == {"prism.wrapper.store"}


def test_cycles_are_found_and_named(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools]\npackage-dir = {"x.pkg" = "pkg"}\n')
    modules = {
        "pkg/__init__.py": "",
        "pkg/a.py": "from x.pkg import b\n",
        "pkg/b.py": "import typing\nif typing.TYPE_CHECKING:\n    from x.pkg.c import C\n",
        "pkg/c.py": "def late():\n    import x.pkg.a\n",
        "pkg/d.py": "from x.pkg.sub.e import E\n",
        # Importing sub.e runs sub/__init__, which imports d: a cycle.
        "pkg/sub/__init__.py": "from x.pkg import d\n",
        "pkg/sub/e.py": "from . import f\nfrom .. import c\n",
        "pkg/sub/f.py": "",
    }
    for rel, text in modules.items():
        (tmp_path / rel).write_text(text)
    files = prism_modules(tmp_path)
    graph = import_graph(files)
    assert graph["x.pkg.sub.e"] == {"x.pkg.sub.f", "x.pkg.c"}  # relative imports resolved
    found = {tuple(c) for c in cycles(graph)}
    assert found == {
        ("x.pkg.a", "x.pkg.b", "x.pkg.c", "x.pkg.a"),
        ("x.pkg.d", "x.pkg.sub", "x.pkg.d"),
    }
    # Without the hidden edges (TYPE_CHECKING, function-level) no cycle is left.
    (tmp_path / "pkg/c.py").write_text("")
    (tmp_path / "pkg/sub/__init__.py").write_text("")
    assert cycles(import_graph(prism_modules(tmp_path))) == []
