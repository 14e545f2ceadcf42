"""First-order samplers: DDIM (Song et al. 2021a) and Euler in sigma (Karras et al. 2022, k-diffusion's
``sample_euler``).

On the scaled variable x = x0 + sigma eps the probability-flow ODE is dx/dsigma = eps(x; sigma) (Karras et al.
Eq. 3 with s = 1), so an Euler step in sigma, deterministic DDIM and DPM-Solver-1 are the same update written three
ways; the tests check that the three implementations agree to round-off. DDIM with eta > 0 adds fresh noise
(eta = 1 is DDPM's ancestral sampler), written as k-diffusion's ``get_ancestral_step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from msrepro.config import ConfigError
from msrepro.registry import SAMPLERS
from msrepro.samplers.base import Callback, Evaluator, NoiseSource, Sampler, positive, randn_like, step_callback
from msrepro.samplers.grids import check_spacing, sigma_grid, time_range
from msrepro.schedules import NoiseSchedule


def ancestral_sigmas(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of a DDIM step with stochasticity ``eta`` (Song et al. 2021a, Eq. 16, in sigma):
    sigma_up^2 = eta^2 sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2, sigma_down^2 = sigma_next^2 - sigma_up^2."""
    if eta == 0 or sigma_next == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


@dataclass
class GridConfig:
    steps: int = 50                   # steps = NFE
    spacing: str = "logsnr"           # logsnr or time_uniform
    t_start: Optional[float] = None   # schedule time to start from (None: t_max)
    t_end: Optional[float] = None     # schedule time to stop at (None: schedule default, VP 1e-4)


class GridSampler(Sampler):
    """A one-evaluation-per-step sampler on a logsnr / time_uniform grid of ``steps`` intervals."""

    Config = GridConfig

    def check(self) -> None:
        positive(self.cfg.steps, "steps")
        check_spacing(self.cfg.spacing)

    def sigmas(self, schedule: NoiseSchedule) -> list[float]:
        t_start, t_end = time_range(schedule, self.cfg.t_start, self.cfg.t_end)
        return sigma_grid(schedule, self.cfg.steps, self.cfg.spacing, t_start, t_end)


@SAMPLERS.register("ddim")
class DDIM(GridSampler):
    """DDIM (Song et al. 2021a): x_next = D + sigma_down eps + sigma_up z; eta = 0 is deterministic (= DPM-Solver-1).

    Recommended: eta 0 with 50-100 steps; DPM-Solver reaches the same quality with far fewer NFE.
    """

    name = "ddim"

    @dataclass
    class Config(GridConfig):
        eta: float = 0.0              # stochasticity: 0 deterministic (ODE), 1 = DDPM ancestral sampling

    def check(self) -> None:
        super().check()
        if self.cfg.eta < 0:
            raise ConfigError(f"sample.params.eta: must be >= 0, got {self.cfg.eta}")

    def sample(self, ev: Evaluator, noise: torch.Tensor, schedule: NoiseSchedule, callback: Optional[Callback],
               generator: Optional[NoiseSource]) -> torch.Tensor:
        sigmas = self.sigmas(schedule)
        x = noise * sigmas[0]
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            denoised, eps = ev.eps(x, sigma)
            step_callback(callback, ev, i, sigma, sigma_next, x, denoised)
            down, up = ancestral_sigmas(sigma, sigma_next, self.cfg.eta)
            x = denoised + down * eps
            if up > 0:
                x = x + up * randn_like(generator, x)
        return x


@SAMPLERS.register("euler")
class Euler(GridSampler):
    """Euler's method on dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, Eq. 3; first-order baseline).

    Use it as a slow reference (thousands of steps) or a first-order baseline; not for production sampling.
    """

    name = "euler"

    def sample(self, ev: Evaluator, noise: torch.Tensor, schedule: NoiseSchedule, callback: Optional[Callback],
               generator: Optional[NoiseSource]) -> torch.Tensor:
        sigmas = self.sigmas(schedule)
        x = noise * sigmas[0]
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            denoised, d = ev.eps(x, sigma)
            step_callback(callback, ev, i, sigma, sigma_next, x, denoised)
            x = x + (sigma_next - sigma) * d
        return x
