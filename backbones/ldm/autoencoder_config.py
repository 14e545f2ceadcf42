"""The VAE run config (``msrepro train-vae``): defaults < preset < YAML files < ``key=value`` overrides.

Presets: ``full`` = latent-diffusion's ``kl-f4`` on CelebA-HQ 256 (64 x 64 x 3 latents; loss L1 + LPIPS(vgg) +
1e-6 KL, patch discriminator from step 50 001 with weight 0.5, Adam 4.5e-6 x batch); ``tiny`` = factor 2 on the
embedded digits at their native 8 px (4 x 4 x 3 latents) and ``smoke`` for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from msrepro.config import ConfigError, DatasetConfig, load_yaml, merge, parse_overrides
from msrepro.registry import DATASETS, RegistryError
from msrepro.backbones.ldm.autoencoder import VAEParams


@dataclass
class VAELossConfig:
    kl_weight: float = 1e-6              # KL term (sum over latents / batch), LDM kl-f4
    lpips_weight: float = 1.0            # LPIPS perceptual term; 0 = off (no weights needed)
    lpips_net: str = "vgg"               # vgg (LDM, taming) or alex
    disc_start: Optional[int] = 50001    # step from which the patch discriminator trains; None = no discriminator
    disc_weight: float = 0.5             # times LDM's adaptive weight ||grad nll|| / ||grad g||
    disc_layers: int = 3                 # PatchGAN layers (taming NLayerDiscriminator)
    disc_channels: int = 64


@dataclass
class VAETrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3                     # Adam, betas (0.5, 0.9) as LDM
    eval_every: int = 500                # held-out PSNR (and LPIPS) every N steps
    eval_num: int = 256                  # held-out images evaluated
    log_every: int = 50
    scale_samples: int = 2048            # training images whose latents set the scale factor


@dataclass
class VAERunConfig:
    name: str = "vae"
    preset: str = "tiny"
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    eval_split: str = "test"             # the held-out split
    model: VAEParams = field(default_factory=VAEParams)
    loss: VAELossConfig = field(default_factory=VAELossConfig)
    train: VAETrainConfig = field(default_factory=VAETrainConfig)


FULL: dict[str, Any] = {
    "dataset": {"name": "image_folder", "resolution": 256, "hflip": False},
    "model": {"ch": 128, "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [], "z_channels": 3,
              "norm_groups": 32},
    "loss": {"kl_weight": 1e-6, "lpips_weight": 1.0, "lpips_net": "vgg", "disc_start": 50001, "disc_weight": 0.5},
    # LDM: base_learning_rate 4.5e-6 x batch 12 x accumulate 1 x GPUs (here one GPU)
    "train": {"steps": 200_000, "batch_size": 12, "lr": 5.4e-5, "eval_every": 5000, "eval_num": 1000,
              "log_every": 100},
}

TINY: dict[str, Any] = {
    "dataset": {"name": "digits", "resolution": 8, "hflip": False},
    "model": {"ch": 16, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "z_channels": 3,
              "norm_groups": 8},
    # LPIPS's ImageNet networks see nothing useful in 16 px single-channel digits: L1 + KL, no discriminator
    "loss": {"kl_weight": 1e-6, "lpips_weight": 0.0, "disc_start": None},
    "train": {"steps": 1200, "batch_size": 32, "lr": 2e-3, "eval_every": 300, "eval_num": 297, "log_every": 50},
}

SMOKE: dict[str, Any] = {
    **TINY,
    "model": {**TINY["model"], "ch": 8, "norm_groups": 4},
    "loss": {"kl_weight": 1e-6, "lpips_weight": 0.0, "disc_start": 2, "disc_layers": 1, "disc_channels": 8},
    "train": {"steps": 4, "batch_size": 8, "lr": 1e-3, "eval_every": 4, "eval_num": 16, "log_every": 2,
              "scale_samples": 32},
}

PRESETS: dict[str, dict[str, Any]] = {"full": FULL, "tiny": TINY, "smoke": SMOKE}


def load_vae_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> DictConfig:
    """Resolve and check a VAE run config (the preset is named by ``preset=``, default tiny)."""
    layers = [(load_yaml(f), str(f)) for f in files] + [(parse_overrides(overrides), "overrides")]
    cfg = OmegaConf.structured(VAERunConfig)
    for layer, where in layers:
        cfg = merge(cfg, layer, where=where)
    if cfg.preset not in PRESETS:
        raise ConfigError(f"preset: unknown VAE preset '{cfg.preset}'. Valid presets: {', '.join(sorted(PRESETS))}")
    cfg = merge(OmegaConf.structured(VAERunConfig), PRESETS[cfg.preset], where=f"VAE preset '{cfg.preset}'")
    for layer, where in layers:
        cfg = merge(cfg, layer, where=where)
    validate_vae_config(cfg)
    return cfg


def validate_vae_config(cfg: DictConfig) -> None:

    try:
        DATASETS.get(cfg.dataset.name)
    except RegistryError as exc:
        raise ConfigError(f"dataset.name: {exc}") from None
    factor = 2 ** (len(cfg.model.ch_mult) - 1)
    if not cfg.model.ch_mult or cfg.dataset.resolution % factor:
        raise ConfigError(f"dataset.resolution: {cfg.dataset.resolution} is not divisible by the VAE's downsampling "
                          f"factor {factor} (model.ch_mult has {len(cfg.model.ch_mult)} levels)")
    if cfg.loss.lpips_net not in ("vgg", "alex"):
        raise ConfigError(f"loss.lpips_net: '{cfg.loss.lpips_net}' is not valid; allowed: vgg, alex")
    for key in ("steps", "batch_size", "lr", "eval_every", "eval_num", "log_every", "scale_samples"):
        if not cfg.train[key] > 0:
            raise ConfigError(f"train.{key}: must be > 0, got {cfg.train[key]}")
    for key in ("kl_weight", "lpips_weight", "disc_weight"):
        if cfg.loss[key] < 0:
            raise ConfigError(f"loss.{key}: must be >= 0, got {cfg.loss[key]}")
    if cfg.model.z_channels < 1 or cfg.model.ch < 1:
        raise ConfigError("model.z_channels and model.ch must be >= 1")
