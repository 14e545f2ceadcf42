"""Exact dynamic programmes that split a sorted grid of n points into k contiguous clusters (SPEC §3).

Every objective is handed over as a matrix ``cost[a, b]`` = cost of the cluster holding grid points a..b
(inclusive), built in O(n^2) from prefix sums by the helpers below; :func:`partition` then solves

    min over 0 = s_0 < s_1 < ... < s_{k-1} <= n-1 of  sum_j cost[s_j, s_{j+1} - 1]   (s_k = n),

subject to each cluster's size lying in [min_size, max_size] (the first cluster may have its own limits, as in
the official DP: see :func:`grid_limits`), in O(k n^2) vectorised numpy. Ties go to the earliest start of the later
cluster (``np.argmin`` in the official ``interval_cluster``), so equal-cost splits resolve as the official code
resolves them (0.334 / 0.667 for the timestep baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

TIE_RTOL = 1e-9  # costs within this relative distance of the optimum count as ties (prefix-sum rounding)


@dataclass(frozen=True)
class Partition:
    """The optimal split: cluster start indices (``starts[0] == 0``), their sizes and the total cost."""

    starts: tuple[int, ...]
    sizes: tuple[int, ...]
    cost: float

    @property
    def centres(self) -> tuple[int, ...]:
        """Upper median of each cluster (the official ``arr[len(arr) // 2]``)."""
        return tuple(s + n // 2 for s, n in zip(self.starts, self.sizes))

    def labels(self) -> np.ndarray:
        """Cluster index of every grid point."""
        return np.repeat(np.arange(len(self.sizes)), self.sizes)


def size_limits(n: int, k: int) -> tuple[int, int]:
    """The official cluster size bounds (floor(n / 2k), ceil(3n / 2k)) of ``interval_cluster``."""
    return n // (2 * k), math.ceil(3 * n / (2 * k))


SIZE_LIMITS: tuple[str, ...] = ("official", "symmetric", "none")


@dataclass(frozen=True)
class SizeLimits:
    """Allowed cluster sizes: the first cluster in [first_min, first_max], every later one in [min_size, max_size]
    (None: no upper limit)."""

    min_size: int = 1
    max_size: int | None = None
    first_min: int = 1
    first_max: int | None = None
    mode: str = ""

    def feasible(self, n: int, k: int) -> bool:
        """Whether some split of n points into k clusters meets these limits (sizes are integer intervals)."""
        if k < 1 or self.first_min < 1 or self.min_size < 1:
            return False
        fmax = n if self.first_max is None else self.first_max
        rmax = n if self.max_size is None else self.max_size
        if k == 1:
            return self.first_min <= n <= fmax
        if self.first_min > fmax or self.min_size > rmax:
            return False
        return self.first_min + (k - 1) * self.min_size <= n <= fmax + (k - 1) * rmax

    def describe(self) -> str:
        rest = f"[{self.min_size}, {'no limit' if self.max_size is None else self.max_size}]"
        first = f"[{self.first_min}, {'no limit' if self.first_max is None else self.first_max}]"
        return f"cluster sizes {rest}" if first == rest else f"first cluster {first}, the others {rest}"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "first": [self.first_min, self.first_max], "others": [self.min_size, self.max_size]}


def grid_limits(n: int, k: int, mode: str = "official") -> SizeLimits:
    """Size limits of the Table 4 baselines on an n-point grid, with lo, hi = :func:`size_limits`.

    ``official`` (the authors' ``interval_cluster``, cluster.py): the first cluster has no upper limit and at least
    lo + 1 points, the others [lo, hi]. ``symmetric``: every cluster in [lo, hi]. ``none``: no limits. Every cluster
    but the first also keeps at least 2 points, so that none holds only the grid's last point (its start would be a
    cut point at the end of the time axis).
    """
    lo, hi = size_limits(n, k)
    if mode == "official":
        return SizeLimits(max(lo, 2), hi, lo + 1, None, mode)
    if mode == "symmetric":
        return SizeLimits(max(lo, 2), hi, max(lo, 2), hi, mode)
    if mode == "none":
        return SizeLimits(2, None, 1, None, mode)
    raise ValueError(f"unknown size limits '{mode}'; valid: {', '.join(SIZE_LIMITS)}")


def largest_k(n: int, limits: Callable[[int], SizeLimits], k_min: int = 2) -> int | None:
    """The largest k >= k_min for which ``limits(k)`` admits a split of n points (None if there is none)."""
    ok = [k for k in range(k_min, n + 1) if limits(k).feasible(n, k)]
    return max(ok) if ok else None


def partition(cost: np.ndarray, k: int, min_size: int = 1, max_size: int | None = None,
              first: tuple[int, int | None] | None = None) -> Partition:
    """Exact minimum-cost split of n grid points into k contiguous clusters with sizes in [min_size, max_size];
    ``first`` = (min, max) gives the first cluster other limits (default: the same)."""
    cost = np.asarray(cost, dtype=np.float64)
    n = cost.shape[0]
    lim = SizeLimits(max(min_size, 1), max_size, *(first or (max(min_size, 1), max_size)))
    if not lim.feasible(n, k):
        raise ValueError(f"cannot split {n} grid points into k={k} clusters with {lim.describe()}")
    size = np.arange(n)[None, :] - np.arange(n)[:, None] + 1
    rest_max, first_max = lim.max_size or n, lim.first_max or n
    c = np.where((size >= lim.min_size) & (size <= rest_max), cost, np.inf)
    best = np.empty((k, n))
    arg = np.zeros((k, n), dtype=np.int64)
    best[0] = np.where((size[0] >= lim.first_min) & (size[0] <= first_max), cost[0], np.inf)
    for m in range(1, k):
        cand = best[m - 1][:-1, None] + c[1:, :]  # cand[a - 1, i]: last cluster a..i after an optimal prefix
        lo = cand.min(0)
        tol = TIE_RTOL * np.maximum(1.0, np.abs(np.where(np.isfinite(lo), lo, 0.0)))
        arg[m] = np.argmax(cand <= lo + tol, axis=0) + 1
        best[m] = lo
    if not np.isfinite(best[k - 1, n - 1]):
        raise ValueError(f"no split of {n} grid points into k={k} clusters with {lim.describe()}")
    starts, end = [], n - 1
    for m in range(k - 1, 0, -1):
        starts.append(int(arg[m, end]))
        end = starts[-1] - 1
    starts = [0, *reversed(starts)]
    sizes = [e - s for s, e in zip(starts, [*starts[1:], n])]
    return Partition(tuple(starts), tuple(sizes), float(best[k - 1, n - 1]))


def split(cost: np.ndarray, k: int, limits: SizeLimits) -> Partition:
    """:func:`partition` under ``limits``."""
    return partition(cost, k, limits.min_size, limits.max_size, (limits.first_min, limits.first_max))


# -- cost matrices, O(n^2) from prefix sums ----------------------------------------------------------------
def _ab(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    b = np.maximum(a, b)  # only a <= b is ever read; keep indices valid elsewhere
    return a, b, a + (b - a + 1) // 2


def median_abs_cost(values: np.ndarray) -> np.ndarray:
    """cost[a, b] = sum_{j=a..b} |v_j - v_c|, c the upper median of a..b, for monotone v (timestep, snr)."""
    v = np.asarray(values, dtype=np.float64)
    d = np.diff(v)
    if not (np.all(d >= 0) or np.all(d <= 0)):
        raise ValueError("median_abs_cost needs monotone values (a sorted grid mapped by a monotone function)")
    p = np.concatenate([[0.0], np.cumsum(v)])
    a, b, c = _ab(len(v))
    left = (c - a + 1) * v[c] - (p[c + 1] - p[a])   # all v_a..v_c lie on one side of v_c
    right = (p[b + 1] - p[c]) - (b - c + 1) * v[c]
    return np.abs(left) + np.abs(right)


def affinity_cost(affinity: np.ndarray) -> np.ndarray:
    """cost[a, b] = -sum_{j=a..b} affinity[c, j], c the upper median (the official task-affinity cost)."""
    aff = np.asarray(affinity, dtype=np.float64)
    rows = np.concatenate([np.zeros((aff.shape[0], 1)), np.cumsum(aff, axis=1)], axis=1)
    a, b, c = _ab(aff.shape[0])
    return -(rows[c, b + 1] - rows[c, a])


def block_mean(similarity: np.ndarray) -> np.ndarray:
    """mean[a, b] = mean of similarity[a..b, a..b] (diagonal included), from 2-D prefix sums."""
    s = np.asarray(similarity, dtype=np.float64)
    q = np.zeros((s.shape[0] + 1, s.shape[1] + 1))
    q[1:, 1:] = s.cumsum(0).cumsum(1)
    a, b, _ = _ab(s.shape[0])
    total = q[b + 1, b + 1] - q[a, b + 1] - q[b + 1, a] + q[a, a]
    return total / (b - a + 1) ** 2


WEIGHTINGS = ("per_point", "per_interval")


def max_mean_similarity(similarity: np.ndarray, k: int, min_size: int = 1, max_size: int | None = None,
                        weighting: str = "per_point") -> Partition:
    """Contiguous intervals maximising the mean within-interval similarity, exactly.

    ``per_point``: (1/n) sum_i mean_{j in I(i)} S[i, j], every grid point (every t) weighted equally
    (= sum_j |I_j| mean(S[I_j, I_j]) / n, the ratio association of graph partitioning).
    ``per_interval``: sum_j mean(S[I_j, I_j]), every interval weighted equally: the official Gurobi objective
    (``interval_quantity[k] = 1 / |I_k|^2``); it favours one-point intervals, whose mean is S[i, i] = 1.
    The returned ``cost`` is the maximised objective.
    """
    mean = block_mean(similarity)
    if weighting == "per_point":
        n = mean.shape[0]
        a, b, _ = _ab(n)
        value = mean * (b - a + 1) / n
    elif weighting == "per_interval":
        value = mean
    else:
        raise ValueError(f"unknown weighting '{weighting}'; valid: {', '.join(WEIGHTINGS)}")
    p = partition(-value, k, min_size=min_size, max_size=max_size)
    return Partition(p.starts, p.sizes, -p.cost)
