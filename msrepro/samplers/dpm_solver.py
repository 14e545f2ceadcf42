"""DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b), written on the scaled variable.

On x = x_t / s = x0 + sigma eps with DPM-Solver's lambda = -log sigma (half the log-SNR), the exponential-integrator updates lose
their alpha ratios: DPM-Solver-1 reads ``x_t = x_s - sigma_t expm1(h) eps_s`` (h = lambda_t - lambda_s), i.e. an
Euler step in sigma (= DDIM). ``dpm_solver`` is the singlestep solver in **noise-prediction** form (the original
DPM-Solver, as used by the official multistage code); ``dpm_solver_pp`` the multistep solver in
**data-prediction** form (DPM-Solver++(2M), as LDM's evaluation ran it). eps = (x - D(x; sigma)) / sigma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from msrepro.config import ConfigError
from msrepro.registry import SAMPLERS
from msrepro.samplers.base import Callback, Evaluator, NoiseSource, Sampler, positive, step_callback
from msrepro.samplers.grids import check_spacing, time_grid, time_range
from msrepro.schedules import NoiseSchedule, log_snr_of_sigma


def singlestep_orders(nfe: int, order: int) -> list[int]:
    """Orders of the steps of DPM-Solver-fast (Lu et al. 2022, Sec. 3.4): all ``nfe`` evaluations used, e.g.
    order 3 with 20 NFE -> six DPM-Solver-3 steps and one DPM-Solver-2 step (DPM-Solver's
    ``get_orders_and_timesteps_for_singlestep_solver``)."""
    if order == 3:
        k = nfe // 3 + 1
        return {0: [3] * (k - 2) + [2, 1], 1: [3] * (k - 1) + [1], 2: [3] * (k - 1) + [2]}[nfe % 3]
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    if order == 1:
        return [1] * nfe
    raise ConfigError(f"sample.params.order: DPM-Solver order must be 1, 2 or 3, got {order}")


def singlestep_times(schedule: NoiseSchedule, orders: list[int], spacing: str, t_start: float,
                     t_end: float) -> list[torch.Tensor]:
    """Per step, its ``order + 1`` times (start, intermediates, end). Outer times: K + 1 uniform in log-SNR
    (``logsnr``), or every ``order``-th point of an NFE-interval uniform time grid (``time_uniform``); inner times
    uniform in the same spacing within the step, as DPM-Solver does (so r1, r2 = 1/3, 2/3 under ``logsnr``)."""
    if spacing == "logsnr":
        outer = time_grid(schedule, len(orders), spacing, t_start, t_end)
    else:
        fine = time_grid(schedule, sum(orders), spacing, t_start, t_end)
        outer = fine[torch.tensor([0, *torch.tensor(orders).cumsum(0).tolist()])]
    return [time_grid(schedule, o, spacing, float(outer[k]), float(outer[k + 1])) for k, o in enumerate(orders)]


def dpm_solver_step(ev: Evaluator, x: torch.Tensor, eps_s: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """One singlestep DPM-Solver-k update (k = len(sigmas) - 1; Lu et al. 2022, Alg. 1 (k=2) / Alg. 2 (k=3),
    ``dpmsolver`` type) from sigmas[0] to sigmas[-1], given eps at the start."""
    lam = [0.5 * log_snr_of_sigma(s) for s in sigmas]  # DPM-Solver's lambda: half the log-SNR
    h = lam[-1] - lam[0]
    s_t = sigmas[-1]
    base = x - s_t * math.expm1(h) * eps_s
    if len(sigmas) == 2:
        return base
    r1 = (lam[1] - lam[0]) / h
    u1 = x - sigmas[1] * math.expm1(r1 * h) * eps_s
    _, eps_1 = ev.eps(u1, sigmas[1])
    if len(sigmas) == 3:
        return base - (0.5 / r1) * s_t * math.expm1(h) * (eps_1 - eps_s)
    r2 = (lam[2] - lam[0]) / h
    phi_22 = math.expm1(r2 * h) / (r2 * h) - 1.0
    u2 = x - sigmas[2] * math.expm1(r2 * h) * eps_s - (r2 / r1) * sigmas[2] * phi_22 * (eps_1 - eps_s)
    _, eps_2 = ev.eps(u2, sigmas[2])
    phi_2 = math.expm1(h) / h - 1.0
    return base - (1.0 / r2) * s_t * phi_2 * (eps_2 - eps_s)


@SAMPLERS.register("dpm_solver")
class DPMSolver(Sampler):
    """DPM-Solver-fast, singlestep orders 1-3, noise prediction (Lu et al. 2022). NFE is exactly ``nfe``.

    Recommended (the paper's DPM-Solver rows, CIFAR-10 VP): order 3, nfe 20, spacing logsnr, t from 1 to 1e-4
    (the defaults on a VP schedule); use time_uniform for high-resolution images.
    """

    name = "dpm_solver"

    @dataclass
    class Config:
        order: int = 3                    # highest solver order: 1 (= DDIM), 2 or 3
        nfe: int = 20                     # total denoiser evaluations, used up exactly (DPM-Solver-fast)
        spacing: str = "logsnr"           # logsnr or time_uniform
        t_start: Optional[float] = None   # schedule time to start from (None: t_max)
        t_end: Optional[float] = None     # schedule time to stop at (None: schedule default, VP 1e-4)

    def check(self) -> None:
        positive(self.cfg.nfe, "nfe")
        check_spacing(self.cfg.spacing)
        singlestep_orders(self.cfg.nfe, self.cfg.order)

    def sample(self, ev: Evaluator, noise: torch.Tensor, schedule: NoiseSchedule, callback: Optional[Callback],
               generator: Optional[NoiseSource]) -> torch.Tensor:
        c = self.cfg
        t_start, t_end = time_range(schedule, c.t_start, c.t_end)
        steps = singlestep_times(schedule, singlestep_orders(c.nfe, c.order), c.spacing, t_start, t_end)
        x = noise * float(schedule.sigma(t_start))
        for i, times in enumerate(steps):
            sigmas = [float(s) for s in schedule.sigma(times)]
            denoised, eps = ev.eps(x, sigmas[0])
            step_callback(callback, ev, i, sigmas[0], sigmas[-1], x, denoised)
            x = dpm_solver_step(ev, x, eps, sigmas)
        return x


def multistep_pp_update(x: torch.Tensor, d: list[torch.Tensor], sigmas: list[float], order: int) -> torch.Tensor:
    """DPM-Solver++ multistep update of ``order`` 1 or 2 (Lu et al. 2022b, Alg. 2) from sigmas[-2] to sigmas[-1];
    ``d`` holds the data predictions at the last ``order`` points sigmas[-order-1:-1], newest last."""
    lam = [0.5 * log_snr_of_sigma(s) for s in sigmas]  # DPM-Solver's lambda: half the log-SNR
    h = lam[-1] - lam[-2]
    phi_1 = math.expm1(-h)
    out = (sigmas[-1] / sigmas[-2]) * x - phi_1 * d[-1]
    if order == 1:
        return out
    r0 = (lam[-2] - lam[-3]) / h
    d1_0 = (d[-1] - d[-2]) / r0
    return out - 0.5 * phi_1 * d1_0


@SAMPLERS.register("dpm_solver_pp")
class DPMSolverPP(Sampler):
    """DPM-Solver++ multistep, data prediction (Lu et al. 2022b); order 2 = DPM-Solver++(2M). NFE = ``steps``.

    The first steps use lower orders (not enough history yet); with fewer than 10 steps the final steps do too
    (DPM-Solver's ``lower_order_final``). Recommended (LDM evaluation): order 2, 20 steps, time_uniform for latent /
    high-resolution models, logsnr for small images.
    """

    name = "dpm_solver_pp"

    @dataclass
    class Config:
        order: int = 2                    # multistep order: 1 (= DDIM) or 2 (2M)
        steps: int = 20                   # steps = NFE
        spacing: str = "logsnr"           # logsnr or time_uniform
        t_start: Optional[float] = None   # schedule time to start from (None: t_max)
        t_end: Optional[float] = None     # schedule time to stop at (None: schedule default, VP 1e-4)

    def check(self) -> None:
        positive(self.cfg.steps, "steps")
        check_spacing(self.cfg.spacing)
        if self.cfg.order not in (1, 2):
            raise ConfigError(f"sample.params.order: DPM-Solver++ multistep order must be 1 or 2, got "
                              f"{self.cfg.order} (3M started by lower orders is only 2nd-order accurate)")

    def sample(self, ev: Evaluator, noise: torch.Tensor, schedule: NoiseSchedule, callback: Optional[Callback],
               generator: Optional[NoiseSource]) -> torch.Tensor:
        c = self.cfg
        t_start, t_end = time_range(schedule, c.t_start, c.t_end)
        sigmas = [float(s) for s in schedule.sigma(time_grid(schedule, c.steps, c.spacing, t_start, t_end))]
        x = noise * sigmas[0]
        history: list[torch.Tensor] = []
        for i in range(c.steps):
            denoised = ev(x, sigmas[i])
            step_callback(callback, ev, i, sigmas[i], sigmas[i + 1], x, denoised)
            history = (history + [denoised])[-c.order:]
            order = min(c.order, i + 1, c.steps - i if c.steps < 10 else c.order)
            x = multistep_pp_update(x, history, sigmas[max(0, i - order + 1):i + 2], order)
        return x
