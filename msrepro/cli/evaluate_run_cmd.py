"""``msrepro evaluate-run RUN_DIR [RUN_DIR ...] [--plot PNG] [--x iterations|pflops] [evaluate options]``: evaluate
every saved checkpoint of each run (appending to ``<run>/eval.jsonl``) and plot a metric against training
iterations or PFLOPs, all runs on one PNG (the paper's Figure 1d)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate

from msrepro.cli import UserError
from msrepro.cli.evaluate_cmd import add_common, request

NAME = "evaluate-run"
HELP = "evaluate all saved checkpoints of runs -> eval.jsonl, and plot metric vs iterations / PFLOPs"
INTERMIXED_ITEMS = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, help="run folders (holding checkpoints/ckpt-*.pt)")
    p.add_argument("--plot", type=Path, default=None, help="write the curves of all runs to this PNG")
    p.add_argument("--x", choices=("iterations", "pflops"), default="iterations", help="x axis of the plot")
    p.add_argument("--metric", default=None, help="value to plot, e.g. fd_digits, fid, kid (default: the first)")
    add_common(p)


def _g(value: float | None) -> str:
    """Four significant digits, as the table prints them (the string is kept: no re-parsing by tabulate)."""
    return "-" if value is None else f"{value:.4g}"


def run(args: argparse.Namespace) -> int:
    from msrepro.evaluation import LABELS, evaluate_run, plot_metric_vs_iterations
    from msrepro.evaluation.runs import run_checkpoints

    items = [i for i in args.runs if "=" in str(i)]
    args.runs = [r for r in args.runs if "=" not in str(r)]
    args.items = [*map(str, items), *args.items]
    for r in args.runs:
        if not run_checkpoints(r):
            raise UserError(f"{r}: no checkpoints (checkpoints/ckpt-*.pt) in this run folder")
    for r in args.runs:
        records = evaluate_run(r, **request(args, run_checkpoints(r)[-1]))
        keys = list(records[0]["metrics"])
        rows = [[rec["step"], _g(rec.get("pflops")), *(_g(rec["metrics"][k]) for k in keys)] for rec in records]
        print(f"{r}:")
        print(tabulate(rows, headers=["step", "PFLOPs", *(LABELS.get(k, k) for k in keys)], disable_numparse=True))
    if args.plot:
        path = plot_metric_vs_iterations(args.runs, args.plot, metric=args.metric, x=args.x)
        print(f"plot: {path}")
    return 0
