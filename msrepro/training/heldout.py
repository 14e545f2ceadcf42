"""Held-out denoising loss: a fixed held-out image set, fixed noise and fixed noise levels, overall and per stage.

Each stage's figure draws its noise levels from the run's density restricted to that stage (the stage policy's
interval), the overall figure from the unrestricted density; samples are routed to the decoder of their own stage.
Everything is drawn once from ``seed``, so successive evaluations (and runs) are directly comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msrepro.losses import denoising_loss
from msrepro.precond import Preconditioning
from msrepro.training.policies import StagePolicy


@dataclass
class HeldoutSet:
    """Images x0 [N, ...], noise [N, ...], and noise levels/stages per evaluation ("all" and each stage)."""

    x0: torch.Tensor
    noise: torch.Tensor
    sigma: dict[str, torch.Tensor]
    stage: dict[str, torch.Tensor | None]


def heldout_set(images: torch.Tensor, policy: StagePolicy, seed: int) -> HeldoutSet:
    """Fix the noise and the noise levels of every held-out evaluation (generator seeded with ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    noise = torch.randn(images.shape, generator=g)
    sigma = {"all": policy.density.sample(n, g).sigma.float()}
    stage: dict[str, torch.Tensor | None] = {"all": None}
    if policy.num_stages > 1:
        for k in range(policy.num_stages):
            sigma[f"stage{k}"] = policy.draw_in(k, n, g).sigma.float()
            stage[f"stage{k}"] = torch.full((n,), k, dtype=torch.long)
    return HeldoutSet(images.float(), noise, sigma, stage)


@torch.no_grad()
def heldout_losses(model: Preconditioning, hs: HeldoutSet, batch_size: int, device: torch.device,
                   keys: tuple[str, ...] | None = None) -> dict[str, float]:
    """Mean denoising loss (:func:`msrepro.losses.denoising_loss`) of ``model`` in eval mode, per evaluation key
    (all keys, or only ``keys``)."""
    was_training = model.training
    model.eval()
    out = {}
    for key, sigma in hs.sigma.items():
        if keys is not None and key not in keys:
            continue
        total = 0.0
        for s in range(0, hs.x0.shape[0], batch_size):
            sl = slice(s, s + batch_size)
            st = hs.stage[key]
            stage = model.stage_of(sigma[sl].to(device)) if st is None else st[sl].to(device)
            loss = denoising_loss(model, hs.x0[sl].to(device), sigma[sl].to(device), hs.noise[sl].to(device),
                                  stage=stage)
            total += float(loss.double().sum())
        out[key] = total / hs.x0.shape[0]
    model.train(was_training)
    return out
