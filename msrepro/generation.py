"""The generation engine: seeds -> batches of images, each image a function of its seed alone.

As in EDM's ``generate.py``, every image has its own random generator (:class:`StackedRandomGenerator`), so an image
depends on its seed only, not on the batch size, the batch it falls in, or the number of processes. Noise is drawn
on the CPU, so a seed also means the same initial noise on every device. Seeds are written ``"0-49999"`` or
``"0-9,20,30-31"`` (ranges inclusive).

Writers store images as uint8 PNG files (``{seed:06d}.png``) or one ``.npz`` (``images`` [N, H, W, C] uint8,
``seeds`` [N]); :func:`save_grid` writes a PNG grid of the first 64. Every file is written atomically.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from msrepro.config import to_dict
from msrepro.io import atomic_write
from msrepro.precond import Preconditioning
from msrepro.schedules import NoiseSchedule

GRID_MAX = 64
GRID_MIN_SIDE = 32  # pixels: smaller images are enlarged in a grid (save_grid)


# -- seeds and per-seed noise --------------------------------------------------------------------------------
def parse_seeds(spec: str | int | Sequence[int]) -> list[int]:
    """Seeds from ``"a-b,c"`` (inclusive ranges, EDM's syntax), an int n (seeds 0..n-1) or a list."""
    if isinstance(spec, int):
        return list(range(spec))
    if not isinstance(spec, str):
        return [int(s) for s in spec]
    seeds: list[int] = []
    for part in spec.replace(" ", "").split(","):
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                seeds.extend(range(a, b + 1))
            elif part:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"bad seed list '{spec}': write seeds like '0-49999' or '0-9,20,30-31' "
                             f"(non-negative integers, inclusive ranges a-b with a <= b)") from None
    if not seeds:
        raise ValueError(f"bad seed list '{spec}': no seeds; write seeds like '0-49999' or '0-9,20,30-31'")
    return seeds


class StackedRandomGenerator:
    """One CPU ``torch.Generator`` per seed; draws are stacked along the batch axis (EDM's idea)."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator().manual_seed(int(s) % (1 << 63)) for s in seeds]

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"asked for {shape[0]} samples from {len(self.generators)} generators")
        out = torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in self.generators])
        return out.to(device=device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape, x.dtype, x.device)


# -- the engine -----------------------------------------------------------------------------------------------
@dataclass
class SampleBatch:
    seeds: list[int]
    images: torch.Tensor  # [B, C, H, W] in [-1, 1], on the generation device
    info: dict            # the sampler's info: nfe, nfe_per_stage, sigmas


@dataclass
class Generation:
    """Iterating gives image batches ([B, C, H, W] in [-1, 1]); :meth:`batches` also gives their seeds; after (or
    during) the run ``nfe`` / ``nfe_per_stage`` hold the sampler's count per image."""

    denoiser: Any
    sampler: Any
    schedule: NoiseSchedule
    shape: tuple[int, ...]
    seed_batches: list[list[int]]
    device: torch.device
    progress: bool = True
    nfe: int | None = None
    nfe_per_stage: list[int] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return sum(len(b) for b in self.seed_batches)

    def batches(self) -> Iterator[SampleBatch]:
        desc = f"sampling ({self.sampler.name})"
        with tqdm(total=self.num_images, unit="img", desc=desc, disable=not self.progress) as bar:
            for seeds in self.seed_batches:
                batch = self.run_batch(seeds)
                bar.update(len(seeds))
                bar.set_postfix(nfe=self.nfe)
                yield batch

    def run_batch(self, seeds: list[int]) -> SampleBatch:
        """Sample the images of ``seeds`` (one batch); a Preconditioning decodes them (``decode``: latent models)."""
        rng = StackedRandomGenerator(seeds)
        noise = rng.randn([len(seeds), *self.shape], device=self.device)
        with torch.no_grad():
            x, info = self.sampler(self.denoiser, noise, self.schedule, generator=rng)
            images = self.denoiser.decode(x) if isinstance(self.denoiser, Preconditioning) else x
        self.nfe, self.nfe_per_stage = info["nfe"], info["nfe_per_stage"]
        return SampleBatch(list(seeds), images.float().clamp(-1, 1), info)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (b.images for b in self.batches())


def generate(denoiser: Any, sample_cfg: Mapping[str, Any] | Any, shape: Sequence[int], seeds: str | Sequence[int],
             device: torch.device | str, progress: bool = True, *, schedule: NoiseSchedule | None = None,
             rank: int = 0, world_size: int = 1) -> Generation:
    """Images for ``seeds`` from ``denoiser`` with the sampler of ``sample_cfg`` (``sampler``, ``params``,
    ``batch_size``: the run config's ``sample`` section). ``shape`` is one sample's shape; ``schedule`` defaults to
    ``denoiser.schedule``. With ``world_size`` > 1 this process takes every ``world_size``-th batch from ``rank``."""
    from msrepro.samplers import build_sampler

    cfg = to_dict(sample_cfg)
    sampler = build_sampler(cfg.get("sampler", "dpm_solver"), cfg.get("params") or {})
    schedule = schedule if schedule is not None else getattr(denoiser, "schedule", None)
    if schedule is None:
        raise ValueError("generate: the denoiser has no .schedule; pass schedule=...")
    seeds = parse_seeds(seeds)
    batch_size = int(cfg.get("batch_size") or len(seeds))
    all_batches = [seeds[i:i + batch_size] for i in range(0, len(seeds), batch_size)]
    device = torch.device(device)
    if isinstance(denoiser, torch.nn.Module):
        denoiser = denoiser.to(device)
    return Generation(denoiser, sampler, schedule, tuple(shape), all_batches[rank::world_size], device, progress)


# -- writers ----------------------------------------------------------------------------------------------------
def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images [B, C, H, W] -> uint8 [B, C, H, W] on the same device (round to nearest): what PNGs hold."""
    return (images.detach().float() * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] images [B, C, H, W] -> uint8 [B, H, W, C] (round to nearest)."""
    return quantize(images).cpu().permute(0, 2, 3, 1).numpy()


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """One uint8 [H, W, C] image as a PNG, written atomically."""
    data = _png_bytes(array)
    return atomic_write(path, lambda f: f.write(data), mode="wb")


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, nrow: int | None = None,
              scale: int | None = None) -> Path:
    """A PNG grid of the first 64 images ([B, C, H, W] in [-1, 1], or uint8 [B, H, W, C]); ``nrow`` per row.
    ``scale``: each image enlarged by this integer factor, nearest neighbour (default: the smallest factor that
    shows it at least ``GRID_MIN_SIDE`` pixels wide, e.g. 4 for the 8 px digits; 1 from 32 px up)."""
    arr = to_uint8(images) if isinstance(images, torch.Tensor) else np.asarray(images)
    arr = arr[:GRID_MAX]
    scale = scale or max(1, math.ceil(GRID_MIN_SIDE / max(arr.shape[1:3])))
    arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = arr.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows, pad = math.ceil(n / nrow), 2
    grid = np.zeros((pad + rows * (h + pad), pad + nrow * (w + pad), c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = arr[k]
    return save_png(grid, path)


class PNGWriter:
    """Each image as ``out_dir/{seed:06d}.png``."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.count = 0

    def write(self, seeds: Sequence[int], images: torch.Tensor) -> None:
        for seed, arr in zip(seeds, to_uint8(images)):
            save_png(arr, self.out_dir / f"{int(seed):06d}.png")
        self.count += len(seeds)

    def close(self) -> Path:
        return self.out_dir


class NPZWriter:
    """All images in one ``.npz``: ``images`` uint8 [N, H, W, C] and ``seeds`` int64 [N], written on close."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.arrays: list[np.ndarray] = []
        self.seeds: list[int] = []

    @property
    def count(self) -> int:
        return len(self.seeds)

    def write(self, seeds: Sequence[int], images: torch.Tensor) -> None:
        self.arrays.append(to_uint8(images))
        self.seeds.extend(int(s) for s in seeds)

    def close(self) -> Path:
        images = np.concatenate(self.arrays) if self.arrays else np.zeros((0, 0, 0, 0), np.uint8)
        return atomic_write(self.path, lambda f: np.savez(f, images=images, seeds=np.asarray(self.seeds, np.int64)),
                            mode="wb")
