"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): Heun's 2nd-order method on the rho-ramp with
optional churn; deterministic (Algorithm 1) with S_churn = 0. N steps cost 2N - 1 NFE (the last step is Euler).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from msrepro.config import ConfigError
from msrepro.registry import SAMPLERS
from msrepro.samplers.base import Callback, Evaluator, NoiseSource, Sampler, positive, randn_like, step_callback
from msrepro.samplers.grids import karras_sigmas
from msrepro.schedules import NoiseSchedule

#: EDM's generate.py defaults, clipped to the schedule's own range like EDM clips them to the network's.
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0


@SAMPLERS.register("heun")
class Heun(Sampler):
    """EDM's Heun sampler with optional churn (Karras et al. 2022, Alg. 2); NFE = 2 steps - 1.

    Recommended (the paper's EDM rows): 18 steps = 35 NFE, rho 7, sigma 80 -> 0.002, S_churn 0 (deterministic);
    EDM's Table 5 churn settings for ImageNet-like data.
    """

    name = "heun"

    @dataclass
    class Config:
        steps: int = 18                   # N; NFE = 2N - 1
        rho: float = 7.0                  # time-step exponent of the rho-ramp (EDM Eq. 5)
        sigma_min: Optional[float] = None  # lowest nonzero sigma (None: max(0.002, schedule sigma_min))
        sigma_max: Optional[float] = None  # starting sigma (None: min(80, schedule sigma_max))
        S_churn: float = 0.0              # total stochasticity; 0 = deterministic
        S_min: float = 0.0                # churn only for sigma in [S_min, S_max]
        S_max: float = math.inf
        S_noise: float = 1.0              # noise inflation of the churn

    def check(self) -> None:
        positive(self.cfg.steps, "steps")
        if self.cfg.S_churn < 0 or self.cfg.rho <= 0:
            raise ConfigError(f"sample.params: need S_churn >= 0 and rho > 0, got {self.cfg.S_churn}, {self.cfg.rho}")

    def sigma_range(self, schedule: NoiseSchedule) -> tuple[float, float]:
        lo = self.cfg.sigma_min if self.cfg.sigma_min is not None else max(EDM_SIGMA_MIN, schedule.sigma_min)
        hi = self.cfg.sigma_max if self.cfg.sigma_max is not None else min(EDM_SIGMA_MAX, schedule.sigma_max)
        return float(lo), float(hi)

    def sample(self, ev: Evaluator, noise: torch.Tensor, schedule: NoiseSchedule, callback: Optional[Callback],
               generator: Optional[NoiseSource]) -> torch.Tensor:
        c = self.cfg
        sigmas = karras_sigmas(c.steps, *self.sigma_range(schedule), c.rho)
        x = noise * sigmas[0]
        for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            gamma = min(c.S_churn / c.steps, math.sqrt(2) - 1) if c.S_min <= sigma <= c.S_max else 0.0
            sigma_hat = sigma * (1 + gamma)
            x_hat = x
            if gamma > 0:
                x_hat = x + math.sqrt(sigma_hat**2 - sigma**2) * c.S_noise * randn_like(generator, x)
            denoised, d = ev.eps(x_hat, sigma_hat)
            step_callback(callback, ev, i, sigma, sigma_next, x, denoised)
            x = x_hat + (sigma_next - sigma_hat) * d
            if sigma_next > 0:  # 2nd-order correction (Alg. 2, lines 9-11)
                _, d_next = ev.eps(x, sigma_next)
                x = x_hat + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next)
        return x
