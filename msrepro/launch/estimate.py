"""Compute estimates for ``--dry-run``: FLOPs of each step from :func:`msrepro.flops.accounting`, GPU-hours from a
profile's sustained throughput.

- train: steps x batch x 3 x forward FLOPs per sample (backward ~ 2 forwards), the forward weighted by interval
  length over the stages (true FLOPs, attention included);
- evaluate: samples x NFE-weighted forward FLOPs x NFE (the Inception/feature pass is not counted);
- cluster: what the clusterer states through its ``cost_flops`` hook (:class:`msrepro.clustering.base.FitCost`).
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig

from msrepro.clustering import build_clusterer
from msrepro.clustering.base import FitCost
from msrepro.config import to_dict
from msrepro.flops import accounting
from msrepro.launch.graph import JobGraph, Step, config_hash
from msrepro.launch.profiles import Profile
from msrepro.models import data_shape
from msrepro.registry import DATASETS

#: FLOPs of a training pass (forward + backward) per forward pass: the backward costs about two forwards
TRAIN_PASSES = 3

_ACC: dict[str, dict[str, Any]] = {}


def model_accounting(cfg: DictConfig) -> dict[str, Any] | None:
    """``msrepro.flops.accounting`` of the cell's model (cached per model config); None if it cannot be counted."""
    try:
        shape = data_shape(cfg)
    except Exception:
        shape = None
    key = config_hash({"shape": shape, **{k: to_dict(cfg[k]) for k in ("model", "stages", "schedule", "sample")}})
    if key not in _ACC:
        try:
            _ACC[key] = accounting(cfg)
        except Exception as exc:  # e.g. a dataset whose channel count needs the files
            _ACC[key] = {"error": f"{type(exc).__name__}: {exc}"}
    acc = _ACC[key]
    return None if "error" in acc else acc


def forward_flops(acc: dict[str, Any], weighting: str = "length") -> float:
    """True FLOPs of one forward pass per sample, stage-weighted (``length`` or ``nfe``)."""
    w = acc.get(f"gflops_weighted_{weighting}") if len(acc["gflops"]) > 1 else acc["gflops"][0]
    return float(w if w is not None else sum(acc["gflops"]) / len(acc["gflops"])) * 1e9


def step_flops(step: Step) -> float | None:
    cfg = step.config
    if step.kind == "vae":
        return None  # the autoencoder's cost is not counted by msrepro.flops
    acc = model_accounting(cfg)
    if step.kind == "train":
        return None if acc is None else cfg.train.steps * cfg.train.batch_size * TRAIN_PASSES * forward_flops(acc)
    if step.kind == "evaluate":
        if acc is None:
            return None
        nfe = sum(acc["nfe_per_stage"]) if acc.get("nfe_per_stage") else 1
        return cfg.eval.num_samples * nfe * forward_flops(acc, "nfe" if acc.get("nfe_per_stage") else "length")
    clusterer = build_clusterer(cfg.cluster.name, to_dict(cfg.cluster.params))
    fwd = None if acc is None else forward_flops(acc)
    channels = acc["input_shape"][0] if acc else 3
    checkpoints = min(int(cfg.train.keep_checkpoints), int(cfg.train.steps) // int(cfg.train.checkpoint_every))
    return clusterer.cost_flops(FitCost(
        forward_flops=fwd, train_flops=None if fwd is None else TRAIN_PASSES * fwd,
        item_numel=channels * int(cfg.dataset.resolution) ** 2,
        dataset_size=int(getattr(DATASETS.get(cfg.dataset.name), "estimate_size", 50_000)), checkpoints=checkpoints))


def gpu_hours(flops: float | None, profile: Profile) -> float | None:
    if flops is None:
        return None
    rate = float(profile.estimate["gpu_tflops"]) * 1e12 * float(profile.estimate["utilization"])
    return flops / rate / 3600.0


def estimate_graph(graph: JobGraph, profile: Profile) -> dict[str, dict[str, Any]]:
    """Per step: FLOPs, GPU-hours, wall-clock hours on the profile's GPUs for that job kind, and the time limit."""
    out = {}
    for sid, step in graph.steps.items():
        flops = step_flops(step)
        hours = gpu_hours(flops, profile)
        res = profile.resources(step.kind)
        wall = None if hours is None else hours / max(1, res.gpus)
        out[sid] = {"flops": flops, "gpu_hours": hours, "wall_hours": wall, "limit_min": res.timeout_min,
                    "over_limit": wall is not None and wall * 60 > res.timeout_min}
    return out


def fmt_hours(h: float | None) -> str:
    if h is None:
        return "?"
    if h < 1 / 60:
        return f"{h * 3600:.0f}s"
    if h < 1:
        return f"{h * 60:.1f}m"
    return f"{h:.1f}h" if h < 100 else f"{h:,.0f}h"


def fmt_flops(f: float | None) -> str:
    if f is None:
        return "?"
    if f == 0:
        return "0"
    e = int(math.floor(math.log10(f) / 3)) * 3
    return f"{f / 10 ** e:.2f}e{e}"
