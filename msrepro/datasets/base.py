"""The dataset base class and builders shared by every registered dataset."""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf

from msrepro.config import ConfigError, DatasetConfig, check_params
from msrepro.registry import DATASETS

SPLITS = ("train", "test", "all")


class OfflineDataError(FileNotFoundError):
    """Data that must be downloaded is missing: the message says what to fetch and where to put it."""


class ImageDataset(torch.utils.data.Dataset):
    """A split of an image dataset, held as one uint8 or float tensor, served as [C, H, W] in [-1, 1].

    Subclasses implement :meth:`load` (returning [N, C, H, W] floats in [0, 1], or uint8 in [0, 255], at the
    configured resolution) and set ``channels``; loading, range, flips, limits and checksums are handled here.
    uint8 is kept as uint8 in memory (4x smaller: CelebA at 256 px) and converted per access.
    """

    channels: ClassVar[int] = 3
    Config: ClassVar[type | None] = None
    #: training items assumed by ``--dry-run`` estimates, which load no files (the paper's dataset for this loader)
    estimate_size: ClassVar[int] = 50_000

    def __init__(self, cfg: DatasetConfig | DictConfig | dict[str, Any]) -> None:
        self.cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg) if not isinstance(cfg, dict) \
            else OmegaConf.merge(OmegaConf.structured(DatasetConfig), cfg)
        if self.cfg.split not in SPLITS:
            raise ConfigError(f"dataset.split: '{self.cfg.split}' is not valid; allowed: {', '.join(SPLITS)}")
        self.params = check_params(type(self), self.cfg.params, "dataset.params")
        images = self.load()
        if self.cfg.limit is not None:
            images = images[: self.cfg.limit]
        self.images = images.contiguous()

    # -- what a dataset defines ----------------------------------------------------------------------
    def load(self) -> torch.Tensor:
        """All images of the configured split as [N, C, H, W] at cfg.resolution: float in [0, 1] or uint8."""
        raise NotImplementedError

    # -- served to everyone ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.images.shape[0]

    def _range(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        return x if self.cfg.zero_one else x * 2.0 - 1.0

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self._range(self.images[i])
        if self.cfg.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x

    def tensor(self) -> torch.Tensor:
        """The whole split as [N, C, H, W] in the configured range, without flips."""
        return self._range(self.images)

    def checksum(self) -> str:
        """SHA-256 of the served pixels (provenance of reference statistics and clusterer inputs)."""
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        pixels = self.images if self.images.dtype == torch.uint8 else self.images.to(torch.float32)
        h.update(pixels.numpy().tobytes())
        return h.hexdigest()[:16]


def _as_cfg(cfg: Any) -> DictConfig:
    if isinstance(cfg, DictConfig):
        return cfg
    return OmegaConf.merge(OmegaConf.structured(DatasetConfig), cfg if isinstance(cfg, dict) else OmegaConf.structured(cfg))


def build_dataset(cfg: Any) -> ImageDataset:
    """The dataset named by ``cfg.name`` (a DatasetConfig, DictConfig or dict)."""
    cfg = _as_cfg(cfg)
    return DATASETS.get(cfg.name)(cfg)


def load_tensor(cfg: Any) -> torch.Tensor:
    """The whole configured split as one [N, C, H, W] tensor."""
    return build_dataset(cfg).tensor()
