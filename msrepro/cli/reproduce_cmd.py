"""``msrepro reproduce --preset tiny|smoke``: the whole grid on this machine, then tables, grids and plots."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

NAME = "reproduce"
HELP = ("run all four tables with the local executor, wait with a progress display, and write tables, sample "
        "grids and plots into results/<run>/")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="tiny (digits, ~20 min on 2 cores) or smoke (~minutes); "
                                                    "full needs a GPU cluster (use msrepro submit)")
    p.add_argument("--tables", default="all", help="tables to run (default: all)")
    p.add_argument("--run", default=None, help="run name (default: the preset)")
    p.add_argument("--root", default="runs", help="work folders (checkpoints, logs) go to ROOT/RUN")
    p.add_argument("--results", default="results", help="tables, grids and plots go to RESULTS/RUN")
    p.add_argument("--executor", default="local", choices=("local", "debug"))
    p.add_argument("--parallel", type=int, default=None, help="worker jobs (default: CPU cores)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from msrepro.comparison import agreement, agreement_text, compute_plots
    from msrepro.launch.execution import submit
    from msrepro.launch.results import Run, assemble_table, copy_run_results, render, write_readme, \
        write_tables
    from msrepro.launch.run_folder import read_json
    from msrepro.paper_tables import select_tables

    t0 = time.time()
    parallel = args.parallel or max(1, len(os.sched_getaffinity(0)))
    tables = args.tables.split(",")
    select_tables(tables)  # bad names fail before any work

    def on_finish(step: str, state: str) -> None:
        if state != "done" or args.no_progress:
            print(f"[{time.time() - t0:6.0f}s] {step}: {state}", file=sys.stderr)

    report = submit(tables, args.preset, executor=args.executor, run=args.run, root=args.root,
                    parallel=parallel, progress=not args.no_progress, on_finish=on_finish)
    run_dir = report.run_dir
    out = Path(args.results) / run_dir.name
    made = copy_run_results(run_dir, out)
    problems = [f"{s}: {v}" for s, v in report.final.items() if v != "done"]
    run_obj = Run.load(out)
    selected = select_tables(read_json(run_dir / "run.json")["tables"])
    for t in selected:  # Figure 1d per backbone, from the curves the evaluate steps recorded
        try:
            made["plots"] += compute_plots(t, run_obj, out / "plots")
        except Exception as exc:
            problems.append(f"compute-to-quality plot: {type(exc).__name__}: {exc}")
    write_tables(selected, [run_obj], out)
    for t in selected:
        print(render(t, [run_obj], "md"))
    command = "msrepro reproduce " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == [
        "reproduce"] else f"msrepro reproduce --preset {args.preset}"
    summary = agreement_text(agreement(selected, run_obj, assemble_table))
    write_readme(out, command, read_json(run_dir / "run.json") or {}, made, time.time() - t0, problems,
                 [f"Orderings against each table's baseline (paper vs this run, `ordering vs baseline` columns): "
                  f"{summary}.", ""])
    print(summary)
    print(f"results in {out}/ ({time.time() - t0:.0f} s)" + (f"; {len(problems)} problems" if problems else ""))
    return 1 if problems and any(not p.startswith("compute-to") for p in problems) else 0
