"""Packaging: every sub-package is listed in pyproject.toml, and nothing importable sits outside msrepro."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPING = {"msrepro": "msrepro", "msrepro.backbones": "backbones", "msrepro.registry": "registry"}


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for pkg, folder in MAPPING.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([pkg, *rel.parts]))
    missing = found - listed
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    assert not listed - found, f"listed but missing on disk: {sorted(listed - found)}"


def test_no_top_level_packages_named_like_our_folders(tmp_path):
    """The install exposes msrepro.registry / msrepro.backbones, never top-level registry / backbones / slurm."""
    import subprocess
    import sys

    code = ("import importlib.util, msrepro.registry, msrepro.backbones;"
            "print([n for n in ('registry', 'backbones', 'slurm') if importlib.util.find_spec(n)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def tabulate_calls() -> list[tuple[str, int, bool]]:
    """(file, line, passes disable_numparse=True) for every tabulate(...) call in the product and the benches."""
    import ast

    calls = []
    for folder in ("msrepro", "backbones", "registry", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "tabulate":
                    ok = any(k.arg == "disable_numparse" and getattr(k.value, "value", None) is True
                             for k in node.keywords)
                    calls.append((str(path.relative_to(ROOT)), node.lineno, ok))
    return calls


def test_every_text_table_keeps_its_strings():
    """tabulate re-parses number-like strings ('3.779e+05' -> 377900) unless disable_numparse=True (issue 11)."""
    calls = tabulate_calls()
    assert len({f for f, _, _ in calls}) >= 8, f"the scan found too few tabulate calls: {calls}"
    bad = [f"{f}:{line}" for f, line, ok in calls if not ok]
    assert not bad, f"pass disable_numparse=True (and format numbers yourself) at: {', '.join(bad)}"
