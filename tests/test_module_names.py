"""One name per concept (issue 12): no two modules of ``msrepro/`` share a file name (a package's ``base.py``
aside), and no module is named like a package but for an ending (``backbone.py`` beside ``backbones/``,
``sampling.py`` beside ``samplers/``, ``evaluation/evaluate.py``)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "msrepro"
SHARED_OK = {"__init__", "__main__", "base"}
ENDINGS = ("ation", "ers", "ing", "ion", "es", "s", "e")


def stems(name: str) -> set[str]:
    """``name`` and ``name`` less each common English ending it has (a stem of at least 4 letters)."""
    return {name} | {name[: -len(end)] for end in ENDINGS if name.endswith(end) and len(name) - len(end) >= 4}


def same_word(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ only by an ending (sampling / samplers, evaluate / evaluation) or one is the
    other plus a suffix (backbone / backbones, config / config_schema)."""
    return a != b and (bool(stems(a) & stems(b)) or a.startswith(b) or b.startswith(a))


def modules() -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" not in path.parts:
            out[path.stem].append(path.relative_to(PACKAGE))
    return out


def packages() -> set[str]:
    return {p.parent.name for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE}


def test_stem_rule_catches_the_twins_it_is_for():
    assert same_word("sampling", "samplers") and same_word("evaluate", "evaluation")
    assert same_word("backbone", "backbones") and same_word("launch", "launcher")
    assert not same_word("train_cmd", "training") and not same_word("plan", "plots")


def test_no_two_modules_share_a_file_name():
    twins = {n: [str(p) for p in ps] for n, ps in modules().items() if len(ps) > 1 and n not in SHARED_OK}
    assert not twins, f"modules sharing a file name: {twins}"


@pytest.mark.parametrize("package", sorted(packages()))
def test_no_module_named_like_a_package_but_for_an_ending(package: str):
    clash = [str(p) for n, ps in modules().items() for p in ps
             if n not in SHARED_OK and same_word(n, package)]
    assert not clash, f"modules named like the package {package}/: {clash}"
