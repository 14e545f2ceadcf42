"""Denoising losses, written once in the preconditioned network's own output space (EDM Eq. 2 / Eq. 8).

With D = c_skip x + c_out F, the weighted denoising loss lambda(sigma) ||D - x0||^2 equals
lambda(sigma) c_out^2 ||F - F_target||^2 with F_target = (x0 - c_skip x) / c_out. Both official losses have
lambda(sigma) c_out(sigma)^2 = 1: score_sde/DPM-Solver's epsilon matching (EpsPrecond, F_target = eps) and EDM's
loss (EDMPrecond, lambda = 1/c_out^2). So the per-sample loss is the mean squared error of F, over pixels.
"""

from __future__ import annotations

import torch

from msrepro.precond import Preconditioning, StageArg


def denoising_loss(denoiser: Preconditioning, x0: torch.Tensor, sigma: torch.Tensor,
                   noise: torch.Tensor | None = None, *, stage: StageArg = None, **cond) -> torch.Tensor:
    """Per-sample loss mean_pixels (F_theta(x; sigma) - F_target)^2 at x = x0 + sigma noise; shape [B]."""
    if noise is None:
        noise = torch.randn_like(x0)
    sigma = sigma.reshape(-1).to(x0.device)
    x = x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype) * noise
    f = denoiser.network_output(x, sigma, stage=stage, **cond)
    target = denoiser.network_target(x, x0, sigma)
    return (f.float() - target.float()).pow(2).flatten(1).mean(1)
