"""Datasets: image tensors in [-1, 1] (or [0, 1] on request), registered by name.

Every registered dataset is a :class:`ImageDataset` subclass built from the ``dataset`` config section::

    ds = build_dataset(cfg.dataset)      # a torch Dataset of [C, H, W] tensors, flips applied if configured
    x = ds.tensor()                      # the whole split as one [N, C, H, W] tensor (no flips)
"""

from __future__ import annotations

from msrepro.datasets.base import ImageDataset, OfflineDataError, build_dataset, load_tensor

__all__ = ["ImageDataset", "OfflineDataError", "build_dataset", "load_tensor"]
