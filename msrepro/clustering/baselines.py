"""Table 4's data-free baselines, as the official code does them (SPEC §3): ``timestep`` and ``snr``.

Both split the grid t_i = (i + 1) / n (n = 1000; time fractions, i.e. VP time) into k contiguous clusters with the
size-limited DP of :mod:`msrepro.clustering.dp`, minimising sum |v(t) - v(t_centre)| with v = the time fraction
(timestep; t itself on VP) or v = log-SNR (snr; equal to the official |2 (lambda(c) - lambda(t))| with lambda
DPM-Solver's half log-SNR). The cut points are the grid values where clusters start: 0.334 / 0.667 and 0.348 / 0.709
for k = 3 on vp_linear, under either size limits (``size_limits=official``, the default: the authors' DP, whose first
cluster has no upper limit and at least floor(n / 2k) + 1 points; ``symmetric``: every cluster in
[floor(n / 2k), ceil(3n / 2k)]; ``none``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from msrepro.clustering.base import Clusterer, SizeLimitedGrid, fraction_grid, strided_matrix
from msrepro.clustering.dp import Partition, SizeLimits, median_abs_cost, split
from msrepro.clustering.inputs import ClusterInputs
from msrepro.clustering.result import ClusterResult
from msrepro.config import ConfigError
from msrepro.registry import CLUSTERERS
from msrepro.schedules import NoiseSchedule


@dataclass
class GridConfig:
    grid: int = 1000                  # grid points t_i = (i + 1) / grid (time fractions), official 1000
    size_limits: str = "official"     # official (first cluster > floor(n/2k), no upper limit), symmetric, none


class _MedianDeviation(SizeLimitedGrid, Clusterer):
    """Shared: DP on sum |v(t) - v(t_centre)| over the grid; subclasses say what v is."""

    Config = GridConfig
    value_label = ""

    def validate(self) -> None:
        if self.params.grid < 2:
            raise ConfigError(f"cluster.params.grid: need at least 2 grid points, got {self.params.grid}")
        self.check_size_limits()

    def values(self, schedule: NoiseSchedule, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def objective(self) -> str:
        return (f"DP minimising sum |{self.value_label} - {self.value_label} at the cluster's upper median| on "
                f"{self.params.grid} grid points, size_limits={self.params.size_limits}")

    def fit(self, schedule: NoiseSchedule, inputs: ClusterInputs, k: int) -> ClusterResult:
        self.check_k(k)
        n = int(self.params.grid)
        t = fraction_grid(schedule, (np.arange(n) + 1) / n)
        v = self.values(schedule, t)
        part = split(median_abs_cost(v), k, self.limits(k))
        return self.result(schedule, inputs, k, t[list(part.starts[1:])], self.diagnostics(t, v, part, self.limits(k)))

    def diagnostics(self, t: np.ndarray, v: np.ndarray, part: Partition, limits: SizeLimits) -> dict[str, Any]:
        centre_value = v[np.asarray(part.centres)][part.labels()]
        return {
            "curves": {"x": t.tolist(), "xlabel": "t", "ylabel": self.value_label,
                       "series": {self.value_label: v.tolist(),
                                  f"|{self.value_label} - cluster centre|": np.abs(v - centre_value).tolist()}},
            "matrix": strided_matrix(t, np.abs(v[:, None] - v[None, :]), f"|{self.value_label}(t) - "
                                     f"{self.value_label}(t')|", "pairwise distance (lower = more alike)",
                                     cmap="viridis_r"),
            "cluster_sizes": list(part.sizes), "centres": t[list(part.centres)].tolist(), "total_cost": part.cost,
            "size_limits": limits.to_dict(),
        }


@CLUSTERERS.register("timestep")
class TimestepClusterer(_MedianDeviation):
    """Timestep baseline (Table 4): DP on sum |t - t_centre|, t = (i+1)/1000, size_limits=official|symmetric|none."""

    name = "timestep"
    value_label = "time fraction"

    def values(self, schedule: NoiseSchedule, t: np.ndarray) -> np.ndarray:
        """The schedule's time fraction (= t for VP), so every schedule splits its own time axis evenly."""
        return schedule.fraction(torch.as_tensor(t, dtype=torch.float64)).numpy()


@CLUSTERERS.register("snr")
class SNRClusterer(_MedianDeviation):
    """SNR baseline (Table 4): DP on sum |log-SNR(t) - log-SNR(t_centre)|, size_limits=official|symmetric|none."""

    name = "snr"
    value_label = "log-SNR"

    def values(self, schedule: NoiseSchedule, t: np.ndarray) -> np.ndarray:
        return schedule.log_snr(torch.as_tensor(t, dtype=torch.float64)).numpy()
