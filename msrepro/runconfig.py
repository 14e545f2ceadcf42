"""A run config, loaded and validated: the layer above every component it checks.

:func:`load_config` resolves (:func:`msrepro.config.resolve_config`: defaults < backbone preset < files <
overrides) and validates across fields (:func:`validate_run_config`), before any work is done or queued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from msrepro.boundaries import validate_stages
from msrepro.config import VARIANTS, ConfigError, check_params, resolve_config
from msrepro.evaluation.metrics import parse_params
from msrepro.precond import ROUTINGS
from msrepro.registry import (BACKBONES, CLUSTERERS, DATASETS, METRICS, SAMPLERS, SCHEDULES, STAGE_POLICIES, Registry,
                              RegistryError)
from msrepro.training.builders import check_train_options

OPTIMIZERS = ("adam", "adamw")
PRECISIONS = ("fp32", "bf16")


def _one_of(value: Any, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: '{value}' is not valid; allowed: {', '.join(allowed)}")


def _registered(reg: Registry, name: str, key: str) -> Any:
    try:
        return reg.get(name)
    except RegistryError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _positive(cfg: DictConfig, keys: list[str]) -> None:
    for key in keys:
        node, leaf = cfg, key
        for part in key.split(".")[:-1]:
            node = node[part]
        leaf = key.split(".")[-1]
        if node[leaf] is not None and not node[leaf] > 0:
            raise ConfigError(f"{key}: must be > 0, got {node[leaf]}")


def validate_run_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first inconsistency found; every message names the key and what is allowed."""
    _one_of(cfg.model.variant, VARIANTS, "model.variant")
    _one_of(cfg.model.routing, ROUTINGS, "model.routing")
    _one_of(cfg.train.optimizer, OPTIMIZERS, "train.optimizer")
    _one_of(cfg.train.precision, PRECISIONS, "train.precision")
    _positive(cfg, ["train.steps", "train.batch_size", "train.lr", "sample.num", "sample.batch_size",
                    "eval.num_samples", "eval.repeats", "dataset.resolution", "train.checkpoint_every",
                    "train.keep_checkpoints"])
    if not 0.0 <= cfg.train.augment_p <= 1.0:
        raise ConfigError(f"train.augment_p: must be in [0, 1], got {cfg.train.augment_p}")

    sched_name = cfg.schedule.get("name") if isinstance(cfg.schedule, DictConfig) else None
    sched_cls = _registered(SCHEDULES, sched_name, "schedule.name")
    try:
        sched_cls(**{k: v for k, v in cfg.schedule.items() if k != "name"})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"schedule: {exc}") from None

    backbone = _registered(BACKBONES, cfg.model.backbone, "model.backbone")
    check_params(backbone, cfg.model.params, "model.params")
    dataset = _registered(DATASETS, cfg.dataset.name, "dataset.name")
    check_params(dataset, cfg.dataset.params, "dataset.params")
    clusterer = _registered(CLUSTERERS, cfg.cluster.name, "cluster.name")
    check_params(clusterer, cfg.cluster.params, "cluster.params")
    if isinstance(clusterer, type):
        clusterer(OmegaConf.to_container(cfg.cluster.params, resolve=True))  # its own checks (validate())
    sampler = _registered(SAMPLERS, cfg.sample.sampler, "sample.sampler")
    check_params(sampler, cfg.sample.params, "sample.params")
    sampler(**cfg.sample.params)  # the sampler's own value checks (spacing, order, ...): ConfigError
    _registered(STAGE_POLICIES, cfg.train.stage_policy, "train.stage_policy")
    for metric in cfg.eval.metrics:
        _registered(METRICS, metric, "eval.metrics")
    parse_params(cfg.eval.params)
    check_train_options(cfg)  # noise density (train.loss), policy options (train.params), early stopping

    validate_stages(cfg)
    adapter = backbone() if isinstance(backbone, type) else backbone
    hook: Callable[[DictConfig], None] | None = getattr(adapter, "validate", None)
    if hook is not None:
        hook(cfg)


def load_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = (), *, validate: bool = True,
                preset: bool = True) -> DictConfig:
    """Resolve a run config (defaults < backbone preset < files < overrides), then validate it."""
    cfg = resolve_config(files, overrides, preset=preset)
    if validate:
        validate_run_config(cfg)
    return cfg
