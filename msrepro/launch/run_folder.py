"""A run's folder ``runs/<run>/`` and where each step stands (SPEC 6: works without ``sacct``).

``run.json``, ``graph.json``, ``cells/<cell>.json`` (a cell's result) and ``steps/<step>/`` with ``spec.json`` (what
to run, written at submission), ``jobs.jsonl`` (each job that took it: executor, job id, log files), ``claim`` (a
local worker took it) and, once the step has finished, exactly one of ``done.json`` / ``failed.json``. Tables are
built from these files only.

A step is ``done`` / ``failed`` by its files. Otherwise its last job is asked: a SLURM job through submitit's job
object (:class:`submitit.SlurmJob`, whose watcher reads SLURM accounting). Where accounting does not answer
(submitit says UNKNOWN: no slurmdbd, or ``MSREPRO_SACCT=0``), the queue listing decides; a job that is in neither
and left no result died, and is ``failed`` rather than waited on forever. A local job is its process (submitit's
job id is the pid): gone without a result is died too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from msrepro.config import ConfigError, to_dict
from msrepro.io import append_jsonl, atomic_write_json, code_version
from msrepro.launch.plan import JobGraph

DONE, FAILED, SPEC, JOBS, CLAIM = "done.json", "failed.json", "spec.json", "jobs.jsonl", "claim"
QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED",
          "SIGNALING", "READY"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT"}


def step_dir(run_dir: Path, step_id: str) -> Path:
    return Path(run_dir) / "steps" / step_id


def cell_path(run_dir: Path, cell: str) -> Path:
    return Path(run_dir) / "cells" / f"{cell}.json"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def finished(run_dir: Path, step_id: str) -> str | None:
    """``done`` / ``failed`` by the step's files, None while it has neither."""
    d = step_dir(run_dir, step_id)
    return "done" if (d / DONE).is_file() else "failed" if (d / FAILED).is_file() else None


def record_job(run_dir: Path, step_id: str, record: dict[str, Any]) -> None:
    append_jsonl(step_dir(run_dir, step_id) / JOBS, record)  # makes the folder


def last_job(run_dir: Path, step_id: str) -> dict[str, Any] | None:
    path = step_dir(run_dir, step_id) / JOBS
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    return json.loads(lines[-1]) if lines else None


def list_runs(roots: tuple[str, ...] = ("runs", "results")) -> list[Path]:
    return sorted(p.parent for root in roots for p in Path(root).glob("*/run.json"))


def resolve_run(name_or_path: str | None, roots: tuple[str, ...] = ("runs", "results")) -> Path:
    """A run folder from a path or a name under ``runs/`` (or ``results/``); None = the newest run."""
    if name_or_path:
        for p in (Path(name_or_path), *(Path(root) / name_or_path for root in roots)):
            if (p / "run.json").is_file():
                return p
        raise ConfigError(f"no run '{name_or_path}' (looked for run.json in it and under {', '.join(roots)}/); "
                          f"runs: {', '.join(p.name for p in list_runs(roots)) or 'none'}")
    runs = list_runs(roots)
    if not runs:
        raise ConfigError(f"no runs found under {', '.join(roots)}/; start one with msrepro submit")
    return max(runs, key=lambda p: (p / "run.json").stat().st_mtime)


# -- step state -----------------------------------------------------------------------------------------------
@dataclass
class StepState:
    step: str
    state: str               # done, failed, running, queued, missing (never submitted / nothing known)
    job_id: str | None = None
    log: str | None = None
    reason: str = ""

    @property
    def live(self) -> bool:
        return self.state in ("running", "queued")


def accounting_states(job_ids: list[str], logs: Path = Path("logs")) -> dict[str, str]:
    """``{job_id: STATE}`` that SLURM accounting recorded, read through submitit's job objects (one ``sacct`` for
    all); jobs submitit reports UNKNOWN (no accounting storage) are left out. ``MSREPRO_SACCT=0`` turns it off."""
    if not job_ids or os.environ.get("MSREPRO_SACCT", "1") == "0" or shutil.which("sacct") is None:
        return {}
    jobs = [submitit.SlurmJob(folder=logs / j.split("_")[0], job_id=j) for j in job_ids]
    jobs[0].watcher.update()  # the watcher is shared by the job objects: one call for all of them
    states = {j.job_id: j.watcher.get_state(j.job_id, mode="cache").split()[0] for j in jobs}
    return {j: s for j, s in states.items() if s != "UNKNOWN"}


def queue_states() -> dict[str, tuple[str, str]] | None:
    """``{job_id: (STATE, reason)}`` of every job the SLURM controller still lists (array tasks one per line; a
    finished job stays listed for MinJobAge); None without ``squeue``. What is known without accounting."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "--states=all", "-o", "%i|%T|%r"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.strip().split("|") for line in out.stdout.splitlines()] if out.returncode == 0 else None
    return None if rows is None else {r[0]: (r[1], r[2]) for r in rows if len(r) == 3}


def slurm_view(job_ids: list[str], logs: Path = Path("logs")) -> dict[str, tuple[str, str, str]] | None:
    """``{job_id: (STATE, reason, source)}`` with source ``accounting`` or ``queue``; None if neither answers."""
    queue, acct = queue_states(), accounting_states(job_ids, logs)
    if queue is None and not acct:
        return None
    view = {j: (s, r, "queue") for j, (s, r) in (queue or {}).items()}
    for j, s in acct.items():  # accounting knows the final state; the queue, why a job waits
        if s not in QUEUED | RUNNING or j not in view:
            view[j] = (s, "", "accounting")
    return view


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def step_state(run_dir: Path, step_id: str, view: dict[str, tuple[str, str, str]] | None) -> StepState:
    """The state of one step from its files, else from its last job (``view``: see :func:`slurm_view`)."""
    d, job = step_dir(run_dir, step_id), last_job(run_dir, step_id)
    job_id, log = (job.get("job_id"), job.get("stderr")) if job else (None, None)
    if (d / DONE).is_file():
        return StepState(step_id, "done", job_id, log)
    if (d / FAILED).is_file():
        return StepState(step_id, "failed", job_id, log, (read_json(d / FAILED) or {}).get("error", "failed"))
    if job is None:
        return StepState(step_id, "missing")
    if job.get("executor") == "local":
        if _alive(int(job_id)):
            return StepState(step_id, "running", job_id, log)
        return StepState(step_id, "failed", job_id, log, "process exited without writing a result (died)")
    if job.get("executor") != "slurm":
        return StepState(step_id, "missing", job_id, log, "not finished (debug executor runs in-process)")
    if view is None:
        return StepState(step_id, "queued", job_id, log, "squeue unavailable: state unknown")
    if job_id not in view:
        return StepState(step_id, "failed", job_id, log, f"job {job_id} left no result (gone from squeue (no "
                                                         f"sacct); died, see its log)")
    state, reason, source = view[job_id]
    if state in QUEUED:
        return StepState(step_id, "queued", job_id, log, reason if reason != "None" else "")
    if state in RUNNING:
        return StepState(step_id, "running", job_id, log)
    if state == "COMPLETED":
        return StepState(step_id, "failed", job_id, log, "job completed without writing its result")
    if source == "accounting":
        return StepState(step_id, "failed", job_id, log, f"job {job_id} left no result (SLURM accounting: {state}; "
                                                         f"died, see its log)")
    return StepState(step_id, "failed", job_id, log, f"SLURM state {state}" + (
        f" ({reason})" if reason not in ("None", "") else ""))


def run_states(run_dir: Path, step_ids: list[str]) -> dict[str, StepState]:
    jobs = {s: last_job(run_dir, s) for s in step_ids}
    slurm = [j["job_id"] for s, j in jobs.items() if j and j.get("executor") == "slurm" and not finished(run_dir, s)]
    view = slurm_view(slurm, Path(run_dir) / "logs") if slurm else {}
    return {s: step_state(run_dir, s, view) for s in step_ids}


def saved_states(run_dir: Path, step_ids: list[str]) -> dict[str, StepState]:
    """States of a run's steps: live from the run folder, or as copied into ``results/<run>/states.json``."""
    saved = read_json(Path(run_dir) / "states.json")
    if saved is None or (Path(run_dir) / "steps").is_dir():
        return run_states(Path(run_dir), step_ids)
    return {s: StepState(s, saved.get(s, {}).get("state", "missing"), reason=saved.get(s, {}).get("reason", ""))
            for s in step_ids}


# -- submission bookkeeping ---------------------------------------------------------------------------------------
def prepare_run(run_dir: Path, graph: JobGraph, executor: str, profile: str | None) -> dict[str, StepState]:
    """Write ``run.json``, ``graph.json`` (merged with an earlier submission's) and the ``spec.json`` of every step
    that is not done or in flight (those keep the spec they run with); returns the steps' states."""
    run_dir.mkdir(parents=True, exist_ok=True)
    old = read_json(run_dir / "run.json") or {}
    if old and old.get("preset") != graph.preset:
        raise ConfigError(f"run {run_dir} was submitted with preset '{old['preset']}', not '{graph.preset}'; "
                          f"choose another --run name")
    tables, code = list(dict.fromkeys([*old.get("tables", []), *graph.tables])), code_version()
    atomic_write_json(run_dir / "run.json", {"name": run_dir.name, "preset": graph.preset, "tables": tables,
                                      "executor": executor, "profile": profile, "code_version": code,
                                      "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})
    merged, new = read_json(run_dir / "graph.json") or {}, graph.to_dict()
    for key in ("rows", "cells", "steps"):
        new[key] = {**merged.get(key, {}), **new[key]}
    atomic_write_json(run_dir / "graph.json", {**new, "tables": tables})
    states = run_states(run_dir, list(graph.steps))
    for step in graph.steps.values():
        if states[step.id].state in ("done", "running", "queued"):
            continue
        spec = {"id": step.id, "kind": step.kind, "key": step.key, "config": to_dict(step.config),
                "deps": step.deps, "preset": graph.preset, "code_version": code}
        if step.kind == "evaluate":
            spec.update(rows=graph.cells[step.key].rows, train=graph.cells[step.key].train)
        if step.kind == "prepare":  # the backbone whose prerequisite this is (the cell configs name it)
            spec["backbone"] = graph.cells[step.cells[0]].config.model.backbone
        atomic_write_json(step_dir(run_dir, step.id) / SPEC, spec)
        for stale in (FAILED, CLAIM):  # submitted again
            (step_dir(run_dir, step.id) / stale).unlink(missing_ok=True)
    return states
