"""What a job runs: one step of the job graph (``cluster``, ``train``, ``evaluate``), read from its ``spec.json``.

:class:`StepJob` is submitit-``Checkpointable``: on a time-limit or preemption signal it is requeued and runs again;
the train step then resumes from the run's last checkpoint (``msrepro.training``: an existing run dir resumes).
The heavy modules (clustering, training, evaluation) are imported inside the steps, when a job runs.
"""

from __future__ import annotations

import os
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import submitit
from omegaconf import DictConfig, OmegaConf

from msrepro.config import to_dict
from msrepro.launch.rundir import DONE, FAILED, SPEC, cell_path, read_json, step_dir, write_json

GRID_IMAGES = 16  # samples in each cell's grid (results/<run>/grids)


class StepFailed(RuntimeError):
    """A step cannot run (an upstream result is missing or unusable)."""


def _done(run_dir: Path, step_id: str) -> dict[str, Any]:
    out = read_json(step_dir(run_dir, step_id) / DONE)
    if out is None:
        raise StepFailed(f"upstream step {step_id} has no result ({step_dir(run_dir, step_id) / DONE})")
    return out


def _config(spec: dict[str, Any]) -> DictConfig:
    from msrepro.config import merge, schema

    return merge(schema(), OmegaConf.create(spec["config"]), where=f"step {spec['id']}")


def _upstream(run_dir: Path, spec: dict[str, Any], kind: str) -> dict[str, Any] | None:
    ids = [d for d in spec["deps"] if d.startswith(kind + "-")]
    return _done(run_dir, ids[0]) if ids else None


def run_cluster(run_dir: Path, spec: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Cluster step: the row's clusterer on its data (or the unified model's checkpoints) -> cut points."""
    from msrepro.clustering import fit_from_config

    cfg = _config(spec)
    model = _upstream(run_dir, spec, "train")
    checkpoints = sorted(Path(model["run_dir"], "checkpoints").glob("ckpt-*.pt")) if model else []
    out = step_dir(run_dir, spec["id"]) / "cluster"
    result = fit_from_config(cfg, checkpoints=[str(c) for c in checkpoints], out_dir=out, progress=progress)
    return {"clusterer": result.clusterer, "boundaries": result.boundaries, "log_snr": result.log_snr,
            "result": str(out / "result.json"), "files": dict(result.files), "checkpoints": [str(c) for c in checkpoints]}


def train_config(run_dir: Path, spec: dict[str, Any]) -> DictConfig:
    cfg = _config(spec)
    cluster = _upstream(run_dir, spec, "cluster")
    if cluster is not None:
        cfg.stages.from_result = cluster["result"]
    cfg.output_dir = str(step_dir(run_dir, spec["id"]))
    cfg.name = "run"
    return cfg


def run_train(run_dir: Path, spec: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Train step: ``msrepro.training.train``; a run dir that exists resumes from its last checkpoint."""
    from msrepro import training

    result = training.train(train_config(run_dir, spec), progress=progress)
    return {"run_dir": str(result.run_dir), "checkpoint": str(result.checkpoint), "step": int(result.step),
            "metrics": dict(result.metrics)}


def _eval_checkpoint(run_dir: Path, spec: dict[str, Any], cfg: DictConfig, checkpoint: Path) -> Path:
    """The checkpoint to evaluate: the trained one, or a copy carrying this cell's sample/eval sections when the
    training run was shared with a cell that samples differently (e.g. EDM at 25 and at 35 NFE)."""
    from msrepro.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(checkpoint)
    stored = state["config"]
    if all(to_dict(stored.get(k)) == to_dict(cfg[k]) for k in ("sample", "eval")):
        return checkpoint
    state["config"] = {**to_dict(stored), "sample": to_dict(cfg.sample), "eval": to_dict(cfg.eval)}
    return save_checkpoint(step_dir(run_dir, spec["id"]) / "checkpoint-eval.pt", state)


def _sample_grid(checkpoint: Path, out: Path) -> str | None:
    from msrepro.checkpoint import load_model
    from msrepro.models import data_shape
    from msrepro.sampling import generate, save_grid

    denoiser, cfg = load_model(checkpoint)
    channels, resolution = data_shape(cfg)
    images = list(generate(denoiser, cfg.sample, (channels, resolution, resolution), list(range(GRID_IMAGES)),
                           "cpu", progress=False))
    import torch

    return str(save_grid(torch.cat(images), out, nrow=4))


def run_evaluate(run_dir: Path, spec: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Evaluate step: metrics of the trained model; writes the cell's result JSON (SPEC 2)."""
    from msrepro.evaluation import evaluate_checkpoint
    from msrepro.flops import accounting
    from msrepro.io import code_version

    cfg = _config(spec)
    train = _upstream(run_dir, spec, "train")
    train_spec = read_json(step_dir(run_dir, spec["train"]) / SPEC) or {}
    cluster = _done(run_dir, train_spec["deps"][0]) if train_spec.get("deps") else None
    checkpoint = _eval_checkpoint(run_dir, spec, cfg, Path(train["checkpoint"]))
    t0 = time.time()
    ev = evaluate_checkpoint(str(checkpoint), progress=progress)
    eval_s = time.time() - t0
    grid = None
    try:
        grid = _sample_grid(checkpoint, step_dir(run_dir, spec["id"]) / "grid.png")
    except Exception as exc:  # a grid is a picture for people; the metrics are the result
        print(f"sample grid failed: {exc}")
    acc_cfg = train_config(run_dir, read_json(step_dir(run_dir, spec["train"]) / SPEC))
    acc = accounting(acc_cfg)
    timings = {"evaluate_s": eval_s, "train_s": train["wall_s"], "cluster_s": cluster["wall_s"] if cluster else None}
    return {"cell": spec["key"], "rows": spec["rows"], "preset": spec["preset"], "config": to_dict(cfg),
            "hash": spec["key"], "code_version": spec.get("code_version") or code_version(),
            "metrics": ev["metrics"], "nfe": ev.get("nfe"), "num_samples": ev.get("num_samples"),
            "protocol": ev.get("protocol"), "checkpoint": str(checkpoint), "step": ev.get("step"),
            "train": {"steps": int(cfg.train.steps), "step": train["step"], "metrics": train["metrics"],
                      "run_dir": train["run_dir"]},
            "cluster": None if cluster is None else {k: cluster[k] for k in ("clusterer", "boundaries", "result",
                                                                                "files")},
            "flops": acc, "timings": timings, "grid": grid}


STEPS: dict[str, Callable[[Path, dict[str, Any], bool], dict[str, Any]]] = {
    "cluster": run_cluster, "train": run_train, "evaluate": run_evaluate}


def _is_preempted(exc: BaseException) -> bool:
    return type(exc).__name__ == "Preempted"


def _rank() -> int:
    try:
        return submitit.JobEnvironment().global_rank
    except RuntimeError:
        return int(os.environ.get("RANK", 0))


def run_step(run_dir: str | Path, step_id: str, progress: bool = False) -> dict[str, Any]:
    """Run one step from its ``spec.json``; writes ``done.json`` (or ``failed.json``) atomically, and for an
    evaluate step the cell's result JSON. A step that is already done returns its result at once."""
    run_dir = Path(run_dir)
    d = step_dir(run_dir, step_id)
    spec = read_json(d / SPEC)
    if spec is None:
        raise StepFailed(f"no spec for step {step_id} in {d}")
    if (d / DONE).is_file():
        return read_json(d / DONE)
    (d / FAILED).unlink(missing_ok=True)
    t0 = time.time()
    try:
        out = STEPS[spec["kind"]](run_dir, spec, progress)
    except BaseException as exc:
        if _is_preempted(exc) or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if _rank() == 0:
            write_json(d / FAILED, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                                    "wall_s": time.time() - t0})
        raise
    out["wall_s"] = out.get("wall_s") or time.time() - t0
    if _rank() == 0:
        if spec["kind"] == "evaluate":
            out["timings"]["evaluate_s"] = out["wall_s"]
            write_json(cell_path(run_dir, spec["key"]), out)
        write_json(d / DONE, out)
    return out


class StepJob(submitit.helpers.Checkpointable):
    """The callable submitted for each step. Requeued (same arguments) on timeout or preemption: submitit calls
    :meth:`checkpoint` on its signal; when training took the signal itself (it saves a checkpoint and raises
    ``Preempted``), the job requeues itself through SLURM."""

    def __init__(self, run_dir: str, max_requeues: int = 20) -> None:
        self.run_dir = str(run_dir)
        self.max_requeues = max_requeues

    def __call__(self, step_id: str) -> dict[str, Any]:
        try:
            return run_step(self.run_dir, step_id)
        except BaseException as exc:
            if _is_preempted(exc) and self._requeue(step_id):
                raise SystemExit(-1)  # submitit writes no result: SLURM starts the job again, same submission
            raise

    def _requeue(self, step_id: str) -> bool:
        job_id = os.environ.get("SLURM_JOB_ID")
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if job_id is None or restarts >= self.max_requeues or _rank() != 0:
            return False
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        subprocess.run(["scontrol", "requeue", job_id], check=False, timeout=60)
        print(f"step {step_id}: preempted, requeued job {job_id} (restart {restarts + 1})")
        return True
