"""Execution: what a step runs, and one submit path through submitit for ``debug``, ``local`` and ``slurm``.

Every step is submitted as :class:`StepJob` through :class:`submitit.AutoExecutor` (cluster ``debug``: in this
process, ``local``: subprocesses, ``slurm``: sbatch). SLURM gets the whole graph at once: steps grouped by (depth,
kind, upstream jobs) go out as one job array (``executor.batch()``, split at the profile's ``max_array_size``)
whose ``afterok`` dependency names exactly the upstream jobs. Local and debug have no scheduler, so this process
submits each step when its dependencies are done, ``parallel`` one-thread jobs at a time, and waits on submitit's
job objects. Re-submitting a run submits only steps that are missing or failed. Queued SLURM and local jobs import
a frozen copy of the code (``<run>/snapshot``, put first on PYTHONPATH by the jobs' setup lines).

Cluster profiles (``slurm/profiles/*.yaml``: partition, account, qos, resources per step kind, setup lines) are
validated before anything is submitted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import submitit
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from msrepro import training
from msrepro.checkpoint import load_model
from msrepro.clustering import fit_from_config
from msrepro.config import ConfigError, merge, schema, to_dict
from msrepro.evaluation import evaluate_checkpoint
from msrepro.evaluation.extras import cell_extras
from msrepro.flops import accounting
from msrepro.generation import generate, save_grid
from msrepro.io import atomic_write_json, code_version
from msrepro.launch.plan import KINDS, JobGraph, Step, plan, unified_reference
from msrepro.launch.run_folder import DONE, FAILED, SPEC, StepState, cell_path, prepare_run, read_json, \
    record_job, snapshot_code, step_dir
from msrepro.models import data_shape, get_backbone
from msrepro.training.signals import Preempted

EXECUTORS: tuple[str, ...] = ("debug", "local", "slurm")
GRID_IMAGES = 16  # samples in each cell's grid (results/<run>/grids)


# -- profiles -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobResources:
    gpus: int = 0
    cpus: int = 1
    mem_gb: float = 4.0
    time: str = "01:00:00"
    nodes: int = 1

    @property
    def timeout_min(self) -> int:
        return parse_time(self.time)


@dataclass(frozen=True)
class Profile:
    name: str
    partition: str
    account: str | None = None
    qos: str | None = None
    max_array_size: int = 1000
    array_parallelism: int = 64
    max_timeouts: int = 10
    signal_delay_s: int = 90
    setup: tuple[str, ...] = ()
    additional: dict[str, Any] = field(default_factory=dict)
    estimate: dict[str, float] = field(default_factory=lambda: {"gpu_tflops": 100.0, "utilization": 0.3})
    jobs: dict[str, JobResources] = field(default_factory=dict)

    def resources(self, kind: str) -> JobResources:
        return self.jobs.get(kind, JobResources())


def parse_time(value: str | int) -> int:
    """SLURM time ``[D-]HH:MM:SS`` / ``MM:SS`` / minutes -> whole minutes."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
    if not m:
        raise ConfigError(f"time limit '{value}': use D-HH:MM:SS, HH:MM:SS, MM:SS or minutes")
    d, a, b, c = (int(x) if x else None for x in m.groups())
    minutes = a if b is None else a + (b > 0) if c is None else a * 60 + b + (c > 0)  # seconds round up
    return (d or 0) * 1440 + minutes


def profile_dirs() -> list[Path]:
    """Where ``--profile NAME`` is looked up: ./slurm/profiles, then the source checkout's slurm/profiles."""
    here = Path(__file__).resolve().parent.parent.parent / "slurm" / "profiles"
    return list(dict.fromkeys([Path("slurm/profiles").resolve(), here]))


def load_profile(name_or_path: str) -> Profile:
    """A profile by name (``slurm/profiles/NAME.yaml``) or path; errors list the valid names and keys."""
    path = Path(name_or_path)
    if not path.is_file():
        found = [d / f"{name_or_path}.yaml" for d in profile_dirs() if (d / f"{name_or_path}.yaml").is_file()]
        if not found:
            names = sorted({p.stem for d in profile_dirs() for p in d.glob("*.yaml")})
            raise ConfigError(f"unknown profile '{name_or_path}'; valid profiles: {', '.join(names)} (or a path to "
                              f"a YAML file)")
        path = found[0]
    data, where = yaml.safe_load(path.read_text()) or {}, f"profile {path}"
    top = {f for f in Profile.__dataclass_fields__ if f != "name"}
    if set(data) - top:
        raise ConfigError(f"{where}: unknown keys {sorted(set(data) - top)}; allowed: {', '.join(sorted(top))}")
    if not data.get("partition"):
        raise ConfigError(f"{where}: 'partition' is required (the SLURM partition jobs go to)")
    jobs, keys = {}, set(JobResources.__dataclass_fields__)
    for kind, res in (data.get("jobs") or {}).items():
        if kind not in KINDS:
            raise ConfigError(f"{where}: jobs.{kind}: unknown job kind; valid: {', '.join(KINDS)}")
        if set(res or {}) - keys:
            raise ConfigError(f"{where}: jobs.{kind}: unknown keys {sorted(set(res) - keys)}; allowed: "
                              f"{', '.join(sorted(keys))}")
        jobs[kind] = JobResources(**(res or {}))
        parse_time(jobs[kind].time)
    return Profile(**{**data, "name": path.stem, "partition": str(data["partition"]), "jobs": jobs,
                      "setup": tuple(data.get("setup") or ()), "additional": dict(data.get("additional") or {}),
                      "estimate": {"gpu_tflops": 100.0, "utilization": 0.3, **(data.get("estimate") or {})}})


def default_profile() -> Profile:
    """Resources for the local and debug executors: one CPU per job, no GPU, no time limit worth naming."""
    return Profile(name="local-default", partition="local", estimate={"gpu_tflops": 0.05, "utilization": 1.0},
                   jobs={k: JobResources(gpus=0, cpus=1, mem_gb=2, time="24:00:00") for k in KINDS})


def resolve_profile(executor: str, profile: str | None) -> Profile:
    if profile is not None:
        return load_profile(profile)
    return load_profile("local") if executor == "slurm" else default_profile()


def default_executor() -> str:
    """``slurm`` where ``sbatch`` is on PATH and a controller answers, else ``local``."""
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


def _rank() -> int:
    try:
        return submitit.JobEnvironment().global_rank
    except RuntimeError:
        return int(os.environ.get("RANK", 0))


def run_step(run_dir: str | Path, step_id: str, progress: bool = False) -> dict[str, Any]:
    """Run one step from its ``spec.json``; writes ``done.json`` (or ``failed.json``) atomically, and for an
    evaluate step the cell's result JSON. A step that is already done returns its result at once."""
    run_dir, d = Path(run_dir), step_dir(Path(run_dir), step_id)
    spec = read_json(d / SPEC)
    if spec is None:
        raise StepFailed(f"no spec for step {step_id} in {d}")
    if (d / DONE).is_file():
        return read_json(d / DONE)
    (d / FAILED).unlink(missing_ok=True)
    t0 = time.time()
    try:
        out = STEPS[spec["kind"]](run_dir, spec, progress)
    except (Preempted, KeyboardInterrupt, SystemExit):
        raise  # not a failure: the step resumes when it runs again
    except BaseException as exc:
        if _rank() == 0:
            atomic_write_json(d / FAILED, {"error": f"{type(exc).__name__}: {exc}",
                                           "traceback": traceback.format_exc(), "wall_s": time.time() - t0})
        raise
    out["wall_s"] = out.get("wall_s") or time.time() - t0
    if _rank() == 0:
        if spec["kind"] == "evaluate":
            out["timings"]["evaluate_s"] = out["wall_s"]
            atomic_write_json(cell_path(run_dir, spec["key"]), out)
        atomic_write_json(d / DONE, out)
    return out


class StepJob(submitit.helpers.Checkpointable):
    """The callable submitted for each step. Requeued (same arguments) on timeout or preemption: submitit calls
    :meth:`checkpoint` on its signal; when training took the signal itself (it saves a checkpoint and raises
    ``Preempted``), the job requeues itself through SLURM."""

    def __init__(self, run_dir: str, threads: int = 0, max_requeues: int = 20) -> None:
        self.run_dir, self.threads, self.max_requeues = str(run_dir), threads, max_requeues

    def __call__(self, step_id: str) -> dict[str, Any]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0))
        if threads:
            torch.set_num_threads(threads)
        try:
            return run_step(self.run_dir, step_id)
        except Preempted:
            if self._requeue(step_id):
                raise SystemExit(-1)  # submitit writes no result: SLURM starts the job again, same submission
            raise

    def _requeue(self, step_id: str) -> bool:
        job_id, restarts = os.environ.get("SLURM_JOB_ID"), int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if job_id is None or restarts >= self.max_requeues or _rank() != 0:
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


def _finished(run_dir: Path, sid: str) -> str | None:
    d = step_dir(run_dir, sid)
    return "done" if (d / DONE).is_file() else "failed" if (d / FAILED).is_file() else None


def run_here(run_dir: Path, graph: JobGraph, todo: set[str], cluster: str, profile: Profile, parallel: int = 1,
             snapshot: Path | None = None, progress: bool = True,
             on_finish: Callable[[str, str], None] | None = None) -> dict[str, str]:
    """Local and debug: submit each step of ``todo`` once its dependencies are done, at most ``parallel`` at a time
    (local: one-thread processes, so ``parallel`` = cores keeps every core busy; debug: in this process, which
    stops at the first failure), and wait. Returns ``{step: done|failed|blocked}``."""
    pending = [s for s in graph.steps if s in todo]
    running: dict[str, submitit.Job] = {}
    final: dict[str, str] = {}
    threads = 0 if cluster == "debug" else 1
    bar = tqdm(total=len(pending), desc="steps", unit="step", disable=not progress)

    def finish(sid: str, state: str) -> None:
        final[sid] = state
        bar.update(1)
        bar.set_postfix(failed=sum(v == "failed" for v in final.values()), refresh=False)
        if on_finish:
            on_finish(sid, state)

    try:
        while pending or running:
            for sid in list(pending):
                deps = [final.get(d) or _finished(run_dir, d) for d in graph.steps[sid].deps]
                if "failed" in deps or "blocked" in deps:
                    bad = [d for d, s in zip(graph.steps[sid].deps, deps) if s in ("failed", "blocked")]
                    atomic_write_json(step_dir(run_dir, sid) / FAILED,
                                      {"error": f"upstream step failed: {', '.join(bad)}"})
                    pending.remove(sid)
                    finish(sid, "failed")
                elif all(d == "done" for d in deps) and len(running) < max(1, parallel):
                    step = graph.steps[sid]
                    ex = make_executor(cluster, run_dir, profile, step.kind, snapshot=snapshot)
                    running[sid] = ex.submit(StepJob(str(run_dir.resolve()), threads), sid)
                    _record(run_dir, step, running[sid], cluster)
                    pending.remove(sid)
            if not running:
                for sid in pending:  # waiting on steps outside this submission that are not done
                    finish(sid, "blocked")
                break
            for sid, job in list(running.items()):
                if job.done():  # debug: runs the step here, and re-raises its error (after submitit's pdb)
                    del running[sid]
                    if job.exception() is not None and _finished(run_dir, sid) is None:
                        print(f"step {sid}: job {job.job_id} failed; log: {job.paths.stderr}", file=sys.stderr)
                    finish(sid, _finished(run_dir, sid) or "failed")
            time.sleep(0 if cluster == "debug" else 0.5)
    except BaseException:  # interrupted: take the jobs down with this process
        for job in running.values():
            job.cancel(check=False)
        raise
    finally:
        bar.close()
    return final


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
    snap = snapshot_code(run_dir) if snapshot and executor != "debug" else None
    if executor == "slurm":
        report.jobs = submit_slurm(run_dir, graph, set(report.submitted), states, prof, snap)
    else:
        report.final = run_here(run_dir, graph, set(report.submitted), executor, prof, parallel=parallel,
                                snapshot=snap, progress=progress, on_finish=on_finish)
    return report
