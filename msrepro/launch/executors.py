"""Submitting a job graph: executors ``debug`` (in-process), ``local`` (subprocesses via submitit) and ``slurm``.

SLURM: steps are grouped by (depth, kind, upstream jobs); each group is one job array (split at the profile's
``max_array_size``) whose ``afterok`` dependencies name exactly the upstream jobs, so the whole grid is queued at
once. Local/debug: a driver runs ready steps (at most ``parallel`` at a time) and waits. Re-submitting a run
submits only steps that are missing or failed; a queued or running step is left alone and waited on.
Queued jobs run a frozen copy of the code (``<run>/snapshot``), so edits after submitting change nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from msrepro.config import ConfigError, to_dict
from msrepro.launch.graph import JobGraph, Step
from msrepro.launch.profiles import Profile
from msrepro.launch.rundir import SPEC, read_json, record_job, step_dir, write_json
from msrepro.launch.state import StepState, run_states

EXECUTORS: tuple[str, ...] = ("debug", "local", "slurm")


def default_executor() -> str:
    """``slurm`` where ``sbatch`` is on PATH and a controller answers, else ``local``."""
    import subprocess

    if shutil.which("sbatch") and shutil.which("sinfo"):
        try:
            if subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0:
                return "slurm"
        except (OSError, subprocess.SubprocessError):
            pass
    return "local"


def check_executor(name: str, *, available: bool = True) -> str:
    """A valid executor name; with ``available``, SLURM must also be reachable (sbatch on PATH)."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor '{name}'; valid executors: {', '.join(EXECUTORS)}")
    if available and name == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("executor 'slurm': sbatch not found on PATH (start slurm/start_cluster.sh or use --executor "
                          "local)")
    return name


# -- the run folder ------------------------------------------------------------------------------------------------
def snapshot_code(run_dir: Path) -> Path:
    """Copy the msrepro package (with its backbones and registry, laid out as installed) into ``<run>/snapshot``."""
    import msrepro
    from msrepro.io import code_version

    src = Path(msrepro.__file__).resolve().parent
    dest = Path(run_dir) / "snapshot"
    tmp = Path(run_dir) / f".snapshot-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(src, tmp / "msrepro", ignore=ignore)
    root = src.parent
    for sub in ("backbones", "registry"):  # package-dir mapping of pyproject.toml (editable checkout)
        if (root / sub / "__init__.py").is_file() and not (tmp / "msrepro" / sub).exists():
            shutil.copytree(root / sub, tmp / "msrepro" / sub, ignore=ignore)
    write_json(tmp / "code_version.json", code_version(root))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def write_specs(run_dir: Path, graph: JobGraph, states: dict[str, StepState], code: dict[str, Any]) -> None:
    """``spec.json`` of every step that is not done or in flight (those keep the spec they run with); a failed
    step's ``failed.json`` goes, since it is about to be submitted again."""
    for step in graph.steps.values():
        if states[step.id].state in ("done", "running", "queued"):
            continue
        spec = {"id": step.id, "kind": step.kind, "key": step.key, "config": to_dict(step.config),
                "deps": step.deps, "preset": graph.preset, "code_version": code}
        if step.kind == "evaluate":
            cell = graph.cells[step.key]
            spec.update(rows=cell.rows, train=cell.train)
        write_json(step_dir(run_dir, step.id) / SPEC, spec)
        (step_dir(run_dir, step.id) / "failed.json").unlink(missing_ok=True)  # submitted again


def prepare_run(run_dir: Path, graph: JobGraph, executor: str, profile: Profile | None) -> dict[str, StepState]:
    """Write ``run.json`` and ``graph.json`` (merged with an earlier submission's) and the step specs."""
    from msrepro.io import code_version

    run_dir.mkdir(parents=True, exist_ok=True)
    old = read_json(run_dir / "run.json")
    if old and old.get("preset") != graph.preset:
        raise ConfigError(f"run {run_dir} was submitted with preset '{old['preset']}', not '{graph.preset}'; "
                          f"choose another --run name")
    tables = list(dict.fromkeys([*(old or {}).get("tables", []), *graph.tables]))
    code = code_version()
    write_json(run_dir / "run.json", {"name": run_dir.name, "preset": graph.preset, "tables": tables,
                                      "executor": executor, "profile": profile.name if profile else None,
                                      "code_version": code, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})
    old_graph = read_json(run_dir / "graph.json") or {}
    new_graph = graph.to_dict()
    for key in ("rows", "cells", "steps"):
        new_graph[key] = {**old_graph.get(key, {}), **new_graph[key]}
    new_graph["tables"] = tables
    write_json(run_dir / "graph.json", new_graph)
    states = run_states(run_dir, list(graph.steps))
    write_specs(run_dir, graph, states, code)
    return states


# -- SLURM ---------------------------------------------------------------------------------------------------------
@dataclass
class Group:
    level: int
    kind: str
    deps: tuple[str, ...]               # upstream job ids
    steps: list[Step] = field(default_factory=list)


def plan_groups(graph: JobGraph, todo: set[str], states: dict[str, StepState]) -> list[Group]:
    """Steps to submit, grouped into arrays by (depth, kind, upstream job ids); upstream steps submitted in the
    same call are named by their step id and replaced by job ids as their arrays go out."""
    groups: dict[tuple, Group] = {}
    for level, steps in enumerate(graph.levels()):
        for step in steps:
            if step.id not in todo:
                continue
            deps = []
            for d in step.deps:
                if d in todo:
                    deps.append(f"step:{d}")
                elif states[d].live:
                    deps.append(states[d].job_id)
            key = (level, step.kind, tuple(sorted(deps)))
            groups.setdefault(key, Group(level, step.kind, key[2])).steps.append(step)
    return list(groups.values())


def _slurm_executor(run_dir: Path, profile: Profile, kind: str, dependency: str | None, snapshot: Path | None):
    import submitit

    res = profile.resources(kind)
    ex = submitit.SlurmExecutor(folder=run_dir / "logs" / "%j", max_num_timeout=profile.max_timeouts)
    setup = [*profile.setup]
    if snapshot is not None:
        setup.append(f"export PYTHONPATH={snapshot}${{PYTHONPATH:+:$PYTHONPATH}}")
    params: dict[str, Any] = dict(
        job_name=f"msrepro-{kind}", partition=profile.partition, time=res.timeout_min, nodes=res.nodes,
        cpus_per_task=max(1, res.cpus // max(1, res.gpus if kind == "train" else 1)), mem=f"{int(res.mem_gb * 1024)}M",
        signal_delay_s=profile.signal_delay_s, array_parallelism=profile.array_parallelism, setup=setup,
        additional_parameters=dict(profile.additional))
    if kind == "train" and res.gpus > 1:  # one task per GPU: submitit's distributed environment (DDP)
        params["ntasks_per_node"] = res.gpus
    if res.gpus > 0:
        params["gpus_per_node"] = res.gpus
    if profile.account:
        params["account"] = profile.account
    if profile.qos:
        params["qos"] = profile.qos
    if dependency:
        params["dependency"] = dependency
    ex.update_parameters(**params)
    return ex


def submit_slurm(run_dir: Path, graph: JobGraph, todo: set[str], states: dict[str, StepState], profile: Profile,
                 snapshot: Path | None) -> list[dict[str, Any]]:
    """Queue every step of ``todo`` at once: arrays with ``afterok`` dependencies. Returns the submissions."""
    from msrepro.launch.steps import StepJob

    job_of: dict[str, str] = {}
    out = []
    for group in plan_groups(graph, todo, states):
        deps = [job_of[d[5:]] if d.startswith("step:") else d for d in group.deps]
        dependency = "afterok:" + ":".join(deps) if deps else None
        for i in range(0, len(group.steps), profile.max_array_size):
            chunk = group.steps[i:i + profile.max_array_size]
            ex = _slurm_executor(run_dir, profile, group.kind, dependency, snapshot)
            fn = StepJob(str(run_dir.resolve()))
            if len(chunk) == 1:
                jobs = [ex.submit(fn, chunk[0].id)]
            else:
                with ex.batch():
                    jobs = [ex.submit(fn, s.id) for s in chunk]
            for step, job in zip(chunk, jobs):
                job_of[step.id] = job.job_id
                rec = {"executor": "slurm", "job_id": job.job_id, "dependency": dependency, "kind": step.kind,
                       "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), "time": time.time(),
                       "array": len(chunk) > 1}
                record_job(run_dir, step.id, rec)
                out.append({"step": step.id, **rec})
    return out


# -- local and debug: a driver that waits --------------------------------------------------------------------------
def run_driver(run_dir: Path, graph: JobGraph, todo: set[str], states: dict[str, StepState], executor: str,
               parallel: int = 1, snapshot: Path | None = None, progress: bool = True,
               on_finish: Callable[[str, str], None] | None = None) -> dict[str, str]:
    """Run the steps of ``todo`` once their dependencies are done and wait; returns ``{step: done|failed}``.

    ``debug``: one after the other in this process. ``local``: ``parallel`` submitit worker processes
    (:class:`msrepro.launch.steps.StepWorker`), each taking the next ready step until none is left, so a worker
    pays for its imports once rather than once per step."""
    from tqdm import tqdm

    order = [s for s in graph.steps if s in todo]
    bar = tqdm(total=len(order), desc="steps", unit="step", disable=not progress)
    final: dict[str, str] = {}

    def poll() -> None:
        for sid in order:
            if sid in final:
                continue
            d = step_dir(run_dir, sid)
            state = "done" if (d / "done.json").is_file() else "failed" if (d / "failed.json").is_file() else None
            if state:
                final[sid] = state
                bar.update(1)
                if on_finish:
                    on_finish(sid, state)
        bar.set_postfix(failed=sum(v == "failed" for v in final.values()), refresh=False)

    from msrepro.launch.steps import clear_claims

    clear_claims(run_dir, order)  # no worker runs on these steps now: earlier claims are stale
    try:
        if executor == "debug":
            from msrepro.launch.steps import StepWorker

            StepWorker(str(run_dir), order, threads=0, executor="debug", on_step=lambda sid: poll())()
        else:
            jobs = _submit_workers(run_dir, order, parallel, snapshot)
            try:
                while not all(j.done() for j in jobs):
                    poll()
                    time.sleep(1.0)
            except BaseException:  # interrupted: take the workers down with the driver
                for j in jobs:
                    if not j.done():
                        j.cancel(check=False)
                raise
            for j in jobs:
                if j.state not in ("DONE", "COMPLETED", "FINISHED") and j.exception() is not None:
                    print(f"worker {j.job_id} failed; log: {j.paths.stderr}", file=sys.stderr)
        poll()
    finally:
        bar.close()
    return {sid: final.get(sid, "failed") for sid in order}


def _submit_workers(run_dir: Path, order: list[str], parallel: int, snapshot: Path | None) -> list:
    import submitit

    from msrepro.launch.steps import StepWorker

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(parallel, len(order)))
    ex = submitit.LocalExecutor(folder=run_dir / "logs" / "%j")
    ex.update_parameters(timeout_min=7 * 24 * 60, gpus_per_node=0)
    env_before = os.environ.get("PYTHONPATH")
    try:
        if snapshot is not None:  # the worker processes import the frozen copy
            os.environ["PYTHONPATH"] = f"{snapshot}{os.pathsep + env_before if env_before else ''}"
        return [ex.submit(StepWorker(str(run_dir.resolve()), order, threads=max(1, cores // workers)))
                for _ in range(workers)]
    finally:
        if env_before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env_before
