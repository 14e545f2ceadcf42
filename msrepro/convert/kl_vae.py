"""latent-diffusion's KL first stage (``AutoencoderKL``: taming ``Encoder``/``Decoder``) as an msrepro VAE checkpoint.

Layout (under ``first_stage_model.``): ``encoder.conv_in``, ``encoder.down.I.block.J`` / ``.attn.J`` /
``.downsample.conv``, ``encoder.mid.block_1`` / ``attn_1`` / ``block_2``, ``encoder.norm_out``, ``encoder.conv_out``,
the mirrored ``decoder.*`` (``decoder.up.I`` indexed by level, outermost 0), ``quant_conv``, ``post_quant_conv``.
``ResnetBlock``: ``norm1, conv1, norm2, conv2, nin_shortcut``; ``AttnBlock``: ``norm, q, k, v, proj_out``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from msrepro.checkpoint import save_checkpoint
from msrepro.config import ConfigError, merge, to_dict
from msrepro.convert.base import StateDict, indices, multiple, shape
from msrepro.convert.keymap import ConversionError, KeyMap, Rule, block_rules
from msrepro.io import code_version
from msrepro.backbones.ldm.autoencoder_config import VAERunConfig, validate_vae_config
from msrepro.backbones.ldm.autoencoder_training import build_vae

RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "shortcut"}
ATTN = {n: n for n in ("norm", "q", "k", "v", "proj_out")}
LOSS = "the autoencoder's training loss (LPIPS, discriminator): not part of the network"


def is_vq(sd: StateDict) -> bool:
    """A VQ first stage (``VQModel``: a codebook), which msrepro's KL-VAE cannot hold."""
    return any(k.startswith("quantize.") for k in sd)


def infer_vae(sd: StateDict, latent_resolution: int) -> tuple[dict[str, Any], int, int]:
    """(VAEParams values, image channels, image resolution) from the first stage's shapes."""
    ch, channels = shape(sd, "encoder.conv_in.weight")[:2]
    levels = indices(sd, "encoder.down.")
    if not levels:
        raise ConversionError("first_stage_model: no encoder.down.N.* keys: not a taming/LDM autoencoder")
    blocks = len(indices(sd, "encoder.down.0.block."))
    mult = [multiple(shape(sd, f"encoder.down.{i}.block.0.conv1.weight")[0], ch, f"encoder.down.{i}") for i in levels]
    resolution = latent_resolution * 2 ** (len(levels) - 1)
    attn = [resolution >> i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in sd]
    z = shape(sd, "encoder.conv_out.weight")[0] // 2
    if shape(sd, "quant_conv.weight")[0] != 2 * z:
        raise ConversionError(f"first_stage_model: embed_dim {shape(sd, 'quant_conv.weight')[0] // 2} differs from "
                              f"z_channels {z}; msrepro's KL-VAE has embed_dim = z_channels")
    params = {"ch": ch, "ch_mult": mult, "num_res_blocks": blocks, "attn_resolutions": attn, "z_channels": z,
              "norm_groups": 32}
    return params, channels, resolution


def _level_rules(blocks: nn.ModuleList, ours: str, off: str) -> list[Rule]:
    rules, counts = [], {"block": 0, "attn": 0}
    for j, m in enumerate(blocks):
        kind = "attn" if hasattr(m, "q") else "block"
        table = ATTN if kind == "attn" else RESNET
        rules += block_rules(table, f"{ours}.{j}", f"{off}.{kind}.{counts[kind]}", list(m.state_dict()))
        counts[kind] += 1
    return rules


def _mid(ours: str, off: str, mid: nn.Module) -> list[Rule]:
    return [r for i, name in enumerate(("block_1", "attn_1", "block_2"))
            for r in block_rules(ATTN if i == 1 else RESNET, f"{ours}.{i}", f"{off}.{name}",
                                 list(mid[i].state_dict()))]


def _plain(ours: str, off: str) -> list[Rule]:
    return [Rule(f"{ours}.{leaf}", (f"{off}.{leaf}",)) for leaf in ("weight", "bias")]


def vae_keymap(vae: nn.Module, sd: StateDict) -> KeyMap:
    """msrepro ``AutoencoderKL`` keys <- latent-diffusion's (the scale factor is filled by the caller)."""
    enc, dec, levels = vae.encoder, vae.decoder, len(vae.encoder.levels)
    rules = _plain("encoder.conv_in", "encoder.conv_in")
    for i, blocks in enumerate(enc.levels):
        rules += _level_rules(blocks, f"encoder.levels.{i}", f"encoder.down.{i}")
    for i in range(len(enc.down)):
        rules += _plain(f"encoder.down.{i}.conv", f"encoder.down.{i}.downsample.conv")
    rules += _mid("encoder.mid", "encoder.mid", enc.mid)
    rules += _plain("encoder.norm_out", "encoder.norm_out") + _plain("encoder.conv_out", "encoder.conv_out")
    rules += _plain("decoder.conv_in", "decoder.conv_in") + _mid("decoder.mid", "decoder.mid", dec.mid)
    for k, blocks in enumerate(dec.levels):  # msrepro: innermost first; taming: decoder.up[level]
        rules += _level_rules(blocks, f"decoder.levels.{k}", f"decoder.up.{levels - 1 - k}")
    for k in range(len(dec.up)):
        rules += _plain(f"decoder.up.{k}.conv", f"decoder.up.{levels - 1 - k}.upsample.conv")
    rules += _plain("decoder.norm_out", "decoder.norm_out") + _plain("decoder.conv_out", "decoder.conv_out")
    rules += _plain("quant_conv", "quant_conv") + _plain("post_quant_conv", "post_quant_conv")
    return KeyMap(rules, {k: LOSS for k in sd if k.startswith("loss.")}, provided=("scale_factor",))


def write_vae(sd: StateDict, latent_resolution: int, scale_factor: float, items: dict[str, Any],
              out: Path) -> Path:
    """Convert the KL first stage ``sd`` into a ``msrepro train-vae`` checkpoint at ``out``."""
    params, channels, resolution = infer_vae(sd, latent_resolution)
    given = {k: v for k, v in items.items() if k != "scale_factor"}
    cfg = merge(OmegaConf.structured(VAERunConfig), {"name": out.stem, "preset": "full", "model": params,
                                                      "dataset": {"resolution": resolution}},
                OmegaConf.from_dotlist([f"{k}={v}" for k, v in given.items()]), where="vae.* items")
    validate_vae_config(cfg)
    try:
        vae = build_vae(cfg)
    except ValueError as exc:
        raise ConfigError(f"vae: {exc}") from None
    if vae.in_channels != channels:
        raise ConversionError(f"vae.dataset.name={cfg.dataset.name}: {vae.in_channels} channels, but the first "
                              f"stage's input conv takes {channels}")
    keymap = vae_keymap(vae, sd)
    state = keymap.to_ours(sd, vae)
    state["scale_factor"] = torch.tensor(float(scale_factor))
    vae.load_state_dict(state, strict=True)
    return save_checkpoint(out, {"kind": "vae", "step": 0, "config": to_dict(cfg), "model": state, "ema": None,
                                 "optimizer": None, "scale_factor": float(scale_factor), "metrics": {},
                                 "code_version": code_version()})
