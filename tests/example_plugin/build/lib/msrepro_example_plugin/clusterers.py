"""``log_snr_uniform``: stage boundaries equally spaced in log-SNR between the ends of the schedule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from msrepro.clustering import ClusterInputs, ClusterResult, Clusterer
from msrepro.registry import CLUSTERERS
from msrepro.schedules import NoiseSchedule


@CLUSTERERS.register("log_snr_uniform")
class LogSNRUniform(Clusterer):
    """Equal spacing in log-SNR between the schedule's ends (example plugin, no data needed)."""

    @dataclass
    class Config:
        start_fraction: float = 1e-3  # low-noise end, as a time fraction (log-SNR is infinite at t = 0 on VP)
        end_fraction: float = 1.0     # high-noise end, as a time fraction

    def fit(self, schedule: NoiseSchedule, inputs: ClusterInputs, k: int) -> ClusterResult:
        ends = schedule.from_fraction(torch.tensor([self.params.start_fraction, self.params.end_fraction],
                                                   dtype=torch.float64))
        lam_lo_noise, lam_hi_noise = (float(v) for v in schedule.log_snr(ends))
        levels = np.linspace(lam_lo_noise, lam_hi_noise, k + 1)[1:-1]
        cuts = schedule.t_from_log_snr(torch.as_tensor(levels)).tolist()
        t = schedule.from_fraction(torch.linspace(self.params.start_fraction, self.params.end_fraction, 200,
                                                  dtype=torch.float64))
        curves = {"x": t.tolist(), "xlabel": "t", "ylabel": "log-SNR",
                  "series": {"log-SNR(t)": schedule.log_snr(t).tolist()},
                  "levels": {f"level {j + 1}": float(v) for j, v in enumerate(levels)}}
        return self.result(schedule, inputs, k, cuts, {"curves": curves, "log_snr_levels": levels.tolist()})
