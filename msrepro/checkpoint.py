"""Checkpoints: state dicts plus the resolved run config, never pickled code (loaded with weights_only=True).

Layout of a checkpoint file (a plain dict)::

    {"format": "msrepro-checkpoint-v1", "step": int, "config": <resolved run config as a dict>,
     "model": state_dict, "ema": state_dict | None, "optimizer": state_dict | None, "extra": {...},
     "code_version": {"git_commit": ..., "git_dirty": ...}}

Rebuilding goes through the registry (``build_denoiser(config)``), so it needs only the installed package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from msrepro.io import atomic_write

FORMAT = "msrepro-checkpoint-v1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (with ``format`` added) atomically: temp file in the same folder, fsync, rename."""
    state = {"format": FORMAT, **state}
    return atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False
                    ) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a missing or foreign file raises a clear error. ``mmap``: map
    the tensors instead of reading them (cheap when only the config is needed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an msrepro checkpoint (expected format '{FORMAT}')")
    return state


def checkpoint_config(state: dict[str, Any]) -> DictConfig:
    """The resolved run config stored in a checkpoint, re-validated against today's schema."""
    from msrepro.config import merge, schema

    return merge(schema(), OmegaConf.create(state["config"]), where="checkpoint config")


def read_config(path: str | Path) -> DictConfig:
    """The run config of a checkpoint file, without reading its weights."""
    return checkpoint_config(load_checkpoint(path, mmap=True))


def load_model(path: str | Path, *, ema: bool = True, map_location: str | torch.device = "cpu"):
    """(denoiser in eval mode, run config) from a checkpoint; the EMA weights when present and ``ema``."""
    from msrepro.models import build_denoiser

    state = load_checkpoint(path, map_location)
    cfg = checkpoint_config(state)
    model = build_denoiser(cfg)
    weights = state.get("ema") if ema and state.get("ema") is not None else state["model"]
    model.load_state_dict(weights)
    return model.to(map_location).eval(), cfg
