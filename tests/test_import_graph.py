"""The package's import graph: no cycles (function-level imports included), and the numerics layer imports nothing
above it (issue 12's layering: registry / io / config, then the numerics, then everything built on them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> importable package name (pyproject.toml's package-dir)
PACKAGES = {"msrepro": ROOT / "msrepro", "msrepro.backbones": ROOT / "backbones", "msrepro.registry": ROOT / "registry"}
#: the bottom two layers: what schedules, precond, multidecoder and samplers may import
NUMERICS = ("msrepro.schedules", "msrepro.boundaries", "msrepro.precond", "msrepro.multidecoder", "msrepro.samplers",
            "msrepro.training.densities", "msrepro.training.policies")
FOUNDATION = ("msrepro.registry", "msrepro.io", "msrepro.config")
CHECKED = ("msrepro.schedules", "msrepro.precond", "msrepro.multidecoder", "msrepro.samplers")


def _modules(packages: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is_package) for every .py file of the packages."""
    out: dict[str, tuple[Path, bool]] = {}
    for name, folder in packages.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            out[".".join([name, *parts])] = (path, is_pkg)
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_pkg: bool) -> list[str]:
    """What every ``import`` anywhere in ``tree`` asks for (``if TYPE_CHECKING`` blocks aside): module names, and
    ``package:name`` for ``from package import name``."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.extend(f"{prefix}:{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph(packages: dict[str, Path] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the package modules it imports. Importing ``a.b.c`` also imports the packages ``a`` and ``a.b``,
    but those edges are left out: a package's ``__init__`` is then charged with what it imports itself."""
    modules = _modules(packages)
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in modules.items():
        targets = set()
        for imported in _imported_names(ast.parse(path.read_text(), str(path)), name, is_pkg):
            if ":" in imported:  # from P import x: the submodule P.x if there is one, else P itself
                package, attr = imported.split(":")
                imported = f"{package}.{attr}" if f"{package}.{attr}" in modules else package
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (function-level imports included):\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("layer", CHECKED)
def test_numerics_import_nothing_above_them(layer):
    graph = import_graph()
    bad = {m: sorted(t for t in targets if not _within(t, NUMERICS + FOUNDATION))
           for m, targets in graph.items() if _within(m, (layer,))}
    bad = {m: t for m, t in bad.items() if t}
    assert not bad, f"{layer} imports modules above the numerics layer: {bad}"


def test_the_checker_sees_a_planted_cycle(tmp_path):
    """A two-module cycle hidden in a function body, and a relative import, are both found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg import b\n    return b\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n"
                              "import pkg.a\n")
    graph = import_graph({"pkg": pkg})
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    (pkg / "a.py").write_text("def f():\n    return 1\n")
    assert cycles(import_graph({"pkg": pkg})) == []
