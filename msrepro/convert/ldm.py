"""latent-diffusion (``LatentDiffusion`` around ``openaimodel.UNetModel``) and the authors' multistage fork
(``UNetModel_multistage``).

Files: Lightning ``.ckpt`` ``{"state_dict": ..., "global_step": int, ...}`` read with ``weights_only=True``. In the
state dict: the U-Net under ``model.diffusion_model.`` (raw); its EMA (``LitEma``) under ``model_ema.`` with the
dots of each name removed (``model_ema.diffusion_modelinput_blocks00weight``); the DDPM schedule buffers
(``betas``, ``alphas_cumprod``, ...: the schedule is read from ``betas`` and checked, not copied); optionally
``scale_factor`` and the first stage ``first_stage_model.*`` (a KL-VAE becomes a separate msrepro VAE checkpoint,
:mod:`msrepro.convert.kl_vae`; a VQ model is left out, with a note).

U-Net layout: msrepro's LDM network keeps openaimodel's names (``time_embed``, ``input_blocks``, ``middle_block``,
``output_blocks``, ``out``; ``in_layers``/``emb_layers``/``out_layers``), except ``skip_connection`` -> ``skip`` and the
attention ``qkv``/``proj_out`` 1-D convs -> 2-D 1x1 convs. The fork: ``de_modules.K.*`` and ``outs.K.*`` per stage.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from msrepro.convert.base import (Inferred, OfficialCheckpoint, OfficialFormat, StateDict, indices, load_weights_only,
                                  multiple, shape, submodule)
from msrepro.convert.keymap import ConversionError, KeyMap, Rule
from msrepro.convert.kl_vae import is_vq, write_vae

log = logging.getLogger(__name__)
UNET = "model.diffusion_model."
EMA = "model_ema."
#: DDPM buffers derived from betas (betas and alphas_cumprod are checked; the rest follow from them)
SCHEDULE = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
            "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")
REQUIRED = {
    "dataset.name": "the latents the model denoises, e.g. latents (with dataset.root=<msrepro encode-latents cache>)",
    "dataset.resolution": "the latent size, e.g. 64 (LDM config model.params.image_size)",
    "model.params.num_head_channels": "channels per attention head (unet_config num_head_channels, e.g. 32); "
                                      "the qkv shapes are the same for any head count",
}


def _ema(sd: StateDict, unet: StateDict) -> StateDict | None:
    """LitEma's buffers under the official raw names (``model_ema.`` + name without dots)."""
    if not any(k.startswith(EMA) for k in sd):
        return None
    names = {EMA + ("diffusion_model." + k[len(UNET):]).replace(".", ""): k for k in unet}
    if len(names) != len(unet):
        raise ConversionError("model_ema: two U-Net parameter names collide once their dots are removed")
    found = {k for k in sd if k.startswith(EMA)} - {EMA + "decay", EMA + "num_updates"}
    missing, extra = sorted(set(names) - found), sorted(found - set(names))
    if missing or extra:
        raise ConversionError(f"model_ema: does not match the U-Net: missing {missing[:4]}, unexpected {extra[:4]}")
    return {names[k]: sd[k] for k in names}


def _schedule(meta: dict[str, Any]) -> dict[str, Any]:
    """ddpm_discrete's options from the ``betas`` buffer (linear in sqrt, LDM's beta_schedule='linear')."""
    betas = meta.get("betas")
    if betas is None:
        raise ConversionError("no 'betas' buffer: not a latent-diffusion LatentDiffusion checkpoint")
    b = betas.double()
    opts = {"num_steps": int(b.numel()), "beta_start": float(f"{b[0]:.7g}"), "beta_end": float(f"{b[-1]:.7g}")}
    expect = torch.linspace(math.sqrt(opts["beta_start"]), math.sqrt(opts["beta_end"]), b.numel(),
                            dtype=torch.float64) ** 2
    if not torch.allclose(b, expect, rtol=1e-5, atol=0):
        raise ConversionError("betas are not linear in sqrt(beta) (beta_schedule='linear'): not supported")
    cum = meta.get("alphas_cumprod")
    if cum is not None and not torch.allclose(cum.double(), torch.cumprod(1 - expect, 0), rtol=1e-5, atol=1e-7):
        raise ConversionError("alphas_cumprod does not follow from betas")
    return opts


class LDM(OfficialFormat):
    """latent-diffusion's unconditional ``LatentDiffusion`` with an ``openaimodel.UNetModel``."""

    name = "ldm"
    backbone = "ldm"

    def read(self, path: Path) -> OfficialCheckpoint:
        state = load_weights_only(path)
        sd = state.get("state_dict", state) if isinstance(state, dict) else None
        if not isinstance(sd, dict) or not any(k.startswith(UNET) for k in sd):
            raise ConversionError(f"{path}: no state_dict with model.diffusion_model.* keys (a latent-diffusion .ckpt)")
        unet = {k: v for k, v in sd.items() if k.startswith(UNET)}
        meta: dict[str, Any] = {"step": int(state.get("global_step", 0) or 0)}
        meta.update({k: sd[k] for k in (*SCHEDULE, "scale_factor") if k in sd})
        parts = {"first_stage": submodule(sd, "first_stage_model.")}
        known = (UNET, EMA, "first_stage_model.")
        rest = [k for k in sd if not k.startswith(known) and k not in meta]
        if rest:
            what = "conditional LDMs are not supported" if any(k.startswith("cond_stage_model.") for k in rest) \
                else "not part of an unconditional LatentDiffusion"
            raise ConversionError(f"{path}: keys {rest[:6]}{' ...' if len(rest) > 6 else ''}: {what}")
        return OfficialCheckpoint({"raw": unet, "ema": _ema(sd, unet)}, meta=meta, parts=parts)

    def _decoders(self, sd: StateDict) -> list[tuple[str, str]]:
        """(output-blocks prefix, head prefix) per decoder."""
        if not any(k.startswith(UNET + "output_blocks.") for k in sd):
            raise ConversionError("no model.diffusion_model.output_blocks.*: not a UNetModel (try multistage_ldm)")
        return [(UNET + "output_blocks.", UNET + "out.")]

    def decoder_names(self, k: int) -> list[tuple[str, str]]:
        """(output-blocks prefix, head prefix) of ``k`` decoders."""
        return [(UNET + "output_blocks.", UNET + "out.")]

    def infer(self, sd: StateDict, ckpt: OfficialCheckpoint) -> Inferred:
        emb, e = shape(sd, UNET + "time_embed.0.weight")
        channels = shape(sd, UNET + "input_blocks.0.0.weight")[1]
        values, mult = self._encoder(sd, e)
        decoders = self._decoders(sd)
        attn = [any(k.startswith(p) and k.endswith(".qkv.weight") for k in sd) for p, _ in decoders]
        has_enc_attn = bool(values["model.params.attention_ds"])
        if attn == [has_enc_attn] * len(attn):
            mode = "all"
        elif has_enc_attn and attn[0] and not any(attn[1:]):
            mode = "first_only"
        else:
            raise ConversionError(f"decoder attention {attn} fits neither ldm_decoder_attention=all nor first_only")
        values.update({"model.encoder_channels": e, "model.params.time_embed_mult": multiple(emb, e, "time_embed"),
                       "model.params.latent_channels": channels, "model.params.ldm_decoder_attention": mode,
                       **{f"schedule.{k}": v for k, v in _schedule(ckpt.meta).items()}})
        if len(decoders) > 1:
            widths = [multiple(shape(sd, f"{p}0.0.out_layers.3.weight")[0], mult[-1], p) for p, _ in decoders]
            values.update({"model.variant": "multistage", "stages.num_stages": len(decoders),
                           "model.decoder_channels": widths})
        else:
            values["model.variant"] = "unified"
        inf = Inferred(values, defaults={"model.params.norm_groups": 32}, required=dict(REQUIRED), channels=channels)
        if len(decoders) > 1:
            inf.required["stages.boundaries"] = "the K-1 cut points in DDPM steps (unet_config stage_interval), " \
                                                "e.g. [442,631]"
        return inf

    @staticmethod
    def _encoder(sd: StateDict, e: int) -> tuple[dict[str, Any], list[int]]:
        """channel_mult, num_res_blocks, attention_ds from the input blocks."""
        blocks = indices(sd, UNET + "input_blocks.")[1:]
        levels: list[list[int]] = [[]]
        for i in blocks:
            if UNET + f"input_blocks.{i}.0.op.weight" in sd:
                levels.append([])
            else:
                levels[-1].append(i)
        counts = {len(level) for level in levels}
        if len(counts) != 1 or 0 in counts:
            raise ConversionError(f"input blocks per level {[len(lv) for lv in levels]}: not a UNetModel")
        mult, attn = [], []
        for level, ids in enumerate(levels):
            outs = {shape(sd, UNET + f"input_blocks.{i}.0.out_layers.3.weight")[0] for i in ids}
            has = {UNET + f"input_blocks.{i}.1.qkv.weight" in sd for i in ids}
            if len(outs) != 1 or len(has) != 1:
                raise ConversionError(f"level {level}: blocks differ in width or attention")
            mult.append(multiple(outs.pop(), e, f"input blocks of level {level}"))
            attn += [2 ** level] if has.pop() else []
        return {"model.params.channel_mult": mult, "model.params.num_res_blocks": counts.pop(),
                "model.params.attention_ds": attn}, mult

    def keymap(self, cfg: DictConfig, model: nn.Module, sd: StateDict) -> KeyMap:
        decoders = self.decoder_names(len(model.net.decoders))
        rules = []
        for key in model.state_dict():
            off = key.replace("net.encoders.0.", UNET, 1)
            for k, (blocks, head) in enumerate(decoders):
                off = off.replace(f"net.decoders.{k}.output_blocks.", blocks, 1).replace(f"net.decoders.{k}.out.",
                                                                                          head, 1)
            off = off.replace(".skip.", ".skip_connection.")
            conv1d = key.endswith((".qkv.weight", ".proj_out.weight"))
            rules.append(Rule(key, (off,), "conv1d" if conv1d else "copy"))
        return KeyMap(rules)

    def finish(self, ckpt: OfficialCheckpoint, cfg: DictConfig, out: Path, items: dict[str, Any]) -> dict[str, Any]:
        """The KL first stage -> ``<out>-vae.pt`` (and ``model.params.vae``); a VQ one is left out with a note."""
        stage = ckpt.parts.get("first_stage") or {}
        if not stage or cfg.model.params.get("vae"):
            return {}
        if is_vq(stage):
            log.warning("the first stage is a VQ model; it is not imported (msrepro's first stage is a KL-VAE): "
                        "pass model.params.vae=<msrepro VAE checkpoint> to decode samples")
            return {}
        scale = items.get("scale_factor", ckpt.meta.get("scale_factor"))
        if scale is None or "dataset.name" not in items:
            raise ConversionError("the file holds a KL first stage: pass vae.dataset.name=<image dataset it was "
                                  "trained on> and, unless the file stores it, vae.scale_factor=<LDM config "
                                  "model.params.scale_factor>; or pass model.params.vae=<msrepro VAE> to skip it")
        path = write_vae(stage, int(cfg.dataset.resolution), float(scale), items, out.with_name(out.stem + "-vae.pt"))
        return {"model.params.vae": str(path.resolve())}


class MultistageLDM(LDM):
    """The authors' ``UNetModel_multistage``: shared ``input_blocks``/``middle_block``, ``de_modules.K``/``outs.K``."""

    name = "multistage_ldm"

    def _decoders(self, sd: StateDict) -> list[tuple[str, str]]:
        stages = indices(sd, UNET + "de_modules.")
        if not stages:
            raise ConversionError("no model.diffusion_model.de_modules.K.*: not UNetModel_multistage (try ldm)")
        return [(UNET + f"de_modules.{k}.", UNET + f"outs.{k}.") for k in stages]

    def decoder_names(self, k: int) -> list[tuple[str, str]]:
        return [(UNET + f"de_modules.{i}.", UNET + f"outs.{i}.") for i in range(k)]
