"""CelebA-style image datasets: a folder of images (``image_folder``) or a zip of them (``image_zip``).

Every image is made square and brought to ``dataset.resolution`` by one of two conventions:

- ``edm`` (EDM's ``dataset_tool.py --transform=center-crop``, used for CelebA 32x32): crop the centred square of
  the shorter side, then resize with PIL Lanczos.
- ``ldm`` (LDM / taming data loaders, CelebA-HQ 256x256): resize the shorter side to the resolution with PIL
  bicubic, then crop the centred square.

``crop`` optionally cuts a centred ``crop`` x ``crop`` window first (e.g. 140 for the DDPM / score_sde CelebA
convention). Images are kept as uint8. Nothing downloads: a missing folder or zip raises
:class:`OfflineDataError` saying where to put it.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from PIL import Image

from msrepro.config import ConfigError
from msrepro.datasets.base import ImageDataset, OfflineDataError
from msrepro.prefetch import data_dir
from msrepro.registry import DATASETS

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CONVENTIONS = ("edm", "ldm")


def _center_box(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    left, top = (w - size) // 2, (h - size) // 2
    return left, top, left + size, top + size


def square_resize(img: Image.Image, resolution: int, convention: str = "edm", crop: int | None = None) -> np.ndarray:
    """One RGB image -> uint8 [3, resolution, resolution] by the ``edm`` or ``ldm`` convention (module doc)."""
    img = img.convert("RGB")
    if crop is not None:
        img = img.crop(_center_box(*img.size, min(crop, *img.size)))
    w, h = img.size
    if convention == "edm":
        side = min(w, h)
        img = img.crop(_center_box(w, h, side))
        if side != resolution:
            img = img.resize((resolution, resolution), Image.LANCZOS)
    elif convention == "ldm":
        scale = resolution / min(w, h)
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        if size != (w, h):
            img = img.resize(size, Image.BICUBIC)
        img = img.crop(_center_box(*img.size, resolution))
    else:
        raise ConfigError(f"dataset.params.convention: '{convention}' is not valid; allowed: {', '.join(CONVENTIONS)}")
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


@dataclass
class ImageConfig:
    convention: str = "edm"            # edm (centre-crop short side, Lanczos) or ldm (resize short side, bicubic, crop)
    crop: Optional[int] = None         # centred crop in source pixels before the convention (140: score_sde CelebA)
    test_fraction: float = 0.0         # last fraction of the sorted file list held out as the test split
    progress: bool = True              # progress bar while decoding


class _ImageFiles(ImageDataset):
    """Shared logic: list image names, pick the split, decode with a progress bar."""

    estimate_size = 162_770  # CelebA train split

    channels = 3
    Config = ImageConfig
    default_root: str = ""

    def root(self) -> Path:
        return Path(self.cfg.root).expanduser() if self.cfg.root else data_dir() / self.default_root

    def _names(self) -> list[str]:
        raise NotImplementedError

    def _open_all(self, names: list[str]) -> Iterable[Image.Image]:
        raise NotImplementedError

    def _split(self, names: list[str]) -> list[str]:
        p = self.params
        if p.convention not in CONVENTIONS:
            raise ConfigError(f"dataset.params.convention: '{p.convention}' is not valid; "
                              f"allowed: {', '.join(CONVENTIONS)}")
        if not 0.0 <= p.test_fraction < 1.0:
            raise ConfigError(f"dataset.params.test_fraction: must be in [0, 1), got {p.test_fraction}")
        n_test = int(round(len(names) * p.test_fraction))
        if self.cfg.split == "test" and n_test == 0:
            raise ConfigError(f"dataset.split: '{self.cfg.name}' has no test split unless "
                              f"dataset.params.test_fraction > 0")
        cut = len(names) - n_test
        names = {"train": names[:cut], "test": names[cut:], "all": names}[self.cfg.split]
        return names[: self.cfg.limit] if self.cfg.limit is not None else names

    def load(self) -> torch.Tensor:
        from tqdm import tqdm

        names = self._split(self._names())
        res, p = int(self.cfg.resolution), self.params
        out = np.empty((len(names), 3, res, res), dtype=np.uint8)
        bar = tqdm(self._open_all(names), total=len(names), desc=f"{self.cfg.name} {self.root().name}",
                   unit="img", disable=not p.progress or len(names) < 1000, leave=False)
        for i, img in enumerate(bar):
            out[i] = square_resize(img, res, p.convention, p.crop)
        return torch.from_numpy(out)


def _where_to_put(what: str, path: Path) -> str:
    return (f"{what} not found: {path}. msrepro does not download CelebA: get it from "
            f"https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (img_align_celeba.zip, or CelebA-HQ for 256 px) "
            f"and put it there, or set dataset.root=/path/to/it")


@DATASETS.register("image_folder")
class ImageFolder(_ImageFiles):
    """A folder of images (searched recursively, sorted), CelebA-style crop and resize (edm or ldm convention)."""

    default_root = "img_align_celeba"

    def _names(self) -> list[str]:
        root = self.root()
        if not root.is_dir():
            raise OfflineDataError(_where_to_put("image folder", root))
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS)
        if not names:
            raise OfflineDataError(f"image folder {root} holds no images ({', '.join(EXTENSIONS)})")
        return names

    def _open_all(self, names: list[str]) -> Iterable[Image.Image]:
        root = self.root()
        for n in names:
            with Image.open(root / n) as img:
                img.load()
                yield img


@DATASETS.register("image_zip")
class ImageZip(_ImageFiles):
    """A zip of images (e.g. CelebA's img_align_celeba.zip), CelebA-style crop and resize (edm or ldm convention)."""

    default_root = "img_align_celeba.zip"

    def _zip(self) -> zipfile.ZipFile:
        root = self.root()
        if not root.is_file():
            raise OfflineDataError(_where_to_put("image zip", root))
        return zipfile.ZipFile(root)

    def _names(self) -> list[str]:
        with self._zip() as z:
            names = sorted(n for n in z.namelist() if Path(n).suffix.lower() in EXTENSIONS
                           and not Path(n).name.startswith("._"))
        if not names:
            raise OfflineDataError(f"image zip {self.root()} holds no images ({', '.join(EXTENSIONS)})")
        return names

    def _open_all(self, names: list[str]) -> Iterable[Image.Image]:
        with self._zip() as z:
            for n in names:
                with Image.open(io.BytesIO(z.read(n))) as img:
                    img.load()
                    yield img


