"""The training engine: ``train(cfg) -> TrainResult``, resumable, preemptible, data-parallel.

Determinism: every step's randomness is derived from (seed, step): the global batch's images, flips, stage and
noise levels come from one generator identical on every rank (each rank takes its slice), dropout from a
(seed, step, rank) seed. A resumed run therefore repeats the uninterrupted one bitwise on CPU, and a run on W
processes sees the same global batches as one process. The RNG states of torch, numpy and python and the data
position are saved in every checkpoint as well.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from msrepro.config import ConfigError, merge, resolve_config, schema, to_dict, to_yaml
from msrepro.io import append_jsonl, atomic_write_text, code_version
from msrepro.losses import denoising_loss
from msrepro.training.augment import augment
from msrepro.training.builders import (build_early_stopping, build_model, build_optimizer, check_training, has_ema,
                                       heldout_images, learning_rate, noise_setup, pick_device, seed_for)
from msrepro.training.distributed import (DistInfo, any_rank, average_gradients, barrier, init_distributed,
                                          mean_over_ranks)
from msrepro.training.ema import EMA, edm_decay, score_sde_decay
from msrepro.training.heldout import heldout_losses, heldout_set
from msrepro.training.signals import Preempted, catch_preemption
from msrepro.training.state import latest_checkpoint, load_latest, rng_state, save_and_prune, set_rng_state

log = logging.getLogger(__name__)
#: config keys that may differ when an existing run directory is resumed (they do not change what is trained)
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.heldout_every", "train.save_steps", "device", "output_dir", "sample", "eval", "cluster")


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def _comparable(cfg: DictConfig) -> dict:
    d = to_dict(cfg)
    for key in RESUMABLE_CHANGES:
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    return d


def check_same_run(run_dir: Path, cfg: DictConfig) -> None:
    """An existing run directory may only be resumed with the same config (train.steps may grow)."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    old = merge(schema(), resolve_config([saved], preset=False), where=str(saved))
    if _comparable(old) != _comparable(cfg):
        a, b = _comparable(old), _comparable(cfg)
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        raise ConfigError(f"{run_dir} holds a run with a different config (sections differing: {', '.join(diff)}); "
                          f"use another name=..., or --fresh to start this run over")


class Trainer:
    """One training run: model, EMA, optimizer, density and policy, data, held-out set, early stopping."""

    def __init__(self, cfg: DictConfig, info: DistInfo) -> None:
        self.cfg, self.info = cfg, info
        self.device = pick_device(cfg.device, info)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.run_dir = run_dir_of(cfg)
        self.model = build_model(cfg, self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = EMA(self.model) if has_ema(cfg) else None
        self.opt = build_optimizer(cfg, self.params)
        self.density, self.policy = noise_setup(cfg, self.model)
        self.policy.world_size = info.world_size
        self.num_stages = self.policy.num_stages
        self.es = build_early_stopping(cfg.train.early_stopping, self.num_stages, cfg.model.variant, has_ema(cfg))
        self.dataset = self._dataset()
        self.heldout = heldout_set(heldout_images(cfg), self.policy, seed_for(cfg.seed, "heldout"))
        self.step, self.wall_s, self.images = 0, 0.0, 0
        self.stage_counts = [0] * self.num_stages
        self.last_metrics: dict[str, Any] = {}
        self._perm: dict[int, torch.Tensor] = {}
        self.code_version = code_version()

    def _dataset(self):
        from msrepro.datasets import build_dataset

        return build_dataset(self.cfg.dataset)

    # -- data ------------------------------------------------------------------------------------------
    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm:
            self._perm = {epoch: torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(
                seed_for(self.cfg.seed, "epoch", epoch)))}
        return self._perm[epoch]

    def global_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, Any, dict]:
        """(x0, noise, StageBatch, network conditioning) of the global batch of ``step`` (identical on every rank)."""
        n, size = len(self.dataset), self.cfg.train.batch_size
        torch.manual_seed(seed_for(self.cfg.seed, "data", step))  # the dataset's own flips
        x0 = torch.stack([self.dataset[int(self.permutation(i // n)[i % n])]
                          for i in range(step * size, (step + 1) * size)])
        g = torch.Generator().manual_seed(seed_for(self.cfg.seed, "noise", step))
        active = self.es.active() if self.es is not None else None
        sb = self.policy.draw(size, g, g, active)
        noise = torch.randn(x0.shape, generator=g)
        cond = {}
        if self.cfg.train.augment_p > 0:  # EDM's non-leaky augmentation, labels to the network
            x0, cond["augment_labels"] = augment(x0, self.cfg.train.augment_p, g)
        return x0, noise, sb, cond

    # -- one step ----------------------------------------------------------------------------------------
    def train_step(self, step: int) -> float:
        x0, noise, sb, cond = self.global_batch(step)
        per = self.cfg.train.batch_size // self.info.world_size
        sl = slice(self.info.rank * per, (self.info.rank + 1) * per)
        torch.manual_seed(seed_for(self.cfg.seed, "dropout", step, self.info.rank))
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(self.cfg, step)
        self.opt.zero_grad(set_to_none=True)
        dev = self.device
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.cfg.train.precision == "bf16"):
            loss = denoising_loss(self.model, x0[sl].to(dev), sb.sigma[sl].float().to(dev), noise[sl].to(dev),
                                  stage=sb.stage[sl].to(dev), **{k: v[sl].to(dev) for k, v in cond.items()}).mean()
        loss.backward()
        average_gradients(self.params, self.info)
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], self.cfg.train.grad_clip)
        self.opt.step()
        self.update_ema(step)
        for k, c in enumerate(sb.counts(self.num_stages)):
            self.stage_counts[k] += c
        return float(loss.detach())

    def ema_beta(self, step: int) -> float:
        t = self.cfg.train
        if t.ema_decay is not None:
            return score_sde_decay(t.ema_decay, step + 1)
        return edm_decay(t.ema_halflife_kimg, t.batch_size, step * t.batch_size)

    def update_ema(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, self.ema_beta(step), self.stopped_parameters())

    def stopped_parameters(self) -> frozenset[int]:
        """Positions in ``model.parameters()`` of the networks of early-stopped stages (separate variants only:
        a stage owns its encoder and decoder there), whose EMA is frozen with them."""
        if self.es is None or self.es.active() == list(range(self.num_stages)):
            return frozenset()
        net = getattr(self.model, "net", None)
        if not hasattr(net, "stage_modules") or net.shared_encoder:
            return frozenset()
        ids = {id(p) for k, s in enumerate(self.es.stopped) if s is not None
               for m in net.stage_modules(k) for p in m.parameters()}
        return frozenset(i for i, p in enumerate(self.model.parameters()) if id(p) in ids)

    # -- held-out loss, early stopping, metrics ----------------------------------------------------------
    def per_stage(self, losses: dict[str, float]) -> list[float]:
        """The per-stage entries of a :func:`heldout_losses` result (one stage: the ``all`` entry)."""
        return [losses[f"stage{k}"] for k in range(self.num_stages)] if self.num_stages > 1 else [losses["all"]]

    def evaluate(self) -> dict[str, Any]:
        """Held-out losses of the raw (and EMA) weights; feeds early stopping; appended to metrics.jsonl."""
        bs, dev = max(64, self.cfg.train.batch_size), self.device
        raw = mean_over_ranks(heldout_losses(self.model, self.heldout, bs, dev), self.info, dev)
        rec: dict[str, Any] = {"kind": "heldout", "step": self.step, "heldout_loss": raw["all"],
                               "heldout_loss_stage": self.per_stage(raw)}
        watch_ema = self.es is not None and self.es.monitor == "ema"
        if self.ema is not None:
            ema = mean_over_ranks(heldout_losses(self.ema.module, self.heldout, bs, dev,
                                                 None if watch_ema else ("all",)), self.info, dev)
            rec["heldout_loss_ema"] = ema["all"]
            if watch_ema:
                rec["heldout_loss_ema_stage"] = self.per_stage(ema)
        if self.es is not None:
            watched = rec["heldout_loss_ema_stage"] if watch_ema else rec["heldout_loss_stage"]
            for k in self.es.update(watched, self.step):
                log.info("early stopping: stage %d stops at step %d (best held-out loss %.5f)", k, self.step,
                         self.es.best[k])
            rec["early_stopping"] = self.es.state_dict()
        self.log(rec)
        return rec

    def log(self, record: dict[str, Any]) -> None:
        self.last_metrics.update({k: v for k, v in record.items() if k != "kind"})
        if self.info.is_main:
            append_jsonl(self.run_dir / "metrics.jsonl", {**record, "wall_s": round(self.wall_s, 3)})

    # -- checkpoints -------------------------------------------------------------------------------------
    def save(self) -> Path:
        state = {"config": to_dict(self.cfg), "model": self.model.state_dict(),
                 "ema": self.ema.state_dict() if self.ema is not None else None,
                 "optimizer": self.opt.state_dict(), "code_version": self.code_version,
                 "extra": {"rng": rng_state(), "wall_s": self.wall_s, "images": self.images,
                           "stage_counts": list(self.stage_counts), "data_position": self.step *
                           self.cfg.train.batch_size, "early_stopping": self.es.state_dict() if self.es else None,
                           "metrics": dict(self.last_metrics)}}
        path = None
        if self.info.is_main:
            path = save_and_prune(self.run_dir, self.step, state, self.cfg.train.keep_checkpoints,
                                  permanent=self.cfg.train.save_steps)
        barrier(self.info)
        return path or latest_checkpoint(self.run_dir)

    def resume(self) -> bool:
        """Load the newest readable checkpoint of the run directory; False when there is none."""
        found = load_latest(self.run_dir, map_location=str(self.device))
        if found is None:
            return False
        path, state = found
        from msrepro.checkpoint import checkpoint_config

        if _comparable(checkpoint_config(state)) != _comparable(self.cfg):
            raise ConfigError(f"{path} was written by a run with a different config; use another name=..., or "
                              f"--fresh to start this run over")
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        extra = state.get("extra") or {}
        self.step, self.wall_s, self.images = int(state["step"]), float(extra["wall_s"]), int(extra["images"])
        self.stage_counts = list(extra["stage_counts"])
        if self.es is not None and extra.get("early_stopping"):
            self.es.load_state_dict(extra["early_stopping"])
        self.last_metrics = dict(extra.get("metrics") or {})
        set_rng_state(extra["rng"])
        self.trim_metrics()
        log.info("resumed %s at step %d", path, self.step)
        return True

    def trim_metrics(self) -> None:
        """Drop metric lines written after the resumed checkpoint (a killed run's tail would repeat)."""
        import json

        path = self.run_dir / "metrics.jsonl"
        if not self.info.is_main or not path.is_file():
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        keep = []
        for ln in lines:
            try:
                if json.loads(ln).get("step", 0) <= self.step:
                    keep.append(ln)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        atomic_write_text(path, "".join(k + "\n" for k in keep))

    # -- the loop ------------------------------------------------------------------------------------------
    def due(self, every: int | None) -> bool:
        return bool(every) and self.step % every == 0

    def finished(self) -> bool:
        return self.step >= self.cfg.train.steps or (self.es is not None and not self.es.active())

    def run(self, progress: bool = True) -> TrainResult:
        from tqdm import tqdm

        t = self.cfg.train
        every_eval = t.heldout_every or t.checkpoint_every
        save_steps = set(int(s) for s in t.save_steps)  # kept for good (compute-to-quality curves)
        if self.step == 0 and not self.resume():
            self.evaluate()  # the loss before training
        bar = tqdm(total=t.steps, initial=self.step, desc=f"train {self.cfg.name}", unit="step",
                   disable=not (progress and self.info.is_main), dynamic_ncols=True)
        window: list[float] = []
        with catch_preemption() as flag, bar:
            while not self.finished():
                t0 = time.perf_counter()
                window.append(self.train_step(self.step))
                self.step += 1
                self.images += t.batch_size
                self.wall_s += time.perf_counter() - t0
                bar.update(1)
                if self.due(t.log_every):
                    self.log_train(window, bar)
                    window = []
                if self.due(every_eval) and not self.finished():
                    self.evaluate()
                if (self.due(t.checkpoint_every) or self.step in save_steps) and not self.finished():
                    self.save()
                if any_rank(bool(flag), self.info, self.device):
                    raise Preempted(self.step, self.save())
        return self.finish()

    def log_train(self, window: list[float], bar: Any) -> None:
        loss = sum(window) / max(1, len(window))
        bar.set_postfix(loss=f"{loss:.4f}")
        self.log({"kind": "train", "step": self.step, "loss": loss, "lr": learning_rate(self.cfg, self.step - 1),
                  "ema_beta": self.ema_beta(self.step - 1) if self.ema is not None else None,
                  "stage_counts": list(self.stage_counts), "images": self.images})

    def finish(self) -> TrainResult:
        """The final held-out evaluation and checkpoint (skipped if this step's checkpoint already exists)."""
        last = latest_checkpoint(self.run_dir)
        if last is None or int(last.stem.split("-")[1]) != self.step:
            self.evaluate()
            last = self.save()
        metrics = {**self.last_metrics, "wall_s": self.wall_s, "stage_counts": list(self.stage_counts),
                   "images": self.images}
        if self.es is not None:  # per stage: the step early stopping stopped it at, None = not triggered
            metrics["early_stopped"] = {str(k): s for k, s in enumerate(self.es.stopped)}
        return TrainResult(self.run_dir, Path(last), self.step, metrics)


def prepare_run_dir(cfg: DictConfig, info: DistInfo, fresh: bool = False) -> Path:
    """Create (or, with ``fresh``, clear) the run directory and write the resolved config.yaml."""
    import shutil

    run_dir = run_dir_of(cfg)
    if fresh and info.is_main and run_dir.exists():
        for sub in ("checkpoints", "metrics.jsonl", "config.yaml"):
            p = run_dir / sub
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    barrier(info)
    check_same_run(run_dir, cfg)
    if info.is_main:
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    return run_dir


def train(cfg: DictConfig, *, progress: bool = True, fresh: bool = False, resume: bool | None = None) -> TrainResult:
    """Train the run ``cfg`` in ``output_dir/name``; an existing run directory resumes from its newest readable
    checkpoint. ``cfg`` is a validated run config (:func:`msrepro.runconfig.load_config`). ``fresh``: start over (deletes its checkpoints and metrics); ``resume=True``: require a checkpoint.

    Raises :class:`Preempted` after saving a checkpoint on SIGTERM/SIGUSR2. Data-parallel under torchrun/submitit.
    """
    info = init_distributed(pick_device(cfg.device, DistInfo()).type)
    check_training(cfg, info.world_size)
    if resume and latest_checkpoint(run_dir_of(cfg)) is None:
        raise ConfigError(f"--resume: no checkpoint in {run_dir_of(cfg) / 'checkpoints'}")
    if not fresh:
        check_same_run(run_dir_of(cfg), cfg)  # read-only: a different config fails before any work
    trainer = Trainer(cfg, info)  # network, data, cut points: a missing file fails before the run dir is written
    prepare_run_dir(cfg, info, fresh)
    return trainer.run(progress)
