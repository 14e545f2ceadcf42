"""The LDM U-Net (``openaimodel.UNetModel`` of Dhariwal & Nichol 2021 as latent-diffusion uses it), split into a
shared encoder and per-stage decoders (paper Sec. 4.1, Fig. 1c; SPEC 4).

CelebA-HQ 256 LDM (``configs/latent-diffusion/celebahq-ldm-vq-4.yaml``): 64x64x3 latents, model_channels 224,
channel_mult 1,2,3,4, 2 residual blocks per level, self-attention at downsample factors 8, 4, 2 with 32 channels
per head, time embedding 4 x 224, GroupNorm(32), conv resampling (stride-2 conv down, nearest + conv up), no
scale-shift norm. The network sees the integer DDPM step index (0..999) through a [cos, sin] embedding.

Split (the official multistage LDM): the encoder holds the time embedding, the input blocks and the middle block
at width E; a decoder of width D holds the output blocks (concatenating the encoder-width skips) and the head.

Attention in the decoders (``ldm_decoder_attention``): the official multistage code builds its decoders in one
loop without resetting the downsample counter ``ds``, so only the first decoder ever sees ``ds`` in {8, 4, 2};
decoders 2 and 3 have no attention at all. ``first_only`` reproduces that (the paper's 114.8 / 76.1 / 51.3 GMACs
and 493.8 M parameters); ``all`` (default) gives every decoder its attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from msrepro.multidecoder import EncoderOutput
from msrepro.nets.layers import ZERO_GAIN

#: ``flops_tag`` of the attention q/k/v and output projections (1x1 ``conv_nd(1, ...)`` in openaimodel)
TAG_LDM_ATTENTION = "ldm_attention_projection"
DECODER_ATTENTION = ("all", "first_only")


@dataclass
class OpenAIUNetParams:
    """``model.params`` of the LDM backbone (defaults: the CelebA-HQ 256 LDM U-Net, SPEC 4)."""

    channel_mult: List[int] = field(default_factory=lambda: [1, 2, 3, 4])  # width multiplier per level
    num_res_blocks: int = 2              # residual blocks per level (the decoder has one more)
    attention_ds: List[int] = field(default_factory=lambda: [8, 4, 2])  # downsample factors with attention
    num_head_channels: int = 32          # channels per attention head
    time_embed_mult: int = 4             # time embedding width = time_embed_mult x encoder width
    dropout: float = 0.0                 # dropout inside residual blocks
    norm_groups: int = 32                # GroupNorm groups (openaimodel's GroupNorm32)
    max_period: float = 10000.0          # timestep embedding base
    ldm_decoder_attention: str = "all"   # all (every decoder has attention) or first_only (official multistage bug)
    latent_channels: int = 3             # channels of the latents the network denoises (VAE z channels)
    vae: Optional[str] = None            # VAE checkpoint (msrepro train-vae) used by .decode(); None = no decoding


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """openaimodel's sinusoidal embedding: [cos(t f_i), sin(t f_i)] with f_i = max_period^(-i/half), i < half."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.reshape(-1).to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def zero_(module: nn.Conv2d) -> nn.Conv2d:
    """openaimodel ``zero_module`` for the last layer of a residual branch and the head, as EDM's ``init_zero``:
    weights = 1e-5 x PyTorch's default init, zero bias. Exact zeros would block every gradient to the layers
    before it on the first step; 1e-5 is as good as zero for the function at init."""
    with torch.no_grad():
        module.weight.mul_(ZERO_GAIN)
        nn.init.zeros_(module.bias)
    return module


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    if channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible into {groups} groups")
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """openaimodel ``ResBlock`` (no up/down, no scale-shift): h = conv(SiLU(GN(x))) + emb; conv(drop(SiLU(GN(h))))."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(_norm(in_ch, groups), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, out_ch))
        self.out_layers = nn.Sequential(_norm(out_ch, groups), nn.SiLU(), nn.Dropout(dropout),
                                        zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None].to(x.dtype)
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """openaimodel ``AttentionBlock`` with ``QKVAttentionLegacy``: multi-head self-attention over pixels, residual."""

    def __init__(self, channels: int, head_channels: int, groups: int) -> None:
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"attention: {channels} channels not divisible by {head_channels} channels per head")
        self.heads = channels // head_channels
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = zero_(nn.Conv2d(channels, channels, 1))
        self.qkv.flops_tag = self.proj_out.flops_tag = TAG_LDM_ATTENTION

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, hh, ww = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b * self.heads, 3 * c // self.heads, hh * ww)
        q, k, v = qkv.chunk(3, dim=1)  # legacy order: heads outermost, then (q, k, v)
        scale = 1 / math.sqrt(math.sqrt(c // self.heads))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1).to(x.dtype)
        out = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (openaimodel ``Downsample(use_conv=True)``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 convolution (openaimodel ``Upsample(use_conv=True)``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """openaimodel ``TimestepEmbedSequential``: passes the embedding to the layers that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock, Downsample, Upsample)) else layer(x)
        return x


def _attention(p: Any, channels: int) -> AttentionBlock:
    return AttentionBlock(channels, int(p.num_head_channels), int(p.norm_groups))


def skip_channels(p: Any, encoder_channels: int) -> list[int]:
    """Channels of the encoder's skips (openaimodel ``input_block_chans``): input conv, each block, each downsample."""
    chans, ch = [encoder_channels], encoder_channels
    for level, mult in enumerate(p.channel_mult):
        for _ in range(p.num_res_blocks):
            ch = encoder_channels * mult
            chans.append(ch)
        if level != len(p.channel_mult) - 1:
            chans.append(ch)
    return chans


class OpenAIEncoder(nn.Module):
    """Time embedding, input blocks and middle block at width E (``forward(x, c_noise) -> EncoderOutput``)."""

    def __init__(self, p: Any, channels: int, in_channels: int) -> None:
        super().__init__()
        e, emb_ch, groups, drop = channels, channels * int(p.time_embed_mult), int(p.norm_groups), float(p.dropout)
        self.channels, self.max_period = e, float(p.max_period)
        self.time_embed = nn.Sequential(nn.Linear(e, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, e, 3, padding=1))])
        ch, ds = e, 1
        for level, mult in enumerate(p.channel_mult):
            for _ in range(p.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, e * mult, emb_ch, drop, groups)]
                ch = e * mult
                if ds in p.attention_ds:
                    layers.append(_attention(p, ch))
                self.input_blocks.append(EmbedSequential(*layers))
            if level != len(p.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                ds *= 2
        self.middle_block = EmbedSequential(ResBlock(ch, ch, emb_ch, drop, groups), _attention(p, ch),
                                            ResBlock(ch, ch, emb_ch, drop, groups))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, **_: Any) -> EncoderOutput:
        emb = self.time_embed(timestep_embedding(c_noise, self.channels, self.max_period))
        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        return EncoderOutput(self.middle_block(h, emb), skips, emb)


class OpenAIDecoder(nn.Module):
    """Output blocks (skips at encoder width E concatenated) and the head at width D; ``attention`` False drops
    every self-attention layer (the official multistage decoders 2 and 3)."""

    def __init__(self, p: Any, encoder_channels: int, channels: int, out_channels: int, attention: bool) -> None:
        super().__init__()
        e, d, groups, drop = encoder_channels, channels, int(p.norm_groups), float(p.dropout)
        emb_ch = e * int(p.time_embed_mult)
        skips = skip_channels(p, e)
        ch, ds = e * p.channel_mult[-1], 2 ** (len(p.channel_mult) - 1)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(p.channel_mult))):
            for i in range(p.num_res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(ch + skips.pop(), d * mult, emb_ch, drop, groups)]
                ch = d * mult
                if attention and ds in p.attention_ds:
                    layers.append(_attention(p, ch))
                if level and i == p.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        assert not skips
        self.out = nn.Sequential(_norm(ch, groups), nn.SiLU(), zero_(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def forward(self, feats: EncoderOutput) -> torch.Tensor:
        h, emb, skips = feats.h, feats.emb, list(feats.skips)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def decoder_has_attention(p: DictConfig | Any, stage: int) -> bool:
    """Whether decoder ``stage`` gets self-attention under ``ldm_decoder_attention`` (see the module docstring)."""
    if p.ldm_decoder_attention not in DECODER_ATTENTION:
        raise ValueError(f"ldm_decoder_attention: '{p.ldm_decoder_attention}' is not valid; allowed: "
                         f"{', '.join(DECODER_ATTENTION)}")
    return p.ldm_decoder_attention == "all" or stage == 0
