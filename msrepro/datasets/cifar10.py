"""CIFAR-10 from torchvision's python-batch files (``cifar-10-batches-py/``), fetched once by ``msrepro prefetch``.

Each batch file is a pickle holding ``{b"data": uint8 [10000, 3072] (R, G, B planes of 32x32, row-major),
b"labels": [10000 ints], ...}``; ``data_batch_1`` .. ``data_batch_5`` are the training split, ``test_batch`` the
test split. Nothing here downloads: a missing file raises :class:`OfflineDataError` naming the file and the
command that fetches it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from msrepro.datasets.base import ImageDataset, OfflineDataError
from msrepro.prefetch import cache_dir, data_dir, register_target
from msrepro.registry import DATASETS

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
NATIVE_RESOLUTION = 32


def batches_dir(root: str | Path | None) -> Path:
    """The ``cifar-10-batches-py`` folder for ``dataset.root`` (its parent, as torchvision, or the folder itself)."""
    base = Path(root).expanduser() if root else data_dir()
    return base if (base / TRAIN_FILES[0]).exists() or base.name == FOLDER else base / FOLDER


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 3, 32, 32], labels int64 [N]) of one python-batch file."""
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, NATIVE_RESOLUTION, NATIVE_RESOLUTION)
    labels = np.asarray(entry.get(b"labels", entry.get(b"fine_labels")), dtype=np.int64)
    return data, labels


def _missing(path: Path) -> OfflineDataError:
    return OfflineDataError(
        f"CIFAR-10 file not found: {path}. Fetch it where there is internet with `msrepro prefetch cifar10` "
        f"(writes {data_dir() / FOLDER}), or copy torchvision's '{FOLDER}' folder there, or point "
        f"dataset.root at the folder that contains '{FOLDER}'")


@DATASETS.register("cifar10")
class CIFAR10(ImageDataset):
    """CIFAR-10 (50 000 train / 10 000 test, 32x32 RGB), torchvision's python batches (msrepro prefetch cifar10)."""

    estimate_size = 50_000  # CIFAR-10 train split

    channels = 3

    @dataclass
    class Config:
        antialias: bool = True  # antialiased bilinear when dataset.resolution differs from 32

    def _files(self) -> list[Path]:
        names = {"train": TRAIN_FILES, "test": TEST_FILES, "all": TRAIN_FILES + TEST_FILES}[self.cfg.split]
        folder = batches_dir(self.cfg.root)
        files = [folder / n for n in names]
        for f in files:  # fail at once, before reading anything
            if not f.is_file():
                raise _missing(f)
        return files

    def load(self) -> torch.Tensor:
        images, labels = zip(*(read_batch(f) for f in self._files()))
        self._labels = torch.from_numpy(np.concatenate(labels))
        x = torch.from_numpy(np.concatenate(images))
        res = int(self.cfg.resolution)
        if res != NATIVE_RESOLUTION:
            x = F.interpolate(x.float() / 255.0, size=(res, res), mode="bilinear", align_corners=False,
                              antialias=self.params.antialias and res < NATIVE_RESOLUTION).clamp(0.0, 1.0)
        return x

    def labels(self) -> torch.Tensor:
        """Class labels of the configured split (same order as the images)."""
        y = self._labels
        return y[: self.cfg.limit] if self.cfg.limit is not None else y


@register_target("cifar10", "CIFAR-10 python batches via torchvision (~170 MB) into the data folder")
def fetch_cifar10(dest: Path) -> Path:
    """Download CIFAR-10 with torchvision into ``dest`` (the default cache root means :func:`data_dir`)."""
    from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

    root = data_dir() if Path(dest) == cache_dir() else Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    TorchvisionCIFAR10(root=str(root), train=True, download=True)
    TorchvisionCIFAR10(root=str(root), train=False, download=True)
    return root / FOLDER
