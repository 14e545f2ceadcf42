"""``msrepro tables [RUN ...] [--format md|latex|csv|json] [--out DIR]``: ours, the paper's, the difference."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "tables"
HELP = "write the paper's tables from runs: our value, the paper's, the difference (several runs side by side)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", help="run names or folders (default: the newest run)")
    p.add_argument("--format", default="md", choices=("md", "latex", "csv", "json"), help="what to print")
    p.add_argument("--tables", default=None, help="tables to show (default: the runs' tables), e.g. 1,3")
    p.add_argument("--out", default=None, help="write every table in md, LaTeX, CSV and JSON here (default: "
                                               "results/<run> or results/compare-<runs>)")
    p.add_argument("--no-write", action="store_true", help="only print")


def run(args: argparse.Namespace) -> int:
    from msrepro.comparison import compute_plots
    from msrepro.launch.results import Run, render, write_tables
    from msrepro.launch.run_folder import resolve_run
    from msrepro.paper_tables import select_tables

    runs = [Run.load(resolve_run(r)) for r in (args.runs or [None])]
    names = args.tables.split(",") if args.tables else list(dict.fromkeys(
        t for r in runs for t in r.info.get("tables", [])))
    tables = select_tables(names)
    for t in tables:
        print(render(t, runs, args.format))
    if not args.no_write:
        out = Path(args.out) if args.out else Path("results") / (
            runs[0].name if len(runs) == 1 else "compare-" + "-".join(r.name for r in runs))
        files = write_tables(tables, runs, out)
        for run in runs if len(runs) == 1 else ():  # Figure 1d per backbone, from the recorded quality curves
            files += [Path(p) for t in tables for p in compute_plots(t, run, out / "plots")]
        print(f"wrote {len(files)} files to {out}/")
    return 0
