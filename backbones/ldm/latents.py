"""The latent cache: a dataset encoded once by the VAE (``msrepro encode-latents``), read by the ``latents``
dataset so diffusion training never runs the VAE encoder.

Cache file (``torch.save`` of a plain dict, read with ``weights_only=True``)::

    {"format": "msrepro-latents-v1", "mean": [N, C, h, w], "std": [N, C, h, w] (posterior, already multiplied
     by scale_factor), "scale_factor": float, "vae": str (checkpoint path), "dataset": dict (source dataset
     config), "dataset_checksum": str}

The ``latents`` dataset serves ``scale_factor * z`` with z a fresh posterior sample per access (LDM's
``encode_first_stage(x).sample()``), or the posterior mean with ``dataset.params.sample_posterior=false``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from msrepro.config import ConfigError, DatasetConfig
from msrepro.datasets import build_dataset
from msrepro.datasets.base import ImageDataset
from msrepro.io import atomic_write
from msrepro.registry import DATASETS
from msrepro.backbones.ldm.autoencoder_training import load_vae

FORMAT = "msrepro-latents-v1"


@torch.no_grad()
def encode_latents(vae_checkpoint: str | Path, dataset_cfg: Any, out: str | Path, *, batch: int = 64,
                   device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Encode every image of ``dataset_cfg`` (no flips) with the VAE and write the cache atomically."""

    vae = load_vae(vae_checkpoint, device)
    ds = build_dataset(OmegaConf.merge(OmegaConf.structured(DatasetConfig), dataset_cfg, {"hflip": False,
                                                                                          "zero_one": False}))
    if ds.tensor().shape[1:] != (vae.in_channels, vae.resolution, vae.resolution):
        raise ConfigError(f"dataset gives images of shape {tuple(ds.tensor().shape[1:])} but the VAE was trained on "
                          f"{(vae.in_channels, vae.resolution, vae.resolution)}; set dataset.resolution="
                          f"{vae.resolution}")
    images, scale = ds.tensor(), float(vae.scale_factor)
    means, stds = [], []
    for i in tqdm(range(0, images.shape[0], batch), desc="encode-latents", disable=not progress):
        post = vae.encode(images[i:i + batch].to(device))
        means.append((post.mean * scale).cpu())
        stds.append((post.std * scale).cpu())
    state = {"format": FORMAT, "mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous(),
             "scale_factor": scale, "vae": str(Path(vae_checkpoint).resolve()),
             "dataset": OmegaConf.to_container(ds.cfg, resolve=True), "dataset_checksum": ds.checksum()}
    return atomic_write(out, lambda f: torch.save(state, f), mode="wb")


def read_cache(path: str | Path) -> dict[str, Any]:
    """The cache dict; a missing or foreign file raises an error saying how to make one."""
    if path is None:
        raise ConfigError("dataset.root: the latents dataset needs the cache file written by `msrepro encode-latents "
                          "VAE_CKPT --out FILE`; set dataset.root=FILE")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"latent cache not found: {p}. Write it once with `msrepro encode-latents VAE_CKPT "
                                f"--out {p}` (after `msrepro train-vae`)")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{p} is not an msrepro latent cache (expected format '{FORMAT}')")
    return state


def source_dataset_config(dataset_cfg: DictConfig) -> DictConfig:
    """The image dataset a latent cache was encoded from (for reference statistics of decoded samples)."""
    src = read_cache(dataset_cfg.root)["dataset"]
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), src)


@DATASETS.register("latents")
class Latents(ImageDataset):
    """VAE latents of an image dataset from a cache (``dataset.root``), scaled by the VAE's scale factor."""

    estimate_size = 30_000  # CelebA-HQ

    @dataclass
    class Config:
        sample_posterior: bool = True   # a fresh z ~ q(z|x) per access (LDM); false = the posterior mean

    @staticmethod
    def channels(cfg: Any) -> int:
        return int(read_cache(cfg.root)["mean"].shape[1])

    def load(self) -> torch.Tensor:
        if self.cfg.hflip:
            raise ConfigError("dataset.hflip: latents cannot be flipped (a flipped latent is not the latent of the "
                              "flipped image); encode flipped images instead")
        state = read_cache(self.cfg.root)
        encoded = state["dataset"].get("split", "train")
        if self.cfg.split != encoded:
            raise ConfigError(f"dataset.split: the latent cache {self.cfg.root} holds the '{encoded}' split, not "
                              f"'{self.cfg.split}'; encode that split into its own cache with `msrepro encode-latents "
                              f"VAE_CKPT dataset.split={self.cfg.split} --out FILE`")
        mean, std = state["mean"].float(), state["std"].float()
        if mean.shape[-1] != int(self.cfg.resolution):
            raise ConfigError(f"dataset.resolution: {self.cfg.resolution}, but the latent cache {self.cfg.root} holds "
                              f"{mean.shape[-1]} x {mean.shape[-1]} latents; set dataset.resolution={mean.shape[-1]}")
        self.scale_factor, self.vae_checkpoint, self.source = state["scale_factor"], state["vae"], state["dataset"]
        self.std = std  # aligned with the images after the base class applies the limit (see __getitem__)
        return mean

    def _range(self, x: torch.Tensor) -> torch.Tensor:
        return x  # latents are served as stored (no [0, 1] -> [-1, 1] mapping)

    def __getitem__(self, i: int) -> torch.Tensor:
        mean = self.images[i]
        if not self.params.sample_posterior:
            return mean
        return mean + self.std[i] * torch.randn_like(mean)
