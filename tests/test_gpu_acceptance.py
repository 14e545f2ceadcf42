"""bench/gpu_acceptance.sh: refuses to run without CUDA (clearly), its CPU dry run passes, a broken stage fails it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_acceptance.sh"


def run(*args: str, fail: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    env.pop("MSREPRO_ACCEPTANCE_FAIL", None)
    if fail:
        env["MSREPRO_ACCEPTANCE_FAIL"] = fail
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: the script would run for real")
def test_without_cuda_exits_nonzero_with_message(tmp_path):
    out = tmp_path / "gpu.txt"
    proc = run("--out", str(out))
    assert proc.returncode != 0
    assert "no CUDA device" in proc.stderr and "--cpu-dry-run" in proc.stderr
    assert not out.exists()


def test_python_without_torch_is_named(tmp_path):
    fake = tmp_path / "python"  # a python that cannot import torch
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-dry-run"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(fake)}, timeout=60)
    assert proc.returncode == 2 and f"{fake} cannot import torch" in proc.stderr


def test_cpu_dry_run_end_to_end(tmp_path):
    out = tmp_path / "gpu.txt"
    proc = run("--cpu-dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage in ("train", "ddp", "fid", "od"):
        assert f"stage {stage}: ok" in proc.stdout, proc.stdout
    assert proc.stdout.count("train ") >= 4 and "fd_digits" in proc.stdout
    assert not out.exists()  # a dry run records nothing


def test_broken_stage_fails_naming_it():
    proc = run("--cpu-dry-run", "--only", "train,od", fail="od")
    assert proc.returncode != 0
    assert "stage train: ok" in proc.stdout and "stage od: FAILED" in proc.stdout
    assert "FAILED stage(s): od" in proc.stderr


def test_unknown_stage_is_rejected_naming_the_valid_ones():
    proc = run("--cpu-dry-run", "--only", "train,fdi")
    assert proc.returncode == 2
    assert "unknown stage(s) fdi" in proc.stderr and "train, ddp, fid, od" in proc.stderr
    assert "stage train" not in proc.stdout  # rejected before any stage ran
