"""Run-directory checkpoints: ``checkpoints/ckpt-{step:08d}.pt``, atomic, last N kept (plus the permanent
``train.save_steps``), corrupt ones skipped."""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from msrepro.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)
PATTERN = re.compile(r"^ckpt-(\d{8,})\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"ckpt-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints, oldest first (by step)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run directory, or None."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_latest(run_dir: str | Path, map_location: str = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest *readable* checkpoint; a damaged one is skipped with a warning (falls back to the previous)."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path, map_location)
        except Exception as exc:  # torch.load raises many types on a truncated or corrupt file
            log.warning("checkpoint %s is unreadable (%s: %s); falling back to the previous one",
                        path, type(exc).__name__, exc)
    return None


def checkpoint_step(path: str | Path) -> int:
    """The training step of a checkpoint file named ``ckpt-{step:08d}.pt``."""
    m = PATTERN.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not named ckpt-<step>.pt")
    return int(m.group(1))


def save_and_prune(run_dir: str | Path, step: int, state: dict[str, Any], keep: int,
                   permanent: Iterable[int] = ()) -> Path:
    """Write the step's checkpoint atomically, then delete all but the newest ``keep``; the checkpoints of the
    ``permanent`` steps are never deleted and do not count towards ``keep``."""
    path = save_checkpoint(checkpoint_path(run_dir, step), {"step": step, **state})
    keep_forever = set(int(s) for s in permanent)
    rolling = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) not in keep_forever or p == path]
    for old in rolling[:-keep]:
        old.unlink(missing_ok=True)
    return path


# -- RNG states (weights_only-loadable: tensors, ints, lists) ---------------------------------------------
def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states."""
    np_state = np.random.get_state()
    py = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "python": [py[0], list(py[1]), py[2]]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
