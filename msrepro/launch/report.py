"""``results/<run>/``: what a reproduction leaves for people - tables (md, LaTeX, CSV, JSON), the cell result
JSONs, sample grids, clustering plots and a quality-vs-iterations plot, plus the command that made it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from msrepro.launch.rundir import cell_path, read_json, step_dir, write_json


def _slug(ref: str) -> str:
    return ref.replace(".", "-")


def collect(run_dir: Path, out: Path) -> dict[str, list[str]]:
    """Copy run.json, graph.json, cell results, grids and clustering plots from ``run_dir`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[str]] = {"cells": [], "grids": [], "plots": []}
    for name in ("run.json", "graph.json"):
        shutil.copyfile(run_dir / name, out / name)
    graph = read_json(run_dir / "graph.json") or {}
    from msrepro.launch.state import run_states

    states = run_states(run_dir, list(graph.get("steps", {})))
    write_json(out / "states.json", {s: {"state": st.state, "reason": st.reason} for s, st in states.items()})
    for key, cell in graph.get("cells", {}).items():
        res = read_json(cell_path(run_dir, key))
        if res is None:
            continue
        write_json(cell_path(out, key), res)
        made["cells"].append(key)
        grid = Path(res.get("grid") or "")
        if grid.is_file():
            dest = out / "grids" / f"{_slug(cell['rows'][0])}.png"
            dest.parent.mkdir(exist_ok=True)
            shutil.copyfile(grid, dest)
            made["grids"].append(str(dest))
    for sid in graph.get("steps", {}):
        if not sid.startswith("cluster-"):
            continue
        done = read_json(step_dir(run_dir, sid) / "done.json")
        if not done:
            continue
        spec = read_json(step_dir(run_dir, sid) / "spec.json") or {}
        backbone = spec.get("config", {}).get("model", {}).get("backbone", "model")
        for kind, path in (done.get("files") or {}).items():
            if kind != "json" and Path(path).is_file():
                dest = out / "plots" / f"cluster-{done['clusterer']}-{backbone}-{kind}{Path(path).suffix}"
                dest.parent.mkdir(exist_ok=True)
                shutil.copyfile(path, dest)
                made["plots"].append(str(dest))
    return made


def quality_vs_iterations(run_dir: Path, out_png: Path, rows: tuple[str, ...] = ("table3.unified",
                                                                                   "table3.multistage")) -> str | None:
    """The quality metric of every saved checkpoint of the given rows' training runs, as one plot
    (``msrepro.evaluation.evaluate_run`` + ``plot_metric_vs_iterations``)."""
    from msrepro.evaluation import evaluate_run, plot_metric_vs_iterations

    graph = read_json(run_dir / "graph.json") or {}
    runs = {}
    for ref in rows:
        entry = graph.get("rows", {}).get(ref)
        if not entry or not entry.get("cell"):
            continue
        train = read_json(step_dir(run_dir, graph["cells"][entry["cell"]]["train"]) / "done.json")
        if train:
            runs[ref.split(".")[-1]] = Path(train["run_dir"])
    if not runs:
        return None
    for path in runs.values():
        evaluate_run(path, progress=False)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    plot_metric_vs_iterations(runs, out_png)
    return str(out_png)


def write_readme(out: Path, command: str, info: dict[str, Any], made: dict[str, list[str]], wall_s: float,
                 problems: list[str]) -> None:
    from msrepro.io import atomic_write_text

    lines = [f"# msrepro reproduction: preset {info.get('preset')}", "",
             "Made by:", "", "```bash", command, "```", "",
             f"- wall time: {wall_s:.0f} s on {sys.platform} ({_cpu_count()} CPU cores, load average "
             f"{_load():.1f} at the end)",
             f"- code: {info.get('code_version')}",
             f"- tables: {', '.join(info.get('tables', []))} (`table*.md`, `.tex`, `.csv`, `.json`)",
             f"- cell results: {len(made['cells'])} JSON files in `cells/`",
             f"- sample grids: {len(made['grids'])} in `grids/`; plots: {len(made['plots'])} in `plots/`", ""]
    if problems:
        lines += ["Problems:", ""] + [f"- {p}" for p in problems] + [""]
    atomic_write_text(out / "README.md", "\n".join(lines))


def _load() -> float:
    import os

    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
