"""Atomic file writes and run provenance (git commit, dirty flag, a frozen copy of the code)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Write through ``write(fileobj)`` to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"))


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line (a single write call, so a line is never half-written by us)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()


def code_version(repo: str | Path | None = None) -> dict[str, Any]:
    """Git commit and dirty flag of the code that runs (None where it is not a git checkout)."""
    repo = Path(repo) if repo else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, timeout=10, check=True).stdout.strip())
        return {"git_commit": sha, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return {"git_commit": None, "git_dirty": None, "package_version": version("msrepro")}


def snapshot_package(dest: str | Path) -> Path:
    """Copy the msrepro package (with its backbones and registry, laid out as installed) and its code version to
    ``dest``: jobs that import this frozen copy run the code as it was when they were queued."""
    src, dest = Path(__file__).resolve().parent, Path(dest)
    tmp = dest.with_name(f".{dest.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(src, tmp / "msrepro", ignore=ignore)
    for sub in ("backbones", "registry"):  # package-dir mapping of pyproject.toml (editable checkout)
        if (src.parent / sub / "__init__.py").is_file() and not (tmp / "msrepro" / sub).exists():
            shutil.copytree(src.parent / sub, tmp / "msrepro" / sub, ignore=ignore)
    atomic_write_json(tmp / "code_version.json", code_version(src.parent))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
