"""Stage boundaries: K-1 ordered cut points in one schedule's time, with exact [lo, hi) semantics.

Stage k covers ``[cuts[k-1], cuts[k])`` in schedule time (stage 0 is the least noisy); a noise level exactly on
a cut point belongs to the upper stage, and both ends of the time domain are valid. Boundaries move to another
schedule only through :meth:`StageBoundaries.convert`, by time fraction or by matched log-SNR, and the chosen
method is recorded with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from omegaconf import DictConfig

from msrepro.config import ConfigError
from msrepro.schedules import NoiseSchedule, build_schedule

ConvertBy = Literal["log_snr", "time_fraction"]
CONVERT_METHODS: tuple[str, ...] = ("log_snr", "time_fraction")


def check_cuts(cuts: Sequence[float], t_min: float, t_max: float, what: str = "stage boundaries") -> None:
    """Raise ValueError unless ``cuts`` are strictly increasing and strictly inside (t_min, t_max)."""
    cuts = [float(c) for c in cuts]
    for a, b in zip(cuts, cuts[1:]):
        if not a < b:
            raise ValueError(f"{what} must be strictly increasing, got {cuts} ({b} does not exceed {a})")
    for c in cuts:
        if not t_min < c < t_max:
            raise ValueError(f"{what} must lie strictly inside the schedule's time domain ({t_min}, {t_max}), "
                             f"got {c} in {cuts}")


@dataclass(frozen=True)
class StageBoundaries:
    """Cut points ``cuts`` (K-1 of them, for K stages) in the time of ``schedule``."""

    cuts: tuple[float, ...]
    schedule: NoiseSchedule
    converted_by: str | None = None  # how they were obtained from another schedule, if they were
    source: dict = field(default_factory=dict, compare=False)  # provenance: clusterer, original cuts, ...

    def __post_init__(self) -> None:
        object.__setattr__(self, "cuts", tuple(float(c) for c in self.cuts))
        check_cuts(self.cuts, self.schedule.t_min, self.schedule.t_max)

    @property
    def num_stages(self) -> int:
        return len(self.cuts) + 1

    def stage_of_t(self, t: torch.Tensor) -> torch.Tensor:
        """Stage index of each time in ``t``: k such that cuts[k-1] <= t < cuts[k]."""
        cuts = torch.tensor(self.cuts, dtype=torch.float64, device=t.device)
        return torch.bucketize(t.to(torch.float64), cuts, right=True)

    def stage_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Stage index of each noise level, via the schedule's t(sigma)."""
        return self.stage_of_t(self.schedule.sigma_inv(sigma.to(torch.float64)))

    def intervals(self) -> list[tuple[float, float]]:
        """Each stage's [lo, hi) in schedule time."""
        edges = [self.schedule.t_min, *self.cuts, self.schedule.t_max]
        return list(zip(edges[:-1], edges[1:]))

    def sigma_intervals(self) -> list[tuple[float, float]]:
        """Each stage's [lo, hi) in sigma."""
        return [(float(self.schedule.sigma(lo)), float(self.schedule.sigma(hi))) for lo, hi in self.intervals()]

    def fraction_lengths(self) -> list[float]:
        """Each stage's length as a fraction of the schedule's time axis (weights of the length-weighted GMACs)."""
        edges = [0.0, *(float(self.schedule.fraction(c)) for c in self.cuts), 1.0]
        return [b - a for a, b in zip(edges[:-1], edges[1:])]

    def log_snr(self) -> list[float]:
        return [float(self.schedule.log_snr(c)) for c in self.cuts]

    def convert(self, target: NoiseSchedule, by: ConvertBy) -> "StageBoundaries":
        """The same cut points in ``target``'s time, by matched log-SNR or by equal time fraction."""
        if by == "log_snr":
            cuts = [float(target.t_from_log_snr(self.schedule.log_snr(c))) for c in self.cuts]
        elif by == "time_fraction":
            cuts = [float(target.from_fraction(self.schedule.fraction(c))) for c in self.cuts]
        else:
            raise ValueError(f"unknown boundary conversion '{by}'; valid: {', '.join(CONVERT_METHODS)}")
        src = {"cuts": list(self.cuts), "schedule": self.schedule.to_config(), **self.source}
        return StageBoundaries(tuple(cuts), target, converted_by=by, source=src)

    def to_dict(self) -> dict:
        return {"cuts": list(self.cuts), "schedule": self.schedule.to_config(), "converted_by": self.converted_by,
                "log_snr": self.log_snr(), "source": dict(self.source)}

    @classmethod
    def from_dict(cls, d: dict) -> "StageBoundaries":
        return cls(tuple(d["cuts"]), build_schedule(dict(d["schedule"])), d.get("converted_by"),
                   dict(d.get("source") or {}))


def validate_stages(cfg: DictConfig) -> None:
    """Stage count, decoder count and cut points agree with each other and the schedule."""
    k = cfg.stages.num_stages
    if k < 1:
        raise ConfigError(f"stages.num_stages: must be >= 1, got {k}")
    if cfg.stages.convert not in CONVERT_METHODS:
        raise ConfigError(f"stages.convert: '{cfg.stages.convert}' is not valid; allowed: {', '.join(CONVERT_METHODS)}")
    if cfg.model.variant == "unified":
        return  # one network for all noise levels: stage count, decoder widths and cut points do not apply
    dec = cfg.model.decoder_channels
    if dec is not None and len(dec) != k:
        raise ConfigError(f"model.decoder_channels: {len(dec)} decoder widths {list(dec)} for {k} stages; "
                          f"give exactly stages.num_stages={k} widths")
    if dec is not None and any(c <= 0 for c in dec):
        raise ConfigError(f"model.decoder_channels: widths must be positive, got {list(dec)}")
    cuts = cfg.stages.boundaries
    if cuts is None:
        return
    if len(cuts) != k - 1:
        raise ConfigError(f"stages.boundaries: {k} stages need {k - 1} cut points, got {len(cuts)}: {list(cuts)}")
    sched_cfg = {"name": cfg.stages.boundaries_schedule} if cfg.stages.boundaries_schedule else cfg.schedule
    sched = build_schedule(dict(sched_cfg))
    try:
        check_cuts(list(cuts), sched.t_min, sched.t_max, "stages.boundaries")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
