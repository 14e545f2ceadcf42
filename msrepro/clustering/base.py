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

        def k_range(self):                        # optional: the k these options allow (checked before work)
            return 2, self.params.grid

        def fit(self, schedule, inputs, k):
            self.check_k(k)
            cuts = ...                            # k - 1 cut points in schedule time
            return self.result(schedule, inputs, k, cuts, {"curves": ..., "matrix": ...})

``objective()`` (optional) says in one line what the cut points optimise; it is stored in ``result.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from msrepro.clustering.dp import SIZE_LIMITS, SizeLimits, grid_limits, largest_k
from msrepro.clustering.inputs import ClusterInputs
from msrepro.clustering.result import ClusterResult
from msrepro.config import ConfigError, check_params
from msrepro.schedules import NoiseSchedule

MATRIX_MAX_POINTS = 101  # larger grids are strided for the stored/plotted matrix


@dataclass(frozen=True)
class FitCost:
    """What a dry run knows when it asks a clusterer for its cost (no data or model is loaded)."""

    forward_flops: float | None   # one forward pass of the network it would read, per sample (None: not counted)
    train_flops: float | None     # one forward + backward pass, per sample
    item_numel: int               # values per training item (channels x resolution^2)
    dataset_size: int             # training items
    checkpoints: int              # checkpoints of the model it would read (0: none)


class Clusterer:
    """Base class: validated ``self.params`` from ``Config``; subclasses implement :meth:`fit`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type | None] = None
    #: fits on a trained unified model's checkpoints (not on data alone): its cluster step waits for that model
    reads_model: ClassVar[bool] = False

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

    def objective(self) -> str:
        """One line saying what the cut points optimise with these params (result.json, the tables' notes)."""
        return f"{self.registered_name()}: {_first_line(type(self).__doc__)}"

    def cost_flops(self, cost: FitCost) -> float | None:
        """FLOPs of one fit with these params, for ``--dry-run`` estimates; default: free (reads no data or model)."""
        return 0.0

    # -- which k this clusterer accepts (checked before any work) -------------------------------------
    def k_range(self) -> tuple[int, int | None]:
        """Smallest and largest number of stages k these params allow (None: no upper limit)."""
        return 2, None

    def accepts_k(self, k: int) -> bool:
        """Whether ``fit(..., k)`` can succeed with these params; default: k within :meth:`k_range`."""
        lo, hi = self.k_range()
        return lo <= k and (hi is None or k <= hi)

    def k_context(self) -> str:
        """What bounds k, for the error message (e.g. 'a 1000-point grid, size_limits=official')."""
        return ""

    def check_k(self, k: int, key: str = "k") -> None:
        """Raise ConfigError naming ``key``, the valid range and the largest valid k when k cannot be fitted."""
        if self.accepts_k(k):
            return
        lo, hi = self.k_range()
        valid = f"{lo}.." + ("" if hi is None else f"{hi}, the largest valid k is {hi}")
        ctx = f" with {self.k_context()}" if self.k_context() else ""
        raise ConfigError(f"{key}: {self.registered_name()} cannot split the time axis into k={k} stages{ctx}; "
                          f"valid k: {valid}")

    # -- helpers for subclasses ----------------------------------------------------------------------
    def result(self, schedule: NoiseSchedule, inputs: ClusterInputs, k: int, cuts: Sequence[float],
               diagnostics: dict[str, Any]) -> ClusterResult:
        """A :class:`ClusterResult` with this clusterer's name, resolved params and the inputs' provenance."""
        return ClusterResult(self.registered_name(), k, [float(c) for c in cuts], schedule,
                             OmegaConf.to_container(self.params, resolve=True), diagnostics, inputs.provenance(),
                             objective=self.objective())


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


class SizeLimitedGrid:
    """For clusterers whose DP splits ``params.grid`` points under ``params.size_limits`` (:func:`grid_limits`):
    the limits at k, and which k they allow."""

    params: DictConfig

    def check_size_limits(self) -> None:
        mode = str(self.params.size_limits)
        if mode not in SIZE_LIMITS:
            hint = " (the earlier size_limits=true is now 'symmetric', false is 'none')" if mode in ("True", "False") \
                else ""
            raise ConfigError(f"cluster.params.size_limits: '{mode}' is not valid; allowed: "
                              f"{', '.join(SIZE_LIMITS)}{hint}")

    def limits(self, k: int) -> SizeLimits:
        return grid_limits(int(self.params.grid), k, self.params.size_limits)

    def k_range(self) -> tuple[int, int | None]:
        return 2, largest_k(int(self.params.grid), self.limits)

    def accepts_k(self, k: int) -> bool:
        return k >= 2 and self.limits(k).feasible(int(self.params.grid), k)

    def k_context(self) -> str:
        return f"a {self.params.grid}-point grid and size_limits={self.params.size_limits} (a finer grid allows more)"


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
