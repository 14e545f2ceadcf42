"""A run's folder: ``runs/<run>/`` (work) with ``run.json``, ``graph.json``, ``steps/<step>/`` and ``cells/``.

Every step folder holds ``spec.json`` (what to run, written at submission), ``jobs.jsonl`` (each submission: job
id, executor, log files), and exactly one of ``done.json`` / ``failed.json`` once the step has finished. A cell's
result is ``cells/<cell>.json``. Tables are built from these files only, never from live objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from msrepro.io import append_jsonl, atomic_write_json

DONE, FAILED, SPEC, JOBS = "done.json", "failed.json", "spec.json", "jobs.jsonl"


def step_dir(run_dir: Path, step_id: str) -> Path:
    return Path(run_dir) / "steps" / step_id


def cell_path(run_dir: Path, cell: str) -> Path:
    return Path(run_dir) / "cells" / f"{cell}.json"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj: Any) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, obj)


def record_job(run_dir: Path, step_id: str, record: dict[str, Any]) -> None:
    d = step_dir(run_dir, step_id)
    d.mkdir(parents=True, exist_ok=True)
    append_jsonl(d / JOBS, record)


def last_job(run_dir: Path, step_id: str) -> dict[str, Any] | None:
    path = step_dir(run_dir, step_id) / JOBS
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else None


def resolve_run(name_or_path: str | None, roots: tuple[str, ...] = ("runs", "results")) -> Path:
    """A run folder from a path or a name under ``runs/`` (or ``results/``); None = the newest run."""
    from msrepro.config import ConfigError

    if name_or_path:
        p = Path(name_or_path)
        if (p / "run.json").is_file():
            return p
        for root in roots:
            if (Path(root) / name_or_path / "run.json").is_file():
                return Path(root) / name_or_path
        raise ConfigError(f"no run '{name_or_path}' (looked for run.json in it and under {', '.join(roots)}/); "
                          f"runs: {', '.join(p.name for p in list_runs(roots)) or 'none'}")
    runs = list_runs(roots)
    if not runs:
        raise ConfigError(f"no runs found under {', '.join(roots)}/; start one with msrepro submit")
    return max(runs, key=lambda p: (p / "run.json").stat().st_mtime)


def list_runs(roots: tuple[str, ...] = ("runs", "results")) -> list[Path]:
    return sorted(p.parent for root in roots for p in Path(root).glob("*/run.json"))
