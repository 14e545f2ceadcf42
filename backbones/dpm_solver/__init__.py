"""DPM-Solver backbone: score_sde's DDPM++ deep continuous network on the VP SDE, epsilon prediction.

Registers itself through the ``msrepro.backbones`` entry point (``pyproject.toml``), exactly as an outside plugin
would; it overrides only what differs from the DDPM++ adapter base: the time-input convention, the GMAC-counting
convention of the official figures, and the presets.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from msrepro.backbones.dpm_solver.presets import PRESETS
from msrepro.config import ConfigError
from msrepro.nets.ddpmpp import DDPMppBackbone, DDPMppParams
from msrepro.nets.layers import TAG_ATTENTION_PROJECTION, TAG_INPUT_PYRAMID
from msrepro.registry import BACKBONES

#: score_sde's continuous VP models see ``t * (N - 1)`` with N = 1000 discrete steps (``losses.py``, ``sde_lib``)
TIME_SCALE = 999.0


@BACKBONES.register("dpm_solver")
class DPMSolverBackbone(DDPMppBackbone):
    """score_sde DDPM++ deep (nf 128, 1-2-2-2, 8 blocks, FIR) on VP linear; eps prediction; DPM-Solver sampler."""

    Config = DDPMppParams
    default_sampler = "dpm_solver"
    presets = PRESETS
    # score_sde computes attention projections with einsum (NIN) and the input-pyramid conv with F.conv2d, so the
    # module-hook count behind the paper's 17.65 GFLOPs never saw them (SPEC 4; msrepro.flops).
    gmacs_skip_tags = (TAG_ATTENTION_PROJECTION, TAG_INPUT_PYRAMID)

    def time_input(self, t: torch.Tensor) -> torch.Tensor:
        """score_sde's continuous-time label: ``labels = t * 999`` for VP time t in [eps, 1]."""
        return t * TIME_SCALE

    def validate(self, cfg: DictConfig) -> None:
        super().validate(cfg)
        from msrepro.registry import SCHEDULES

        name = cfg.schedule.get("name")
        if name not in SCHEDULES or not SCHEDULES.get(name).variance_preserving:
            raise ConfigError(f"schedule.name: backbone 'dpm_solver' predicts epsilon on a variance-preserving "
                              f"schedule (vp_linear); got '{name}'")
