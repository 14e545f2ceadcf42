"""Results: the paper's tables from cell result JSONs, ``results/<run>/``, and the dry run with its compute estimate.

Tables read only the run folders' files (``run.json``, ``graph.json``, ``cells/*.json``): per column the paper's
value, each run's, and their difference where like-for-like (a column's ``compare``: ``always``: NFE, cut points;
``metric``: the quality metric is the paper's FID; ``full``: the run used the paper's budgets). More columns come
in through :data:`TABLE_EXTENSIONS` (functions that add to a :class:`TableView`).

Compute estimates (``--dry-run``): each step's FLOPs from :func:`msrepro.flops.step_flops`, turned into GPU-hours at
the profile's throughput.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tabulate import tabulate

from msrepro.comparison import METRIC_LABELS, extend_table, quality_metric, quantity
from msrepro.flops import fmt_flops, step_flops
from msrepro.io import atomic_write_json, atomic_write_text
from msrepro.launch.execution import plan_groups
from msrepro.launch.plan import JobGraph
from msrepro.launch.run_folder import DONE, SPEC, StepState, cell_path, read_json, run_states, saved_states, \
    step_dir
from msrepro.paper_tables import Column, Row, Table
from msrepro.profiles import Profile

PAPER_METRIC = "fid"
FORMATS: tuple[str, ...] = ("md", "latex", "csv", "json")


# -- tables -------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """A finished or running run, read from its folder."""

    path: Path
    info: dict[str, Any]
    graph: dict[str, Any]
    label: str | None = None  # set by assemble_table when two runs share a name

    @property
    def name(self) -> str:
        return self.label or self.info.get("name") or self.path.name

    @property
    def preset(self) -> str:
        return self.info.get("preset", "?")

    @classmethod
    def load(cls, path: Path) -> "Run":
        return cls(Path(path), read_json(Path(path) / "run.json") or {}, read_json(Path(path) / "graph.json") or {})

    def entry(self, row: Row) -> dict[str, Any] | None:
        return self.graph.get("rows", {}).get(row.ref)

    def result(self, row: Row) -> dict[str, Any] | None:
        e = self.entry(row)
        return read_json(cell_path(self.path, e["cell"])) if e and e.get("cell") else None


def value(column: Column, result: dict[str, Any], run: Run, row: Row) -> Any:
    """Our value of ``column`` from a cell result (None where the result has no such quantity)."""
    src = column.source
    if src in ("nfe", "quality", "iterations", "gflops", "pflops"):
        return quantity(result, src)
    if src in ("t1", "t2"):
        cuts, i = (result.get("cluster") or {}).get("boundaries") or [], int(src[1]) - 1
        return cuts[i] if len(cuts) > i else None
    if src == "dataset_label":
        ds = result["config"]["dataset"]
        return row.paper.get(column.name) if run.preset == "full" else f"{ds['name']} {ds['resolution']}x{ds['resolution']}"
    raise ValueError(f"unknown column source {src}")


def comparable(column: Column, result: dict[str, Any], run: Run) -> bool:
    return (column.compare == "always" or (column.compare == "metric" and quality_metric(result) == PAPER_METRIC)
            or (column.compare == "full" and run.preset == "full"))


def fmt(v: Any, spec: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if spec == "d":
        return str(int(round(v)))
    if spec == "auto":  # two decimals, or three significant digits for small values (tiny models)
        return f"{v:.2f}" if v == 0 or abs(v) >= 0.1 else f"{v:.3g}"
    return format(v, spec) if spec else str(v)


def difference(a: Any, b: Any, spec: str) -> str:
    """``a - b`` formatted with its sign; ``-`` where either is not a number."""
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return "-"
    s = fmt(a - b, ".2f" if spec == "auto" and max(abs(a), abs(b)) >= 0.1 else spec)
    return s if s.startswith("-") else f"+{s}"


def row_status(run: Run, row: Row) -> str:
    """Why a row has no values: quoted, skipped (reason), or the state of its steps."""
    e = run.entry(row)
    if row.quoted is not None:
        return "quoted"
    if e is None:
        return "not in run"
    if e["status"] == "skipped":
        return f"skipped: {e['reason']}"
    cell = run.graph["cells"][e["cell"]]
    steps = [s for s in (cell.get("cluster"), cell["train"], cell["evaluate"]) if s]
    states = {s: st.state for s, st in saved_states(run.path, steps).items()}
    for label in ("failed", "running", "queued"):
        for s in steps:
            if states[s] == label:
                return f"{label} ({s.split('-')[0]})"
    return "missing"


@dataclass
class TableView:
    """A table as text cells: ``headers``, one list per paper row in ``rows``, and ``notes`` under it.
    ``results[(run name, row id)]`` is the cell result behind each value (None: the row has no result)."""

    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    results: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)


#: functions ``(table, runs, view) -> None`` that add columns, rows or notes to every assembled table (ratios to
#: the baseline, verdicts, the real-data floor, compute to reach: :func:`msrepro.comparison.extend_table`)
TABLE_EXTENSIONS: list[Callable[[Table, list[Run], TableView], None]] = [extend_table]


def assemble_table(table: Table, runs: list[Run]) -> TableView:
    """``table`` for ``runs``: per column the paper's value, then each run's value and its difference to the paper
    where like-for-like; then :data:`TABLE_EXTENSIONS`."""
    names = [r.info.get("name") or r.path.name for r in runs]
    for run, name in zip(runs, names):  # runs of the same name are told apart by their folder
        run.label = str(run.path) if names.count(name) > 1 else None
    results = {(run.name, row.id): run.result(row) for run in runs for row in table.rows}
    metrics = {r.name: {quality_metric(res) for (n, _), res in results.items() if n == r.name and res} for r in runs}
    view = TableView(["Method"], [[row.label + (" [quoted]" if row.quoted else "")] for row in table.rows],
                     results=results)
    for col in table.columns:
        view.headers.append(f"{col.header} (paper)")
        for line, row in zip(view.rows, table.rows):
            line.append(fmt(row.paper.get(col.name), col.fmt))
        for run in runs:
            label = col.header
            if col.source == "quality" and metrics[run.name]:
                label = "/".join(sorted(METRIC_LABELS.get(m, m) for m in metrics[run.name]))
            view.headers += [f"{label} ({run.name})"] + ([f"Δ {label} ({run.name})"] if col.compare != "never" else [])
            for line, row in zip(view.rows, table.rows):
                res = results[(run.name, row.id)]
                if res is None:
                    line += [row_status(run, row) if col is table.columns[0] else ""] + [""] * (col.compare != "never")
                    continue
                ours = value(col, res, run, row)
                line.append(fmt(ours, col.fmt))
                if col.compare != "never":
                    line.append(difference(ours, row.paper.get(col.name), col.fmt) if comparable(col, res, run)
                                else "n/c")
    for run in runs:
        other = metrics[run.name] - {PAPER_METRIC}
        if other:
            view.notes.append(f"{run.name} (preset {run.preset}): quality is "
                              f"{', '.join(sorted(METRIC_LABELS.get(m, m) for m in other))}, not the paper's FID; "
                              f"n/c = not comparable, no difference shown.")
        elif run.preset != "full":
            view.notes.append(f"{run.name} (preset {run.preset}): budgets are scaled down; n/c = not comparable.")
    if any(c.source in ("t1", "t2") for c in table.columns):  # which objective produced each row's cut points
        for run in runs:
            for row in table.rows:
                objective = ((results[(run.name, row.id)] or {}).get("cluster") or {}).get("objective")
                if objective:
                    view.notes.append(f"{run.name}: cut points of {row.label}: {objective}.")
    view.notes.append("GFLOPs = multiply-adds per forward pass (the paper's convention), weighted by interval "
                      "length over the stages; PFLOPs = iterations x GFLOPs x 1e-6 (paper footnote 2).")
    for extend in TABLE_EXTENSIONS:
        extend(table, runs, view)
    return view


def render(table: Table, runs: list[Run], form: str) -> str:
    """``table`` for ``runs`` in ``md``, ``latex``, ``csv`` or ``json``."""
    v = assemble_table(table, runs)
    if form == "md":
        return (f"**{table.title}**\n\n" + tabulate(v.rows, v.headers, tablefmt="github", disable_numparse=True)
                + "\n\n" + "\n".join(f"- {n}" for n in v.notes) + "\n")
    if form == "latex":
        return (f"% {table.title}\n" + tabulate(v.rows, v.headers, tablefmt="latex_booktabs", disable_numparse=True)
                + "\n" + "".join(f"% {n}\n" for n in v.notes))
    if form == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([v.headers, *v.rows])
        return buf.getvalue()
    if form == "json":
        return json.dumps({"table": table.name, "title": table.title, "headers": v.headers, "rows": v.rows,
                           "notes": v.notes}, indent=2, ensure_ascii=False) + "\n"
    raise ValueError(f"unknown format '{form}'; valid: {', '.join(FORMATS)}")


def write_tables(tables: list[Table], runs: list[Run], out_dir: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Each table in each format into ``out_dir`` (atomically); returns the files."""
    ext = {"md": "md", "latex": "tex", "csv": "csv", "json": "json"}
    return [atomic_write_text(Path(out_dir) / f"{t.name}.{ext[f]}", render(t, runs, f)) for t in tables for f in formats]


# -- results/<run>/ -----------------------------------------------------------------------------------------------
def copy_run_results(run_dir: Path, out: Path) -> dict[str, list[str]]:
    """Copy run.json, graph.json, the steps' final states, cell results, sample grids and clustering plots from the
    work folder ``run_dir`` into ``out`` (``results/<run>``), replacing what an earlier run left there."""
    for sub in ("cells", "grids", "plots"):  # copies of the work folder: a stale file would pass for this run's
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[str]] = {"cells": [], "grids": [], "plots": []}
    for name in ("run.json", "graph.json"):
        shutil.copyfile(run_dir / name, out / name)
    graph = read_json(run_dir / "graph.json") or {}
    states = run_states(run_dir, list(graph.get("steps", {})))
    atomic_write_json(out / "states.json", {s: {"state": st.state, "reason": st.reason} for s, st in states.items()})

    def copy(src: Path, dest: Path, kind: str) -> None:
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(src, dest)
        made[kind].append(str(dest))

    for key, cell in graph.get("cells", {}).items():
        res = read_json(cell_path(run_dir, key))
        if res is not None:
            made["cells"].append(str(atomic_write_json(cell_path(out, key), res)))
            if Path(res.get("grid") or "").is_file():
                copy(Path(res["grid"]), out / "grids" / f"{cell['rows'][0].replace('.', '-')}.png", "grids")
    for sid in (s for s in graph.get("steps", {}) if s.startswith("cluster-")):
        done = read_json(step_dir(run_dir, sid) / DONE)
        backbone = ((read_json(step_dir(run_dir, sid) / SPEC) or {}).get("config", {}).get("model", {})
                    .get("backbone", "model"))
        for kind, path in ((done or {}).get("files") or {}).items():
            if kind != "json" and Path(path).is_file():
                copy(Path(path), out / "plots" / f"cluster-{done['clusterer']}-{backbone}-{kind}{Path(path).suffix}",
                     "plots")
    return made


def write_readme(out: Path, command: str, info: dict[str, Any], made: dict[str, list[str]], wall_s: float,
                 problems: list[str], summary: list[str] = ()) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"# msrepro reproduction: preset {info.get('preset')}", "", "Made by:", "", "```bash", command, "```", "",
             f"- wall time: {wall_s:.0f} s on {sys.platform} ({cores} CPU cores, load average {load:.1f} at the end)",
             f"- code: {info.get('code_version')}",
             f"- tables: {', '.join(info.get('tables', []))} (`table*.md`, `.tex`, `.csv`, `.json`)",
             f"- cell results: {len(made['cells'])} JSON files in `cells/`",
             f"- sample grids: {len(made['grids'])} in `grids/`; plots: {len(made['plots'])} in `plots/`", "",
             *summary]
    if problems:
        lines += ["Problems:", ""] + [f"- {p}" for p in problems] + [""]
    atomic_write_text(out / "README.md", "\n".join(lines))


# -- compute estimate and dry run ---------------------------------------------------------------------------------
def estimate_graph(graph: JobGraph, profile: Profile) -> dict[str, dict[str, Any]]:
    """Per step: FLOPs, GPU-hours at the profile's throughput, wall hours on its GPUs, and the time limit."""
    rate = float(profile.estimate["gpu_tflops"]) * 1e12 * float(profile.estimate["utilization"])
    out = {}
    for sid, step in graph.steps.items():
        flops, res = step_flops(step.kind, step.config), profile.resources(step.kind)
        hours = None if flops is None else flops / rate / 3600.0
        wall = None if hours is None else hours / max(1, res.gpus)
        out[sid] = {"flops": flops, "gpu_hours": hours, "wall_hours": wall, "limit_min": res.timeout_min,
                    "over_limit": wall is not None and wall * 60 > res.timeout_min}
    return out


def fmt_hours(h: float | None) -> str:
    if h is None:
        return "?"
    if h < 1 / 60:
        return f"{h * 3600:.0f}s"
    return f"{h * 60:.1f}m" if h < 1 else f"{h:.1f}h" if h < 100 else f"{h:,.0f}h"


def array_plan(graph: JobGraph, executor: str, profile: Profile) -> list[str]:
    """How SLURM would receive the graph: one sbatch (array or single job) per group, with its dependencies."""
    if executor != "slurm":
        return [f"{executor}: steps run when their dependencies are done (no sbatch)", ""]
    out = ["sbatch submissions (arrays group steps of one kind, depth and upstream jobs):"]
    for i, g in enumerate(plan_groups(graph, set(graph.steps), {s: StepState(s, "missing") for s in graph.steps})):
        n, arrays = len(g.steps), -(-len(g.steps) // profile.max_array_size)
        what = f"array of {n}" + (f" (split into {arrays})" if arrays > 1 else "") if n > 1 else "single job"
        out.append(f"  {i:2d}. {g.kind:8s} {what:14s} afterok: {', '.join(d[5:] for d in g.deps) or '-'}")
    return out + [""]


def dry_run_text(graph: JobGraph, executor: str, profile: Profile) -> str:
    """The job graph as text: every cell once, its rows, each step's resources, dependencies and estimated cost."""
    est, rows = estimate_graph(graph, profile), []
    for level, steps in enumerate(graph.levels()):
        for s in steps:
            res, e = profile.resources(s.kind), est[s.id]
            what = ", ".join(r for c in s.cells for r in graph.cells[c].rows) if s.cells else "(gradient reference)"
            rows.append([level, s.id, what if len(what) < 70 else what[:67] + "...", res.gpus, res.cpus, res.time,
                         ", ".join(s.deps) or "-", fmt_flops(e["flops"]), fmt_hours(e["gpu_hours"]),
                         ("!" if e["over_limit"] else "") + fmt_hours(e["wall_hours"])])
    counts = ", ".join(f"{k} {sum(s.kind == k for s in graph.steps.values())}" for k in ("cluster", "train", "evaluate"))
    cells = [[c.key, ", ".join(c.rows), c.config.model.backbone, c.config.model.variant,
              c.config.cluster.name if c.cluster else "-", c.config.train.steps, f"{c.config.sample.sampler}"]
             for c in graph.cells.values()]
    lines = [f"job graph: tables {', '.join(graph.tables)}, preset {graph.preset}, executor {executor}, "
             f"profile {profile.name} (partition {profile.partition})",
             f"{len(graph.cells)} cells, {len(graph.steps)} steps ({counts})", "",
             tabulate(rows, headers=["lvl", "step", "rows", "gpus", "cpus", "time limit", "after (afterok)", "FLOPs",
                                     "GPU-h", "wall"], disable_numparse=True), "",
             tabulate(cells, headers=["cell", "rows", "backbone", "variant", "clusterer", "iterations", "sampler"],
                      disable_numparse=True), "", *array_plan(graph, executor, profile)]
    lines += [f"{ref}: {e.status} ({e.reason})" for ref, e in graph.rows.items() if e.status != "cell"]
    total = sum(e["gpu_hours"] or 0 for e in est.values())
    unknown = [s for s, e in est.items() if e["gpu_hours"] is None]
    over = [s for s, e in est.items() if e["over_limit"]]
    lines += ["", f"estimated GPU-hours: {total:,.1f} at {profile.estimate['gpu_tflops']} TFLOP/s x "
                  f"{profile.estimate['utilization']} utilization (FLOPs from msrepro.flops.accounting)"
              + (f"; not estimated: {', '.join(unknown)}" if unknown else "")]
    if over:
        lines.append(f"! estimated wall time over the time limit (requeued from checkpoints): {', '.join(over)}")
    return "\n".join(lines + ["dry run: nothing submitted"])
