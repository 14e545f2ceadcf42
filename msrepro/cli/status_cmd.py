"""``msrepro status [RUN]``: per cell, the state of its steps (queued / running / done / failed) with log paths."""

from __future__ import annotations

import argparse
import json

from tabulate import tabulate

NAME = "status"
HELP = "state of a run's cells and steps: queued, running, done, failed (with the log to read)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", default=None, help="run name or folder (default: the newest under runs/)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def status_rows(run_dir) -> tuple[list[list[str]], dict[str, int], dict]:
    from msrepro.launch.run_folder import read_json, saved_states

    graph = read_json(run_dir / "graph.json") or {}
    states = saved_states(run_dir, list(graph.get("steps", {})))  # a results/<run> copy keeps its final states
    rows, counts = [], {}
    for key, cell in graph.get("cells", {}).items():
        ids = [cell.get("cluster"), cell["train"], cell["evaluate"]]
        cols = []
        note = ""
        for sid in ids:
            if sid is None:
                cols.append("-")
                continue
            st = states[sid]
            cols.append(st.state + (f" [{st.job_id}]" if st.job_id and st.state != "done" else ""))
            if st.state in ("failed", "queued", "running") and not note:
                note = "; ".join(x for x in (st.reason, f"log: {st.log}" if st.log else "") if x)
        rows.append([key, ", ".join(cell["rows"]), *cols, note])
    for st in states.values():
        counts[st.state] = counts.get(st.state, 0) + 1
    return rows, counts, states


def run(args: argparse.Namespace) -> int:
    from msrepro.launch.run_folder import read_json, resolve_run

    run_dir = resolve_run(args.run)
    rows, counts, states = status_rows(run_dir)
    info = read_json(run_dir / "run.json") or {}
    if args.json:
        print(json.dumps({"run": str(run_dir), "counts": counts,
                          "steps": {s: vars(st) for s, st in states.items()}}, indent=2))
        return 0
    print(f"run {run_dir}: preset {info.get('preset')}, tables {', '.join(info.get('tables', []))}, "
          f"executor {info.get('executor')}")
    print(tabulate(rows, headers=["cell", "rows", "cluster", "train", "evaluate", "note"], disable_numparse=True))
    graph = read_json(run_dir / "graph.json") or {}
    for ref, e in graph.get("rows", {}).items():
        if e["status"] == "skipped":
            print(f"{ref}: skipped ({e['reason']})")
    print("steps: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0
