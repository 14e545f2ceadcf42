"""The clusterer interface: one signature for all, ``fit(schedule, inputs, k) -> ClusterResult``.

A clusterer is a class registered in ``CLUSTERERS`` with a ``Config`` dataclass (its options), built from a params
mapping that is validated against that dataclass (unknown keys and wrong types fail at construction, before any
work)::

    @CLUSTERERS.register("my_clusterer")
    class MyClusterer(Clusterer):
        '''One line that ``msrepro list clusterers`` shows.'''

        @dataclass
        class Config:
            grid: int = 100  # one-line comment per option

        def fit(self, schedule, inputs, k):
            cuts = ...                            # k - 1 cut points in schedule time
            return self.result(schedule, inputs, k, cuts, {"curves": ..., "matrix": ...})
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from msrepro.clustering.inputs import ClusterInputs
from msrepro.clustering.result import ClusterResult
from msrepro.config import check_params
from msrepro.schedules import NoiseSchedule

MATRIX_MAX_POINTS = 101  # larger grids are strided for the stored/plotted matrix


class Clusterer:
    """Base class: validated ``self.params`` from ``Config``; subclasses implement :meth:`fit`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type | None] = None

    def __init__(self, params: Mapping[str, Any] | DictConfig | None = None) -> None:
        self.params = check_params(type(self), dict(params or {}), f"cluster.params of '{self.registered_name()}'")
        self.validate()

    @classmethod
    def registered_name(cls) -> str:
        """``name`` if set, else the name this class is registered under in CLUSTERERS, else the class name."""
        if cls.name:
            return cls.name
        from msrepro.registry import CLUSTERERS

        return next((e.name for e in CLUSTERERS.entries() if e.obj is cls), cls.__name__)

    def validate(self) -> None:
        """Cross-option checks (raise ConfigError naming the option and what is allowed)."""

    def fit(self, schedule: NoiseSchedule, inputs: ClusterInputs, k: int) -> ClusterResult:
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------------------------------
    def result(self, schedule: NoiseSchedule, inputs: ClusterInputs, k: int, cuts: Sequence[float],
               diagnostics: dict[str, Any]) -> ClusterResult:
        """A :class:`ClusterResult` with this clusterer's name, resolved params and the inputs' provenance."""
        return ClusterResult(self.registered_name(), k, [float(c) for c in cuts], schedule,
                             OmegaConf.to_container(self.params, resolve=True), diagnostics, inputs.provenance())


def fraction_grid(schedule: NoiseSchedule, fractions: np.ndarray) -> np.ndarray:
    """Schedule times at the given time fractions (identity for VP: t = fraction)."""
    import torch

    return schedule.from_fraction(torch.as_tensor(fractions, dtype=torch.float64)).numpy()


def strided_matrix(grid: np.ndarray, values: np.ndarray, label: str, title: str,
                   max_points: int = MATRIX_MAX_POINTS, cmap: str = "viridis") -> dict[str, Any]:
    """The ``diagnostics["matrix"]`` record, every s-th grid point so at most ``max_points`` remain."""
    stride = max(1, int(np.ceil(len(grid) / max_points)))
    idx = np.arange(0, len(grid), stride)
    return {"grid": grid[idx].tolist(), "values": np.asarray(values)[np.ix_(idx, idx)].tolist(), "label": label,
            "title": title, "stride": stride, "cmap": cmap}
