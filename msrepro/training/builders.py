"""Building the pieces of a training run from its config: device, model, optimizer, density, policy, data."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from msrepro.config import ConfigError
from msrepro.models import build_denoiser, get_backbone
from msrepro.precond import Preconditioning
from msrepro.training.densities import NoiseDensity, build_density
from msrepro.training.distributed import DistInfo
from msrepro.training.early_stopping import build_early_stopping
from msrepro.training.policies import StagePolicy, build_policy
from msrepro.training.state import latest_checkpoint
from msrepro.training.warm_start import check_warm_start, warm_start


def seed_for(*parts: Any) -> int:
    """A 63-bit seed from a tuple (run seed, purpose, step, ...): independent streams, stable across runs."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def pick_device(name: str, info: DistInfo) -> torch.device:
    if name in (None, "auto"):
        name = f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and info.enabled:
        name = f"cuda:{info.local_rank}"
    return torch.device(name)


def build_model(cfg: DictConfig, device: torch.device) -> Preconditioning:
    """The denoiser, initialised from ``cfg.seed`` (same weights on every rank)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(cfg.seed, "init"))
        model = build_denoiser(cfg)
    if cfg.train.init_from and latest_checkpoint(Path(cfg.output_dir) / cfg.name) is None:
        warm_start(model, cfg)  # a new run only: a resumed one continues from its own checkpoint
    return model.to(device).train()


def build_optimizer(cfg: DictConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adam or AdamW with the multi-tensor (``foreach``) implementation: the same update as the per-tensor loop,
    fewer kernel launches (torch picks it by default on CUDA only)."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.train.optimizer]
    return cls(params, lr=effective_lr(cfg), weight_decay=cfg.train.weight_decay, foreach=True)


def effective_lr(cfg: DictConfig) -> float:
    """``train.lr``, times the global batch size when ``train.scale_lr`` (latent-diffusion's ``main.py`` flag; the
    paper's LDM run had it off, so its effective rate is the base 2e-6, SPEC 4)."""
    return float(cfg.train.lr) * (int(cfg.train.batch_size) if cfg.train.scale_lr else 1)


LR_DECAYS = ("constant", "cosine")


def learning_rate(cfg: DictConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps`` (score_sde / EDM ramp-up), then ``effective_lr``: constant (the paper's
    codes), or with ``train.lr_decay=cosine`` times ``(1 + cos(pi s))/2``, s the post-warm-up fraction of
    ``train.steps`` done (0 at the end of warm-up, 1 at the last step), so a run of any length anneals to 0."""
    t = cfg.train
    warm = t.warmup_steps
    ramp = min(1.0, (step + 1) / warm) if warm else 1.0
    if t.get("lr_decay", "constant") == "constant":
        return effective_lr(cfg) * ramp
    s = min(1.0, max(0, step + 1 - warm) / max(1, int(t.steps) - warm))
    return effective_lr(cfg) * ramp * 0.5 * (1.0 + math.cos(math.pi * s))


def noise_setup(cfg: DictConfig, model: Preconditioning) -> tuple[NoiseDensity, StagePolicy]:
    """The run's noise density (``train.loss``) and stage policy (``train.stage_policy``, ``train.params``)."""
    default = get_backbone(cfg.model.backbone).default_density(model.schedule)
    density = build_density(cfg.train.loss, model.schedule, default)
    return density, build_policy(cfg.train.stage_policy, cfg.train.params, density, model.boundaries)


def has_ema(cfg: DictConfig) -> bool:
    """Whether training keeps an EMA of the weights (``train.ema_decay`` or EDM's ``train.ema_halflife_kimg``)."""
    return cfg.train.ema_decay is not None or bool(cfg.train.ema_halflife_kimg)


def check_train_options(cfg: DictConfig) -> None:
    """``train.loss`` (density and options), ``train.stage_policy`` + ``train.params``, ``train.early_stopping``:
    checked without reading any file (stage boundaries may come from a clusterer result that does not exist yet)."""
    from msrepro.models import resolve_schedule

    sched = resolve_schedule(cfg)
    density = build_density(cfg.train.loss, sched, get_backbone(cfg.model.backbone).default_density(sched))
    build_policy(cfg.train.stage_policy, cfg.train.params, density, None)
    k = 1 if cfg.model.variant == "unified" else cfg.stages.num_stages
    build_early_stopping(cfg.train.early_stopping, k, cfg.model.variant, has_ema(cfg))
    if cfg.train.get("lr_decay", "constant") not in LR_DECAYS:
        raise ConfigError(f"train.lr_decay: '{cfg.train.lr_decay}' is not valid; allowed: {', '.join(LR_DECAYS)}")
    if cfg.train.ema_decay is not None and not 0 <= cfg.train.ema_decay < 1:
        raise ConfigError(f"train.ema_decay: must be in [0, 1), got {cfg.train.ema_decay}")
    check_warm_start(cfg)


def check_training(cfg: DictConfig, world_size: int = 1) -> None:
    """What training itself needs on top of :func:`check_train_options`: batch split, augmentation labels."""
    check_train_options(cfg)
    if cfg.train.batch_size % world_size:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} does not split over {world_size} processes")
    k = 1 if cfg.model.variant == "unified" else cfg.stages.num_stages
    if cfg.train.stage_policy == "per_rank" and world_size % k:
        raise ConfigError(f"train.stage_policy=per_rank fixes one stage per process: {k} stages need a multiple of "
                          f"{k} processes, got {world_size}")
    if cfg.train.augment_p > 0:
        from msrepro.training.augment import AUGMENT_DIM

        dim = cfg.model.params.get("augment_dim", 0)
        if dim != AUGMENT_DIM:
            raise ConfigError(f"train.augment_p={cfg.train.augment_p} needs a network conditioned on EDM's "
                              f"{AUGMENT_DIM} augmentation labels (model.params.augment_dim={AUGMENT_DIM}), got {dim}")


def heldout_images(cfg: DictConfig) -> torch.Tensor:
    """The fixed held-out images: the dataset's test split (first ``heldout_size``), else the train split's."""
    from msrepro.datasets import build_dataset

    size = int(cfg.train.heldout_size)
    try:
        ds = build_dataset({**dict(cfg.dataset), "split": "test", "hflip": False, "limit": size})
    except (ConfigError, FileNotFoundError, ValueError):
        ds = build_dataset({**dict(cfg.dataset), "hflip": False, "limit": size})
    return ds.tensor()[:size].float()
