"""The reproduction grid (SPEC 2, issue 7): experiment registry -> job graph -> submitit jobs -> tables.

``plan`` expands table rows into deduplicated cells and steps; ``submit`` queues (SLURM) or runs (local, debug)
the steps that are not done yet; :mod:`msrepro.launch.tables` renders the results next to the paper's numbers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from msrepro.launch.experiments import PRESETS, Table, check_preset, select_tables, table_names
from msrepro.launch.graph import JobGraph, build_graph
from msrepro.launch.profiles import Profile, default_profile, load_profile
from msrepro.launch.executors import EXECUTORS, check_executor, default_executor

__all__ = ["PRESETS", "EXECUTORS", "JobGraph", "SubmitReport", "plan", "submit", "dry_run_text", "table_names",
           "select_tables", "load_profile"]


def plan(tables: list[str] | tuple[str, ...], preset: str, *, validate: bool = True) -> JobGraph:
    """Every row of the named tables at ``preset`` as a job graph (configs validated: bad input fails here)."""
    check_preset(preset)
    return build_graph(select_tables(list(tables)), preset, validate=validate)


@dataclass
class SubmitReport:
    run_dir: Path
    executor: str
    submitted: list[str] = field(default_factory=list)   # step ids sent to an executor in this call
    skipped_done: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    final: dict[str, str] = field(default_factory=dict)  # local/debug: step -> done/failed/blocked
    jobs: list[dict[str, Any]] = field(default_factory=list)


def resolve_profile(executor: str, profile: str | None) -> Profile:
    if profile is not None:
        return load_profile(profile)
    if executor == "slurm":
        return load_profile("local")
    return default_profile()


def submit(tables: list[str] | tuple[str, ...], preset: str, *, executor: str | None = None,
           profile: str | None = None, run: str | None = None, root: str | Path = "runs", parallel: int = 1,
           progress: bool = True, snapshot: bool = True,
           on_finish: Callable[[str, str], None] | None = None) -> SubmitReport:
    """Submit the missing or failed steps of ``tables`` at ``preset`` into run folder ``root/run`` (default name:
    the preset). SLURM returns once everything is queued; local and debug return when the steps have finished."""
    from msrepro.launch.executors import prepare_run, run_driver, snapshot_code, submit_slurm

    executor = check_executor(executor or default_executor())
    prof = resolve_profile(executor, profile)
    graph = plan(tables, preset)
    run_dir = Path(root) / (run or preset)
    states = prepare_run(run_dir, graph, executor, prof)
    report = SubmitReport(run_dir, executor)
    todo = set()
    for sid, st in states.items():
        if st.state == "done":
            report.skipped_done.append(sid)
        elif st.live:
            report.in_flight.append(sid)
        else:
            todo.add(sid)
    report.submitted = [s for s in graph.steps if s in todo]
    if not todo:
        return report
    snap = snapshot_code(run_dir) if snapshot and executor != "debug" else None
    if executor == "slurm":
        report.jobs = submit_slurm(run_dir, graph, todo, states, prof, snap)
    else:
        report.final = run_driver(run_dir, graph, todo, states, executor, parallel=parallel, snapshot=snap,
                                  progress=progress, on_finish=on_finish)
    return report


def _array_plan(graph: JobGraph, executor: str, profile: Profile) -> list[str]:
    """How SLURM would receive the graph: one sbatch (array or single job) per group, with its dependencies."""
    from msrepro.launch.state import StepState
    from msrepro.launch.executors import plan_groups

    if executor != "slurm":
        return [f"{executor}: steps run when their dependencies are done (no sbatch)", ""]
    states = {s: StepState(s, "missing") for s in graph.steps}
    out = ["sbatch submissions (arrays group steps of one kind, depth and upstream jobs):"]
    for i, g in enumerate(plan_groups(graph, set(graph.steps), states)):
        n = len(g.steps)
        arrays = -(-n // profile.max_array_size)
        what = f"array of {n}" + (f" (split into {arrays})" if arrays > 1 else "") if n > 1 else "single job"
        after = ", ".join(d[5:] for d in g.deps) or "-"
        out.append(f"  {i:2d}. {g.kind:8s} {what:14s} afterok: {after}")
    return out + [""]


def dry_run_text(graph: JobGraph, executor: str, profile: Profile) -> str:
    """The job graph as text: every cell once, its rows, each step's resources, dependencies and estimated cost."""
    from tabulate import tabulate

    from msrepro.launch.estimate import estimate_graph, fmt_flops, fmt_hours

    est = estimate_graph(graph, profile)
    rows = []
    for level, steps in enumerate(graph.levels()):
        for s in steps:
            res = profile.resources(s.kind)
            e = est[s.id]
            what = ", ".join(r for c in s.cells for r in graph.cells[c].rows) if s.cells else "(gradient reference)"
            rows.append([level, s.id, what if len(what) < 70 else what[:67] + "...", res.gpus, res.cpus, res.time,
                         ", ".join(s.deps) or "-", fmt_flops(e["flops"]), fmt_hours(e["gpu_hours"]),
                         ("!" if e["over_limit"] else "") + fmt_hours(e["wall_hours"])])
    lines = [f"job graph: tables {', '.join(graph.tables)}, preset {graph.preset}, executor {executor}, "
             f"profile {profile.name} (partition {profile.partition})",
             f"{len(graph.cells)} cells, {len(graph.steps)} steps "
             f"({', '.join(f'{k} {sum(s.kind == k for s in graph.steps.values())}' for k in ('cluster', 'train', 'evaluate'))})",
             "",
             tabulate(rows, headers=["lvl", "step", "rows", "gpus", "cpus", "time limit", "after (afterok)",
                                     "FLOPs", "GPU-h", "wall"], disable_numparse=True), ""]
    cells = [[c.key, ", ".join(c.rows), c.config.model.backbone, c.config.model.variant,
              c.config.cluster.name if c.cluster else "-", c.config.train.steps,
              f"{c.config.sample.sampler}"] for c in graph.cells.values()]
    lines += [tabulate(cells, headers=["cell", "rows", "backbone", "variant", "clusterer", "iterations", "sampler"],
                       disable_numparse=True),
              ""]
    lines += _array_plan(graph, executor, profile)
    for ref, e in graph.rows.items():
        if e.status != "cell":
            lines.append(f"{ref}: {e.status} ({e.reason})")
    total = sum(e["gpu_hours"] or 0 for e in est.values())
    unknown = [s for s, e in est.items() if e["gpu_hours"] is None]
    over = [s for s, e in est.items() if e["over_limit"]]
    lines += ["", f"estimated GPU-hours: {total:,.1f} at {profile.estimate['gpu_tflops']} TFLOP/s x "
                  f"{profile.estimate['utilization']} utilization (FLOPs from msrepro.flops.accounting)"
              + (f"; not estimated: {', '.join(unknown)}" if unknown else "")]
    if over:
        lines.append(f"! estimated wall time over the time limit (requeued from checkpoints): {', '.join(over)}")
    lines.append("dry run: nothing submitted")
    return "\n".join(lines)
