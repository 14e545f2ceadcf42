"""What an official checkpoint format provides: reading, inferring the architecture, and its key map."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import nn

from msrepro.convert.keymap import ConversionError, KeyMap

StateDict = dict[str, torch.Tensor]
WEIGHTS = ("ema", "raw")


@dataclass
class OfficialCheckpoint:
    """An official file as plain data: the weight sets it holds, facts it records, and any further parts."""

    weights: dict[str, StateDict | None]        # "ema" / "raw" -> official state dict (None: not in the file)
    meta: dict[str, Any] = field(default_factory=dict)    # e.g. step, resolution recorded by the file
    parts: dict[str, StateDict] = field(default_factory=dict)  # e.g. LDM's first stage


@dataclass
class Inferred:
    """The run config as far as the file shows it.

    ``values``: read from the shapes and names (a conflicting ``key=value`` is an error); ``defaults``: the
    format's conventions (a ``key=value`` overrides them); ``required``: key -> hint, for what the file cannot
    tell (the user must pass each).
    """

    values: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    required: dict[str, str] = field(default_factory=dict)
    channels: int | None = None                 # input channels of the network (checked against the dataset)
    attention_levels: list[int] | None = None   # DDPM++: levels with attention (-> attn_resolutions once the
                                                # resolution is known)
    notes: list[str] = field(default_factory=list)  # printed by the importer (what was assumed)


class OfficialFormat:
    """One official checkpoint format (subclasses set the class attributes and the three hooks)."""

    name: ClassVar[str] = ""
    backbone: ClassVar[str] = ""                # the msrepro backbone the network maps onto

    def read(self, path: Path) -> OfficialCheckpoint:
        raise NotImplementedError

    def infer(self, sd: StateDict, ckpt: OfficialCheckpoint) -> Inferred:
        raise NotImplementedError

    def keymap(self, cfg: DictConfig, model: nn.Module, sd: StateDict) -> KeyMap:
        raise NotImplementedError

    def finish(self, ckpt: OfficialCheckpoint, cfg: DictConfig, out: Path, items: dict[str, Any]) -> dict[str, Any]:
        """Write any further outputs (LDM's first stage); returns config updates (dotted key -> value)."""
        return {}


def strip_prefix(sd: StateDict, prefix: str) -> StateDict:
    """``sd`` without ``prefix`` on every key (keys that lack it are kept as they are)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def indices(sd: StateDict, prefix: str) -> list[int]:
    """Sorted distinct integers N of keys ``prefix + 'N.' + ...``."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def submodule(sd: StateDict, prefix: str) -> StateDict:
    """The entries under ``prefix`` (a module path ending in '.'), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def shape(sd: StateDict, key: str) -> tuple[int, ...]:
    """The shape of ``sd[key]``; a missing key is a ConversionError naming it."""
    if key not in sd:
        raise ConversionError(f"expected key '{key}' is not in the file (not this format, or another architecture)")
    return tuple(sd[key].shape)


def multiple(value: int, base: int, what: str) -> int:
    """``value / base`` as an integer, or a ConversionError naming ``what``."""
    if base <= 0 or value % base:
        raise ConversionError(f"{what}: width {value} is not a multiple of the base width {base}")
    return value // base


def load_weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a file that needs more (pickled code) is an error that says so."""
    import pickle

    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path}: cannot be read with torch.load(weights_only=True), i.e. without running "
                              f"code from the file ({first}); re-save its state dicts with torch.save in the "
                              f"official code base and import that file") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ConversionError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
