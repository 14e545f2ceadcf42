"""Real SLURM: the local single-node cluster of slurm/start_cluster.sh (.ci/run starts it).

A smoke grid goes through sbatch as job arrays with afterok dependencies, finishes, and gives tables; re-submitting
the finished run submits nothing; a training job requeued mid-run (preemption) resumes from its checkpoint.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from msrepro.cli import main
from msrepro.launch.run_folder import read_json, run_states, step_dir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROWS = """
name: mini
title: "mini grid"
columns:
  - {name: t1, header: t1, source: t1, compare: always, fmt: .3f}
  - {name: quality, header: FID, source: quality, compare: metric, fmt: .2f}
rows:
  - {id: unified, label: Unified, backbone: dpm_solver, config: {model: {variant: unified}, stages: {num_stages: 1}},
     presets: {full: {}, tiny: {}, smoke: {SMOKE}}, paper: {t1: null, quality: 2.73}}
  - {id: timestep, label: Timestep, backbone: dpm_solver, config: {model: {variant: multistage}, cluster: {name: timestep}},
     presets: {full: {}, tiny: {}, smoke: {}}, paper: {t1: 0.330, quality: 3.12}}
  - {id: snr, label: SNR, backbone: dpm_solver, config: {model: {variant: multistage}, cluster: {name: snr}},
     presets: {full: {}, tiny: {}, smoke: {}}, paper: {t1: 0.348, quality: 2.72}}
"""


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM NOT TESTED: sbatch is not installed (run slurm/start_cluster.sh, as .ci/run does)")
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        pytest.skip("SLURM NOT TESTED: sbatch is installed but no controller answers (run slurm/start_cluster.sh)")


def _table(tmp_path: Path, smoke: str = "{}", only_unified: bool = False) -> Path:
    path = tmp_path / "mini.yaml"
    text = ROWS.replace("{SMOKE}", smoke)
    if only_unified:
        text = text[:text.index("  - {id: timestep")]
    path.write_text(text)
    return path


def _wait(run_dir: Path, timeout: float = 240.0) -> dict:
    graph = read_json(run_dir / "graph.json")
    t0 = time.time()
    while time.time() - t0 < timeout:
        states = run_states(run_dir, list(graph["steps"]))
        if not any(s.live for s in states.values()):
            return states
        time.sleep(2)
    raise AssertionError(f"run not finished after {timeout} s: {[(s, st.state) for s, st in states.items()]}")


def _squeue() -> str:
    return subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %E"], capture_output=True, text=True).stdout


def test_smoke_grid_through_sbatch(cluster, tmp_path, capsys):
    table = _table(tmp_path)
    root = tmp_path / "runs"
    assert main(["submit", str(table), "--preset", "smoke", "--executor", "slurm", "--profile", "local",
                 "--root", str(root), "--run", "mini"]) == 0
    queued = _squeue()
    run_dir = root / "mini"
    jobs = [json.loads(p.read_text().splitlines()[-1]) for p in run_dir.glob("steps/*/jobs.jsonl")]
    arrays = [j for j in jobs if j["array"]]
    assert {j["kind"] for j in arrays} == {"cluster"} and len(arrays) == 2       # the two clusterers: one array
    assert len({j["job_id"].split("_")[0] for j in arrays}) == 1
    chained = [j for j in jobs if j["dependency"]]
    assert len(chained) == 5 and all(j["dependency"].startswith("afterok:") for j in chained)
    assert re.search(r"_\d+ ", queued) or "afterok" in queued, queued  # visible in squeue meanwhile
    states = _wait(run_dir)
    assert {s: st.state for s, st in states.items() if st.state != "done"} == {}
    cells = [json.loads(p.read_text()) for p in (run_dir / "cells").glob("*.json")]
    assert len(cells) == 3
    for cell in cells:
        assert math.isfinite(cell["metrics"]["fd_digits"]) and cell["metrics"]["fd_digits"] > 0
        assert cell["code_version"]["git_commit"] and cell["hash"] == cell["cell"]
        assert cell["timings"]["train_s"] > 0 and cell["flops"]["gmacs"]
    snr = next(c for c in cells if c["config"]["cluster"]["name"] == "snr" and c["cluster"])
    assert snr["cluster"]["boundaries"] == pytest.approx([0.348, 0.709], abs=1e-9)  # SPEC 3: exactly
    capsys.readouterr()
    assert main(["tables", str(run_dir), "--tables", str(table), "--format", "csv", "--out", str(tmp_path / "t")]) == 0
    assert "0.348" in capsys.readouterr().out and (tmp_path / "t" / "mini.md").is_file()
    # a finished run re-submitted submits nothing
    assert main(["submit", str(table), "--preset", "smoke", "--executor", "slurm", "--profile", "local",
                 "--root", str(root), "--run", "mini"]) == 0
    assert "0 steps submitted, 8 already done" in capsys.readouterr().out


def test_preempted_training_is_requeued_and_resumes(cluster, tmp_path):
    table = _table(tmp_path, "{train: {steps: 80, checkpoint_every: 10, log_every: 10}}", only_unified=True)
    root = tmp_path / "runs"
    assert main(["submit", str(table), "--preset", "smoke", "--executor", "slurm", "--profile", "local",
                 "--root", str(root), "--run", "pre"]) == 0
    run_dir = root / "pre"
    graph = read_json(run_dir / "graph.json")
    train = graph["cells"][graph["rows"]["mini.unified"]["cell"]]["train"]
    job = json.loads((step_dir(run_dir, train) / "jobs.jsonl").read_text().splitlines()[-1])["job_id"]
    ckpts = step_dir(run_dir, train) / "run" / "checkpoints"
    t0 = time.time()
    while not list(ckpts.glob("ckpt-*.pt")) and time.time() - t0 < 120:
        time.sleep(0.5)
    assert list(ckpts.glob("ckpt-*.pt")), "no checkpoint written"
    subprocess.run(["scontrol", "requeue", job], check=True)  # what preemption with requeue does
    states = _wait(run_dir, 240)
    assert states[train].state == "done", states[train]
    done = read_json(step_dir(run_dir, train) / "done.json")
    assert done["step"] == 80
    log = Path(job_log(run_dir, train)).read_text()
    m = re.findall(r"resumed \S+ at step (\d+)", log)
    assert m and int(m[-1]) >= 10, log[-2000:]


def job_log(run_dir: Path, step: str) -> str:
    return json.loads((step_dir(run_dir, step) / "jobs.jsonl").read_text().splitlines()[-1])["stderr"]
