"""Real SLURM, with and without accounting: a job that failed or was cancelled is reported failed, never waited on.

Two real jobs on the local cluster of slurm/start_cluster.sh: one exits 3 (FAILED), one is cancelled (CANCELLED).
With ``sacct`` (``start_cluster.sh --accounting``, as .ci/run starts it) the reason names the final state SLURM
accounting recorded, checked against the state ``squeue`` showed while it still listed the job. Without ``sacct``
(``MSREPRO_SACCT=0``, or no ``sacct`` on PATH) the same jobs are failed as "died" from squeue and the run folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from msrepro.launch import run_folder as S
from msrepro.launch.run_folder import record_job

pytestmark = pytest.mark.slurm

FINAL = {"FAILED", "CANCELLED"}


def _sacct_answers() -> bool:
    return subprocess.run(["sacct", "-n", "-X"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def dead_jobs(tmp_path_factory) -> dict[str, str]:
    """``{job_id: final squeue state}`` of a job that failed and one that was cancelled while running."""
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM NOT TESTED: sbatch is not installed (run slurm/start_cluster.sh, as .ci/run does)")
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        pytest.skip("SLURM NOT TESTED: sbatch is installed but no controller answers (run slurm/start_cluster.sh)")
    out = tmp_path_factory.mktemp("jobs")

    def sbatch(cmd: str) -> str:
        return subprocess.run(["sbatch", "--parsable", "-J", "msrepro-sacct-test", "-o", str(out / "%j.out"),
                               "-t", "5", "--wrap", cmd], check=True, capture_output=True,
                              text=True).stdout.strip().split(";")[0]

    failed, cancelled = sbatch("exit 3"), sbatch("sleep 120")
    t0 = time.time()
    while (S.queue_states() or {}).get(cancelled, ("",))[0] != "RUNNING" and time.time() - t0 < 15:
        time.sleep(0.2)  # cancelled while running if the scheduler is quick; a pending job ends CANCELLED too
    subprocess.run(["scancel", cancelled], check=True)
    while time.time() - t0 < 90:
        queue = S.queue_states() or {}
        seen = {j: queue.get(j, ("?",))[0] for j in (failed, cancelled)}
        if set(seen.values()) <= FINAL:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"jobs never reached a final state in squeue: {seen}")


def _run_dir(tmp_path: Path, jobs: list[str]) -> Path:
    for job in jobs:
        record_job(tmp_path, f"train-{job}", {"executor": "slurm", "job_id": job, "stderr": f"/logs/{job}.err"})
    return tmp_path


def _forgotten(jobs: dict[str, str]) -> dict[str, tuple[str, str]]:
    """The real squeue listing minus these jobs: what squeue shows once MinJobAge has passed."""
    return {j: st for j, st in (S.queue_states() or {}).items() if j not in jobs}


def test_squeue_final_state_while_listed(dead_jobs, tmp_path):
    assert dead_jobs[min(dead_jobs, key=int)] == "FAILED" and dead_jobs[max(dead_jobs, key=int)] == "CANCELLED"
    run = _run_dir(tmp_path, list(dead_jobs))
    view = {j: (state, reason, "queue") for j, (state, reason) in S.queue_states().items()}
    for job, final in dead_jobs.items():
        st = S.step_state(run, f"train-{job}", view)
        assert st.state == "failed" and f"SLURM state {final}" in st.reason and st.log == f"/logs/{job}.err"


def test_with_sacct_the_reason_is_the_accounting_final_state(dead_jobs, tmp_path, monkeypatch):
    monkeypatch.delenv("MSREPRO_SACCT", raising=False)
    if not _sacct_answers():
        msg = ("SACCT NOT TESTED: sacct does not answer (no slurmdbd); start the cluster with "
               "slurm/start_cluster.sh --accounting, as .ci/run does")
        if os.environ.get("MSREPRO_SLURM_ACCOUNTING") == "1":
            pytest.fail(msg + " -- MSREPRO_SLURM_ACCOUNTING=1 says it should")
        pytest.skip(msg)
    t0 = time.time()  # slurmctld hands job records to slurmdbd asynchronously
    while set(S.accounting_states(list(dead_jobs)).values()) - FINAL and time.time() - t0 < 30:
        time.sleep(0.5)  # (submitit's watcher: one sacct for all jobs)
    assert S.accounting_states(list(dead_jobs)) == dead_jobs  # accounting agrees with what squeue showed
    run = _run_dir(tmp_path, list(dead_jobs))
    forgotten = _forgotten(dead_jobs)
    monkeypatch.setattr(S, "queue_states", lambda: forgotten)
    states = S.run_states(run, [f"train-{job}" for job in dead_jobs])
    for job, final in dead_jobs.items():
        st = states[f"train-{job}"]
        assert st.state == "failed" and f"SLURM accounting: {final}" in st.reason, st
        assert "no sacct" not in st.reason and st.log == f"/logs/{job}.err"


@pytest.mark.parametrize("how", ["env", "path"])
def test_without_sacct_the_dead_job_is_failed_not_waited_on(dead_jobs, tmp_path, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("MSREPRO_SACCT", "0")
    else:  # a PATH with the other SLURM commands but no sacct
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for cmd in ("squeue", "sbatch", "scontrol", "scancel", "sinfo"):
            (bin_dir / cmd).symlink_to(shutil.which(cmd))
        monkeypatch.setenv("PATH", str(bin_dir))
        assert shutil.which("sacct") is None
    assert S.accounting_states(list(dead_jobs)) == {}
    forgotten = _forgotten(dead_jobs)
    assert forgotten is not None and not set(dead_jobs) & set(forgotten)  # squeue itself answers (through PATH too)
    monkeypatch.setattr(S, "queue_states", lambda: forgotten)
    run = _run_dir(tmp_path / "run", list(dead_jobs))
    states = S.run_states(run, [f"train-{job}" for job in dead_jobs])
    for job in dead_jobs:
        st = states[f"train-{job}"]
        assert st.state == "failed" and "gone from squeue (no sacct)" in st.reason and "died" in st.reason, st
        assert st.log == f"/logs/{job}.err"
