"""Noise schedules: the one place where s(t), sigma(t), the log-SNR and their inverses are written down.

Paper notation (Eq. 1): ``x_t = s(t) x_0 + s(t) sigma(t) eps``. ``sigma`` is the noise-to-signal ratio of the
scaled variable ``x_t / s(t)`` (EDM's sigma), the log-SNR is ``lambda(t) = -2 log sigma(t)``.

Every schedule has a *time* ``t`` that grows with noise: VP ``t`` in [0, 1]; EDM ``t = sigma`` in
[sigma_min, sigma_max] (EDM's own convention); discrete DDPM ``t`` = step index in [0, T-1] (continuous,
for solvers). Stage boundaries are stated in a schedule's time and converted to another schedule only through
:meth:`NoiseSchedule.fraction` (time fraction) or :meth:`NoiseSchedule.log_snr` (matched log-SNR).

Loss, preconditioning, sampler and clusterer all take the same schedule instance. Numerics run in float64;
tensors come back in the dtype they came in, Python floats as floats.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from typing import Callable, TypeVar, Union

import torch

from msrepro.registry import SCHEDULES

Scalar = Union[float, torch.Tensor]
F = TypeVar("F", bound=Callable[..., torch.Tensor])


def _float64(fn: F) -> F:
    """Run ``fn(self, x)`` on a float64 tensor; hand back the caller's type (float or tensor dtype)."""

    @functools.wraps(fn)
    def wrapper(self: "NoiseSchedule", x: Scalar) -> Scalar:
        if isinstance(x, torch.Tensor):
            out = fn(self, x.to(torch.float64))
            return out.to(x.dtype) if x.is_floating_point() else out
        return float(fn(self, torch.tensor(float(x), dtype=torch.float64)))

    return wrapper  # type: ignore[return-value]


def log_snr_of_sigma(sigma: Scalar) -> Scalar:
    """lambda = log SNR = -2 log sigma of the scaled variable x = x0 + sigma eps (the same for every schedule)."""
    return -2.0 * (torch.log(sigma) if isinstance(sigma, torch.Tensor) else math.log(sigma))


def s_of_sigma_vp(sigma: torch.Tensor) -> torch.Tensor:
    """s = 1 / sqrt(1 + sigma^2): the signal scale of a variance-preserving schedule at noise level sigma."""
    return torch.rsqrt(1.0 + sigma**2)


class NoiseSchedule(ABC):
    """``s(t)``, ``sigma(t)``, log-SNR ``lambda(t)`` and their inverses (DPM-Solver's ``NoiseScheduleVP``)."""

    name: str = ""
    t_min: float  # time domain [t_min, t_max]; t grows with noise
    t_max: float
    #: Preconditioning input scale: True if x_t = s(t) (x0 + sigma eps) with s = 1/sqrt(1 + sigma^2).
    variance_preserving: bool = True

    # -- what each schedule defines (float64 tensors in, float64 tensors out) ----------------------
    @abstractmethod
    def _sigma(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _fraction(self, t: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _from_fraction(self, f: torch.Tensor) -> torch.Tensor: ...

    def _s(self, t: torch.Tensor) -> torch.Tensor:
        return self._s_of_sigma(self._sigma(t))

    def _s_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return s_of_sigma_vp(sigma) if self.variance_preserving else torch.ones_like(sigma)

    # -- public API ----------------------------------------------------------------------------
    @_float64
    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) of Eq. 1 (noise-to-signal ratio of x_t / s(t))."""
        return self._sigma(t)

    @_float64
    def s(self, t: torch.Tensor) -> torch.Tensor:
        """s(t) of Eq. 1 (signal scale)."""
        return self._s(t)

    @_float64
    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """t(sigma), the inverse of :meth:`sigma`."""
        return self._sigma_inv(sigma)

    @_float64
    def s_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """s as a function of sigma (1/sqrt(1+sigma^2) for VP schedules, 1 for EDM)."""
        return self._s_of_sigma(sigma)

    @_float64
    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log SNR = -2 log sigma(t)."""
        return log_snr_of_sigma(self._sigma(t))

    @_float64
    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """t(lambda), the inverse of :meth:`log_snr`."""
        return self._sigma_inv(torch.exp(-0.5 * lam))

    @_float64
    def fraction(self, t: torch.Tensor) -> torch.Tensor:
        """Position of t in the schedule's own time axis, in [0, 1] (used to convert boundaries by time)."""
        return self._fraction(t)

    @_float64
    def from_fraction(self, f: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`fraction`."""
        return self._from_fraction(f)

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(self.t_min)) if self.t_min > 0 or not self.variance_preserving else 0.0

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(self.t_max))

    def to_config(self) -> dict:
        """The constructor arguments plus ``name``: ``SCHEDULES.build(s.to_config())`` rebuilds it."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.to_config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoiseSchedule) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_config().items())))


@SCHEDULES.register("vp_linear")
class VPLinearSchedule(NoiseSchedule):
    """VP SDE with linear beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1] (Song et al. 2021)."""

    name = "vp_linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-5) -> None:
        if not 0 < beta_min < beta_max:
            raise ValueError(f"vp_linear needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.eps = float(beta_min), float(beta_max), float(eps)
        self.t_min, self.t_max = 0.0, 1.0

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log s(t) = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2 (DPM-Solver's marginal_log_mean_coeff)."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.expm1(-2.0 * self.log_alpha(t)))

    def _s(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def _sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        # -2 log s = log(1 + sigma^2) =: L, solve (db/2) t^2 + b0 t - L = 0 in its cancellation-free form.
        big_l = torch.log1p(sigma**2)
        db = self.beta_max - self.beta_min
        return 2.0 * big_l / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * db * big_l))

    def _fraction(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def _from_fraction(self, f: torch.Tensor) -> torch.Tensor:
        return f

    def to_config(self) -> dict:
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max, "eps": self.eps}


@SCHEDULES.register("edm")
class EDMSchedule(NoiseSchedule):
    """EDM (Karras et al. 2022): s = 1, t = sigma in [sigma_min, sigma_max]; time fraction = Karras rho-ramp."""

    name = "edm"
    variance_preserving = False

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, sigma_data: float = 0.5):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"edm needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self._smin, self._smax, self.rho, self.sigma_data = float(sigma_min), float(sigma_max), float(rho), float(sigma_data)
        self.t_min, self.t_max = self._smin, self._smax

    @property
    def sigma_min(self) -> float:
        return self._smin

    @property
    def sigma_max(self) -> float:
        return self._smax

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def _sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def _fraction(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = self._smin ** (1 / self.rho), self._smax ** (1 / self.rho)
        return (t ** (1 / self.rho) - lo) / (hi - lo)

    def _from_fraction(self, f: torch.Tensor) -> torch.Tensor:
        lo, hi = self._smin ** (1 / self.rho), self._smax ** (1 / self.rho)
        return (lo + f * (hi - lo)) ** self.rho

    def to_config(self) -> dict:
        return {"name": self.name, "sigma_min": self._smin, "sigma_max": self._smax, "rho": self.rho,
                "sigma_data": self.sigma_data}


#: how ddpm_discrete's sigma is interpolated between integer steps
INTERPOLATIONS: tuple[str, ...] = ("log_alpha", "log_sigma")


def _interp(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``table[n]`` at fractional ``n`` in [0, len - 1]."""
    lo = t.floor().long().clamp(0, len(table) - 2)
    w = t - lo
    return (1 - w) * table[lo] + w * table[lo + 1]


def _interp_inv(table: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The fractional n at which the piecewise-linear increasing ``table`` equals ``y`` (clamped to its range)."""
    y = y.clamp(table[0], table[-1]).contiguous()
    hi = torch.searchsorted(table, y).clamp(1, len(table) - 1)
    lo = hi - 1
    return lo.to(y.dtype) + (y - table[lo]) / (table[hi] - table[lo])


@SCHEDULES.register("ddpm_discrete")
class DiscreteDDPMSchedule(NoiseSchedule):
    """Discrete DDPM (LDM): betas linear in sqrt from beta_start to beta_end, T steps; t = step index.

    Solvers use fractional t. Between integer steps, ``interpolation="log_alpha"`` (default) makes log alpha_t =
    log s(t) = 0.5 log alphas_cumprod piecewise linear in t: DPM-Solver's ``NoiseScheduleVP('discrete')``
    (``t_array = (n + 1) / T``, ``log_alpha_array``, ``interpolate_fn``), which ran the paper's LDM evaluation; its
    continuous time t_c maps to the step index as n = T t_c - 1, an affine map, so the interpolation is the same
    in n. ``"log_sigma"`` interpolates log sigma linearly in t instead (k-diffusion's ``DiscreteSchedule``). Both
    agree at integer steps. The model input is t itself (LDM's integer timestep convention). Time fraction is
    t / T (so step 442 <-> 0.442).
    """

    name = "ddpm_discrete"

    def __init__(self, num_steps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0195,
                 interpolation: str = "log_alpha") -> None:
        if num_steps < 2 or not 0 < beta_start < beta_end < 1:
            raise ValueError(f"ddpm_discrete needs T >= 2 and 0 < beta_start < beta_end < 1, got "
                             f"{num_steps}, {beta_start}, {beta_end}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"ddpm_discrete interpolation '{interpolation}' is not valid; allowed: "
                             f"{', '.join(INTERPOLATIONS)}")
        self.num_steps, self.beta_start, self.beta_end = int(num_steps), float(beta_start), float(beta_end)
        self.interpolation = interpolation
        betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.log_sigmas = 0.5 * torch.log((1.0 - self.alphas_cumprod) / self.alphas_cumprod)
        self.log_alphas = 0.5 * torch.log(self.alphas_cumprod)
        self.t_min, self.t_max = 0.0, float(num_steps - 1)
        # the inverse's table, from sigma at the integer steps exactly as _sigma computes it: t(sigma(n)) == n
        sigma_n = self._sigma(torch.arange(num_steps, dtype=torch.float64))
        self._inverse_table = torch.log(sigma_n) if interpolation == "log_sigma" else 0.5 * torch.log1p(sigma_n**2)

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clamp(self.t_min, self.t_max)
        if self.interpolation == "log_sigma":
            return torch.exp(_interp(self.log_sigmas.to(t.device), t))
        return torch.sqrt(torch.expm1(-2.0 * _interp(self.log_alphas.to(t.device), t)))

    def _sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        table = self._inverse_table.to(sigma.device)  # log sigma, or -log alpha = 0.5 log(1 + sigma^2): increasing
        if self.interpolation == "log_sigma":
            return _interp_inv(table, torch.log(sigma))
        return _interp_inv(table, 0.5 * torch.log1p(sigma**2))

    def _fraction(self, t: torch.Tensor) -> torch.Tensor:
        return t / self.num_steps

    def _from_fraction(self, f: torch.Tensor) -> torch.Tensor:
        return f * self.num_steps

    def to_config(self) -> dict:
        return {"name": self.name, "num_steps": self.num_steps, "beta_start": self.beta_start,
                "beta_end": self.beta_end, "interpolation": self.interpolation}


def build_schedule(cfg: dict | NoiseSchedule) -> NoiseSchedule:
    """A schedule from its config (``{"name": "vp_linear", ...}``) or the instance itself."""
    if isinstance(cfg, NoiseSchedule):
        return cfg
    return SCHEDULES.build(cfg)
