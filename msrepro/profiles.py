"""Where jobs run: the executor (``debug``, ``local``, ``slurm``) and the cluster profile (``slurm/profiles/*.yaml``:
partition, account, qos, resources per job kind, setup lines), checked like a run config (:mod:`msrepro.runconfig`)
before anything is submitted, with errors that list the valid names and keys. The launcher reads them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from msrepro.config import ConfigError

EXECUTORS: tuple[str, ...] = ("debug", "local", "slurm")
#: the job kinds a profile gives resources to: the launcher's steps (:mod:`msrepro.launch.plan`)
KINDS: tuple[str, ...] = ("prepare", "cluster", "train", "evaluate")


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
    jobs: dict[str, JobResources] = field(default_factory=dict)  # by job kind

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
    here = Path(__file__).resolve().parent.parent / "slurm" / "profiles"
    return list(dict.fromkeys([Path("slurm/profiles").resolve(), here]))


def load_profile(name_or_path: str) -> Profile:
    """A profile by name (``slurm/profiles/NAME.yaml``) or path; errors list the valid names, keys and job kinds."""
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
    """``--profile``, else ``local.yaml`` for SLURM and :func:`default_profile` for the local and debug executors."""
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
