"""Preconditioning: the thin wrapper that turns a raw network F into a denoiser D(x; sigma).

``D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))`` (EDM, Table 1), where x is the
*scaled* noisy sample ``x_t / s(t) = x_0 + sigma eps``. Siblings differ only in :meth:`get_scalings`:

- :class:`EDMPrecond` (Karras et al. 2022): c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd / sqrt(sigma^2+sd^2),
  c_in = 1/sqrt(sigma^2+sd^2), c_noise = log(sigma)/4.
- :class:`EpsPrecond` (VP epsilon-prediction, score_sde / DPM-Solver / LDM): c_skip = 1, c_out = -sigma,
  c_in = s = 1/sqrt(1+sigma^2), c_noise = the backbone's time input for t(sigma).

The network never knows which wrapper it sits in. Stage routing for multi-decoder networks is done here, once:
the stage of each sample is ``boundaries.stage_of_sigma(sigma)`` unless the caller forces one.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, Union

import torch
from torch import nn

from msrepro.boundaries import StageBoundaries
from msrepro.schedules import NoiseSchedule

Routing = Literal["batch", "per_sample"]
ROUTINGS: tuple[str, ...] = ("batch", "per_sample")
StageArg = Optional[Union[int, torch.Tensor]]


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


class Preconditioning(nn.Module):
    """Wraps ``net(x_in, c_noise, stage=..., **cond)``; exposes the denoiser interface samplers use.

    ``net`` is any module with that signature: a plain network ignores ``stage``; a
    :class:`msrepro.multidecoder.MultiStageNet` routes on it. ``boundaries`` is None for single-stage models.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        boundaries: StageBoundaries | None = None,
        routing: Routing = "per_sample",
    ) -> None:
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"unknown routing '{routing}'; valid: {', '.join(ROUTINGS)}")
        self.net = net
        self.schedule = schedule
        self.boundaries = boundaries
        self.routing = routing
        self.last_stages: torch.Tensor | None = None  # which decoder served the last call (for callbacks)

    # -- the one hook siblings override -----------------------------------------------------------
    def get_scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for each sigma (shape [B])."""
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images from sampled network outputs: the identity in pixel space (latent models decode here)."""
        return x

    # -- routing ------------------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return 1 if self.boundaries is None else self.boundaries.num_stages

    def stage_of(self, sigma: torch.Tensor) -> torch.Tensor:
        """Stage of each noise level (all zeros for a single-stage model)."""
        sigma = torch.as_tensor(sigma).reshape(-1)
        if self.boundaries is None:
            return torch.zeros(sigma.shape, dtype=torch.long, device=sigma.device)
        return self.boundaries.stage_of_sigma(sigma)

    def resolve_stages(self, sigma: torch.Tensor, stage: StageArg = None) -> torch.Tensor:
        """Per-sample stages: forced by ``stage`` if given, else from sigma (whole batch by its first sample
        under ``routing='batch'``, the official behaviour)."""
        if stage is not None:
            st = torch.as_tensor(stage, device=sigma.device, dtype=torch.long).reshape(-1)
            return st.expand(sigma.shape[0]) if st.numel() == 1 else st
        st = self.stage_of(sigma)
        if self.routing == "batch":
            st = st[:1].expand(sigma.shape[0])
        return st

    # -- forward --------------------------------------------------------------------------------------
    def network_output(self, x: torch.Tensor, sigma: torch.Tensor, stage: StageArg = None, **cond) -> torch.Tensor:
        """The network output F (before c_skip/c_out), e.g. the epsilon prediction for EpsPrecond."""
        sigma = self._sigma_vec(sigma, x)
        _, _, c_in, c_noise = self.get_scalings(sigma)
        stages = self.resolve_stages(sigma, stage)
        self.last_stages = stages.detach()
        return self.net(_bcast(c_in, x) * x, c_noise.to(x.dtype), stage=stages, **cond)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, stage: StageArg = None, **cond) -> torch.Tensor:
        """D(x; sigma): the denoised estimate of x_0 from the scaled noisy sample x = x_0 + sigma eps."""
        sigma = self._sigma_vec(sigma, x)
        c_skip, c_out, _, _ = self.get_scalings(sigma)
        f = self.network_output(x, sigma, stage, **cond)
        return _bcast(c_skip, x) * x + _bcast(c_out, x) * f.to(x.dtype)

    def network_target(self, x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The F that makes D exact: (x0 - c_skip x) / c_out (epsilon for EpsPrecond)."""
        sigma = self._sigma_vec(sigma, x)
        c_skip, c_out, _, _ = self.get_scalings(sigma)
        return (x0 - _bcast(c_skip, x) * x) / _bcast(c_out, x)

    @staticmethod
    def _sigma_vec(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device)
        if not sigma.is_floating_point():
            sigma = sigma.to(torch.float32)
        return sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)

    # -- what samplers may ask besides D ------------------------------------------------------------------
    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max


class EDMPrecond(Preconditioning):
    """EDM preconditioning (Karras et al. 2022, Table 1, "Ours")."""

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, boundaries: StageBoundaries | None = None,
                 routing: Routing = "per_sample", sigma_data: float = 0.5) -> None:
        super().__init__(net, schedule, boundaries, routing)
        self.sigma_data = float(sigma_data)

    def get_scalings(self, sigma: torch.Tensor):
        sd = self.sigma_data
        sigma = sigma.to(torch.float64)
        denom = sigma**2 + sd**2
        c_skip = sd**2 / denom
        c_out = sigma * sd / denom.sqrt()
        c_in = denom.rsqrt()
        c_noise = sigma.log() / 4
        return c_skip.float(), c_out.float(), c_in.float(), c_noise.float()


class EpsPrecond(Preconditioning):
    """Epsilon prediction on a VP schedule: D = x - sigma eps_theta(s x, time_input(t(sigma))).

    ``time_input`` maps the schedule's time t to what the network was trained to see (the adapter's declared
    convention, e.g. score_sde's ``999 t`` or LDM's step index); identity by default.
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, boundaries: StageBoundaries | None = None,
                 routing: Routing = "per_sample", time_input: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__(net, schedule, boundaries, routing)
        if not schedule.variance_preserving:
            raise ValueError(f"EpsPrecond needs a variance-preserving schedule, got {schedule!r}")
        self.time_input = time_input or (lambda t: t)

    def get_scalings(self, sigma: torch.Tensor):
        sigma = sigma.to(torch.float64)
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = self.schedule.s_of_sigma(sigma)
        c_noise = self.time_input(self.schedule.sigma_inv(sigma))
        return c_skip.float(), c_out.float(), c_in.float(), c_noise.float()
