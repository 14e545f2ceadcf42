"""Training noise-level densities p(t), registered in ``NOISE_DENSITIES`` (STYLE 5: sampling is its own piece).

Each density lives on a schedule's time axis t (EDM: t = sigma) and is written once as a CDF and its inverse, so
restricting it to a stage interval ``[lo, hi)`` (a multi-stage decoder's share, SPEC 2) is exact inverse-CDF
sampling of the truncated density, ``t = F^-1(U(F(lo), F(hi)))``. sigma always comes from the one schedule object.

- ``vp_uniform``: t ~ U(eps, 1), eps = the schedule's eps (score_sde / DPM-Solver, ``losses.py``).
- ``lognormal``: ln sigma ~ N(P_mean, P_std^2), defaults -1.2 / 1.2 (EDM ``EDMLoss``).
- ``discrete_uniform``: t uniform over the integer steps {0, ..., T-1} (DDPM / LDM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from msrepro.config import ConfigError, check_params
from msrepro.registry import NOISE_DENSITIES, RegistryError
from msrepro.schedules import NoiseSchedule

_TINY = 1e-12  # keep u away from 0 and 1 (inverse CDFs of unbounded densities)


class NoiseDraw(NamedTuple):
    """Noise levels of a batch: schedule time ``t`` and ``sigma = schedule.sigma(t)`` (float64, shape [B])."""

    t: torch.Tensor
    sigma: torch.Tensor


class NoiseDensity:
    """A density over a schedule's time: ``cdf``/``icdf`` define it; sampling and restriction come for free."""

    name: ClassVar[str] = ""
    Config: ClassVar[type | None] = None

    def __init__(self, schedule: NoiseSchedule, **params: Any) -> None:
        self.schedule = schedule
        self.params = params

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        """P(T < t) on float64 tensors (t may lie outside the support, also +-inf)."""
        raise NotImplementedError

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        """The quantile function: t with cdf(t) = u."""
        raise NotImplementedError

    def mass(self, lo: float, hi: float) -> float:
        """Probability of the interval [lo, hi)."""
        c = self.cdf(torch.tensor([lo, hi], dtype=torch.float64))
        return float(c[1] - c[0])

    def sample(self, n: int, generator: torch.Generator | None = None, lo: float = -math.inf,
               hi: float = math.inf) -> NoiseDraw:
        """n draws of t from the density restricted to [lo, hi) (inverse-CDF), with their sigma."""
        c = self.cdf(torch.tensor([lo, hi], dtype=torch.float64))
        if not c[1] > c[0]:
            raise ValueError(f"noise density '{self.name}' has no mass in [{lo}, {hi})")
        u = torch.rand(n, dtype=torch.float64, generator=generator)
        u = (c[0] + u * (c[1] - c[0])).clamp(_TINY, 1 - _TINY)
        t = self.icdf(u)
        return NoiseDraw(t, self.schedule.sigma(t))


@NOISE_DENSITIES.register("vp_uniform")
class VPUniform(NoiseDensity):
    """t ~ U(eps, t_max) on a continuous VP schedule (score_sde: ``t = rand * (1 - eps) + eps``)."""

    name = "vp_uniform"

    @dataclass
    class Config:
        eps: float | None = None  # lower end of t; None = the schedule's eps (1e-5 for vp_linear)

    def __init__(self, schedule: NoiseSchedule, eps: float | None = None) -> None:
        super().__init__(schedule, eps=eps)
        self.lo = float(eps if eps is not None else getattr(schedule, "eps", schedule.t_min))
        self.hi = float(schedule.t_max)
        if not self.lo < self.hi:
            raise ConfigError(f"train.loss.eps: need eps < {self.hi}, got {self.lo}")

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        return ((t - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        return self.lo + u * (self.hi - self.lo)


@NOISE_DENSITIES.register("lognormal")
class LogNormal(NoiseDensity):
    """ln sigma ~ N(P_mean, P_std^2) (EDM Sec. 5, ``EDMLoss``); needs a schedule with t = sigma (edm)."""

    name = "lognormal"

    @dataclass
    class Config:
        P_mean: float = -1.2  # mean of ln sigma (EDM)
        P_std: float = 1.2    # std of ln sigma (EDM)

    def __init__(self, schedule: NoiseSchedule, P_mean: float = -1.2, P_std: float = 1.2) -> None:
        super().__init__(schedule, P_mean=P_mean, P_std=P_std)
        if P_std <= 0:
            raise ConfigError(f"train.loss.P_std: must be > 0, got {P_std}")
        if schedule.name != "edm":
            raise ConfigError(f"train.loss.density: 'lognormal' is a density of sigma on the edm schedule "
                              f"(t = sigma); got schedule '{schedule.name}'")
        self.P_mean, self.P_std = float(P_mean), float(P_std)

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        z = (torch.log(t.clamp_min(0.0)) - self.P_mean) / self.P_std
        return torch.special.ndtr(z)

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.P_mean + self.P_std * torch.special.ndtri(u))


@NOISE_DENSITIES.register("discrete_uniform")
class DiscreteUniform(NoiseDensity):
    """t uniform over the integer steps {0, ..., T-1} of a discrete DDPM schedule (LDM ``p_losses``)."""

    name = "discrete_uniform"

    def __init__(self, schedule: NoiseSchedule) -> None:
        super().__init__(schedule)
        steps = getattr(schedule, "num_steps", None)
        if steps is None:
            raise ConfigError(f"train.loss.density: 'discrete_uniform' needs a discrete schedule "
                              f"(ddpm_discrete); got '{schedule.name}'")
        self.num_steps = int(steps)

    def cdf(self, t: torch.Tensor) -> torch.Tensor:
        return (torch.ceil(t.clamp(-1.0, self.num_steps)) / self.num_steps).clamp(0.0, 1.0)

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        return torch.floor(u * self.num_steps).clamp(0, self.num_steps - 1)


def build_density(loss_cfg: Any, schedule: NoiseSchedule, default: str = "vp_uniform") -> NoiseDensity:
    """The density named by ``train.loss.density`` (else ``default``: the backbone's ``default_density``), options
    checked."""
    opts = dict(loss_cfg or {})
    name = opts.pop("density", None) or default
    try:
        cls = NOISE_DENSITIES.get(name)
    except RegistryError as exc:
        raise ConfigError(f"train.loss.density: {exc}") from None
    params = check_params(cls, opts, "train.loss") if getattr(cls, "Config", None) else opts
    if not getattr(cls, "Config", None) and opts:
        raise ConfigError(f"train.loss: density '{name}' takes no options, got {sorted(opts)}")
    return cls(schedule, **dict(params))
