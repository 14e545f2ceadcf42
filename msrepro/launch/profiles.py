"""Cluster profiles (``slurm/profiles/*.yaml``): partition, account, qos, resources per job kind, setup lines.

Validated before anything is submitted: an unknown profile, a missing partition, an unknown key or a bad time
limit is a :class:`ConfigError` naming what is valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from msrepro.config import ConfigError

KINDS = ("vae", "cluster", "train", "evaluate")
JOB_KEYS = {"gpus", "cpus", "mem_gb", "time", "nodes"}
TOP_KEYS = {"partition", "account", "qos", "max_array_size", "array_parallelism", "max_timeouts",
            "signal_delay_s", "setup", "additional", "estimate", "jobs"}


def profile_dirs() -> list[Path]:
    """Where ``--profile NAME`` is looked up: ./slurm/profiles, then the source checkout's slurm/profiles."""
    here = Path(__file__).resolve().parent.parent.parent / "slurm" / "profiles"
    return list(dict.fromkeys([Path("slurm/profiles").resolve(), here]))


def profile_names() -> list[str]:
    return sorted({p.stem for d in profile_dirs() for p in d.glob("*.yaml")})


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
    if b is None:
        minutes = a
    elif c is None:
        minutes = a + (b > 0)  # MM:SS, rounded up
    else:
        minutes = a * 60 + b + (c > 0)
    return (d or 0) * 1440 + minutes


def load_profile(name_or_path: str) -> Profile:
    """A profile by name (``slurm/profiles/NAME.yaml``) or path; errors list the valid names and keys."""
    path = Path(name_or_path)
    if not path.is_file():
        found = [d / f"{name_or_path}.yaml" for d in profile_dirs() if (d / f"{name_or_path}.yaml").is_file()]
        if not found:
            raise ConfigError(f"unknown profile '{name_or_path}'; valid profiles: {', '.join(profile_names())} "
                              f"(or a path to a YAML file)")
        path = found[0]
    data = yaml.safe_load(path.read_text()) or {}
    where = f"profile {path}"
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(TOP_KEYS))}")
    if not data.get("partition"):
        raise ConfigError(f"{where}: 'partition' is required (the SLURM partition jobs go to)")
    jobs = {}
    for kind, res in (data.get("jobs") or {}).items():
        if kind not in KINDS:
            raise ConfigError(f"{where}: jobs.{kind}: unknown job kind; valid: {', '.join(KINDS)}")
        bad = set(res or {}) - JOB_KEYS
        if bad:
            raise ConfigError(f"{where}: jobs.{kind}: unknown keys {sorted(bad)}; allowed: {', '.join(sorted(JOB_KEYS))}")
        jobs[kind] = JobResources(**(res or {}))
        parse_time(jobs[kind].time)
    return Profile(name=path.stem, partition=str(data["partition"]), account=data.get("account"),
                   qos=data.get("qos"), max_array_size=int(data.get("max_array_size", 1000)),
                   array_parallelism=int(data.get("array_parallelism", 64)),
                   max_timeouts=int(data.get("max_timeouts", 10)), signal_delay_s=int(data.get("signal_delay_s", 90)),
                   setup=tuple(data.get("setup") or ()), additional=dict(data.get("additional") or {}),
                   estimate={"gpu_tflops": 100.0, "utilization": 0.3, **(data.get("estimate") or {})}, jobs=jobs)


def default_profile() -> Profile:
    """Resources for the local and debug executors: one CPU per job, no GPU, no time limit worth naming."""
    return Profile(name="local-default", partition="local",
                   jobs={k: JobResources(gpus=0, cpus=1, mem_gb=2, time="24:00:00") for k in KINDS},
                   estimate={"gpu_tflops": 0.05, "utilization": 1.0})
