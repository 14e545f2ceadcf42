"""Everything that needs the internet, in one place: ``msrepro prefetch TARGET``.

Each target is a small registered function that downloads into the folder msrepro later reads from (see
:func:`cache_dir`); offline loaders raise errors that name the file they expected and this command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

_TARGETS: dict[str, tuple[Callable[[Path], Path], str]] = {}


def cache_dir() -> Path:
    """Root of msrepro's downloads: $MSREPRO_CACHE, else ~/.cache/msrepro."""
    return Path(os.environ.get("MSREPRO_CACHE", Path.home() / ".cache" / "msrepro")).expanduser()


def data_dir() -> Path:
    """Default dataset folder: $MSREPRO_DATA, else <cache_dir>/data."""
    return Path(os.environ.get("MSREPRO_DATA", cache_dir() / "data")).expanduser()


def register_target(name: str, description: str) -> Callable[[Callable[[Path], Path]], Callable[[Path], Path]]:
    """Register ``fn(dest_dir) -> path`` as a prefetch target; duplicate names raise."""

    def deco(fn: Callable[[Path], Path]) -> Callable[[Path], Path]:
        if name in _TARGETS:
            raise ValueError(f"prefetch target '{name}' is already registered")
        _TARGETS[name] = (fn, description)
        return fn

    return deco


def targets() -> dict[str, str]:
    from msrepro.registry import ensure_loaded

    ensure_loaded()  # targets live next to the code that reads what they fetch
    return {k: d for k, (_, d) in sorted(_TARGETS.items())}


def prefetch(name: str, dest: Path | None = None) -> Path:
    """Run one target; unknown names list the valid ones."""
    valid = targets()
    if name not in valid:
        raise KeyError(f"unknown prefetch target '{name}'. Valid targets: {', '.join(valid) or '(none)'}")
    fn, _ = _TARGETS[name]
    return fn(dest if dest is not None else cache_dir())
