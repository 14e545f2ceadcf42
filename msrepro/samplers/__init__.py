"""Samplers (registered in ``SAMPLERS``): they see a denoiser D(x; sigma), never a backbone.

========================  ==============================================================  ======================
name                      method                                                          NFE
========================  ==============================================================  ======================
``dpm_solver``            DPM-Solver-fast, singlestep orders 1-3, noise prediction         ``nfe`` exactly
``dpm_solver_pp``         DPM-Solver++ multistep (2M by default), data prediction          ``steps``
``heun``                  EDM Algorithm 2 (Heun, rho-ramp, optional churn)                 2 ``steps`` - 1
``ddim``                  DDIM, eta 0 deterministic, eta > 0 stochastic                    ``steps``
``euler``                 Euler in sigma                                                   ``steps``
========================  ==============================================================  ======================

See :mod:`msrepro.samplers.base` for the call contract and the callback payload.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from msrepro.config import to_dict
from msrepro.registry import SAMPLERS
from msrepro.samplers.base import Evaluator, Sampler, StagedDenoiser
from msrepro.samplers.first_order import DDIM, Euler
from msrepro.samplers.dpm_solver import DPMSolver, DPMSolverPP, singlestep_orders
from msrepro.samplers.grids import SPACINGS, default_t_end, karras_sigmas, time_grid, time_range
from msrepro.samplers.heun import Heun
from msrepro.schedules import NoiseSchedule


def build_sampler(name: str, params: Mapping[str, Any] | None = None) -> Sampler:
    """The registered sampler ``name`` with its options checked (unknown names/keys raise, naming valid ones)."""
    cls = SAMPLERS.get(name)
    return cls(**(to_dict(params) or {}))


def count_nfe(sampler: Sampler, schedule: NoiseSchedule, boundaries: Any = None) -> dict:
    """NFE in total and per stage that ``sampler`` spends on ``schedule`` with stage ``boundaries`` (a
    :class:`~msrepro.boundaries.StageBoundaries` or None), found by running it on a one-number problem with the
    zero denoiser (the evaluation points do not depend on the denoiser)."""
    zero = lambda x, sigma: torch.zeros_like(x)  # noqa: E731
    denoiser = StagedDenoiser(zero, boundaries) if boundaries is not None else zero
    _, info = sampler(denoiser, torch.zeros(1, 1, dtype=torch.float64), schedule)
    return info


__all__ = ["DDIM", "DPMSolver", "DPMSolverPP", "Euler", "Evaluator", "Heun", "SPACINGS", "Sampler",
           "StagedDenoiser", "build_sampler", "count_nfe", "default_t_end", "karras_sigmas", "singlestep_orders",
           "time_grid", "time_range"]
