"""KL-regularised autoencoder (the first stage of latent diffusion; Rombach et al. 2022, Sec. 3 and App. G).

The architecture of latent-diffusion's ``AutoencoderKL`` (taming-transformers ``Encoder``/``Decoder``): a
convolutional encoder of ``len(ch_mult) - 1`` stride-2 downsamplings (factor f = 2^(levels-1)) with a middle
block (res, attention, res), ``2 z_channels`` outputs (mean and log-variance of a diagonal Gaussian), 1x1
``quant_conv``/``post_quant_conv``, and the mirrored decoder with nearest-neighbour upsampling. ``kl-f4``:
ch 128, ch_mult 1,2,4, 2 residual blocks, 3 latent channels (256 px -> 64 x 64 x 3).

The latent scale factor (LDM ``scale_factor`` = 1 / std of the latents, computed from data after training) is a
buffer, so it travels in the state dict: diffusion runs on ``scale_factor * z`` and decodes ``z / scale_factor``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class VAEParams:
    """Architecture of the KL autoencoder (defaults: latent-diffusion ``kl-f4``)."""

    ch: int = 128                        # base width
    ch_mult: List[int] = field(default_factory=lambda: [1, 2, 4])  # width multiplier per level (factor 2^(L-1))
    num_res_blocks: int = 2              # residual blocks per level (decoder: one more)
    attn_resolutions: List[int] = field(default_factory=list)  # feature resolutions with attention (kl-f4: none)
    z_channels: int = 3                  # latent channels
    dropout: float = 0.0
    norm_groups: int = 32                # GroupNorm groups (taming: 32)


def _norm(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, c), c, eps=1e-6)


class ResnetBlock(nn.Module):
    """taming ``ResnetBlock`` without time embedding: GN-SiLU-conv, GN-SiLU-dropout-conv, 1x1 shortcut if needed."""

    def __init__(self, cin: int, cout: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """taming ``AttnBlock``: single-head self-attention over pixels with 1x1 q, k, v and output projections."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(c, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(b, c, hh * ww).transpose(1, 2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after asymmetric (0, 1, 0, 1) padding (taming)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _level(cin: int, cout: int, n: int, p: Any, attn: bool) -> tuple[nn.ModuleList, int]:
    blocks = nn.ModuleList()
    for _ in range(n):
        blocks.append(ResnetBlock(cin, cout, p.norm_groups, p.dropout))
        if attn:
            blocks.append(AttnBlock(cout, p.norm_groups))
        cin = cout
    return blocks, cout


def _middle(c: int, p: Any) -> nn.Sequential:
    return nn.Sequential(ResnetBlock(c, c, p.norm_groups, p.dropout), AttnBlock(c, p.norm_groups),
                         ResnetBlock(c, c, p.norm_groups, p.dropout))


class Encoder(nn.Module):
    def __init__(self, p: Any, in_channels: int, resolution: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, p.ch, 3, padding=1)
        self.levels, self.down = nn.ModuleList(), nn.ModuleList()
        c, res = p.ch, resolution
        for i, mult in enumerate(p.ch_mult):
            blocks, c = _level(c, p.ch * mult, p.num_res_blocks, p, res in p.attn_resolutions)
            self.levels.append(blocks)
            if i != len(p.ch_mult) - 1:
                self.down.append(Downsample(c))
                res //= 2
        self.mid = _middle(c, p)
        self.norm_out = _norm(c, p.norm_groups)
        self.conv_out = nn.Conv2d(c, 2 * p.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, blocks in enumerate(self.levels):
            for block in blocks:
                h = block(h)
            if i < len(self.down):
                h = self.down[i](h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, p: Any, out_channels: int, resolution: int) -> None:
        super().__init__()
        c = p.ch * p.ch_mult[-1]
        res = resolution // 2 ** (len(p.ch_mult) - 1)
        self.conv_in = nn.Conv2d(p.z_channels, c, 3, padding=1)
        self.mid = _middle(c, p)
        self.levels, self.up = nn.ModuleList(), nn.ModuleList()
        for i, mult in reversed(list(enumerate(p.ch_mult))):
            blocks, c = _level(c, p.ch * mult, p.num_res_blocks + 1, p, res in p.attn_resolutions)
            self.levels.append(blocks)
            if i != 0:
                self.up.append(Upsample(c))
                res *= 2
        self.norm_out = _norm(c, p.norm_groups)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i, blocks in enumerate(self.levels):
            for block in blocks:
                h = block(h)
            if i < len(self.up):
                h = self.up[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """The posterior q(z|x) = N(mean, diag(exp(logvar))) (log-variance clamped to [-30, 20], as LDM)."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over latent elements: 0.5 sum(mu^2 + var - 1 - logvar)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class AutoencoderKL(nn.Module):
    """Encoder -> quant_conv -> q(z|x); z -> post_quant_conv -> Decoder (latent-diffusion ``AutoencoderKL``)."""

    def __init__(self, p: Any, in_channels: int, resolution: int) -> None:
        super().__init__()
        self.factor = 2 ** (len(p.ch_mult) - 1)
        if resolution % self.factor:
            raise ValueError(f"resolution {resolution} is not divisible by the downsampling factor {self.factor}")
        self.in_channels, self.resolution, self.z_channels = in_channels, resolution, int(p.z_channels)
        self.encoder = Encoder(p, in_channels, resolution)
        self.decoder = Decoder(p, in_channels, resolution)
        self.quant_conv = nn.Conv2d(2 * p.z_channels, 2 * p.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(p.z_channels, p.z_channels, 1)
        self.register_buffer("scale_factor", torch.tensor(1.0))  # set from data by set_scale_factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        r = self.resolution // self.factor
        return self.z_channels, r, r

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (unclamped, nominally [-1, 1]) from *unscaled* latents z."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, DiagonalGaussian]:
        post = self.encode(x)
        return self.decode(post.sample() if sample else post.mode()), post

    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight (LDM's adaptive discriminator weight is computed on it)."""
        return self.decoder.conv_out.weight

    @torch.no_grad()
    def set_scale_factor(self, latents: torch.Tensor) -> float:
        """LDM ``scale_factor = 1 / std(z)`` over the given latents; stored in the state dict."""
        std = float(latents.float().std())
        if not math.isfinite(std) or std <= 0:
            raise ValueError(f"cannot set the latent scale factor from latents with std {std}")
        self.scale_factor.fill_(1.0 / std)
        return 1.0 / std
