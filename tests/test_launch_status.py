"""Step states without sacct: a job that died before writing its result is failed, never waited on forever."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from msrepro.cli import main
from msrepro.launch import run_folder as S
from msrepro.launch.run_folder import record_job, step_dir


@pytest.fixture
def run(tmp_path):
    r = tmp_path / "r"
    graph = {"rows": {"table3.unified": {"ref": "table3.unified", "status": "cell", "cell": "c", "reason": ""}},
             "cells": {"c": {"rows": ["table3.unified"], "cluster": "cluster-k", "train": "train-t",
                             "evaluate": "evaluate-c"}},
             "steps": {"cluster-k": {}, "train-t": {}, "evaluate-c": {}}}
    r.mkdir()
    (r / "graph.json").write_text(json.dumps(graph))
    (r / "run.json").write_text(json.dumps({"name": "r", "preset": "smoke", "tables": ["table3"]}))
    return r


def _done(r, sid):
    step_dir(r, sid).mkdir(parents=True, exist_ok=True)
    (step_dir(r, sid) / "done.json").write_text("{}")


def _states(run, monkeypatch, queue, accounting=None):
    """run_states with the controller's queue listing and SLURM accounting (None: no slurmdbd) given here."""
    monkeypatch.setattr(S, "queue_states", lambda: queue)
    monkeypatch.setattr(S, "accounting_states", lambda ids, logs=None: {j: s for j, s in (accounting or {}).items()
                                                                          if j in ids})
    return S.run_states(run, ["cluster-k", "train-t", "evaluate-c"])


def test_slurm_states_from_the_queue_and_accounting(run, monkeypatch):
    _done(run, "cluster-k")
    record_job(run, "train-t", {"executor": "slurm", "job_id": "41", "stderr": "/logs/41.err"})
    record_job(run, "evaluate-c", {"executor": "slurm", "job_id": "42", "stderr": "/logs/42.err"})
    states = _states(run, monkeypatch, {"41": ("RUNNING", "None"), "42": ("PENDING", "Dependency")})
    assert [states[s].state for s in ("cluster-k", "train-t", "evaluate-c")] == ["done", "running", "queued"]
    assert states["evaluate-c"].reason == "Dependency"
    # accounting says RUNNING too: the queue's reason for the waiting job is kept
    states = _states(run, monkeypatch, {"41": ("RUNNING", "None"), "42": ("PENDING", "Dependency")},
                     {"41": "RUNNING", "42": "PENDING"})
    assert (states["train-t"].state, states["evaluate-c"].reason) == ("running", "Dependency")
    # the training job dies (node failure, OOM kill, ...) and SLURM forgets it; without sacct nothing else knows
    dead = _states(run, monkeypatch, {"42": ("PENDING", "Dependency")})["train-t"]
    assert dead.state == "failed" and "died" in dead.reason and dead.log == "/logs/41.err"
    dead = _states(run, monkeypatch, {"42": ("PENDING", "Dependency")}, {"41": "OUT_OF_MEMORY"})["train-t"]
    assert dead.state == "failed" and "SLURM accounting: OUT_OF_MEMORY" in dead.reason  # with slurmdbd
    ended = _states(run, monkeypatch, {"41": ("COMPLETED", "None")})["train-t"]
    assert ended.state == "failed" and "without writing its result" in ended.reason
    cancelled = _states(run, monkeypatch, {"42": ("CANCELLED", "DependencyNeverSatisfied")})["evaluate-c"]
    assert cancelled.state == "failed" and "DependencyNeverSatisfied" in cancelled.reason
    # neither the queue nor accounting answers: not known to be dead, so not failed
    assert _states(run, monkeypatch, None)["train-t"].state == "queued"


def test_dead_local_process(run):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    record_job(run, "train-t", {"executor": "local", "job_id": str(proc.pid)})  # submitit: a local job id is its pid
    assert S.step_state(run, "train-t", None).state == "failed"
    record_job(run, "train-t", {"executor": "local", "job_id": str(__import__("os").getpid())})
    assert S.step_state(run, "train-t", None).state == "running"


def test_status_command_reports_the_dead_job(run, monkeypatch, capsys):
    _done(run, "cluster-k")
    record_job(run, "train-t", {"executor": "slurm", "job_id": "987654", "stderr": "/logs/987654.err"})
    monkeypatch.setattr(S, "queue_states", lambda: {})
    monkeypatch.setattr(S, "accounting_states", lambda ids, logs=None: {})
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("c "))
    assert "done" in line and "failed [987654]" in line and "/logs/987654.err" in line
    assert "missing" in line  # the evaluate step was never submitted
    assert "failed 1" in out and "done 1" in out


def test_resubmitting_runs_only_failed_and_missing_steps(tmp_path, monkeypatch):
    """submitit's DebugExecutor on a hand-made graph of fake steps: a done step is skipped, a failed one runs
    again."""
    from msrepro.launch import execution as E
    from msrepro.launch.plan import JobGraph, Step
    from msrepro.profiles import default_profile
    from omegaconf import OmegaConf

    ran = []

    def fake(run_dir, spec, progress):
        ran.append(spec["id"])
        if spec["id"] == "train-b" and ran.count("train-b") == 1:
            raise RuntimeError("first attempt dies")
        return {}

    monkeypatch.setattr(E, "STEPS", {"cluster": fake, "train": fake, "evaluate": fake})
    monkeypatch.setattr("pdb.post_mortem", lambda *a, **k: None)  # the debug executor's post-mortem on a failure
    cfg = OmegaConf.create({})
    graph = JobGraph("smoke", ["t"])
    for sid, deps in (("cluster-a", []), ("train-b", ["cluster-a"]), ("train-c", [])):
        graph.steps[sid] = Step(sid.split("-")[0], sid.split("-")[1], cfg, deps=deps)
    run_dir = tmp_path / "run"

    def go():
        states = S.prepare_run(run_dir, graph, "debug", None)
        todo = {s for s, st in states.items() if st.state != "done"}
        return E.run_here(run_dir, graph, todo, "debug", default_profile(), progress=False)

    with pytest.raises(RuntimeError):
        go()  # debug re-raises: the failure is recorded and the run stops there
    assert ran == ["cluster-a", "train-b"]
    assert (step_dir(run_dir, "train-b") / "failed.json").is_file()
    final = go()
    assert ran == ["cluster-a", "train-b", "train-b", "train-c"]  # cluster-a was done: not run again
    assert final == {"train-b": "done", "train-c": "done"}
