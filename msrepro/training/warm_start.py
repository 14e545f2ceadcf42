"""Warm start (an extension beyond the paper): a new run's networks initialised from a trained checkpoint.

``train.init_from=CKPT`` (any msrepro checkpoint of the same backbone, e.g. a unified model brought in with
``msrepro import``; its EMA weights when it has them) and ``train.init_mode``:

- ``encoder``: every encoder of the run (the shared multistage encoder, or each ``separate`` one) starts as the
  checkpoint's encoder; the decoders keep their fresh initialisation;
- ``all`` (default): as ``encoder``, and every decoder whose shapes equal the checkpoint's decoder (the same
  stage's when the stage counts agree, else its first) starts as that decoder; tailored decoders of other widths
  keep their fresh initialisation.

Encoders must match one to one (same backbone options and encoder width): a mismatch is an error naming the key.
It applies when a run starts; a resumed run continues from its own checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from msrepro.checkpoint import checkpoint_config, load_checkpoint
from msrepro.config import ConfigError

log = logging.getLogger(__name__)
MODES = ("encoder", "all")


def check_warm_start(cfg: DictConfig) -> None:
    """``train.init_mode`` is one of :data:`MODES` (the file is checked when the run starts)."""
    if cfg.train.init_mode not in MODES:
        raise ConfigError(f"train.init_mode: '{cfg.train.init_mode}' is not valid; allowed: {', '.join(MODES)}")


def _part(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def _mismatch(module: nn.Module, source: dict[str, torch.Tensor]) -> str | None:
    """None if ``source`` fills ``module`` one to one, else the first differing key."""
    mine = module.state_dict()
    for key in sorted(set(mine) | set(source)):
        if key not in mine or key not in source or mine[key].shape != source[key].shape:
            have = tuple(source[key].shape) if key in source else "missing"
            return f"{key} (checkpoint: {have}, this run: {tuple(mine[key].shape) if key in mine else 'missing'})"
    return None


def warm_start(model: nn.Module, cfg: DictConfig) -> dict[str, list[int]]:
    """Copy ``cfg.train.init_from``'s encoder (and, for mode ``all``, fitting decoders) into ``model.net``."""
    path = Path(cfg.train.init_from)
    if not path.is_file():
        raise ConfigError(f"train.init_from: checkpoint not found: {path}")
    state = load_checkpoint(path)
    source_cfg = checkpoint_config(state)
    if source_cfg.model.backbone != cfg.model.backbone:
        raise ConfigError(f"train.init_from: {path} is a '{source_cfg.model.backbone}' model; this run trains "
                          f"'{cfg.model.backbone}'")
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    net, encoder = model.net, _part(weights, "net.encoders.0.")
    for k, enc in enumerate(net.encoders):
        bad = _mismatch(enc, encoder)
        if bad:
            raise ConfigError(f"train.init_from: {path}'s encoder does not fit encoder {k} of this run: {bad}")
        enc.load_state_dict(encoder)
    n_src = len({k.split(".")[2] for k in weights if k.startswith("net.decoders.")})
    copied = []
    for k, dec in enumerate(net.decoders if cfg.train.init_mode == "all" else []):
        source = _part(weights, f"net.decoders.{k if n_src == len(net.decoders) else 0}.")
        if _mismatch(dec, source) is None:
            dec.load_state_dict(source)
            copied.append(k)
    log.info("warm start from %s: %d encoder(s); decoders %s (the others keep their initialisation)", path,
             len(net.encoders), copied)
    return {"encoders": list(range(len(net.encoders))), "decoders": copied}
