"""Exact dynamic programmes that split a sorted grid of n points into k contiguous clusters (SPEC §3).

Every objective is handed over as a matrix ``cost[a, b]`` = cost of the cluster holding grid points a..b
(inclusive), built in O(n^2) from prefix sums by the helpers below; :func:`partition` then solves

    min over 0 = s_0 < s_1 < ... < s_{k-1} <= n-1 of  sum_j cost[s_j, s_{j+1} - 1]   (s_k = n),

subject to each cluster's size lying in [min_size, max_size], in O(k n^2) vectorised numpy. Ties go to the
earliest start of the later cluster (``np.argmin`` in the official ``interval_cluster``), so equal-cost splits
resolve as the official code resolves them (0.334 / 0.667 for the timestep baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    """The official cluster size limits [floor(n / 2k), ceil(3n / 2k)]."""
    return n // (2 * k), math.ceil(3 * n / (2 * k))


def grid_limits(n: int, k: int, official: bool = True) -> tuple[int, int | None]:
    """Size limits for the baselines: the official ones (or none), and at least 2 points per cluster so that no
    cluster holds only the grid's last point t = 1 (its start would be a cut point at the end of the time axis)."""
    lo, hi = size_limits(n, k) if official else (1, None)
    return max(lo, 2), hi


def partition(cost: np.ndarray, k: int, min_size: int = 1, max_size: int | None = None) -> Partition:
    """Exact minimum-cost split of n grid points into k contiguous clusters with sizes in [min_size, max_size]."""
    cost = np.asarray(cost, dtype=np.float64)
    n = cost.shape[0]
    max_size = n if max_size is None else max_size
    if k < 1 or not 1 <= max(min_size, 1) <= max_size or k * max(min_size, 1) > n or k * max_size < n:
        raise ValueError(f"cannot split {n} grid points into k={k} clusters of sizes in [{min_size}, {max_size}]")
    a, b = np.arange(n)[:, None], np.arange(n)[None, :]
    size = b - a + 1
    c = np.where((size >= max(min_size, 1)) & (size <= max_size), cost, np.inf)
    best = np.empty((k, n))
    arg = np.zeros((k, n), dtype=np.int64)
    best[0] = c[0]
    for m in range(1, k):
        cand = best[m - 1][:-1, None] + c[1:, :]  # cand[a - 1, i]: last cluster a..i after an optimal prefix
        lo = cand.min(0)
        tol = TIE_RTOL * np.maximum(1.0, np.abs(np.where(np.isfinite(lo), lo, 0.0)))
        arg[m] = np.argmax(cand <= lo + tol, axis=0) + 1
        best[m] = lo
    if not np.isfinite(best[k - 1, n - 1]):
        raise ValueError(f"no split of {n} grid points into k={k} clusters of sizes in [{min_size}, {max_size}]")
    starts, end = [], n - 1
    for m in range(k - 1, 0, -1):
        starts.append(int(arg[m, end]))
        end = starts[-1] - 1
    starts = [0, *reversed(starts)]
    sizes = [e - s for s, e in zip(starts, [*starts[1:], n])]
    return Partition(tuple(starts), tuple(sizes), float(best[k - 1, n - 1]))


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
