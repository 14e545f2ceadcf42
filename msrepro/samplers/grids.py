"""Sampling grids: where a sampler evaluates the denoiser, stated in schedule time and converted only through the
schedule object (:mod:`msrepro.schedules`), never with a formula of its own.

- ``logsnr``: uniform in log-SNR lambda(t) (DPM-Solver's ``logSNR`` skip type, recommended for low resolutions);
- ``time_uniform``: uniform in the schedule's time t (DPM-Solver's ``time_uniform``);
- :func:`karras_sigmas`: EDM's rho-ramp (Karras et al. 2022, Eq. 5), uniform in sigma^(1/rho), with a final 0.
"""

from __future__ import annotations

from typing import Literal

import torch

from msrepro.config import ConfigError
from msrepro.schedules import NoiseSchedule

Spacing = Literal["logsnr", "time_uniform"]
SPACINGS: tuple[str, ...] = ("logsnr", "time_uniform")

#: End time used when a VP-type schedule has sigma(t_min) = 0: DPM-Solver's recommendation for more than 15 NFE
#: (t_end = 1e-4 for continuous-time VP models), as a fraction of the time axis.
VP_END_FRACTION = 1e-4


def check_spacing(spacing: str) -> None:
    if spacing not in SPACINGS:
        raise ConfigError(f"sample.params.spacing: '{spacing}' is not valid; allowed: {', '.join(SPACINGS)}")


def default_t_end(schedule: NoiseSchedule) -> float:
    """Where sampling stops by default: ``schedule.sampling_t_end`` if the schedule declares one, else t_min when
    sigma(t_min) > 0 (EDM: sigma_min; discrete DDPM: step 0), else 1e-4 of the time axis (VP: t = 1e-4)."""
    declared = getattr(schedule, "sampling_t_end", None)
    if declared is not None:
        return float(declared)
    if float(schedule.sigma(schedule.t_min)) > 0:
        return float(schedule.t_min)
    return float(schedule.t_min + VP_END_FRACTION * (schedule.t_max - schedule.t_min))


def time_range(schedule: NoiseSchedule, t_start: float | None, t_end: float | None) -> tuple[float, float]:
    """(t_start, t_end) with defaults filled in (t_max and :func:`default_t_end`) and checked."""
    start = float(schedule.t_max) if t_start is None else float(t_start)
    end = default_t_end(schedule) if t_end is None else float(t_end)
    if not schedule.t_min <= end < start <= schedule.t_max:
        raise ConfigError(f"sample.params: need t_min <= t_end < t_start <= t_max = [{schedule.t_min}, "
                          f"{schedule.t_max}] of {schedule!r}, got t_start={start}, t_end={end}")
    if not float(schedule.sigma(end)) > 0:
        raise ConfigError(f"sample.params.t_end: sigma({end}) = 0 for {schedule!r}; these solvers need t_end with "
                          f"sigma > 0 (DPM-Solver recommends 1e-4 for VP with more than 15 NFE)")
    return start, end


def time_grid(schedule: NoiseSchedule, n: int, spacing: str, t_start: float, t_end: float) -> torch.Tensor:
    """n + 1 times from t_start down to t_end (float64), uniform in log-SNR or in time."""
    check_spacing(spacing)
    if spacing == "logsnr":
        lam = torch.linspace(schedule.log_snr(t_start), schedule.log_snr(t_end), n + 1, dtype=torch.float64)
        t = schedule.t_from_log_snr(lam)
        t[0], t[-1] = t_start, t_end  # exact ends (the round trip through lambda loses a few ulps)
        return t
    return torch.linspace(t_start, t_end, n + 1, dtype=torch.float64)


def sigma_grid(schedule: NoiseSchedule, n: int, spacing: str, t_start: float, t_end: float) -> list[float]:
    """The sigmas of :func:`time_grid` (decreasing), as Python floats."""
    return [float(s) for s in schedule.sigma(time_grid(schedule, n, spacing, t_start, t_end))]


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """EDM's time steps (Karras et al. 2022, Eq. 5): n sigmas from sigma_max to sigma_min, then sigma_N = 0."""
    if n < 1:
        raise ConfigError(f"sample.params.steps: must be >= 1, got {n}")
    if not 0 < sigma_min < sigma_max:
        raise ConfigError(f"sample.params: need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    ramp = [hi + i / max(n - 1, 1) * (lo - hi) for i in range(n)]
    return [r**rho for r in ramp] + [0.0]
