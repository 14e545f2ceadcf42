"""What every sampler shares: the denoiser contract, NFE counting per stage, the per-step callback, the base class.

**Contract.** A sampler sees only a denoiser ``D(x, sigma) -> x0 estimate`` on the *scaled* variable
``x = x_t / s(t) = x0 + sigma eps`` (EDM's convention, Karras et al. 2022 Eq. 1); ``x`` is [B, ...] and ``sigma`` a
[B] tensor of x's dtype. It never imports a backbone. :class:`msrepro.precond.Preconditioning` and
:class:`msrepro.empirical_denoiser.OptimalDenoiser` both satisfy it. A denoiser with ``stage_of(sigma)`` (and
``num_stages``) gets its NFE counted per stage; any other counts as one stage.

**Call.** ``sampler(denoiser, noise, schedule, callback=None, generator=None) -> (x0, info)``: ``noise`` is N(0, I)
of the sample shape, the initial state is ``sigma(t_start) * noise`` (EDM's start; DPM-Solver's code starts from
x_T ~ N(0, I), i.e. ``sqrt(1 + sigma^2) * noise`` on this variable, a relative difference of 1 / (2 sigma^2) = 2e-5
at VP t = 1); ``info = {"nfe", "nfe_per_stage", "sigmas"}``
(``sigmas``: where D was evaluated, in order). ``callback`` gets one dict per step, like k-diffusion's:
``{"i", "sigma", "sigma_next", "x", "denoised", "stage", "nfe"}`` with ``x`` the state at ``sigma`` (the step's
start), ``denoised`` = D there, ``stage`` the decoder that served it, ``nfe`` the evaluations so far.
Stochastic samplers draw extra noise from ``generator.randn_like(x)`` (per-seed generators keep images
independent of the batch size), or ``torch.randn_like`` without one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Optional, Protocol

import torch
from omegaconf import OmegaConf

from msrepro.config import ConfigError, check_params
from msrepro.schedules import NoiseSchedule

Callback = Callable[[dict], None]


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


class NoiseSource(Protocol):
    def randn_like(self, x: torch.Tensor) -> torch.Tensor: ...


class StagedDenoiser:
    """Any denoiser plus stage boundaries, so samplers can count NFE per stage (e.g. for an analytic denoiser)."""

    def __init__(self, denoiser: Denoiser, boundaries: Any) -> None:
        self.denoiser, self.boundaries = denoiser, boundaries

    @property
    def num_stages(self) -> int:
        return self.boundaries.num_stages

    def stage_of(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.boundaries.stage_of_sigma(torch.as_tensor(sigma).reshape(-1))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, sigma)


class Evaluator:
    """Calls the denoiser at a scalar sigma, counts NFE in total and per stage, and remembers the last stage."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self._stage_of = getattr(denoiser, "stage_of", None)
        self.per_stage = [0] * int(getattr(denoiser, "num_stages", 1) or 1)
        self.sigmas: list[float] = []
        self.last_stage = 0

    @property
    def nfe(self) -> int:
        return len(self.sigmas)

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x; sigma) in x's dtype (one NFE)."""
        sig = torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)
        stage = int(self._stage_of(sig).reshape(-1)[0]) if self._stage_of is not None else 0
        while stage >= len(self.per_stage):
            self.per_stage.append(0)
        self.per_stage[stage] += 1
        self.sigmas.append(float(sigma))
        self.last_stage = stage
        return self.denoiser(x, sig).to(x.dtype)

    def eps(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(denoised, eps) with eps = (x - D(x; sigma)) / sigma, the ODE's dx/dsigma (Karras et al. Eq. 3)."""
        d = self(x, sigma)
        return d, (x - d) / sigma

    def info(self) -> dict:
        return {"nfe": self.nfe, "nfe_per_stage": list(self.per_stage), "sigmas": list(self.sigmas)}


class Sampler:
    """Base class: ``Config`` holds the options; subclasses implement :meth:`sample` (and :meth:`check`)."""

    name: ClassVar[str] = ""

    @dataclasses.dataclass
    class Config:
        pass

    def __init__(self, **params: Any) -> None:
        where = f"sample.params of sampler '{self.name}'"
        self.cfg = OmegaConf.to_object(check_params(type(self), params, where))
        self.check()

    def check(self) -> None:
        """Raise ConfigError on option values the type alone does not rule out."""

    def params(self) -> dict:
        return dataclasses.asdict(self.cfg)

    def sample(self, ev: Evaluator, noise: torch.Tensor, schedule: NoiseSchedule, callback: Optional[Callback],
               generator: Optional[NoiseSource]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, denoiser: Denoiser, noise: torch.Tensor, schedule: NoiseSchedule,
                 callback: Optional[Callback] = None, generator: Optional[NoiseSource] = None
                 ) -> tuple[torch.Tensor, dict]:
        ev = Evaluator(denoiser)
        with torch.no_grad():
            x = self.sample(ev, noise, schedule, callback, generator)
        return x, ev.info()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def step_callback(callback: Optional[Callback], ev: Evaluator, i: int, sigma: float, sigma_next: float,
                  x: torch.Tensor, denoised: torch.Tensor) -> None:
    """Send the per-step dict (see the module docstring) if there is a callback."""
    if callback is not None:
        callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, "x": x, "denoised": denoised,
                  "stage": ev.last_stage, "nfe": ev.nfe})


def randn_like(generator: Optional[NoiseSource], x: torch.Tensor) -> torch.Tensor:
    return generator.randn_like(x) if generator is not None else torch.randn_like(x)


def positive(value: int, key: str) -> None:
    if value < 1:
        raise ConfigError(f"sample.params.{key}: must be >= 1, got {value}")
