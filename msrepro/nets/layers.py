"""Layers of the DDPM++ family (Song et al. 2021, ``score_sde``; Karras et al. 2022, EDM ``SongUNet``).

Both official implementations build the same blocks; they differ only in options (resampling filter, input
pyramid, where the bottleneck sits), which :mod:`msrepro.nets.ddpmpp` exposes. Everything here is plain
``torch.nn`` / ``torch.nn.functional``: FIR up/downsampling (StyleGAN2's ``upfirdn2d`` with factor 2) is a
depthwise (transposed) convolution, so no custom CUDA is needed and every weighted layer is an ``nn.Conv2d`` or
``nn.Linear`` (which is what :mod:`msrepro.flops` counts).

Initialisation follows both codebases, which agree: Xavier-uniform (score_sde's ``default_init``, a fan-average
variance scaling) with gain 1e-5 on the layers score_sde initialises at scale 0 (second conv of each block,
attention output, output conv), sqrt(0.2) on the fused q/k/v projection (= score_sde's separate NINs at scale
0.1), zero biases.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: ``flops_tag`` values: layers the official score_sde code realises outside nn.Conv2d/nn.Linear (see msrepro.flops)
TAG_ATTENTION_PROJECTION = "attention_projection"  # score_sde NIN (einsum) q/k/v/out projections
TAG_INPUT_PYRAMID = "input_pyramid"                # score_sde up_or_down_sampling.Conv2d (F.conv2d) pyramid conv

ZERO_GAIN = 1e-5          # EDM init_zero weight = sqrt(1e-10), score_sde's init_scale=0
ATTN_GAIN = math.sqrt(0.2)  # EDM init_attn for the fused qkv conv (= score_sde NIN init_scale 0.1 per q, k, v)


def xavier_uniform_(weight: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out)); fans include the receptive field (EDM weight_init)."""
    receptive = weight[0, 0].numel() if weight.ndim > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv2d(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, padding: int | None = None,
           gain: float = 1.0) -> nn.Conv2d:
    """Conv with Xavier-uniform weights (times ``gain``) and zero bias; 'same' padding by default."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2 if padding is None else padding)
    xavier_uniform_(conv.weight, gain)
    nn.init.zeros_(conv.bias)
    return conv


def linear(in_features: int, out_features: int, *, bias: bool = True, gain: float = 1.0) -> nn.Linear:
    """Linear layer with Xavier-uniform weights and zero bias."""
    lin = nn.Linear(in_features, out_features, bias=bias)
    xavier_uniform_(lin.weight, gain)
    if bias:
        nn.init.zeros_(lin.bias)
    return lin


def norm_groups(channels: int, max_groups: int) -> int:
    """GroupNorm groups min(max_groups, C // 4): 16 in the official multistage code, 32 upstream."""
    groups = min(max_groups, channels // 4)
    if groups < 1 or channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels cannot be split into min({max_groups}, {channels}//4) = "
                         f"{groups} groups; use widths that are multiples of 4 (and of the group count)")
    return groups


def group_norm(channels: int, max_groups: int, eps: float = 1e-6) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels, max_groups), channels, eps=eps)


def fir_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable 2-D FIR kernel outer(k, k) / sum^2 (unit DC gain), as StyleGAN2's ``_setup_kernel``."""
    k = torch.as_tensor([float(t) for t in taps], dtype=torch.float32)
    if k.ndim != 1 or k.numel() < 2 or k.numel() % 2:
        raise ValueError(f"resample_filter must be a 1-D filter of even length >= 2, got {list(taps)}")
    k2 = torch.outer(k, k)
    return k2 / k2.sum()


class Resample(nn.Module):
    """Factor-2 FIR resampling: ``down`` = filter then keep every 2nd pixel, ``up`` = zero-insert then filter x4.

    Equivalent to ``upfirdn2d`` with StyleGAN2's padding for even-length symmetric filters ([1,1]: box/nearest,
    [1,3,3,1]: score_sde's FIR). A fixed depthwise convolution, not a weighted layer.
    """

    def __init__(self, mode: str, taps: Sequence[float]) -> None:
        super().__init__()
        if mode not in ("up", "down"):
            raise ValueError(f"Resample mode must be 'up' or 'down', got '{mode}'")
        self.mode = mode
        self.register_buffer("kernel", fir_kernel(taps)[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, taps = x.shape[1], self.kernel.shape[-1]
        pad = (taps - 1) // 2
        if self.mode == "down":
            w = self.kernel.to(x.dtype).expand(c, 1, taps, taps)
            return F.conv2d(x, w, stride=2, padding=pad, groups=c)
        w = (self.kernel * 4).to(x.dtype).expand(c, 1, taps, taps)
        return F.conv_transpose2d(x, w, stride=2, padding=pad, groups=c)


class ConvDown(nn.Module):
    """3x3 conv with FIR downsampling (score_sde ``Conv2d(down=True)``: blur with pad L/2, then stride-2 conv)."""

    def __init__(self, in_ch: int, out_ch: int, taps: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("kernel", fir_kernel(taps)[None, None], persistent=False)
        self.conv = conv2d(in_ch, out_ch, 3, stride=2, padding=0)
        self.conv.flops_tag = TAG_INPUT_PYRAMID

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, taps = x.shape[1], self.kernel.shape[-1]
        blurred = F.conv2d(x, self.kernel.to(x.dtype).expand(c, 1, taps, taps), padding=taps // 2, groups=c)
        return self.conv(blurred)


def positional_embedding(x: torch.Tensor, channels: int, max_positions: int = 10000) -> torch.Tensor:
    """Transformer sinusoidal embedding [sin, cos] with frequencies max_positions^(-i/(C/2-1)) (DDPM, score_sde;
    EDM's ``PositionalEmbedding(endpoint=True)`` after its sin/cos swap)."""
    half = channels // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=x.device) * (-math.log(max_positions) / (half - 1)))
    args = x.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=1)


class Attention(nn.Module):
    """Single-head self-attention over pixels with a residual (score_sde ``AttnBlockpp``, EDM's block attention)."""

    def __init__(self, channels: int, max_groups: int, eps: float, skip_scale: float) -> None:
        super().__init__()
        self.norm = group_norm(channels, max_groups, eps)
        self.qkv = conv2d(channels, 3 * channels, 1, gain=ATTN_GAIN)
        self.proj = conv2d(channels, channels, 1, gain=ZERO_GAIN)
        self.qkv.flops_tag = self.proj.flops_tag = TAG_ATTENTION_PROJECTION
        self.skip_scale = skip_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * (c ** -0.5), dim=-1)  # [B, HW(query), HW(key)]
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return (x + self.proj(out)) * self.skip_scale


class ResBlock(nn.Module):
    """BigGAN-style residual block of DDPM++ (score_sde ``ResnetBlockBigGANpp``, EDM ``UNetBlock``), optionally
    resampling (FIR) and followed by self-attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, *, up: bool = False, down: bool = False,
                 attention: bool = False, dropout: float = 0.0, taps: Sequence[float] = (1, 1),
                 max_groups: int = 32, eps: float = 1e-6, skip_scale: float = math.sqrt(0.5)) -> None:
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        self.norm0 = group_norm(in_ch, max_groups, eps)
        self.resample = Resample("up" if up else "down", taps) if (up or down) else None
        self.conv0 = conv2d(in_ch, out_ch, 3)
        self.affine = linear(emb_ch, out_ch)
        self.norm1 = group_norm(out_ch, max_groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv2d(out_ch, out_ch, 3, gain=ZERO_GAIN)
        self.skip = conv2d(in_ch, out_ch, 1) if (in_ch != out_ch or up or down) else None
        self.attn = Attention(out_ch, max_groups, eps, skip_scale) if attention else None
        self.skip_scale = skip_scale

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm0(x))
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.conv0(h) + self.affine(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        if self.skip is not None:
            x = self.skip(x)
        out = (x + h) * self.skip_scale
        return self.attn(out) if self.attn is not None else out
