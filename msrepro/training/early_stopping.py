"""Early stopping per stage on the held-out denoising loss (the ``separate + ES`` rows of Table 3).

``train.early_stopping: {patience: P, min_delta: d}``: a stage stops once its held-out loss has not improved on its
best by more than d for P consecutive evaluations; a stopped stage is no longer drawn by the stage policy, so its
(separate) network is frozen. Training ends when every stage has stopped. Empty mapping = off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from msrepro.config import ConfigError, merge


@dataclass
class EarlyStoppingConfig:
    patience: int = 5          # evaluations without improvement before a stage stops
    min_delta: float = 0.0     # improvement smaller than this does not count


@dataclass
class EarlyStopping:
    """Per-stage best loss, evaluations since the best, and stop step (None while the stage trains)."""

    num_stages: int
    patience: int = 5
    min_delta: float = 0.0
    best: list[float] = field(default_factory=list)
    bad: list[int] = field(default_factory=list)
    stopped: list[int | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.best = self.best or [float("inf")] * self.num_stages
        self.bad = self.bad or [0] * self.num_stages
        self.stopped = self.stopped or [None] * self.num_stages

    def active(self) -> list[int]:
        return [k for k in range(self.num_stages) if self.stopped[k] is None]

    def update(self, losses: list[float], step: int) -> list[int]:
        """Record one evaluation; return the stages that stop now."""
        now = []
        for k in self.active():
            if losses[k] < self.best[k] - self.min_delta:
                self.best[k], self.bad[k] = losses[k], 0
            else:
                self.bad[k] += 1
                if self.bad[k] >= self.patience:
                    self.stopped[k] = step
                    now.append(k)
        return now

    def state_dict(self) -> dict[str, Any]:
        return {"best": list(self.best), "bad": list(self.bad), "stopped": list(self.stopped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad, self.stopped = list(state["best"]), list(state["bad"]), list(state["stopped"])


def build_early_stopping(options: Any, num_stages: int, variant: str) -> EarlyStopping | None:
    """None when ``train.early_stopping`` is empty; options checked; only for networks a stage owns alone."""
    if not options:
        return None
    opts = merge(OmegaConf.structured(EarlyStoppingConfig), options, where="train.early_stopping")
    if variant not in ("unified", "separate", "separate_tp"):
        raise ConfigError(f"train.early_stopping: per-stage early stopping needs one network per stage "
                          f"(variant unified, separate or separate_tp); '{variant}' shares its encoder")
    if opts.patience < 1:
        raise ConfigError(f"train.early_stopping.patience: must be >= 1, got {opts.patience}")
    return EarlyStopping(num_stages, int(opts.patience), float(opts.min_delta))
