"""``msrepro submit TABLES|all --preset P [--executor E] [--profile NAME] [--run NAME] [--dry-run]``."""

from __future__ import annotations

import argparse

NAME = "submit"
HELP = "submit the paper's tables as a job grid (SLURM, local or debug); re-submitting runs only what is missing"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tables", nargs="+", help="table1 ... table4, 1,3 or all")
    p.add_argument("--preset", required=True, help="full (the paper), tiny (digits), smoke (seconds per job)")
    p.add_argument("--executor", default=None, help="slurm, local or debug (default: slurm where sbatch answers, "
                                                    "else local)")
    p.add_argument("--profile", default=None, help="cluster profile: a name in slurm/profiles or a YAML path "
                                                   "(default for slurm: local)")
    p.add_argument("--run", default=None, help="run name (default: the preset); the folder is ROOT/RUN")
    p.add_argument("--root", default="runs", help="where run folders live (default: runs)")
    p.add_argument("--parallel", type=int, default=1, help="local executor: worker jobs = steps at a time (default 1)")
    p.add_argument("--dry-run", action="store_true", help="print the job graph, resources and estimated "
                                                          "GPU-hours; submit nothing")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from msrepro.launch.execution import submit
    from msrepro.launch.plan import plan
    from msrepro.launch.results import dry_run_text
    from msrepro.profiles import check_executor, default_executor, resolve_profile

    executor = check_executor(args.executor, available=not args.dry_run) if args.executor else None
    if args.dry_run:
        executor = executor or default_executor()
        profile = resolve_profile(executor, args.profile)
        print(dry_run_text(plan(args.tables, args.preset), executor, profile))
        return 0
    report = submit(args.tables, args.preset, executor=executor, profile=args.profile, run=args.run,
                    root=args.root, parallel=args.parallel, progress=not args.no_progress)
    print(f"run {report.run_dir} ({report.executor}): {len(report.submitted)} steps submitted, "
          f"{len(report.skipped_done)} already done, {len(report.in_flight)} already queued or running")
    for job in report.jobs:
        print(f"  {job['step']}: job {job['job_id']}" + (f" (after {job['dependency']})" if job["dependency"] else ""))
    bad = {s: v for s, v in report.final.items() if v != "done"}
    for s, v in bad.items():
        print(f"  {s}: {v}")
    print(f"status: msrepro status {report.run_dir}; tables: msrepro tables {report.run_dir}")
    return 1 if bad else 0
