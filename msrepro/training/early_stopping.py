"""Early stopping per stage on the held-out denoising loss (the ``separate + ES`` rows of Table 3).

``train.early_stopping: {patience: P, min_delta: d, monitor: ema}``: a stage stops once its held-out loss has not
improved on its best by more than d for P consecutive evaluations; a stopped stage is no longer drawn by the stage
policy, so its (separate) network is frozen, and so are its EMA weights. Training ends when every stage has stopped.
Empty mapping = off.

``monitor`` names whose held-out loss is watched: ``ema`` (default), the EMA weights, the ones that are sampled;
``raw``, the trained weights. At a constant learning rate the raw weights' loss jitters by a few per cent from one
evaluation to the next, so a small patience stops a stage on that noise while its loss is still falling (tiny
preset, issue 10: every stage stopped at steps 260-500 of 800 with no sign of overfitting).
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
    monitor: str = "ema"       # ema | raw: whose held-out loss is watched


@dataclass
class EarlyStopping:
    """Per-stage best loss, evaluations since the best, and stop step (None while the stage trains)."""

    num_stages: int
    patience: int = 5
    min_delta: float = 0.0
    monitor: str = "ema"
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


MONITORS = ("ema", "raw")


def build_early_stopping(options: Any, num_stages: int, variant: str, has_ema: bool = True) -> EarlyStopping | None:
    """None when ``train.early_stopping`` is empty; options checked; only for networks a stage owns alone."""
    if not options:
        return None
    opts = merge(OmegaConf.structured(EarlyStoppingConfig), options, where="train.early_stopping")
    if variant not in ("unified", "separate", "separate_tp"):
        raise ConfigError(f"train.early_stopping: per-stage early stopping needs one network per stage "
                          f"(variant unified, separate or separate_tp); '{variant}' shares its encoder")
    if opts.patience < 1:
        raise ConfigError(f"train.early_stopping.patience: must be >= 1, got {opts.patience}")
    if opts.monitor not in MONITORS:
        raise ConfigError(f"train.early_stopping.monitor: '{opts.monitor}' is not one of {', '.join(MONITORS)}")
    if opts.monitor == "ema" and not has_ema:
        raise ConfigError("train.early_stopping.monitor=ema watches the EMA weights, but this run keeps none "
                          "(train.ema_decay and train.ema_halflife_kimg are unset): set monitor=raw or an EMA")
    return EarlyStopping(num_stages, int(opts.patience), float(opts.min_delta), str(opts.monitor))
