"""The import pipeline: read an official file, infer the run config, map the weights one to one, save.

``import_checkpoint(format, file, out, items)`` writes an ordinary msrepro checkpoint (state dict + resolved run
config, :mod:`msrepro.checkpoint`) that ``evaluate``, ``sample``, ``cluster gradient --checkpoint`` and
``train.init_from`` read like any other. The config is: the backbone's preset (``model.preset``, default ``full``)
< the format's conventions (e.g. GroupNorm groups) < ``key=value`` items < what the file's shapes say (an item that
contradicts the file is an error). What the file cannot tell must be given as an item; the error names each key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from msrepro.checkpoint import save_checkpoint
from msrepro.config import parse_overrides, to_dict
from msrepro.runconfig import load_config
from msrepro.convert.base import WEIGHTS, Inferred, OfficialCheckpoint, OfficialFormat, StateDict
from msrepro.convert.edm import EDM, MultistageEDM
from msrepro.convert.keymap import ConversionError
from msrepro.convert.ldm import LDM, MultistageLDM
from msrepro.convert.score_sde import MultistageSDE, ScoreSDE
from msrepro.io import code_version
from msrepro.models import build_denoiser, data_shape


@dataclass
class ImportResult:
    """What ``import_checkpoint`` wrote and how it got there."""

    checkpoint: Path
    config: DictConfig
    format: str
    weights: str
    num_tensors: int
    notes: list[str] = field(default_factory=list)
    extra_files: list[Path] = field(default_factory=list)


def formats() -> dict[str, OfficialFormat]:
    """The supported formats by name."""
    return {f.name: f for f in (ScoreSDE(), MultistageSDE(), EDM(), MultistageEDM(), LDM(), MultistageLDM())}


def get_format(name: str) -> OfficialFormat:
    found = formats()
    if name not in found:
        raise ConversionError(f"unknown format '{name}'; supported: {', '.join(found)}")
    return found[name]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": value}`` (lists are values)."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def split_items(items: Sequence[str], namespace: str) -> tuple[list[str], dict[str, Any]]:
    """(run-config items, ``namespace.*`` items as a flat dict without the namespace)."""
    ours = [i for i in items if not i.startswith(namespace + ".")]
    theirs = [i[len(namespace) + 1:] for i in items if i.startswith(namespace + ".")]
    return ours, flatten(OmegaConf.to_container(parse_overrides(theirs))) if theirs else {}


def resolve_config(fmt: OfficialFormat, inf: Inferred, items: Sequence[str]) -> DictConfig:
    """The run config: preset < format defaults < items < inferred values (a contradicting item is an error)."""
    given = flatten(OmegaConf.to_container(parse_overrides(items))) if items else {}
    missing = {k: hint for k, hint in inf.required.items() if k not in given}
    if missing:
        asks = "; ".join(f"{k}=... ({hint})" for k, hint in missing.items())
        raise ConversionError(f"{fmt.name}: not recorded in the file, pass as key=value: {asks}")
    values = dict(inf.values)
    if inf.attention_levels is not None:
        res = int(given.get("dataset.resolution", values.get("dataset.resolution", 0)))
        values["model.params.attn_resolutions"] = [res >> level for level in inf.attention_levels]
    for key, value in values.items():
        if key in given and given[key] != value:
            raise ConversionError(f"{key}: the file says {value!r}, but {key}={given[key]!r} was passed; drop it")
    layers = [f"model.backbone={fmt.backbone}", f"model.preset={given.get('model.preset', 'full')}"]
    layers += [f"{k}={json.dumps(v)}" for k, v in inf.defaults.items() if k not in given]
    layers += [f"{k}={json.dumps(v)}" for k, v in values.items()]
    return load_config([], [*layers, *items])


def select_weights(ckpt: OfficialCheckpoint, weights: str, source: Path) -> tuple[StateDict, list[str]]:
    """The requested weight set (EMA by default); a file with a single set serves it for either."""
    if weights not in WEIGHTS:
        raise ConversionError(f"--weights: '{weights}' is not valid; allowed: {', '.join(WEIGHTS)}")
    sd = ckpt.weights.get(weights)
    if sd is not None:
        return sd, []
    present = [k for k, v in ckpt.weights.items() if v is not None]
    if ckpt.meta.get("single_set") and present:
        return ckpt.weights[present[0]], [f"{source.name} holds one set of weights (no EMA/raw distinction): "
                                          f"imported as they are"]
    raise ConversionError(f"{source}: no {weights} weights in the file; it has: {', '.join(present) or 'none'} "
                          f"(--weights {' / '.join(present) or '?'})")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def import_checkpoint(fmt_name: str, source: str | Path, out: str | Path, items: Sequence[str] = (),
                      weights: str = "ema") -> ImportResult:
    """Convert the official checkpoint ``source`` (format ``fmt_name``) into the msrepro checkpoint ``out``."""
    fmt, source, out = get_format(fmt_name), Path(source), Path(out)
    ckpt = fmt.read(source)
    sd, notes = select_weights(ckpt, weights, source)
    inf = fmt.infer(sd, ckpt)
    run_items, extra = split_items(items, "vae")
    cfg = resolve_config(fmt, inf, run_items)
    updates = fmt.finish(ckpt, cfg, out, extra)
    if updates:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={json.dumps(v)}" for k, v in updates.items()]))
    model = build_denoiser(cfg)
    channels, _ = data_shape(cfg)
    if inf.channels is not None and channels != inf.channels:
        raise ConversionError(f"dataset.name={cfg.dataset.name}: {channels} channels, but the network's input conv "
                              f"takes {inf.channels}")
    state = fmt.keymap(cfg, model, sd).to_ours(sd, model)
    model.load_state_dict(state, strict=True)
    facts = {k: v for k, v in ckpt.meta.items() if not torch.is_tensor(v)}
    provenance = {"format": fmt.name, "source": str(source.resolve()), "sha256": file_digest(source),
                  "weights": weights, "inferred": inf.values, "defaults": inf.defaults, "meta": facts}
    save_checkpoint(out, {"step": int(ckpt.meta.get("step", 0)), "config": to_dict(cfg), "model": state,
                          "ema": None, "optimizer": None, "code_version": code_version(),
                          "extra": {"imported": json.loads(json.dumps(provenance, default=str))}})
    extra_files = [Path(updates["model.params.vae"])] if "model.params.vae" in updates else []
    return ImportResult(out, cfg, fmt.name, weights, len(state), [*notes, *inf.notes], extra_files)

