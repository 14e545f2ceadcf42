"""Cross-field validation of a resolved run config, before any work is done or queued."""

from __future__ import annotations

from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from msrepro.boundaries import CONVERT_METHODS, check_cuts
from msrepro.config import VARIANTS, ConfigError, check_params
from msrepro.precond import ROUTINGS
from msrepro.registry import (BACKBONES, CLUSTERERS, DATASETS, METRICS, SAMPLERS, SCHEDULES, STAGE_POLICIES, Registry,
                              RegistryError)

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


def validate_stages(cfg: DictConfig) -> None:
    """Stage count, decoder count and cut points agree with each other and the schedule."""
    from msrepro.schedules import build_schedule

    k = cfg.stages.num_stages
    if k < 1:
        raise ConfigError(f"stages.num_stages: must be >= 1, got {k}")
    _one_of(cfg.stages.convert, CONVERT_METHODS, "stages.convert")
    if cfg.model.variant == "unified":
        return  # one network for all noise levels: stage count, decoder widths and cut points do not apply
    dec = cfg.model.decoder_channels
    if dec is not None and len(dec) != k:
        raise ConfigError(f"model.decoder_channels: {len(dec)} decoder widths {list(dec)} for {k} stages; "
                          f"give exactly stages.num_stages={k} widths")
    if dec is not None and any(c <= 0 for c in dec):
        raise ConfigError(f"model.decoder_channels: widths must be positive, got {list(dec)}")
    cuts = cfg.stages.boundaries
    if cuts is None:
        return
    if len(cuts) != k - 1:
        raise ConfigError(f"stages.boundaries: {k} stages need {k - 1} cut points, got {len(cuts)}: {list(cuts)}")
    sched_cfg = {"name": cfg.stages.boundaries_schedule} if cfg.stages.boundaries_schedule else cfg.schedule
    sched = build_schedule(dict(sched_cfg))
    try:
        check_cuts(list(cuts), sched.t_min, sched.t_max, "stages.boundaries")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


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
    from msrepro.evaluation.metrics import parse_params

    parse_params(cfg.eval.params)
    from msrepro.training.setup import check_train_options

    check_train_options(cfg)  # noise density (train.loss), policy options (train.params), early stopping

    validate_stages(cfg)
    adapter = backbone() if isinstance(backbone, type) else backbone
    hook: Callable[[DictConfig], None] | None = getattr(adapter, "validate", None)
    if hook is not None:
        hook(cfg)
