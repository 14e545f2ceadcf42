"""The DDPM++ U-Net (Song et al. 2021) split into a shared encoder and per-stage decoders (paper Sec. 4.1, Fig. 1c).

One implementation, configured to match both official networks the paper builds on:

========================  =================================  ==================================
option                    score_sde DDPM++ deep (DPM-Solver)  EDM ``SongUNet`` ``ddpmpp``
========================  =================================  ==================================
channel_mult, num_blocks  1,2,2,2 x 8                        2,2,2 x 4
resample_filter           [1,3,3,1] (FIR)                    [1,1]
progressive_input         residual (input pyramid)           none ('standard' encoder)
middle                    encoder (multistage DPM-Solver)    decoder, at encoder width (multistage EDM)
augment_dim, dropout      0, 0.1                             9, 0.13
========================  =================================  ==================================

Both have attention at 16x16, skip rescaling by 1/sqrt(2), a positional noise embedding of width E mapped to 4E,
and GroupNorm with min(norm_groups, C/4) groups (16 in the official multistage code, 32 upstream).

The encoder (input conv, noise embedding, down path and, for ``middle='encoder'``, the bottleneck pair) runs at
width E and returns :class:`~msrepro.multidecoder.EncoderOutput`; a decoder of width D runs the up path and the
output head, concatenating the encoder-width skips. ``D = E`` with one decoder is the original network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List

import torch
from omegaconf import DictConfig
from torch import nn

from msrepro.backbones.base import Backbone
from msrepro.config import ConfigError
from msrepro.multidecoder import EncoderOutput
from msrepro.nets.layers import ZERO_GAIN, ConvDown, ResBlock, conv2d, group_norm, linear, norm_groups, \
    positional_embedding

PROGRESSIVE_INPUTS = ("residual", "none")
MIDDLES = ("encoder", "decoder")


@dataclass
class DDPMppParams:
    """``model.params`` of a DDPM++ backbone (defaults: score_sde's DDPM++ deep, as DPM-Solver uses it)."""

    channel_mult: List[int] = field(default_factory=lambda: [1, 2, 2, 2])  # width multiplier per resolution
    num_blocks: int = 8                  # residual blocks per resolution (the decoder has one more)
    attn_resolutions: List[int] = field(default_factory=lambda: [16])  # resolutions with self-attention
    dropout: float = 0.1                 # dropout inside residual blocks
    resample_filter: List[int] = field(default_factory=lambda: [1, 3, 3, 1])  # FIR taps for up/downsampling
    progressive_input: str = "residual"  # residual (score_sde input pyramid) or none (EDM 'standard')
    middle: str = "encoder"              # bottleneck pair in the shared encoder, or in each decoder (encoder width)
    channel_mult_emb: int = 4            # embedding width = channel_mult_emb x encoder width
    augment_dim: int = 0                 # EDM augmentation-label dimension (9), 0 = none
    norm_groups: int = 16                # GroupNorm groups = min(norm_groups, C/4); 16 official multistage, 32 upstream
    norm_eps: float = 1e-6               # GroupNorm epsilon
    skip_rescale: bool = True            # scale residual sums by 1/sqrt(2)
    max_positions: int = 10000           # positional embedding base


def _block_kwargs(p: Any, emb_ch: int) -> dict:
    return dict(emb_ch=emb_ch, dropout=float(p.dropout), taps=list(p.resample_filter), max_groups=int(p.norm_groups),
                eps=float(p.norm_eps), skip_scale=math.sqrt(0.5) if p.skip_rescale else 1.0)


def skip_channels(p: Any, encoder_channels: int) -> list[int]:
    """Channels of the encoder's skips, outermost first (the input conv, then one per block and per downsample)."""
    chans, cur = [encoder_channels], encoder_channels
    for level, mult in enumerate(p.channel_mult):
        if level > 0:
            chans.append(cur)
        for _ in range(p.num_blocks):
            cur = encoder_channels * mult
            chans.append(cur)
    return chans


class DDPMppEncoder(nn.Module):
    """Input conv, noise embedding, down path (+ input pyramid) and optionally the bottleneck pair, at width E."""

    def __init__(self, p: Any, channels: int, in_channels: int, resolution: int) -> None:
        super().__init__()
        e, emb_ch = channels, channels * p.channel_mult_emb
        kw = _block_kwargs(p, emb_ch)
        self.channels, self.max_positions = e, int(p.max_positions)
        self.skip_scale = kw["skip_scale"]
        self.map_augment = linear(p.augment_dim, e, bias=False) if p.augment_dim else None
        self.map_layer0 = linear(e, emb_ch)
        self.map_layer1 = linear(emb_ch, emb_ch)
        self.conv_in = conv2d(in_channels, e, 3)
        self.down = nn.ModuleList()       # per level > 0: the downsampling block
        self.pyramid = nn.ModuleList()    # per level > 0: the residual input-pyramid conv (if any)
        self.blocks = nn.ModuleList()     # per level: its residual blocks
        cur, pyramid_ch = e, in_channels
        for level, mult in enumerate(p.channel_mult):
            res = resolution >> level
            if level > 0:
                self.down.append(ResBlock(cur, cur, down=True, **kw))
                if p.progressive_input == "residual":
                    self.pyramid.append(ConvDown(pyramid_ch, cur, p.resample_filter))
                    pyramid_ch = cur
            level_blocks = nn.ModuleList()
            for _ in range(p.num_blocks):
                level_blocks.append(ResBlock(cur, e * mult, attention=res in p.attn_resolutions, **kw))
                cur = e * mult
            self.blocks.append(level_blocks)
        self.middle = nn.ModuleList([ResBlock(cur, cur, attention=True, **kw), ResBlock(cur, cur, **kw)]) \
            if p.middle == "encoder" else None

    def embed(self, c_noise: torch.Tensor, augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Noise (and augmentation) embedding, after the two-layer SiLU mapping."""
        emb = positional_embedding(c_noise.reshape(-1), self.channels, self.max_positions)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = torch.nn.functional.silu(self.map_layer0(emb))
        return torch.nn.functional.silu(self.map_layer1(emb))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, augment_labels: torch.Tensor | None = None,
                **_: Any) -> EncoderOutput:
        emb = self.embed(c_noise, augment_labels)
        h = self.conv_in(x)
        skips, pyramid = [h], x
        for level, level_blocks in enumerate(self.blocks):
            if level > 0:
                h = self.down[level - 1](h, emb)
                if len(self.pyramid):
                    h = pyramid = (self.pyramid[level - 1](pyramid) + h) * self.skip_scale
                skips.append(h)
            for block in level_blocks:
                h = block(h, emb)
                skips.append(h)
        if self.middle is not None:
            for block in self.middle:
                h = block(h, emb)
        return EncoderOutput(h, skips, emb)


class DDPMppDecoder(nn.Module):
    """Optionally the bottleneck pair (at encoder width), then the up path and output head at width D."""

    def __init__(self, p: Any, encoder_channels: int, channels: int, out_channels: int, resolution: int) -> None:
        super().__init__()
        e, d = encoder_channels, channels
        kw = _block_kwargs(p, e * p.channel_mult_emb)
        cur = e * p.channel_mult[-1]
        self.middle = nn.ModuleList([ResBlock(cur, cur, attention=True, **kw), ResBlock(cur, cur, **kw)]) \
            if p.middle == "decoder" else None
        skips = skip_channels(p, e)
        self.blocks = nn.ModuleList()     # per level, innermost first: num_blocks + 1 blocks
        self.up = nn.ModuleList()         # per level except the outermost: the upsampling block
        for level, mult in reversed(list(enumerate(p.channel_mult))):
            level_blocks = nn.ModuleList()
            for idx in range(p.num_blocks + 1):
                last = idx == p.num_blocks
                level_blocks.append(ResBlock(cur + skips.pop(), d * mult,
                                             attention=last and (resolution >> level) in p.attn_resolutions, **kw))
                cur = d * mult
            self.blocks.append(level_blocks)
            if level > 0:
                self.up.append(ResBlock(cur, cur, up=True, **kw))
        assert not skips
        self.norm_out = group_norm(cur, int(p.norm_groups), float(p.norm_eps))
        self.conv_out = conv2d(cur, out_channels, 3, gain=ZERO_GAIN)

    def forward(self, feats: EncoderOutput) -> torch.Tensor:
        h, emb, skips = feats.h, feats.emb, list(feats.skips)
        if self.middle is not None:
            for block in self.middle:
                h = block(h, emb)
        for i, level_blocks in enumerate(self.blocks):
            for block in level_blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.up):
                h = self.up[i](h, emb)
        return self.conv_out(torch.nn.functional.silu(self.norm_out(h)))


class DDPMppBackbone(Backbone):
    """Adapter base for DDPM++ backbones: the network hooks and their checks; plugins add schedule, presets,
    preconditioning and (for VP models) the time-input convention."""

    Config = DDPMppParams

    def build_encoder(self, params: DictConfig, channels: int, in_channels: int, resolution: int) -> nn.Module:
        return DDPMppEncoder(params, channels, in_channels, resolution)

    def build_decoder(self, params: DictConfig, encoder_channels: int, channels: int, out_channels: int,
                      resolution: int, stage: int) -> nn.Module:
        return DDPMppDecoder(params, encoder_channels, channels, out_channels, resolution)

    def validate(self, cfg: DictConfig) -> None:
        """Options, resolution and every width (GroupNorm groups) are consistent; errors name the key."""
        from msrepro.config import check_params

        p = check_params(self, cfg.model.params, "model.params")
        if p.progressive_input not in PROGRESSIVE_INPUTS:
            raise ConfigError(f"model.params.progressive_input: '{p.progressive_input}' is not valid; allowed: "
                              f"{', '.join(PROGRESSIVE_INPUTS)}")
        if p.middle not in MIDDLES:
            raise ConfigError(f"model.params.middle: '{p.middle}' is not valid; allowed: {', '.join(MIDDLES)}")
        if len(p.resample_filter) < 2 or len(p.resample_filter) % 2:
            raise ConfigError(f"model.params.resample_filter: need an even number (>= 2) of taps, got "
                              f"{list(p.resample_filter)}")
        if not p.channel_mult or p.num_blocks < 0:
            raise ConfigError("model.params: channel_mult must be non-empty and num_blocks >= 0")
        res, levels = int(cfg.dataset.resolution), len(p.channel_mult)
        if res % (2 ** (levels - 1)):
            raise ConfigError(f"dataset.resolution: {res} is not divisible by 2^{levels - 1} (model.params."
                              f"channel_mult has {levels} levels)")
        resolutions = [res >> i for i in range(levels)]
        bad = [r for r in p.attn_resolutions if r not in resolutions]
        if bad:
            raise ConfigError(f"model.params.attn_resolutions: {bad} not among this network's resolutions "
                              f"{resolutions}")
        self._check_widths(cfg, p)

    @staticmethod
    def _check_widths(cfg: DictConfig, p: Any) -> None:
        from msrepro.models import stage_widths

        enc, dec = stage_widths(cfg)
        for key, widths in (("model.encoder_channels", enc), ("model.decoder_channels", dec)):
            for w in widths:
                if w < 4 or w % 2:
                    raise ConfigError(f"{key}: width {w} must be even and >= 4")
                for c in sorted({w * m for m in p.channel_mult} | {w}):
                    try:
                        norm_groups(c, int(p.norm_groups))
                    except ValueError as exc:
                        raise ConfigError(f"{key}: width {w}: {exc}") from None
