"""Where the time of a local run went: per step, when its job took it, when it started computing and finished.

    python bench/local_run.py runs/smoke     # after msrepro reproduce --preset smoke (or submit --executor local)

A step's compute interval is [end - wall_s, end] (``done.json``'s mtime and ``wall_s``); its wait is the time from
its job record (``jobs.jsonl``: the submission, or the worker's claim) to that start: process start and imports
when each step is its own process. Printed: the jobs (processes) used, the share of the run's span during which
0, 1, 2, ... steps were computing, and the busy ratio sum(step compute) / (span x cores).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--steps", action="store_true", help="also print one line per step")
    args = p.parse_args()
    rows = []
    for d in sorted((args.run_dir / "steps").iterdir()):
        jobs = [json.loads(line) for line in (d / "jobs.jsonl").read_text().splitlines() if line.strip()]
        if (d / "done.json").is_file() and jobs:
            end, wall = (d / "done.json").stat().st_mtime, json.loads((d / "done.json").read_text())["wall_s"]
            rows.append((jobs[-1]["time"], end - wall, end, wall, jobs[-1]["job_id"], d.name))
    t0, t1 = min(r[0] for r in rows), max(r[2] for r in rows)
    if args.steps:
        for taken, start, end, wall, job, name in sorted(rows):
            print(f"{name:28s} job {job:>8s}  taken {taken - t0:7.1f}  start {start - t0:7.1f}  end {end - t0:7.1f}  "
                  f"compute {wall:6.1f}  wait {start - taken:6.1f}")
    ts = np.arange(t0, t1, 0.1)
    busy = np.array([sum(r[1] <= t < r[2] for r in rows) for t in ts])
    cores = len(os.sched_getaffinity(0))
    print(f"{len(rows)} steps in {len({r[4] for r in rows})} jobs; span {t1 - t0:.1f} s; sum of step compute "
          f"{sum(r[3] for r in rows):.1f} s; mean wait {np.mean([r[1] - r[0] for r in rows]):.1f} s")
    print("steps computing at once: " + ", ".join(f"{k}: {np.mean(busy == k):.0%}" for k in range(busy.max() + 1)))
    print(f"busy ratio (sum of compute / (span x {cores} cores)): {sum(r[3] for r in rows) / ((t1 - t0) * cores):.2f}"
          f"; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
