"""score_sde (``NCSNpp``) and the authors' multistage fork (``NCSNpp_multimodel``): DDPM++ on the VP SDE.

Files: ``run_lib.py``'s ``checkpoint_N.pth`` / ``checkpoint-meta.pth``, ``{"model": state_dict, "ema":
{"decay", "num_updates", "shadow_params": [tensor, ...]}, "optimizer": ..., "step": int}``, keys prefixed
``module.`` (DataParallel). The EMA is a list in ``model.parameters()`` order; it is paired with the model's
parameter names. A bare state dict is accepted too (its weights count as raw).

Layout: score_sde keeps every layer in one flat ``all_modules`` list (``0``/``1`` the two embedding Linears,
``2`` the input conv, then residual blocks ``ResnetBlockBigGANpp`` (``GroupNorm_0, Conv_0, Dense_0, GroupNorm_1,
Conv_1, Conv_2``), ``AttnBlockpp`` (``GroupNorm_0, NIN_0..3``; NIN_0/1/2 = q/k/v become msrepro's fused qkv conv),
the input-pyramid ``Downsample`` (``Conv2d_0``), ..., the output GroupNorm and conv). The fork splits it into
``en_modules`` (up to the middle block) and ``de_modules.K`` (one list per stage decoder).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig
from torch import nn

from msrepro.convert.base import (Inferred, OfficialCheckpoint, OfficialFormat, StateDict, indices, load_weights_only,
                                  multiple, shape, strip_prefix, submodule)
from msrepro.convert.keymap import ConversionError, KeyMap, Rule, block_rules

RES = {"GroupNorm_0": "norm0", "Conv_0": "conv0", "Dense_0": "affine", "GroupNorm_1": "norm1", "Conv_1": "conv1",
       "Conv_2": "skip"}
#: buffers of the official modules msrepro does not have (consumed, not mapped)
IGNORED = {"sigmas": "NCSN++'s VE noise levels (a registered buffer in the fork; unused by VP models)"}
REQUIRED = {
    "dataset.name": "the dataset the model was trained on, e.g. cifar10 (not recorded in the file)",
    "dataset.resolution": "its image size, e.g. 32 (score_sde config data.image_size)",
    "model.params.resample_filter": "score_sde config model.fir/fir_kernel: [1,1] for fir=False (DDPM++ configs), "
                                    "[1,3,3,1] for fir=True (NCSN++ and the multistage fork)",
}


def _kind(m: StateDict) -> str:
    if "Dense_0.weight" in m:
        return "res"
    if "NIN_0.W" in m:
        return "attn"
    if "Conv2d_0.weight" in m:
        return "pyramid"
    if "W" in m:
        return "fourier"
    if set(m) == {"weight", "bias"}:
        return {1: "norm", 2: "linear", 4: "conv"}.get(m["weight"].ndim, "other")
    return "other"


def _is_resample(m: StateDict) -> bool:
    return "Conv_2.weight" in m and m["Conv_0.weight"].shape[0] == m["Conv_0.weight"].shape[1]


def _modules(sd: StateDict, prefix: str) -> list[StateDict]:
    idx = indices(sd, prefix)
    n = next((i for i, k in enumerate(idx) if i != k), len(idx))  # keys past a gap are left over: named later
    idx = idx[:n]
    if not idx:
        raise ConversionError(f"no '{prefix}N.*' keys from 0 (score_sde files have all_modules.N, the multistage "
                              f"fork en_modules.N / de_modules.K.N): another format?")
    return [submodule(sd, f"{prefix}{i}.") for i in idx]


def _encoder(mods: list[StateDict], levels: int, blocks: int, nf: int) -> tuple[dict[str, Any], list[int], int]:
    """(params, attention levels, index after the encoder's down path) from the official module sequence."""
    kinds, i = [_kind(m) for m in mods], 3
    mult, attn, pyramid = [], [], False
    for level in range(levels):
        has_attn = []
        for _ in range(blocks):
            if i >= len(mods) or kinds[i] != "res":
                raise ConversionError(f"module {i}: expected a residual block of level {level}, found {kinds[i:i + 1]}")
            mult.append(multiple(mods[i]["Conv_0.weight"].shape[0], nf, f"module {i} (level {level})"))
            has_attn.append(i + 1 < len(mods) and kinds[i + 1] == "attn")
            i += 1 + has_attn[-1]
        if any(has_attn) != all(has_attn) or len(set(mult[-blocks:])) != 1:
            raise ConversionError(f"level {level}: blocks differ in width or attention; not a DDPM++ network")
        attn += [level] if has_attn[0] else []
        if level < levels - 1:
            if i >= len(mods) or kinds[i] != "res" or not _is_resample(mods[i]):
                raise ConversionError(f"module {i}: expected the downsampling block after level {level}")
            i += 1
            if i < len(mods) and kinds[i] == "pyramid":
                pyramid, i = True, i + 1
    params = {"channel_mult": mult[::blocks], "num_blocks": blocks,
              "progressive_input": "residual" if pyramid else "none"}
    return params, attn, i


def _structure(mods: list[StateDict], enc_only: bool) -> tuple[int, int]:
    """(levels, blocks per level) from the counts of residual and resampling blocks."""
    res = [m for m in mods if _kind(m) == "res"]
    resample = sum(_is_resample(m) for m in res)
    if enc_only:  # encoder: L*nb blocks, L-1 downsamplings, the middle pair
        levels = resample + 1
        blocks, rem = divmod(len(res) - 2 - (levels - 1), levels)
    else:         # + decoder: L*(nb+1) blocks, L-1 upsamplings
        if resample % 2:
            raise ConversionError(f"{resample} resampling blocks: expected as many up as down")
        levels = resample // 2 + 1
        blocks, rem = divmod(len(res) - 2 - 2 * (levels - 1) - levels, 2 * levels)
    if rem or blocks < 1:
        raise ConversionError(f"{len(res)} residual blocks do not form a DDPM++ U-Net of {levels} levels")
    return levels, blocks


def _head(mods: list[StateDict]) -> tuple[int, int, int]:
    """(nf, channel_mult_emb, input channels) from the embedding Linears and the input conv."""
    first = _kind(mods[0])
    if first == "fourier":
        raise ConversionError("module 0 is a Gaussian Fourier projection (NCSN++ on the VE SDE): not supported; "
                              "msrepro's DDPM++ uses positional noise embeddings (embedding_type='positional')")
    if first != "linear" or _kind(mods[2]) != "conv":
        raise ConversionError("modules 0-2 are not (Linear, Linear, Conv): not a conditional DDPM++ network")
    emb, nf = mods[0]["weight"].shape
    return nf, multiple(emb, nf, "module 0 (noise embedding)"), mods[2]["weight"].shape[1]


class ScoreSDE(OfficialFormat):
    """score_sde ``NCSNpp`` (DDPM++ deep, continuous VP): ``all_modules.*``."""

    name = "score_sde"
    backbone = "dpm_solver"
    norm_groups = 32        # score_sde: GroupNorm(min(C/4, 32))
    buffers: tuple[str, ...] = ()

    def read(self, path: Path) -> OfficialCheckpoint:
        state = load_weights_only(path)
        if not isinstance(state, dict):
            raise ConversionError(f"{path}: expected a dict (score_sde checkpoint or state dict)")
        if "model" not in state:  # a bare state dict
            return OfficialCheckpoint({"raw": strip_prefix(state, "module."), "ema": None})
        raw = strip_prefix(state["model"], "module.")
        ema = state.get("ema")
        return OfficialCheckpoint({"raw": raw, "ema": self._pair_ema(raw, ema) if ema is not None else None},
                                  meta={"step": int(state.get("step", 0))})

    def _pair_ema(self, raw: StateDict, ema: Any) -> StateDict:
        """score_sde's EMA ``shadow_params`` (model.parameters() order) under the model's parameter names."""
        shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
        names = [k for k in raw if k not in self.buffers]
        if not isinstance(shadow, list) or len(shadow) != len(names):
            raise ConversionError(f"ema.shadow_params: expected a list of {len(names)} tensors (one per model "
                                  f"parameter), got {type(shadow).__name__} of {len(shadow or [])}")
        for name, t in zip(names, shadow):
            if tuple(t.shape) != tuple(raw[name].shape):
                raise ConversionError(f"ema.shadow_params: entry for {name} has shape {tuple(t.shape)}, the model's "
                                      f"{tuple(raw[name].shape)}")
        return {**dict(zip(names, shadow)), **{k: raw[k] for k in self.buffers if k in raw}}

    def infer(self, sd: StateDict, ckpt: OfficialCheckpoint) -> Inferred:
        mods = _modules(sd, "all_modules.")
        nf, emb_mult, channels = _head(mods)
        levels, blocks = _structure(mods[3:], enc_only=False)
        params, attn, _ = _encoder(mods, levels, blocks, nf)
        return self._inferred(nf, emb_mult, params, attn, channels, {"model.variant": "unified"})

    def _inferred(self, nf: int, emb_mult: int, params: dict, attn: list[int], channels: int,
                  variant: dict[str, Any]) -> Inferred:
        values = {"model.encoder_channels": nf, **variant, "model.params.middle": "encoder",
                  "model.params.augment_dim": 0, "model.params.channel_mult_emb": emb_mult,
                  **{f"model.params.{k}": v for k, v in params.items()}}
        return Inferred(values, defaults={"model.params.norm_groups": self.norm_groups,
                                          "model.params.skip_rescale": True},
                        required=dict(REQUIRED), channels=channels, attention_levels=attn)

    def keymap(self, cfg: DictConfig, model: nn.Module, sd: StateDict) -> KeyMap:
        names = (f"all_modules.{i}" for i in itertools.count())
        net = model.net
        rules = encoder_rules(net.encoders[0], "net.encoders.0", names)
        rules += decoder_rules(net.decoders[0], "net.decoders.0", names)
        return KeyMap(rules, {k: v for k, v in IGNORED.items() if k in sd})


class MultistageSDE(ScoreSDE):
    """The authors' ``NCSNpp_multimodel``: ``en_modules.*`` (shared encoder + middle), ``de_modules.K.*``."""

    name = "multistage_sde"
    norm_groups = 16        # the fork: GroupNorm(min(C/4, config.model.group = 16))
    buffers = ("sigmas",)

    def infer(self, sd: StateDict, ckpt: OfficialCheckpoint) -> Inferred:
        enc = _modules(sd, "en_modules.")
        nf, emb_mult, channels = _head(enc)
        levels, blocks = _structure(enc[3:], enc_only=True)
        params, attn, end = _encoder(enc, levels, blocks, nf)
        if len(enc) != end + 3:
            raise ConversionError(f"en_modules: {len(enc) - end} modules after the down path, expected the middle "
                                  f"block's 3")
        stages = indices(sd, "de_modules.")
        if not stages:
            raise ConversionError("no de_modules.K.* keys: not a multistage NCSN++ checkpoint (try score_sde)")
        dec = [shape(sd, f"de_modules.{k}.0.Conv_0.weight")[0] for k in stages]
        widths = [multiple(c, params["channel_mult"][-1], f"de_modules.{k}.0") for k, c in zip(stages, dec)]
        inferred = self._inferred(nf, emb_mult, params, attn, channels, {
            "model.variant": "multistage", "stages.num_stages": len(stages), "model.decoder_channels": widths})
        inferred.required["stages.boundaries"] = ("the K-1 cut points in VP time the decoders were trained for "
                                                  "(config.model.stage_interval), e.g. [0.4420,0.6308]")
        return inferred

    def keymap(self, cfg: DictConfig, model: nn.Module, sd: StateDict) -> KeyMap:
        net = model.net
        rules = encoder_rules(net.encoders[0], "net.encoders.0", (f"en_modules.{i}" for i in itertools.count()))
        for k, dec in enumerate(net.decoders):
            rules += decoder_rules(dec, f"net.decoders.{k}", (f"de_modules.{k}.{j}" for j in itertools.count()))
        return KeyMap(rules, {k: v for k, v in IGNORED.items() if k in sd})


def _plain(ours: str, off: str) -> list[Rule]:
    return [Rule(f"{ours}.{leaf}", (f"{off}.{leaf}",)) for leaf in ("weight", "bias")]


def _res(block: nn.Module, ours: str, off: str) -> list[Rule]:
    leaves = [k for k in block.state_dict() if not k.startswith("attn.")]
    return block_rules(RES, ours, off, leaves)


def _attn(ours: str, off: str) -> list[Rule]:
    nin = [f"{off}.NIN_{i}" for i in range(3)]
    return [Rule(f"{ours}.norm.weight", (f"{off}.GroupNorm_0.weight",)),
            Rule(f"{ours}.norm.bias", (f"{off}.GroupNorm_0.bias",)),
            Rule(f"{ours}.qkv.weight", tuple(f"{n}.W" for n in nin), "nin3"),
            Rule(f"{ours}.qkv.bias", tuple(f"{n}.b" for n in nin), "cat3"),
            Rule(f"{ours}.proj.weight", (f"{off}.NIN_3.W",), "nin"),
            Rule(f"{ours}.proj.bias", (f"{off}.NIN_3.b",))]


def _block(block: nn.Module, ours: str, names: Iterator[str]) -> list[Rule]:
    """A residual block, then (a separate official module) its attention."""
    rules = _res(block, ours, next(names))
    return rules + (_attn(f"{ours}.attn", next(names)) if block.attn is not None else [])


def encoder_rules(enc: nn.Module, ours: str, names: Iterator[str]) -> list[Rule]:
    """Embedding, input conv, down path (+ pyramid) and middle, in score_sde's module order."""
    rules = _plain(f"{ours}.map_layer0", next(names)) + _plain(f"{ours}.map_layer1", next(names))
    rules += _plain(f"{ours}.conv_in", next(names))
    for level, blocks in enumerate(enc.blocks):
        if level > 0:
            rules += _res(enc.down[level - 1], f"{ours}.down.{level - 1}", next(names))
            if len(enc.pyramid):
                rules += _plain(f"{ours}.pyramid.{level - 1}.conv", f"{next(names)}.Conv2d_0")
        for b, block in enumerate(blocks):
            rules += _block(block, f"{ours}.blocks.{level}.{b}", names)
    if enc.middle is not None:
        rules += _block(enc.middle[0], f"{ours}.middle.0", names) + _res(enc.middle[1], f"{ours}.middle.1",
                                                                          next(names))
    return rules


def decoder_rules(dec: nn.Module, ours: str, names: Iterator[str]) -> list[Rule]:
    """Up path (the level's attention after its last block), output norm and conv, in score_sde's order."""
    rules: list[Rule] = []
    for i, blocks in enumerate(dec.blocks):
        for b, block in enumerate(blocks):
            rules += _res(block, f"{ours}.blocks.{i}.{b}", next(names))
        if blocks[-1].attn is not None:
            rules += _attn(f"{ours}.blocks.{i}.{len(blocks) - 1}.attn", next(names))
        if i < len(dec.up):
            rules += _res(dec.up[i], f"{ours}.up.{i}", next(names))
    return rules + _plain(f"{ours}.norm_out", next(names)) + _plain(f"{ours}.conv_out", next(names))
