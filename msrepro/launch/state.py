"""Where each step stands, from the run folder's files and the scheduler (SPEC 6: works without ``sacct``).

A step is ``done`` / ``failed`` when its ``done.json`` / ``failed.json`` exists. Otherwise its last recorded job is
looked up: SLURM jobs through ``squeue`` (pending -> queued, running -> running); a SLURM job that squeue no
longer knows, or that ended without writing a result, is ``failed`` ("died") instead of being waited on forever.
Local jobs are processes: one whose pid is gone without a result died too. Where SLURM accounting answers, the
final state ``sacct`` recorded (FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, ...) is named in the reason;
``MSREPRO_SACCT=0`` turns those lookups off (a cluster whose ``sacct`` hangs or answers for another cluster).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from pathlib import Path

from msrepro.launch.rundir import DONE, FAILED, last_job, read_json, step_dir

QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
          "STOPPED", "SIGNALING"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT"}
STATES = ("done", "failed", "running", "queued", "missing")


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


def squeue_states() -> dict[str, tuple[str, str]] | None:
    """``{job_id: (STATE, reason)}`` of every job SLURM still knows (array tasks one per line); None without
    squeue. Finished jobs stay listed for the controller's MinJobAge."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "--states=all", "-o", "%i|%T|%r"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def sacct_state(job_id: str) -> str | None:
    """The final state SLURM accounting recorded for ``job_id`` (e.g. TIMEOUT, OUT_OF_MEMORY), or None where
    ``sacct`` is missing, has no accounting storage behind it, or ``MSREPRO_SACCT=0`` turns it off."""
    if os.environ.get("MSREPRO_SACCT", "1") == "0" or shutil.which("sacct") is None:
        return None
    try:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    return lines[0].split()[0] if out.returncode == 0 and lines else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def step_state(run_dir: Path, step_id: str, queue: dict[str, tuple[str, str]] | None) -> StepState:
    d = step_dir(run_dir, step_id)
    job = last_job(run_dir, step_id)
    job_id = job.get("job_id") if job else None
    log = job.get("stderr") if job else None
    if (d / DONE).is_file():
        return StepState(step_id, "done", job_id, log)
    if (d / FAILED).is_file():
        err = (read_json(d / FAILED) or {}).get("error", "failed")
        return StepState(step_id, "failed", job_id, log, err)
    if job is None:
        return StepState(step_id, "missing")
    if job.get("executor") == "slurm":
        if queue is None:
            return StepState(step_id, "queued", job_id, log, "squeue unavailable: state unknown")
        if job_id not in queue:
            final = sacct_state(job_id)
            why = f"SLURM accounting: {final}" if final else "gone from squeue (no sacct)"
            return StepState(step_id, "failed", job_id, log, f"job {job_id} left no result ({why}; died, see its "
                                                             f"log)")
        state, reason = queue[job_id]
        if state in QUEUED:
            return StepState(step_id, "queued", job_id, log, reason if reason != "None" else "")
        if state in RUNNING:
            return StepState(step_id, "running", job_id, log)
        if state == "COMPLETED":
            return StepState(step_id, "failed", job_id, log, "job completed without writing its result")
        return StepState(step_id, "failed", job_id, log, f"SLURM state {state}" + (f" ({reason})" if reason not in
                                                                                       ("None", "") else ""))
    if job.get("executor") == "local":
        pid = job.get("pid")
        if pid and _pid_alive(int(pid)):
            return StepState(step_id, "running", job_id, log)
        return StepState(step_id, "failed", job_id, log, "process exited without writing a result (died)")
    return StepState(step_id, "missing", job_id, log, "not finished (debug executor runs in-process)")


def run_states(run_dir: Path, step_ids: list[str]) -> dict[str, StepState]:
    queue = squeue_states()
    return {s: step_state(run_dir, s, queue) for s in step_ids}
