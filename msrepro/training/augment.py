"""EDM's non-leaky augmentation (Karras et al. 2022, Appendix C; ``training/augment.py``), CIFAR-10 setting.

Each training image is, with probability ``p`` per transformation, x-flipped (always eligible, as EDM's
``xflip=1e8``), y-flipped, isotropically scaled (log2 std 0.2), rotated (uniform angle), anisotropically scaled
(log2 std 0.2, about a random axis half of the time) and translated (std 0.125 of the size). The network is told
what was done through 9 augmentation labels (the ``augment_dim = 9`` conditioning), so the augmentations do not
leak into generated images, which are sampled with all-zero labels (= no augmentation).

Difference from EDM: the geometric part is resampled with one bilinear ``grid_sample`` (reflection padding) instead
of EDM's 2x wavelet (sym6) upsampling; label layout and parameter distributions are EDM's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENT_DIM = 9  # xflip, yflip, scale, rotation (cos - 1, sin), anisotropy (2), translation (2)
SCALE_STD, ANISO_STD, TRANSLATE_STD, ANISO_ROTATE_PROB = 0.2, 0.2, 0.125, 0.5


def _rot(theta: torch.Tensor) -> torch.Tensor:
    c, s = theta.cos(), theta.sin()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # [N, 2, 2]


def _diag(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.diag_embed(torch.stack([a, b], -1))


def geometric(n: int, size: tuple[int, int], p: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image inverse maps (output -> input, pixel units about the centre) as [N, 2, 3], and their 7 labels."""
    h, w = size
    gate = lambda: (torch.rand(n, generator=g) < p).double()  # noqa: E731
    s = torch.randn(n, generator=g, dtype=torch.float64) * gate()
    rot = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * math.pi * gate()
    a = torch.randn(n, generator=g, dtype=torch.float64)
    axis = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    a, axis = a * gate(), axis * (torch.rand(n, generator=g) < ANISO_ROTATE_PROB).double()
    t = torch.randn(2, n, generator=g, dtype=torch.float64) * gate()
    sc, an = 2.0 ** (-s * SCALE_STD), 2.0 ** (a * ANISO_STD)
    lin = _diag(sc, sc) @ _rot(rot) @ _rot(-axis) @ _diag(1 / an, an) @ _rot(axis)
    shift = torch.stack([-t[0] * w * TRANSLATE_STD, -t[1] * h * TRANSLATE_STD], -1)
    inv = torch.cat([lin, (lin @ shift.unsqueeze(-1))], -1)
    labels = torch.stack([s, rot.cos() - 1, rot.sin(), a * axis.cos(), a * axis.sin(), t[0], t[1]], -1)
    return inv, labels


def warp(images: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """Resample ``images`` [N, C, H, W] at ``inv`` (pixel units about the centre; bilinear, reflection padding)."""
    n, _, h, w = images.shape
    to_norm = torch.tensor([2.0 / w, 2.0 / h], dtype=inv.dtype)
    theta = inv.clone()
    theta[:, :, :2] = theta[:, :, :2] * to_norm[None, :, None] / to_norm[None, None, :]
    theta[:, :, 2] = theta[:, :, 2] * to_norm[None, :]
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def augment(images: torch.Tensor, p: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(augmented images, labels [N, 9]) with EDM's CIFAR-10 pipeline at probability ``p`` (CPU generator ``g``)."""
    n = images.shape[0]
    xf = torch.randint(2, (n,), generator=g) * int(p > 0)  # xflip=1e8: eligible with probability 1 when p > 0
    yf = torch.randint(2, (n,), generator=g) * (torch.rand(n, generator=g) < p).long()
    out = torch.where(xf.bool()[:, None, None, None], images.flip(3), images)
    out = torch.where(yf.bool()[:, None, None, None], out.flip(2), out)
    inv, geo = geometric(n, images.shape[-2:], p, g)
    moved = (geo != 0).any(1)
    if moved.any():
        out = out.clone()
        out[moved] = warp(out[moved], inv[moved])
    labels = torch.cat([xf[:, None].double(), yf[:, None].double(), geo], 1)
    return out, labels.to(images.dtype)
