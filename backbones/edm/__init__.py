"""EDM backbone: EDM's DDPM++ network (``SongUNet``, ``--arch=ddpmpp``) with EDM preconditioning.

Registers itself through the ``msrepro.backbones`` entry point (``pyproject.toml``), exactly as an outside plugin
would. The network is the shared DDPM++ implementation with EDM's options (box resampling, no input pyramid,
augmentation labels, the bottleneck pair inside each decoder); c_skip/c_out/c_in/c_noise come from
:class:`msrepro.precond.EDMPrecond`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

from omegaconf import DictConfig

from msrepro.backbones.edm.presets import PRESETS
from msrepro.config import ConfigError
from msrepro.nets.ddpmpp import DDPMppBackbone, DDPMppParams
from msrepro.precond import EDMPrecond
from msrepro.registry import BACKBONES
from msrepro.schedules import NoiseSchedule


@dataclass
class EDMParams(DDPMppParams):
    """``model.params`` of the EDM backbone (defaults: EDM's CIFAR-10 ``ddpmpp``)."""

    channel_mult: List[int] = field(default_factory=lambda: [2, 2, 2])  # width multiplier per resolution
    num_blocks: int = 4                  # residual blocks per resolution (the decoder has one more)
    dropout: float = 0.13                # EDM CIFAR-10 dropout
    resample_filter: List[int] = field(default_factory=lambda: [1, 1])  # box filter (EDM ddpmpp)
    progressive_input: str = "none"      # EDM 'standard' encoder
    middle: str = "decoder"              # official multistage EDM: each decoder owns the bottleneck pair
    augment_dim: int = 9                 # EDM augmentation labels (non-leaky augmentation)


@BACKBONES.register("edm")
class EDMBackbone(DDPMppBackbone):
    """EDM ddpmpp (ch 128, 2-2-2, 4 blocks, augment_dim 9) with EDM preconditioning; Heun sampler."""

    Config = EDMParams
    precond_class = EDMPrecond

    def precond_options(self, schedule: NoiseSchedule, params: DictConfig) -> dict[str, Any]:
        return {"sigma_data": schedule.sigma_data}

    def default_density(self, schedule: NoiseSchedule) -> str:
        """EDM's lognormal density over sigma (EDM Table 1, P_mean -1.2, P_std 1.2)."""
        return "lognormal"
    default_sampler = "heun"
    presets = PRESETS

    def validate(self, cfg: DictConfig) -> None:
        super().validate(cfg)
        if cfg.schedule.get("name") != "edm":
            raise ConfigError(f"schedule.name: backbone 'edm' uses the edm schedule (sigma = t); got "
                              f"'{cfg.schedule.get('name')}'")
