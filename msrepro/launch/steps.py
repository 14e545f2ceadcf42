"""What a job runs: one step of the job graph (``cluster``, ``train``, ``evaluate``), read from its ``spec.json``.

:class:`StepJob` is submitit-``Checkpointable``: on a time-limit or preemption signal it is requeued and runs again;
the train step then resumes from the run's last checkpoint (``msrepro.training``: an existing run dir resumes).
"""

from __future__ import annotations

import os
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import submitit
import torch
from omegaconf import DictConfig, OmegaConf

from msrepro import training
from msrepro.checkpoint import load_model
from msrepro.clustering import fit_from_config
from msrepro.config import merge, schema, to_dict
from msrepro.evaluation import evaluate_checkpoint
from msrepro.flops import accounting
from msrepro.io import code_version
from msrepro.launch.graph import unified_reference
from msrepro.launch.rundir import DONE, FAILED, SPEC, cell_path, read_json, record_job, step_dir, write_json
from msrepro.models import data_shape
from msrepro.sampling import generate, save_grid
from msrepro.training.signals import Preempted
from msrepro.vae.config import load_vae_config
from msrepro.vae.latents import encode_latents
from msrepro.vae.train import train_vae

GRID_IMAGES = 16  # samples in each cell's grid (results/<run>/grids)


class StepFailed(RuntimeError):
    """A step cannot run (an upstream result is missing or unusable)."""


def _done(run_dir: Path, step_id: str) -> dict[str, Any]:
    out = read_json(step_dir(run_dir, step_id) / DONE)
    if out is None:
        raise StepFailed(f"upstream step {step_id} has no result ({step_dir(run_dir, step_id) / DONE})")
    return out


def _config(spec: dict[str, Any]) -> DictConfig:

    return merge(schema(), OmegaConf.create(spec["config"]), where=f"step {spec['id']}")


def _upstream(run_dir: Path, spec: dict[str, Any], kind: str) -> dict[str, Any] | None:
    ids = [d for d in spec["deps"] if d.startswith(kind + "-")]
    return _done(run_dir, ids[0]) if ids else None


def run_vae(run_dir: Path, spec: dict[str, Any], progress: bool) -> dict[str, Any]:
    """VAE step (latent diffusion): train the autoencoder (``msrepro train-vae``), encode its dataset once
    (``msrepro encode-latents``); LDM cells then train on the latent cache and decode with this VAE."""
    d = step_dir(run_dir, spec["id"])
    cfg = OmegaConf.merge(load_vae_config(overrides=[f"preset={spec['config']['preset']}"]), spec["config"],
                          {"output_dir": str(d), "name": "vae"})
    result = train_vae(cfg, progress=progress)
    latents = encode_latents(result.checkpoint, cfg.dataset, d / "latents.pt", progress=progress)
    return {"checkpoint": str(result.checkpoint), "latents": str(latents), "metrics": dict(result.metrics)}


def _with_latents(run_dir: Path, spec: dict[str, Any], cfg: DictConfig) -> DictConfig:
    """Point a latent-diffusion config at its VAE step's latent cache and checkpoint."""
    vae = _upstream(run_dir, spec, "vae")
    if vae is not None:
        cfg.dataset.root = vae["latents"]
        cfg.model.params.vae = vae["checkpoint"]
    return cfg


def run_cluster(run_dir: Path, spec: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Cluster step: the row's clusterer on its data (or the unified model's checkpoints) -> cut points."""
    cfg = _with_latents(run_dir, spec, _config(spec))
    model = _upstream(run_dir, spec, "train")
    checkpoints = sorted(Path(model["run_dir"], "checkpoints").glob("ckpt-*.pt")) if model else []
    if model:  # the clusterer differentiates the unified model, so it builds that network (k cut points still)
        k = cfg.stages.num_stages
        cfg = unified_reference(cfg)
        cfg.stages.num_stages = k
    out = step_dir(run_dir, spec["id"]) / "cluster"
    result = fit_from_config(cfg, checkpoints=[str(c) for c in checkpoints], out_dir=out, progress=progress)
    return {"clusterer": result.clusterer, "boundaries": result.boundaries, "log_snr": result.log_snr,
            "objective": result.objective, "result": str(out / "result.json"), "files": dict(result.files),
            "checkpoints": [str(c) for c in checkpoints]}


def train_config(run_dir: Path, spec: dict[str, Any]) -> DictConfig:
    cfg = _with_latents(run_dir, spec, _config(spec))
    cluster = _upstream(run_dir, spec, "cluster")
    if cluster is not None:
        cfg.stages.from_result = cluster["result"]
    cfg.output_dir = str(step_dir(run_dir, spec["id"]))
    cfg.name = "run"
    return cfg


def run_train(run_dir: Path, spec: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Train step: ``msrepro.training.train``; a run dir that exists resumes from its last checkpoint."""
    result = training.train(train_config(run_dir, spec), progress=progress)
    return {"run_dir": str(result.run_dir), "checkpoint": str(result.checkpoint), "step": int(result.step),
            "metrics": dict(result.metrics)}


def _sample_grid(checkpoint: Path, sample_cfg: Any, out: Path) -> str | None:

    denoiser, cfg = load_model(checkpoint)
    channels, resolution = data_shape(cfg)
    images = list(generate(denoiser, sample_cfg, (channels, resolution, resolution), list(range(GRID_IMAGES)),
                           "cpu", progress=False))

    return str(save_grid(torch.cat(images), out, nrow=4))


def run_evaluate(run_dir: Path, spec: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Evaluate step: metrics of the trained model; writes the cell's result JSON (SPEC 2)."""
    cfg = _config(spec)
    train = _upstream(run_dir, spec, "train")
    train_spec = read_json(step_dir(run_dir, spec["train"]) / SPEC) or {}
    cluster = _upstream(run_dir, train_spec, "cluster")
    checkpoint = Path(train["checkpoint"])
    t0 = time.time()  # this cell's sampler and metrics, on a training run other cells may share
    ev = evaluate_checkpoint(str(checkpoint), metrics=list(cfg.eval.metrics), num=int(cfg.eval.num_samples),
                             repeats=int(cfg.eval.repeats), sample=to_dict(cfg.sample), progress=progress)
    eval_s = time.time() - t0
    grid = None
    try:
        grid = _sample_grid(checkpoint, cfg.sample, step_dir(run_dir, spec["id"]) / "grid.png")
    except Exception as exc:  # a grid is a picture for people; the metrics are the result
        print(f"sample grid failed: {exc}")
    acc_cfg = train_config(run_dir, read_json(step_dir(run_dir, spec["train"]) / SPEC))
    acc = accounting(acc_cfg)
    timings = {"metrics_s": eval_s, "train_s": train["wall_s"], "cluster_s": cluster["wall_s"] if cluster else None}
    return {"cell": spec["key"], "rows": spec["rows"], "preset": spec["preset"], "config": to_dict(cfg),
            "hash": spec["key"], "code_version": spec.get("code_version") or code_version(),
            "metrics": ev["metrics"], "metrics_std": ev.get("metrics_std"), "nfe": ev.get("nfe"),
            "num_samples": ev.get("num_samples"),
            "protocol": ev.get("protocol"), "checkpoint": str(checkpoint), "step": ev.get("step"),
            "train": {"steps": int(cfg.train.steps), "step": train["step"], "metrics": train["metrics"],
                      "run_dir": train["run_dir"]},
            "cluster": None if cluster is None else {k: cluster.get(k) for k in ("clusterer", "boundaries", "result",
                                                                                    "files", "objective")},
            "flops": acc, "timings": timings, "grid": grid}


STEPS: dict[str, Callable[[Path, dict[str, Any], bool], dict[str, Any]]] = {
    "vae": run_vae, "cluster": run_cluster, "train": run_train, "evaluate": run_evaluate}


def _is_preempted(exc: BaseException) -> bool:
    return isinstance(exc, Preempted)


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


CLAIM = "claim.json"


def clear_claims(run_dir: str | Path, step_ids: list[str]) -> None:
    """Forget which worker took which step (before new workers start on a run no worker is running on)."""
    for sid in step_ids:
        (step_dir(Path(run_dir), sid) / CLAIM).unlink(missing_ok=True)


def _claim(run_dir: Path, step_id: str, executor: str) -> bool:
    """Take ``step_id`` for this process (atomic: the first to create the claim file wins)."""
    import json

    d = step_dir(run_dir, step_id)
    d.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(d / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid()}, f)

    job = {"executor": executor, "job_id": str(os.getpid()), "pid": os.getpid(), "time": time.time()}
    try:
        paths = submitit.JobEnvironment().paths
        job.update(job_id=submitit.JobEnvironment().job_id, stdout=str(paths.stdout), stderr=str(paths.stderr))
    except RuntimeError:
        pass
    record_job(run_dir, step_id, job)
    return True


class StepWorker:
    """A local worker: takes the next step of ``step_ids`` whose dependencies are done, runs it, and repeats until
    nothing is left it could run. Several workers share a run through claim files; a step whose dependency
    failed is marked failed ("upstream failed") so that nothing waits on it."""
    def __init__(self, run_dir: str, step_ids: list[str], threads: int = 1, executor: str = "local",
                 on_step: Callable[[str], None] | None = None) -> None:
        self.run_dir, self.step_ids, self.threads, self.executor = str(run_dir), list(step_ids), threads, executor
        self.on_step = on_step

    def _status(self, sid: str) -> str | None:
        d = step_dir(Path(self.run_dir), sid)
        return "done" if (d / DONE).is_file() else "failed" if (d / FAILED).is_file() else None

    def __call__(self) -> int:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        run_dir, ran = Path(self.run_dir), 0
        specs = {sid: read_json(step_dir(run_dir, sid) / SPEC) or {} for sid in self.step_ids}
        while True:
            free = [s for s in self.step_ids if self._status(s) is None
                    and not (step_dir(run_dir, s) / CLAIM).is_file()]
            if not free:
                return ran  # everything is finished or taken by a worker
            for sid in free:
                deps = [self._status(d) for d in specs[sid].get("deps", [])]
                if "failed" in deps and _claim(run_dir, sid, self.executor):
                    failed = [d for d in specs[sid]["deps"] if self._status(d) == "failed"]
                    write_json(step_dir(run_dir, sid) / FAILED, {"error": f"upstream step failed: {', '.join(failed)}"})
                    break
                if all(d == "done" for d in deps) and _claim(run_dir, sid, self.executor):
                    try:
                        run_step(run_dir, sid)
                    except Exception as exc:  # failed.json holds the traceback; go on with the others
                        if self.executor == "debug" or _is_preempted(exc):
                            raise  # a preempted worker stops (its step resumes when submitted again)
                        print(f"step {sid} failed: {type(exc).__name__}: {exc}")
                    ran += 1
                    if self.on_step:
                        self.on_step(sid)
                    break  # dependencies may have changed: look again from the start
            else:
                time.sleep(0.5)  # the free steps wait for steps other workers are running


class StepJob(submitit.helpers.Checkpointable):
    """The callable submitted for each step. Requeued (same arguments) on timeout or preemption: submitit calls
    :meth:`checkpoint` on its signal; when training took the signal itself (it saves a checkpoint and raises
    ``Preempted``), the job requeues itself through SLURM."""
    def __init__(self, run_dir: str, max_requeues: int = 20) -> None:
        self.run_dir = str(run_dir)
        self.max_requeues = max_requeues

    def __call__(self, step_id: str) -> dict[str, Any]:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus:
            import torch

            torch.set_num_threads(int(cpus))
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
