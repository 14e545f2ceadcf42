"""Backbone presets: named layers of run-config overrides (``full`` = the paper, ``tiny``/``smoke`` = digits)."""

from __future__ import annotations

from typing import Any

from msrepro.config import ConfigError
from msrepro.registry import BACKBONES, RegistryError


def preset_names(backbone: str) -> list[str]:
    return sorted(getattr(BACKBONES.get(backbone), "presets", {}) or {})


def preset_overrides(backbone: str, preset: str) -> dict[str, Any]:
    """The config overrides of ``backbone``'s ``preset``; unknown names list the valid ones."""
    try:
        adapter = BACKBONES.get(backbone)
    except RegistryError as exc:
        raise ConfigError(f"model.backbone: {exc}") from None
    presets = getattr(adapter, "presets", {}) or {}
    if preset not in presets:
        raise ConfigError(f"model.preset: backbone '{backbone}' has no preset '{preset}'. "
                          f"Valid presets: {', '.join(sorted(presets)) or '(none)'}")
    out = dict(presets[preset])
    out.setdefault("model", {})
    out["model"] = {**out["model"], "backbone": backbone, "preset": preset}
    return out
