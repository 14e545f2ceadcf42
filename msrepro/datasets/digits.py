"""scikit-learn's bundled 8x8 digits: the embedded default dataset (ships with the package, no download)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from msrepro.datasets.base import ImageDataset
from msrepro.registry import DATASETS

TEST_SIZE = 297  # 1797 = 1500 train + 297 held out


@DATASETS.register("digits")
class Digits(ImageDataset):
    """scikit-learn digits (1797 images, 8x8, 1 channel), resized to the configured resolution; embedded."""

    estimate_size = 1_797  # sklearn digits

    channels = 1

    @dataclass
    class Config:
        interpolation: str = "bilinear"   # bilinear (antialiased) or nearest
        split_seed: int = 0                # fixed permutation that defines train / test

    def load(self) -> torch.Tensor:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.from_numpy(d.images).to(torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8] in [0, 1]
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.params.split_seed))
        x = x[perm]
        split = self.cfg.split
        if split == "train":
            x = x[:-TEST_SIZE]
        elif split == "test":
            x = x[-TEST_SIZE:]
        res = int(self.cfg.resolution)
        if res != 8:
            if self.params.interpolation == "nearest":
                x = F.interpolate(x, size=(res, res), mode="nearest")
            else:
                x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=res < 8)
        return x.clamp(0.0, 1.0)

    def labels(self) -> torch.Tensor:
        """Class labels of the configured split (same order as the images)."""
        from sklearn.datasets import load_digits

        y = torch.from_numpy(load_digits().target)
        perm = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(self.params.split_seed))
        y = y[perm]
        y = {"train": y[:-TEST_SIZE], "test": y[-TEST_SIZE:], "all": y}[self.cfg.split]
        return y[: self.cfg.limit] if self.cfg.limit is not None else y
