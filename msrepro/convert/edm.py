"""EDM (``EDMPrecond`` around ``SongUNet``, ``--arch=ddpmpp``) and the authors' ``MultistageUNet`` fork.

Files: ``network-snapshot-*.pkl`` (``pickle.dump`` of ``{"ema": EDMPrecond, "loss_fn", "augment_pipe",
"dataset_kwargs"}``: persistent classes carrying their source, read by :mod:`msrepro.convert.unpickle` without
running it; the snapshot holds the EMA network only), or a ``.pt`` holding ``net.state_dict()`` saved with EDM's own
code (one weight set, read with ``weights_only=True``).

Layout (state dict of ``EDMPrecond``): ``model.map_augment``, ``model.map_layer0/1``, ``model.enc['RxR_conv' |
'RxR_down' | 'RxR_block{i}']``, ``model.dec['RxR_in0' | 'RxR_in1' | 'RxR_up' | 'RxR_block{i}' | 'RxR_aux_norm' |
'RxR_aux_conv']`` (the fork: ``model.decs.K[...]``). ``UNetBlock``: ``norm0, conv0, affine, norm1, conv1, skip,
norm2, qkv, proj``; its fused ``qkv`` rows are ordered (channel, q/k/v), msrepro's (q/k/v, channel). The
``resample_filter`` buffers of up/down blocks are checked against msrepro's own filter, not copied.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from msrepro.convert.base import (Inferred, OfficialCheckpoint, OfficialFormat, StateDict, indices, load_weights_only,
                                  multiple, shape)
from msrepro.convert.keymap import ConversionError, KeyMap, Rule, block_rules
from msrepro.convert.unpickle import PersistentObject, load_pickle, module_state_dict

BLOCK = {"norm0": "norm0", "conv0": "conv0", "affine": "affine", "norm1": "norm1", "conv1": "conv1", "skip": "skip",
         "norm2": "attn.norm", "qkv": "attn.qkv", "proj": "attn.proj"}
QKV = {"qkv.weight": "interleave3", "qkv.bias": "interleave3"}
#: key prefixes / name parts of SongUNet options msrepro's DDPM++ does not implement
UNSUPPORTED = {"model.map_label.": "class-conditional networks (label_dim > 0)",
               "model.map_noise.freqs": "Fourier noise embeddings (NCSN++, embedding_type='fourier')",
               "_aux_residual.": "the NCSN++ 'residual' encoder", "_aux_skip.": "the 'skip' encoder",
               "_aux_down.": "the 'skip' encoder", "_aux_up.": "the 'skip' decoder"}
NAME = re.compile(r"enc\.(\d+)x\1_(conv|down|block\d+)\.")


def _read_pickle(path: Path) -> OfficialCheckpoint:
    data = load_pickle(path)
    net = data.get("ema") if isinstance(data, dict) else None
    if not isinstance(net, PersistentObject):
        raise ConversionError(f"{path}: no 'ema' network in the pickle (an EDM network-snapshot-*.pkl has one)")
    if net.class_name != "EDMPrecond":
        raise ConversionError(f"{path}: preconditioning '{net.class_name}' is not supported (EDMPrecond only)")
    s = net.state
    if int(s.get("label_dim") or 0):
        raise ConversionError(f"{path}: label_dim={s.get('label_dim')}: class-conditional networks are not supported")
    inner = (s.get("_modules") or {}).get("model")
    meta = {"resolution": s.get("img_resolution"), "channels": s.get("img_channels"),
            "sigma_data": s.get("sigma_data"), "network": getattr(inner, "class_name", None)}
    intervals = getattr(inner, "state", {}).get("stage_interval")
    if intervals is not None:
        meta["stage_interval"] = intervals
    return OfficialCheckpoint({"ema": module_state_dict(net), "raw": None}, meta=meta)


def _cuts(intervals: Any) -> list[float] | None:
    """K-1 cut points from the fork's ``stage_interval`` [[[lo, hi]], ...] (one interval per stage)."""
    try:
        his = [float(stage[0][1]) for stage in intervals[:-1]]
        los = [float(stage[0][0]) for stage in intervals[1:]]
    except (TypeError, IndexError, ValueError):
        return None
    return his if his == los and all(len(stage) == 1 for stage in intervals) else None


def _taps(f: torch.Tensor) -> list[int]:
    """The 1-D filter taps of an EDM ``resample_filter`` (outer(f, f) / sum(f)^2), as small integers."""
    row = f.reshape(f.shape[-2], f.shape[-1])[0].double()
    taps = row / row.min()
    if not torch.allclose(taps, taps.round(), atol=1e-4):
        raise ConversionError(f"resample_filter row {row.tolist()} is not a small-integer filter")
    return [int(t) for t in taps.round().tolist()]


class EDM(OfficialFormat):
    """EDM's ``EDMPrecond`` + ``SongUNet`` (ddpmpp)."""

    name = "edm"
    backbone = "edm"
    norm_groups = 32        # EDM: GroupNorm(num_groups=32, min 4 channels per group)
    decoders = "dec."

    def read(self, path: Path) -> OfficialCheckpoint:
        if not path.is_file():
            raise FileNotFoundError(f"file not found: {path}")
        if not zipfile.is_zipfile(path):
            return _read_pickle(path)
        state = load_weights_only(path)
        if isinstance(state, dict) and isinstance(state.get("ema"), dict):
            state = state["ema"]
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise ConversionError(f"{path}: expected a state dict of EDMPrecond (keys model.enc.*, model.dec.*)")
        if not any(k.startswith("model.") for k in state):  # SongUNet's own state dict (net.model.state_dict())
            state = {"model." + k: v for k, v in state.items()}
        return OfficialCheckpoint({"ema": None, "raw": dict(state)}, meta={"single_set": True})

    def _decoder_prefixes(self, sd: StateDict) -> list[str]:
        if not any(k.startswith("model.dec.") for k in sd):
            raise ConversionError("no model.dec.* keys: not an EDM SongUNet (try multistage_edm)")
        return ["model.dec."]

    def decoder_names(self, k: int) -> list[str]:
        """Official prefixes of ``k`` decoders."""
        return ["model.dec."]

    def infer(self, sd: StateDict, ckpt: OfficialCheckpoint) -> Inferred:
        for key in sd:
            for part, what in UNSUPPORTED.items():
                if key.startswith(part) or (part.startswith("_") and part in key):
                    raise ConversionError(f"{key}: {what} are not supported")
        res = sorted({int(m.group(1)) for k in sd if (m := NAME.match(k[6:]))}, reverse=True)
        if not res or any(a != 2 * b for a, b in zip(res, res[1:])):
            raise ConversionError(f"encoder resolutions {res}: not an EDM SongUNet (model.enc.RxR_* keys)")
        emb, nf = shape(sd, "model.map_layer0.weight")
        channels = shape(sd, f"model.enc.{res[0]}x{res[0]}_conv.weight")[1]
        blocks = len(indices(sd, f"model.enc.{res[0]}x{res[0]}_block"))
        mult, attn = [], []
        for level, r in enumerate(res):
            mult.append(multiple(shape(sd, f"model.enc.{r}x{r}_block0.conv0.weight")[0], nf, f"enc {r}x{r}"))
            if f"model.enc.{r}x{r}_block0.norm2.weight" in sd:
                attn.append(r)
        values = {"model.encoder_channels": nf, "dataset.resolution": res[0], "model.params.channel_mult": mult,
                  "model.params.num_blocks": blocks, "model.params.attn_resolutions": attn,
                  "model.params.channel_mult_emb": multiple(emb, nf, "model.map_layer0"),
                  "model.params.augment_dim": shape(sd, "model.map_augment.weight")[1]
                  if "model.map_augment.weight" in sd else 0,
                  "model.params.progressive_input": "none", "model.params.middle": "decoder"}
        if len(res) > 1:
            buffer = f"model.enc.{res[1]}x{res[1]}_down.conv0.resample_filter"
            values["model.params.resample_filter"] = _taps(sd[buffer]) if buffer in sd else [1, 1]
        self._check_meta(ckpt, res[0], channels, values)
        inf = Inferred(values, defaults={"model.params.norm_groups": self.norm_groups,
                                         "model.params.skip_rescale": True},
                       required={"dataset.name": "the dataset the model was trained on, e.g. cifar10 (EDM records "
                                                 "only its path)"}, channels=channels)
        self._decoders(sd, ckpt, inf, res[-1], mult[-1])
        return inf

    @staticmethod
    def _check_meta(ckpt: OfficialCheckpoint, res: int, channels: int, values: dict[str, Any]) -> None:
        meta = ckpt.meta
        if meta.get("resolution") not in (None, res) or meta.get("channels") not in (None, channels):
            raise ConversionError(f"the pickle records img_resolution={meta.get('resolution')}, img_channels="
                                  f"{meta.get('channels')}, but its weights are for {res} px, {channels} channels")
        if meta.get("sigma_data") is not None:
            values["schedule.sigma_data"] = float(meta["sigma_data"])

    def _decoders(self, sd: StateDict, ckpt: OfficialCheckpoint, inf: Inferred, r: int, mult: int) -> None:
        self._decoder_prefixes(sd)
        inf.values["model.variant"] = "unified"

    def keymap(self, cfg: DictConfig, model: nn.Module, sd: StateDict) -> KeyMap:
        net, res = model.net, int(cfg.dataset.resolution)
        rules = encoder_rules(net.encoders[0], "net.encoders.0", "model.", res)
        for k, prefix in enumerate(self.decoder_names(len(net.decoders))):
            rules += decoder_rules(net.decoders[k], f"net.decoders.{k}", prefix, res)
        return KeyMap(rules)


class MultistageEDM(EDM):
    """The authors' ``MultistageUNet``: ``model.enc.*`` shared, ``model.decs.K.*`` per stage."""

    name = "multistage_edm"
    norm_groups = 16        # the fork's GroupNorm default num_groups=16

    def _decoder_prefixes(self, sd: StateDict) -> list[str]:
        stages = indices(sd, "model.decs.")
        if not stages:
            raise ConversionError("no model.decs.K.* keys: not a MultistageUNet (try edm)")
        return [f"model.decs.{k}." for k in stages]

    def decoder_names(self, k: int) -> list[str]:
        return [f"model.decs.{i}." for i in range(k)]

    def _decoders(self, sd: StateDict, ckpt: OfficialCheckpoint, inf: Inferred, r: int, mult: int) -> None:
        prefixes = self._decoder_prefixes(sd)
        widths = [multiple(shape(sd, f"{p}{r}x{r}_block0.conv0.weight")[0], mult, p) for p in prefixes]
        inf.values.update({"model.variant": "multistage", "stages.num_stages": len(prefixes),
                           "model.decoder_channels": widths})
        cuts = _cuts(ckpt.meta.get("stage_interval"))
        if cuts is not None and len(cuts) == len(prefixes) - 1:
            inf.values.update({"stages.boundaries": cuts, "stages.boundaries_schedule": "edm"})
        else:
            inf.required["stages.boundaries"] = ("the K-1 cut points in sigma the decoders were trained for "
                                                 "(MultistageUNet stage_interval), e.g. [2.5103,7.6577]")


def _block(block: nn.Module, ours: str, off: str) -> list[Rule]:
    rules = block_rules(BLOCK, ours, off, list(block.state_dict()), QKV)
    if block.resample is not None:  # computed by msrepro: compare, do not copy
        rules += [Rule(f"{ours}.resample.kernel", (f"{off}.{conv}.resample_filter",), "check")
                  for conv in ("conv0", "skip")]
    return rules


def _plain(ours: str, off: str, bias: bool = True) -> list[Rule]:
    return [Rule(f"{ours}.{leaf}", (f"{off}.{leaf}",)) for leaf in (("weight", "bias") if bias else ("weight",))]


def encoder_rules(enc: nn.Module, ours: str, off: str, res: int) -> list[Rule]:
    """Mapping layers, input conv and the down path (EDM names by resolution)."""
    rules = _plain(f"{ours}.map_augment", f"{off}map_augment", bias=False) if enc.map_augment is not None else []
    rules += _plain(f"{ours}.map_layer0", f"{off}map_layer0") + _plain(f"{ours}.map_layer1", f"{off}map_layer1")
    rules += _plain(f"{ours}.conv_in", f"{off}enc.{res}x{res}_conv")
    for level, blocks in enumerate(enc.blocks):
        r = res >> level
        if level > 0:
            rules += _block(enc.down[level - 1], f"{ours}.down.{level - 1}", f"{off}enc.{r}x{r}_down")
        for b, block in enumerate(blocks):
            rules += _block(block, f"{ours}.blocks.{level}.{b}", f"{off}enc.{r}x{r}_block{b}")
    return rules


def decoder_rules(dec: nn.Module, ours: str, off: str, res: int) -> list[Rule]:
    """The bottleneck pair, up path and output head of one decoder (``off`` = 'model.dec.' or 'model.decs.K.')."""
    levels = len(dec.blocks)
    r = res >> (levels - 1)
    rules = _block(dec.middle[0], f"{ours}.middle.0", f"{off}{r}x{r}_in0")
    rules += _block(dec.middle[1], f"{ours}.middle.1", f"{off}{r}x{r}_in1")
    for i, blocks in enumerate(dec.blocks):
        r = res >> (levels - 1 - i)
        for b, block in enumerate(blocks):
            rules += _block(block, f"{ours}.blocks.{i}.{b}", f"{off}{r}x{r}_block{b}")
        if i < len(dec.up):
            rules += _block(dec.up[i], f"{ours}.up.{i}", f"{off}{2 * r}x{2 * r}_up")
    return rules + _plain(f"{ours}.norm_out", f"{off}{res}x{res}_aux_norm") + \
        _plain(f"{ours}.conv_out", f"{off}{res}x{res}_aux_conv")
