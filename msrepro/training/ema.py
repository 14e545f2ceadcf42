"""Exponential moving average of the weights: score_sde's decay with warm-up ramp, or EDM's half-life in images."""

from __future__ import annotations

import copy
from collections.abc import Collection

import torch
from torch import nn

#: EDM ``ema_rampup_ratio``: the half-life is at most this fraction of the images seen so far
EDM_RAMPUP = 0.05


def score_sde_decay(decay: float, num_updates: int) -> float:
    """score_sde ``ExponentialMovingAverage``: ``min(decay, (1 + n) / (10 + n))`` for the n-th update (n from 0)."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


def edm_decay(halflife_kimg: float, batch_size: int, images_seen: int, rampup: float | None = EDM_RAMPUP) -> float:
    """EDM ``training_loop``: beta = 0.5 ** (batch / halflife_img), halflife capped at ``rampup * images seen``."""
    halflife = halflife_kimg * 1000.0
    if rampup is not None:
        halflife = min(halflife, images_seen * rampup)
    return 0.5 ** (batch_size / max(halflife, 1e-8))


class EMA:
    """A frozen copy of a model updated as ``ema = beta ema + (1 - beta) param`` (buffers copied)."""

    def __init__(self, model: nn.Module) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float, frozen: Collection[int] = ()) -> None:
        """One multi-tensor lerp over all parameters (one kernel launch per dtype/device, not per tensor), except
        the parameters at the positions in ``frozen`` (those of early-stopped stages), which keep their average."""
        ema, params = list(self.module.parameters()), [p.detach() for p in model.parameters()]
        if frozen:
            keep = [i for i in range(len(ema)) if i not in frozen]
            ema, params = [ema[i] for i in keep], [params[i] for i in keep]
        if ema:
            torch._foreach_lerp_(ema, params, 1.0 - beta)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
