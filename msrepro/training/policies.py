"""Stage policies: how a training batch meets the stages (SPEC 2), registered in ``STAGE_POLICIES``.

Stage k owns the schedule-time interval ``[cut_{k-1}, cut_k)`` with open outer ends (exactly the routing of
:meth:`msrepro.boundaries.StageBoundaries.stage_of_t`); noise levels are drawn from the run's noise density
restricted to the chosen stage's interval, so every variant, ``separate`` included, trains each decoder only on its
own interval (the official separate training ignored its interval arguments, SPEC 4).

- ``stage_uniform`` (official DPM-Solver): one stage per batch, uniformly among the active stages.
- ``native`` (official EDM): one stage per batch, chosen with the density's own mass of each stage (EDM: 96.1 /
  3.5 / 0.35 %); each sample's sigma then follows the native density exactly.
- ``per_sample`` (ours): every sample picks its own stage, uniformly (``stage_weights: uniform``) or by the
  density's masses (``stage_weights: density``, i.e. plain draws from the density routed per sample).
- ``per_rank`` (official LDM): the stage is fixed per process (rank r trains stage r mod K).

A batch-wide stage is drawn from the ``shared`` generator (same seed on every DDP rank, so ranks agree);
everything per sample from ``local``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from msrepro.boundaries import StageBoundaries
from msrepro.config import ConfigError, check_params
from msrepro.registry import STAGE_POLICIES, RegistryError
from msrepro.training.densities import NoiseDensity, NoiseDraw

STAGE_WEIGHTS = ("uniform", "density")


@dataclass
class StageBatch:
    """Noise levels of one batch and the stage each sample is routed to (long tensor [B])."""

    t: torch.Tensor
    sigma: torch.Tensor
    stage: torch.Tensor

    def counts(self, num_stages: int) -> list[int]:
        return torch.bincount(self.stage, minlength=num_stages).tolist()


def stage_edges(boundaries: StageBoundaries | None) -> list[float]:
    """[-inf, cut_1, ..., cut_{K-1}, inf]: stage k is [edges[k], edges[k+1]) in schedule time."""
    cuts = list(boundaries.cuts) if boundaries is not None else []
    return [-math.inf, *cuts, math.inf]


class StagePolicy:
    """Draws (t, sigma, stage) for a batch from a density and the stage boundaries; ``active`` stages only."""

    name: ClassVar[str] = ""
    Config: ClassVar[type | None] = None

    def __init__(self, density: NoiseDensity, boundaries: StageBoundaries | None, **params: Any) -> None:
        self.density = density
        self.edges = stage_edges(boundaries)
        self.num_stages = len(self.edges) - 1
        self.masses = [density.mass(a, b) for a, b in zip(self.edges[:-1], self.edges[1:])]
        self.params = params

    def interval(self, k: int) -> tuple[float, float]:
        return self.edges[k], self.edges[k + 1]

    def draw_in(self, k: int, n: int, generator: torch.Generator) -> NoiseDraw:
        """n noise levels from the density restricted to stage k."""
        return self.density.sample(n, generator, *self.interval(k))

    def weights(self, active: Sequence[int], kind: str) -> torch.Tensor:
        w = torch.tensor([self.masses[k] if kind == "density" else 1.0 for k in active], dtype=torch.float64)
        if not w.sum() > 0:
            raise ValueError(f"stage policy '{self.name}': the active stages {list(active)} have no mass")
        return w / w.sum()

    def pick(self, active: Sequence[int], kind: str, n: int, generator: torch.Generator) -> torch.Tensor:
        idx = torch.multinomial(self.weights(active, kind), n, replacement=True, generator=generator)
        return torch.tensor(list(active), dtype=torch.long)[idx]

    def one_stage(self, k: int, n: int, local: torch.Generator) -> StageBatch:
        d = self.draw_in(k, n, local)
        return StageBatch(d.t, d.sigma, torch.full((n,), k, dtype=torch.long))

    def draw(self, n: int, shared: torch.Generator, local: torch.Generator,
             active: Sequence[int] | None = None) -> StageBatch:
        raise NotImplementedError


@STAGE_POLICIES.register("stage_uniform")
class StageUniform(StagePolicy):
    """One stage per batch, uniformly among the active stages (official DPM-Solver multistage training)."""

    name = "stage_uniform"

    def draw(self, n, shared, local, active=None):
        k = int(self.pick(active or range(self.num_stages), "uniform", 1, shared))
        return self.one_stage(k, n, local)


@STAGE_POLICIES.register("native")
class Native(StagePolicy):
    """One stage per batch, with probability = the density's mass of the stage (official EDM multistage)."""

    name = "native"

    def draw(self, n, shared, local, active=None):
        k = int(self.pick(active or range(self.num_stages), "density", 1, shared))
        return self.one_stage(k, n, local)


@STAGE_POLICIES.register("per_sample")
class PerSample(StagePolicy):
    """Mixed batches: each sample picks a stage (uniformly, or by density mass) and is routed to its decoder."""

    name = "per_sample"

    @dataclass
    class Config:
        stage_weights: str = "uniform"  # uniform (each stage equally often) or density (the density's masses)

    def __init__(self, density, boundaries, stage_weights: str = "uniform") -> None:
        if stage_weights not in STAGE_WEIGHTS:
            raise ConfigError(f"train.params.stage_weights: '{stage_weights}' is not valid; allowed: "
                              f"{', '.join(STAGE_WEIGHTS)}")
        super().__init__(density, boundaries, stage_weights=stage_weights)

    def draw(self, n, shared, local, active=None):
        stage = self.pick(active or range(self.num_stages), self.params["stage_weights"], n, local)
        t = torch.empty(n, dtype=torch.float64)
        sigma = torch.empty(n, dtype=torch.float64)
        for k in stage.unique().tolist():
            idx = (stage == k).nonzero(as_tuple=True)[0]
            d = self.draw_in(k, len(idx), local)
            t[idx], sigma[idx] = d.t, d.sigma
        return StageBatch(t, sigma, stage)


@STAGE_POLICIES.register("per_rank")
class PerRank(StagePolicy):
    """Stage fixed per process (official LDM multistage: one GPU per stage): the slice of rank r, in a global
    batch split over ``world_size`` ranks, trains stage ``r mod K``; needs a multiple of K processes. Once stages
    have stopped early, rank r trains the ``r mod A``-th of the A stages still active."""

    name = "per_rank"
    world_size: int = 1  # set by the trainer

    def draw(self, n, shared, local, active=None):
        w = self.world_size
        if w % self.num_stages or n % w:
            raise ConfigError(f"train.stage_policy=per_rank: {w} process(es) for {self.num_stages} stages; needs a "
                              f"multiple of {self.num_stages} processes and a batch they divide")
        stages = list(range(self.num_stages)) if active is None else list(active)
        per, parts = n // w, []
        for r in range(w):
            parts.append(self.one_stage(stages[r % len(stages)], per, local))
        return StageBatch(*(torch.cat([getattr(p, f) for p in parts]) for f in ("t", "sigma", "stage")))


def build_policy(name: str, params: Any, density: NoiseDensity, boundaries: StageBoundaries | None) -> StagePolicy:
    """The stage policy ``train.stage_policy`` with options ``train.params`` (checked against its Config)."""
    try:
        cls = STAGE_POLICIES.get(name)
    except RegistryError as exc:
        raise ConfigError(f"train.stage_policy: {exc}") from None
    opts = dict(params or {})
    if getattr(cls, "Config", None) is not None:
        opts = dict(check_params(cls, opts, "train.params"))
    elif opts:
        raise ConfigError(f"train.params: stage policy '{name}' takes no options, got {sorted(opts)}")
    return cls(density, boundaries, **opts)
