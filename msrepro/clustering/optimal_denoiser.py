"""Optimal-denoiser timestep clustering: the paper's Algorithm 1 (Sec. 4.2, Eqs. 5-7) and the official objective.

Similarity (Eq. 5): for a training image y, noise eps and two times t_a, t_b, D is the fraction of coordinates with
|f_{t_a}(y + sigma_a eps) - f_{t_b}(y + sigma_b eps)| <= eta, where f is the optimal denoiser of Eq. 4
(:class:`msrepro.empirical_denoiser.OptimalDenoiser`, the scaled x = x0 + sigma eps convention, sigma from the
schedule) in one of two spaces:

- ``space=x0`` (the official code, ``interval_split.py`` / ``graph_vis.py``): f = E[x0 | x_t], same x0 and same eps
  at both times, data in [0, 1], eta = 2/256;
- ``space=eps`` (the paper's text): f = eps*(x) = (x - E[x0 | x]) / sigma.

S = E_{y, eps}[D] is estimated on a grid of times (official: t = 1e-3 + 0.05 i, i < 20, then t = 1; 21 points)
with K pairs (y, eps) shared by all grid points (common random numbers: G K denoiser queries instead of the
official G^2 K), giving a G x G mean-similarity matrix. Two objectives turn it into cut points:

- ``interval_dp`` (default, any k): contiguous intervals maximising the mean within-interval similarity, solved
  exactly by dynamic programming (no Gurobi). ``weighting=per_point`` (default) averages over grid points, i.e.
  over t ~ U[0, 1]: (1/G) sum_i mean_{j in I(i)} S[i, j]. ``weighting=per_interval`` is the objective the
  official code hands to Gurobi (``testgurobipy.py`` / ``graph_vis.py``: sum_j mean(S[I_j, I_j]) via
  ``interval_quantity[k] = 1 / |I_k|^2``, no size limits); it weights a one-point interval (mean S[i, i] = 1) as
  much as a long one and so returns one- or two-point intervals at the ends (digits: sizes 2 / 1 / 18).
  Cut points are midpoints between the last grid point of one interval and the first of the next (the official
  printout uses first point - 0.025, the same for its grid).
- ``threshold`` (k = 3 only): Algorithm 1 lines 8-9 / Eqs. 6-7 on the grid: t1 = the largest grid time tau with
  mean_{t <= tau} S(t, t_first) >= alpha, t2 = the smallest tau with mean_{t >= tau} S(t, t_last) >= alpha. The
  paper samples t_k ~ U[0, 1]; the grid is a stratified version of the same estimate.

When k = 3 both results are recorded in ``diagnostics``. The official code never states alpha, and the rule that
produced the paper's t1 = 0.4420, t2 = 0.6308 is not in it (neither objective there reproduces them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from msrepro.clustering.base import Clusterer, FitCost, fraction_grid
from msrepro.clustering.dp import WEIGHTINGS, SizeLimits, largest_k, max_mean_similarity
from msrepro.clustering.inputs import ClusterInputs
from msrepro.clustering.result import ClusterResult
from msrepro.config import ConfigError
from msrepro.registry import CLUSTERERS
from msrepro.schedules import NoiseSchedule

OBJECTIVES = ("interval_dp", "threshold")
SPACES = ("x0", "eps")
DATA_RANGES = ("zero_one", "minus_one_one")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: what each interval-DP weighting maximises (result.json ``objective``, the tables' notes)
WEIGHTING_TEXT = {
    "per_point": "mean within-interval similarity averaged over grid points (each t counts equally; msrepro's "
                 "default, not the official objective)",
    "per_interval": "sum over intervals of their mean similarity (each interval counts equally; the official "
                    "Gurobi objective)",
}


@dataclass
class ODConfig:
    objective: str = "interval_dp"   # interval_dp (official objective, exact DP, any k) or threshold (Alg. 1, k=3)
    space: str = "x0"                # x0 (official code: E[x0 | x_t]) or eps (paper text: eps*)
    eta: float = 0.0078125           # |a - b| <= eta counts as similar (Eq. 5); official 2/256 on [0, 1] data
    alpha: float = 0.8               # threshold objective's level (Eqs. 6-7); the paper never gives it
    samples: int = 1024              # K pairs (y, eps), shared by every grid point
    grid: int = 21                   # grid points: grid_start + i / (grid - 1) for i < grid - 1, then 1
    grid_start: float = 1e-3         # first grid point as a time fraction (official eps = 1e-3)
    data_range: str = "zero_one"     # zero_one (official) or minus_one_one
    weighting: str = "per_point"     # interval_dp score: per_point (each t counts) or per_interval (official)
    min_size: int = 1                # fewest grid points per interval (interval_dp); official 1
    max_size: Optional[int] = None   # most grid points per interval (interval_dp); official: no limit
    dtype: str = "float32"           # optimal-denoiser arithmetic: float32 or float64
    chunk_size: Optional[int] = None  # dataset rows per GEMM; None: a 64 MB logits workspace (auto_chunk)
    query_batch: int = 2048          # queries per optimal-denoiser call


def od_grid(schedule: NoiseSchedule, points: int, start: float) -> np.ndarray:
    """The official grid in schedule time: fractions start + i / (points - 1), i < points - 1, then 1."""
    frac = np.round(np.concatenate([start + np.arange(points - 1) / (points - 1), [1.0]]), 12)
    return fraction_grid(schedule, frac)


def denoise_on_grid(od: Any, y: torch.Tensor, eps: torch.Tensor, sigmas: list[float], space: str = "x0",
                    batch: int = 2048, progress: bool = False) -> torch.Tensor:
    """[G, K, n]: f_t(y + sigma_t eps) per grid noise level; f = E[x0 | x] (x0) or (x - E[x0 | x]) / sigma (eps)."""
    from tqdm import tqdm

    dev = od.data.device
    outs = torch.empty((len(sigmas), *y.shape), dtype=torch.float32, device=dev)
    for i in tqdm(range(len(sigmas)), desc="optimal denoiser on the grid", unit="t", disable=not progress):
        for s in range(0, y.shape[0], batch):
            x = (y[s:s + batch] + sigmas[i] * eps[s:s + batch]).to(dev, od.dtype)
            d = od(x, sigmas[i])
            outs[i, s:s + batch] = d if space == "x0" else (x - d) / sigmas[i]
    return outs


def pairwise_similarity(outs: torch.Tensor, eta: float) -> np.ndarray:
    """S[a, b] = fraction of entries with |outs[a] - outs[b]| <= eta (Eq. 5 averaged over the K samples)."""
    g = outs.shape[0]
    diff = torch.empty_like(outs[0])
    close = torch.empty(outs.shape[1:], dtype=torch.bool, device=outs.device)
    sim = np.eye(g)
    for a in range(g):
        for b in range(a + 1, g):
            torch.sub(outs[a], outs[b], out=diff).abs_()
            sim[a, b] = sim[b, a] = torch.le(diff, eta, out=close).sum().item() / close.numel()
    return sim


def threshold_cuts(similarity: np.ndarray, grid: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    """Algorithm 1 lines 8-9 on the grid: (t1, t2), None where no tau reaches alpha."""
    s0, s1 = similarity[:, 0], similarity[:, -1]
    head = np.cumsum(s0) / np.arange(1, len(s0) + 1)              # mean over t <= tau
    tail = (np.cumsum(s1[::-1]) / np.arange(1, len(s1) + 1))[::-1]  # mean over t >= tau
    ok1, ok2 = np.nonzero(head >= alpha)[0], np.nonzero(tail >= alpha)[0]
    return (float(grid[ok1.max()]) if ok1.size else None, float(grid[ok2.min()]) if ok2.size else None)


@CLUSTERERS.register("optimal_denoiser")
class OptimalDenoiserClusterer(Clusterer):
    """Optimal-denoiser clustering (paper Alg. 1, Eq. 5): similarity of E[x0|x_t] across t, exact interval DP."""

    name = "optimal_denoiser"
    Config = ODConfig

    def validate(self) -> None:
        p = self.params
        for key, value, allowed in [("objective", p.objective, OBJECTIVES), ("space", p.space, SPACES),
                                    ("data_range", p.data_range, DATA_RANGES), ("dtype", p.dtype, tuple(DTYPES)),
                                    ("weighting", p.weighting, WEIGHTINGS)]:
            if value not in allowed:
                raise ConfigError(f"cluster.params.{key}: '{value}' is not valid; allowed: {', '.join(allowed)}")
        if p.max_size is not None and p.max_size < max(p.min_size, 1):
            raise ConfigError(f"cluster.params.max_size: {p.max_size} is below min_size={p.min_size}")
        if p.grid < 3 or p.samples < 1 or p.eta < 0 or not 0 < p.grid_start < 1 / (p.grid - 1):
            raise ConfigError(f"cluster.params: need grid >= 3, samples >= 1, eta >= 0, 0 < grid_start < "
                              f"1/(grid-1); got grid={p.grid}, samples={p.samples}, eta={p.eta}, "
                              f"grid_start={p.grid_start}")

    def limits(self) -> SizeLimits:
        """Interval sizes of the interval DP (every interval alike)."""
        p = self.params
        return SizeLimits(max(p.min_size, 1), p.max_size, max(p.min_size, 1), p.max_size, "interval_dp")

    def k_range(self) -> tuple[int, int | None]:
        if self.params.objective == "threshold":
            return 3, 3
        return 2, largest_k(int(self.params.grid), lambda k: self.limits())

    def accepts_k(self, k: int) -> bool:
        """The interval DP (always run) must find k intervals; the threshold rule needs k = 3."""
        lo, hi = self.k_range()
        return lo <= k <= (hi or 0) and self.limits().feasible(int(self.params.grid), k)

    def k_context(self) -> str:
        p = self.params
        if p.objective == "threshold":
            return ("objective=threshold: the threshold rule (Algorithm 1) gives exactly two cut points, so k must "
                    "be 3; use objective=interval_dp for any k")
        return (f"a {p.grid}-point grid (cluster.params.grid) and interval sizes "
                f"[{self.limits().min_size}, {p.max_size or 'no limit'}] (min_size, max_size)")

    def similarity_matrix(self, schedule: NoiseSchedule, inputs: ClusterInputs, grid: np.ndarray) -> np.ndarray:
        """Mean over K pairs (y, eps) of D(f_{t_a}, f_{t_b}) for every pair of grid times (Eq. 5)."""
        from msrepro.empirical_denoiser import OptimalDenoiser

        p = self.params
        data = inputs.data(zero_one=p.data_range == "zero_one")
        data = data.reshape(data.shape[0], -1)
        gen = torch.Generator().manual_seed(inputs.seed)
        y = data[torch.randint(data.shape[0], (p.samples,), generator=gen)]
        eps = torch.randn(y.shape, generator=gen)
        od = OptimalDenoiser(data, dtype=DTYPES[p.dtype], chunk_size=p.chunk_size, device=inputs.torch_device())
        sigmas = schedule.sigma(torch.as_tensor(grid, dtype=torch.float64))
        outs = denoise_on_grid(od, y, eps, sigmas.tolist(), p.space, p.query_batch, inputs.progress)
        return pairwise_similarity(outs, p.eta)

    def objective(self) -> str:
        p = self.params
        if p.objective == "threshold":
            return f"threshold rule (Algorithm 1 lines 8-9), alpha={p.alpha}, space={p.space}, eta={p.eta:g}"
        return f"interval DP, weighting={p.weighting}: {WEIGHTING_TEXT[p.weighting]}; space={p.space}, eta={p.eta:g}"

    def interval_dp(self, sim: np.ndarray, grid: np.ndarray, k: int, weighting: str | None = None) -> dict[str, Any]:
        """The exact interval DP on the similarity matrix (``weighting``, default the configured one); cuts at
        midpoints between grid points."""
        p = self.params
        weighting = weighting or p.weighting
        try:
            part = max_mean_similarity(sim, k, p.min_size, p.max_size, weighting)
        except ValueError as exc:
            raise ConfigError(f"cluster.params.min_size/max_size: {exc}") from None
        cuts = [round(float(grid[s - 1] + grid[s]) / 2, 12) for s in part.starts[1:]]
        return {"cuts": cuts, "starts": list(part.starts),
                "sizes": list(part.sizes), "objective": part.cost, "weighting": weighting,
                "interval_means": [float(sim[s:s + n, s:s + n].mean()) for s, n in zip(part.starts, part.sizes)]}

    def threshold(self, sim: np.ndarray, grid: np.ndarray, schedule: NoiseSchedule) -> dict[str, Any]:
        """Algorithm 1's t1, t2 at this alpha, and whether they make a valid 3-stage split."""
        t1, t2 = threshold_cuts(sim, grid, self.params.alpha)
        valid = t1 is not None and t2 is not None and schedule.t_min < t1 < t2 < schedule.t_max
        return {"t1": t1, "t2": t2, "alpha": self.params.alpha, "valid": valid}

    def cost_flops(self, cost: FitCost) -> float | None:
        """The posterior-mean GEMMs: 2 x K samples x grid points x N training items x D values."""
        p = self.params
        return 2.0 * p.samples * p.grid * cost.dataset_size * cost.item_numel

    def fit(self, schedule: NoiseSchedule, inputs: ClusterInputs, k: int) -> ClusterResult:
        p = self.params
        self.check_k(k)
        grid = od_grid(schedule, p.grid, p.grid_start)
        sim = self.similarity_matrix(schedule, inputs, grid)
        diag: dict[str, Any] = {"grid": grid.tolist(), "interval_dp": self.interval_dp(sim, grid, k),
                                "weightings": {w: self.interval_dp(sim, grid, k, w) for w in WEIGHTINGS}}
        cuts = diag["interval_dp"]["cuts"]
        if k == 3:
            diag["threshold"] = th = self.threshold(sim, grid, schedule)
            if p.objective == "threshold":
                if not th["valid"]:
                    raise ConfigError(
                        f"cluster.params.alpha: the threshold rule at alpha={p.alpha} gives t1={th['t1']}, "
                        f"t2={th['t2']}, not t_min < t1 < t2 < t_max; choose another alpha (mean similarity to the "
                        f"first grid point falls to {sim[:, 0].min():.3f}, to the last to {sim[:, -1].min():.3f})")
                cuts = [th["t1"], th["t2"]]
        diag["curves"] = {"x": grid.tolist(), "xlabel": "t", "ylabel": f"mean similarity (eta={p.eta:g}, {p.space})",
                          "series": {f"S(t, t={grid[0]:.3g})": sim[:, 0].tolist(),
                                     f"S(t, t={grid[-1]:.3g})": sim[:, -1].tolist()},
                          "levels": {f"alpha={p.alpha:g}": p.alpha} if k == 3 else {}}
        diag["matrix"] = {"grid": grid.tolist(), "values": sim.tolist(), "label": "mean similarity S (Eq. 5)",
                          "title": "optimal-denoiser similarity"}
        return self.result(schedule, inputs, k, cuts, diag)
