"""Execution: what a step runs, and one submit path through submitit's ``AutoExecutor`` (debug, local, slurm).

SLURM gets the whole graph at once, a :class:`StepJob` per step: steps grouped by (depth, kind, upstream jobs) go
out as one job array (``executor.batch()``, split at the profile's ``max_array_size``) whose ``afterok`` dependency
names exactly the upstream jobs. Local and debug have no scheduler: ``parallel`` :class:`StepWorker` jobs take the
steps whose upstream steps are done from the run folder until none is left. Re-submitting a run submits only steps
that are missing or failed. Queued jobs import a frozen copy of the code (``<run>/snapshot``, put first on
PYTHONPATH by the jobs' setup lines).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from msrepro import training
from msrepro.checkpoint import load_model
from msrepro.clustering import fit_from_config
from msrepro.config import merge, schema, to_dict
from msrepro.evaluation import evaluate_checkpoint
from msrepro.evaluation.extras import cell_extras
from msrepro.flops import accounting
from msrepro.generation import generate, save_grid
from msrepro.io import atomic_write_json, code_version, snapshot_package
from msrepro.launch.plan import JobGraph, Step, plan, unified_reference
from msrepro.launch.run_folder import CLAIM, DONE, FAILED, SPEC, StepState, cell_path, finished, last_job, \
    prepare_run, read_json, record_job, step_dir
from msrepro.models import data_shape, get_backbone
from msrepro.profiles import Profile, check_executor, default_executor, resolve_profile
from msrepro.training.signals import Preempted

GRID_IMAGES = 16  # samples in each cell's grid (results/<run>/grids)


# -- the steps ------------------------------------------------------------------------------------------------
class StepFailed(RuntimeError):
    """A step cannot run (an upstream result is missing or unusable)."""


def _upstream(run_dir: Path, spec: dict[str, Any], kind: str) -> dict[str, Any] | None:
    ids = [d for d in spec["deps"] if d.startswith(kind + "-")]
    if not ids:
        return None
    out = read_json(step_dir(run_dir, ids[0]) / DONE)
    if out is None:
        raise StepFailed(f"upstream step {ids[0]} has no result ({step_dir(run_dir, ids[0]) / DONE})")
    return out


def step_config(run_dir: Path, spec: dict[str, Any]) -> DictConfig:
    """The step's run config, pointed at what its upstream steps made (prerequisite outputs, cut points)."""
    cfg = merge(schema(), OmegaConf.create(spec["config"]), where=f"step {spec['id']}")
    pre = _upstream(run_dir, spec, "prepare")
    if pre is not None:
        cfg = get_backbone(cfg.model.backbone).use_prerequisite(cfg, pre)
    cluster = _upstream(run_dir, spec, "cluster") if spec["kind"] == "train" else None
    if cluster is not None:
        cfg.stages.from_result = cluster["result"]
    if spec["kind"] == "train":
        cfg.output_dir, cfg.name = str(step_dir(run_dir, spec["id"])), "run"
    return cfg


def run_prepare(run_dir: Path, spec: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Prerequisite step: the backbone's own (:meth:`msrepro.backbones.base.Backbone.run_prerequisite`)."""
    return get_backbone(spec["backbone"]).run_prerequisite(spec["config"], step_dir(run_dir, spec["id"]), progress)


def run_cluster(run_dir: Path, spec: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Cluster step: the row's clusterer on its data (or the unified model's checkpoints) -> cut points."""
    cfg = step_config(run_dir, spec)
    model = _upstream(run_dir, spec, "train")
    checkpoints = sorted(Path(model["run_dir"], "checkpoints").glob("ckpt-*.pt")) if model else []
    if model:  # the clusterer differentiates the unified model, so it builds that network (k cut points still)
        k, cfg = cfg.stages.num_stages, unified_reference(cfg)
        cfg.stages.num_stages = k
    out = step_dir(run_dir, spec["id"]) / "cluster"
    result = fit_from_config(cfg, checkpoints=[str(c) for c in checkpoints], out_dir=out, progress=progress)
    return {"clusterer": result.clusterer, "boundaries": result.boundaries, "log_snr": result.log_snr,
            "objective": result.objective, "result": str(out / "result.json"), "files": dict(result.files),
            "checkpoints": [str(c) for c in checkpoints]}


def run_train(run_dir: Path, spec: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Train step: ``msrepro.training.train``; a run dir that exists resumes from its last checkpoint."""
    result = training.train(step_config(run_dir, spec), progress=progress)
    return {"run_dir": str(result.run_dir), "checkpoint": str(result.checkpoint), "step": int(result.step),
            "metrics": dict(result.metrics)}


def _sample_grid(checkpoint: Path, sample_cfg: Any, out: Path) -> str:
    denoiser, cfg = load_model(checkpoint)
    channels, resolution = data_shape(cfg)
    images = generate(denoiser, sample_cfg, (channels, resolution, resolution), list(range(GRID_IMAGES)), "cpu",
                      progress=False)
    return str(save_grid(torch.cat(list(images)), out, nrow=4))


def run_evaluate(run_dir: Path, spec: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Evaluate step: metrics of the trained model -> the cell's result JSON (SPEC 2)."""
    cfg = step_config(run_dir, spec)
    train = _upstream(run_dir, spec, "train")
    train_spec = read_json(step_dir(run_dir, spec["train"]) / SPEC) or {}
    cluster = _upstream(run_dir, train_spec, "cluster")
    t0 = time.time()  # this cell's sampler and metrics, on a training run other cells may share
    ev = evaluate_checkpoint(train["checkpoint"], metrics=list(cfg.eval.metrics), num=int(cfg.eval.num_samples),
                             repeats=int(cfg.eval.repeats), sample=to_dict(cfg.sample), progress=progress)
    eval_s, grid = time.time() - t0, None
    try:
        grid = _sample_grid(Path(train["checkpoint"]), cfg.sample, step_dir(run_dir, spec["id"]) / "grid.png")
    except Exception as exc:  # a grid is a picture for people; the metrics are the result
        print(f"sample grid failed: {exc}")
    return {"cell": spec["key"], "rows": spec["rows"], "preset": spec["preset"], "config": to_dict(cfg),
            "hash": spec["key"], "code_version": spec.get("code_version") or code_version(),
            **{k: ev.get(k) for k in ("metrics", "metrics_std", "nfe", "num_samples", "protocol", "step")},
            "checkpoint": train["checkpoint"],
            "train": {"steps": int(cfg.train.steps), "step": train["step"], "metrics": train["metrics"],
                      "run_dir": train["run_dir"]},
            "cluster": None if cluster is None else {k: cluster.get(k) for k in ("clusterer", "boundaries", "result",
                                                                                    "files", "objective")},
            "flops": accounting(step_config(run_dir, train_spec)),
            "timings": {"metrics_s": eval_s, "train_s": train["wall_s"],
                        "cluster_s": cluster["wall_s"] if cluster else None}, "grid": grid,
            **cell_extras(run_dir, cfg, train, progress)}  # real-data floor, quality curve, early stopping


STEPS: dict[str, Callable[[Path, dict[str, Any], bool], dict[str, Any]]] = {
    "prepare": run_prepare, "cluster": run_cluster, "train": run_train, "evaluate": run_evaluate}


def run_step(run_dir: str | Path, step_id: str, progress: bool = False) -> dict[str, Any]:
    """Run one step from its ``spec.json``; writes ``done.json`` (or ``failed.json``) atomically, and for an
    evaluate step the cell's result JSON. A step that is already done returns its result at once. Runs inside a
    submitit job (:class:`StepJob`, :class:`StepWorker`), whose task of rank 0 writes."""
    run_dir, d = Path(run_dir), step_dir(Path(run_dir), step_id)
    spec = read_json(d / SPEC)
    if spec is None:
        raise StepFailed(f"no spec for step {step_id} in {d}")
    if (d / DONE).is_file():
        return read_json(d / DONE)
    (d / FAILED).unlink(missing_ok=True)
    t0, rank0 = time.time(), submitit.JobEnvironment().global_rank == 0
    try:
        out = STEPS[spec["kind"]](run_dir, spec, progress)
    except (Preempted, KeyboardInterrupt, SystemExit):
        raise  # not a failure: the step resumes when it runs again
    except BaseException as exc:
        if rank0:
            atomic_write_json(d / FAILED, {"error": f"{type(exc).__name__}: {exc}",
                                           "traceback": traceback.format_exc(), "wall_s": time.time() - t0})
        raise
    out["wall_s"] = out.get("wall_s") or time.time() - t0
    if rank0:
        if spec["kind"] == "evaluate":
            out["timings"]["evaluate_s"] = out["wall_s"]
            atomic_write_json(cell_path(run_dir, spec["key"]), out)
        atomic_write_json(d / DONE, out)
    return out


class StepJob(submitit.helpers.Checkpointable):
    """The callable submitted for each step. Requeued (same arguments) on timeout or preemption: submitit calls
    :meth:`checkpoint` on its signal; when training took the signal itself (it saves a checkpoint and raises
    ``Preempted``), the job requeues itself through SLURM."""

    def __init__(self, run_dir: str, max_requeues: int = 20) -> None:
        self.run_dir, self.max_requeues = str(run_dir), max_requeues

    def __call__(self, step_id: str) -> dict[str, Any]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if os.environ.get("SLURM_CPUS_PER_TASK"):
            torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
        try:
            return run_step(self.run_dir, step_id)
        except Preempted:
            if self._requeue(step_id):
                raise SystemExit(-1)  # submitit writes no result: SLURM starts the job again, same submission
            raise

    def _requeue(self, step_id: str) -> bool:
        job_id, restarts = os.environ.get("SLURM_JOB_ID"), int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if job_id is None or restarts >= self.max_requeues or submitit.JobEnvironment().global_rank:
            return False
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        subprocess.run(["scontrol", "requeue", job_id], check=False, timeout=60)
        print(f"step {step_id}: preempted, requeued job {job_id} (restart {restarts + 1})")
        return True


# -- submitting ---------------------------------------------------------------------------------------------------
def make_executor(cluster: str, run_dir: Path, profile: Profile, kind: str, dependency: str | None = None,
                  snapshot: Path | None = None) -> submitit.AutoExecutor:
    """The submitit executor of one step kind: the profile's resources; ``afterok`` dependencies on SLURM."""
    res = profile.resources(kind)
    ex = submitit.AutoExecutor(folder=run_dir / "logs" / "%j", cluster=cluster,
                               slurm_max_num_timeout=profile.max_timeouts)
    setup = [*profile.setup, *([f"export PYTHONPATH={snapshot}${{PYTHONPATH:+:$PYTHONPATH}}"] if snapshot else [])]
    tasks = res.gpus if kind == "train" and res.gpus > 1 else 1  # one task per GPU: submitit's DDP environment
    params: dict[str, Any] = dict(
        name=f"msrepro-{kind}", timeout_min=res.timeout_min, nodes=res.nodes, tasks_per_node=tasks,
        cpus_per_task=max(1, res.cpus // tasks), mem_gb=res.mem_gb,
        slurm_partition=profile.partition, slurm_signal_delay_s=profile.signal_delay_s,
        slurm_array_parallelism=profile.array_parallelism, slurm_setup=setup, local_setup=setup,
        slurm_additional_parameters=dict(profile.additional))
    params.update({f"slurm_{k}": v for k, v in (("account", profile.account), ("qos", profile.qos),
                                                 ("dependency", dependency)) if v})
    if res.gpus > 0:
        params["gpus_per_node"] = res.gpus
    ex.update_parameters(**params)
    return ex


def _record(run_dir: Path, step: Step, job: submitit.Job, cluster: str, **extra: Any) -> dict[str, Any]:
    rec = {"executor": cluster, "job_id": str(job.job_id), "kind": step.kind, "stdout": str(job.paths.stdout),
           "stderr": str(job.paths.stderr), "time": time.time(), **extra}
    record_job(run_dir, step.id, rec)
    return {"step": step.id, **rec}


@dataclass
class Group:
    level: int
    kind: str
    deps: tuple[str, ...]               # upstream job ids, or "step:<id>" for steps submitted in the same call
    steps: list[Step] = field(default_factory=list)


def plan_groups(graph: JobGraph, todo: set[str], states: dict[str, StepState]) -> list[Group]:
    """Steps to submit, grouped into arrays by (depth, kind, upstream jobs); a step whose upstream is queued from an
    earlier submission waits on that job id."""
    groups: dict[tuple, Group] = {}
    for level, steps in enumerate(graph.levels()):
        for step in (s for s in steps if s.id in todo):
            deps = tuple(sorted(f"step:{d}" if d in todo else states[d].job_id for d in step.deps
                                if d in todo or states[d].live))
            groups.setdefault((level, step.kind, deps), Group(level, step.kind, deps)).steps.append(step)
    return list(groups.values())


def submit_slurm(run_dir: Path, graph: JobGraph, todo: set[str], states: dict[str, StepState], profile: Profile,
                 snapshot: Path | None) -> list[dict[str, Any]]:
    """Queue every step of ``todo`` at once: arrays with ``afterok`` dependencies. Returns the submissions."""
    job_of: dict[str, str] = {}
    out = []
    for group in plan_groups(graph, todo, states):
        deps = [job_of[d[5:]] if d.startswith("step:") else d for d in group.deps]
        dependency = "afterok:" + ":".join(deps) if deps else None
        for i in range(0, len(group.steps), profile.max_array_size):
            chunk = group.steps[i:i + profile.max_array_size]
            ex = make_executor("slurm", run_dir, profile, group.kind, dependency, snapshot)
            fn = StepJob(str(run_dir.resolve()))
            with ex.batch():  # one sbatch --array for the chunk (a chunk of one is a plain job)
                jobs = [ex.submit(fn, s.id) for s in chunk]
            for step, job in zip(chunk, jobs):
                job_of[step.id] = job.job_id
                out.append(_record(run_dir, step, job, "slurm", dependency=dependency, array=len(chunk) > 1))
    return out


#: the order in which a local worker takes the steps that are ready: steps that unblock training first (prepare,
#: cluster: short), then training, evaluations last. Evaluations are short and nothing waits on them, so kept for the
#: end they fill the gaps beside the last long training runs instead of delaying them (tiny grid, 2 workers: the
#: plain topological order left one core idle for the last ~200 s training step; issue 10).
WORKER_PRIORITY: dict[str, int] = {"prepare": 0, "cluster": 0, "train": 1, "evaluate": 2}


class StepWorker:
    """A local or debug job: takes the next ready step of ``step_ids`` (upstream steps done; the first by
    :data:`WORKER_PRIORITY`, then topological order), runs it, and repeats until none is left, so a process imports
    torch once, not once per step. Workers share a run through claim files (the first to create one takes the
    step). A step whose upstream failed is failed too; in debug, the first failure is re-raised."""

    def __init__(self, run_dir: str, step_ids: list[str], executor: str, threads: int = 1) -> None:
        self.run_dir, self.step_ids, self.executor, self.threads = str(run_dir), list(step_ids), executor, threads

    def __call__(self) -> int:
        if self.threads:
            torch.set_num_threads(self.threads)
        run_dir, ran = Path(self.run_dir), 0
        specs = {s: read_json(step_dir(run_dir, s) / SPEC) or {} for s in self.step_ids}
        deps = {s: specs[s].get("deps", []) for s in self.step_ids}
        rank = {s: WORKER_PRIORITY.get(specs[s].get("kind"), len(WORKER_PRIORITY)) for s in self.step_ids}
        order = sorted(self.step_ids, key=lambda s: rank[s])  # stable: topological within a rank
        while free := [s for s in order if not (step_dir(run_dir, s) / CLAIM).is_file()]:
            up = {s: [finished(run_dir, d) for d in deps[s]] for s in free}
            sid = next((s for s in free if (set(up[s]) <= {"done"} or "failed" in up[s]) and self._claim(run_dir, s)),
                       None)
            if sid is None:
                time.sleep(0.2)  # the free steps wait on steps other workers are running
                continue
            if "failed" in up[sid]:
                bad = [d for d, st in zip(deps[sid], up[sid]) if st == "failed"]
                atomic_write_json(step_dir(run_dir, sid) / FAILED, {"error": f"upstream step failed: {', '.join(bad)}"})
                continue
            try:
                run_step(run_dir, sid)
            except Exception as exc:  # failed.json holds the traceback; go on with the others
                if self.executor == "debug" or isinstance(exc, Preempted):
                    raise  # a preempted worker stops; its step resumes when submitted again
                print(f"step {sid} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            ran += 1
        return ran  # every step is taken

    def _claim(self, run_dir: Path, sid: str) -> bool:
        try:
            os.close(os.open(step_dir(run_dir, sid) / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        env = submitit.JobEnvironment()
        logs = {} if self.executor == "debug" else {"stdout": str(env.paths.stdout), "stderr": str(env.paths.stderr)}
        record_job(run_dir, sid, {"executor": self.executor, "job_id": env.job_id, **logs, "time": time.time()})
        return True  # (debug: the output is this process's own)


def run_here(run_dir: Path, graph: JobGraph, todo: set[str], cluster: str, profile: Profile, parallel: int = 1,
             snapshot: Path | None = None, progress: bool = True,
             on_finish: Callable[[str, str], None] | None = None) -> dict[str, str]:
    """Local and debug: ``parallel`` :class:`StepWorker` jobs run the steps of ``todo`` (local: one-thread processes,
    so ``parallel`` = cores keeps every core busy; debug: one, in this process, stopping at the first failure); this
    process follows the run folder and the workers' job objects. Returns ``{step: done|failed|blocked}`` (blocked:
    waits on a step outside ``todo`` that is not done)."""
    runnable: list[str] = []
    for sid, step in graph.steps.items():  # topological order
        if sid in todo and all(d in runnable or finished(run_dir, d) == "done" for d in step.deps):
            runnable.append(sid)
    final = {sid: "blocked" for sid in graph.steps if sid in todo and sid not in runnable}
    bar = tqdm(total=len(todo), desc="steps", unit="step", disable=not progress)
    ex = make_executor(cluster, run_dir, profile, "train", snapshot=snapshot)
    ex.update_parameters(name="msrepro-worker", tasks_per_node=1,  # a worker runs its steps one after another
                         timeout_min=sum(profile.resources(graph.steps[s].kind).timeout_min for s in runnable))
    worker = StepWorker(str(run_dir.resolve()), runnable, cluster, threads=0 if cluster == "debug" else 1)
    workers = 0 if not runnable else 1 if cluster == "debug" else min(max(1, parallel), len(runnable))
    jobs = [ex.submit(worker) for _ in range(workers)]
    try:
        while True:
            ended = [job for job in jobs if job.done()]  # debug: runs the worker here; re-raises its first failure
            for job in ended:  # steps a worker took and left without a result (it died): failed, never waited on
                for sid in runnable:
                    if finished(run_dir, sid) is None and (last_job(run_dir, sid) or {}).get("job_id") == job.job_id:
                        print(f"step {sid}: job {job.job_id} died; log: {job.paths.stderr}", file=sys.stderr)
                        atomic_write_json(step_dir(run_dir, sid) / FAILED, {"error": f"job {job.job_id} died"})
            for sid in runnable:
                if sid not in final and finished(run_dir, sid):
                    final[sid] = finished(run_dir, sid)
                    bar.update(1)
                    bar.set_postfix(failed=sum(v == "failed" for v in final.values()), refresh=False)
                    if on_finish:
                        on_finish(sid, final[sid])
            if len(ended) == len(jobs):
                break
            time.sleep(0.5)
    except BaseException:  # interrupted: take the workers down with this process
        for job in jobs:
            job.cancel(check=False)
        raise
    finally:
        bar.close()
    for sid in final:
        if final[sid] == "blocked" and on_finish:
            on_finish(sid, "blocked")
    return {**final, **{s: "failed" for s in runnable if s not in final}}


@dataclass
class SubmitReport:
    run_dir: Path
    executor: str
    submitted: list[str] = field(default_factory=list)   # step ids sent to an executor in this call
    skipped_done: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    final: dict[str, str] = field(default_factory=dict)  # local/debug: step -> done/failed/blocked
    jobs: list[dict[str, Any]] = field(default_factory=list)


def submit(tables: list[str] | tuple[str, ...], preset: str, *, executor: str | None = None,
           profile: str | None = None, run: str | None = None, root: str | Path = "runs", parallel: int = 1,
           progress: bool = True, snapshot: bool = True,
           on_finish: Callable[[str, str], None] | None = None) -> SubmitReport:
    """Submit the missing or failed steps of ``tables`` at ``preset`` into run folder ``root/run`` (default name:
    the preset). SLURM returns once everything is queued; local and debug return when the steps have finished."""
    executor = check_executor(executor or default_executor())
    prof = resolve_profile(executor, profile)
    graph = plan(tables, preset)
    run_dir = Path(root) / (run or preset)
    states = prepare_run(run_dir, graph, executor, prof.name)
    report = SubmitReport(run_dir, executor)
    for sid, st in states.items():
        (report.skipped_done if st.state == "done" else report.in_flight if st.live else report.submitted).append(sid)
    if not report.submitted:
        return report
    snap = snapshot_package(run_dir / "snapshot") if snapshot and executor != "debug" else None
    if executor == "slurm":
        report.jobs = submit_slurm(run_dir, graph, set(report.submitted), states, prof, snap)
    else:
        report.final = run_here(run_dir, graph, set(report.submitted), executor, prof, parallel=parallel,
                                snapshot=snap, progress=progress, on_finish=on_finish)
    return report
