"""Reference statistics: a dataset's features and FID statistics in one feature space, computed once, cached.

Layout: ``<cache>/refstats/<dataset>-r<res>-<split>-n<count>-<checksum>-<extractor>-<digest>/`` holding
torch-fidelity's own cache files (input name ``ref``: features and FID statistics) and ``provenance.json``
(dataset, checksum, count, extractor and its weights digest, torch-fidelity version, the FD of the set against
itself). The dataset checksum and the extractor digest are part of the folder name, so changed data or weights
never reuse stale statistics. Evaluations hand the folder to torch-fidelity as ``cache_root`` with
``input2_cache_name="ref"``: torch-fidelity reads the reference side from its cache and never recomputes it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch_fidelity
from torch.utils.data import Dataset

from msrepro.evaluation.metrics import EvalParams, Extractor, resolve_extractor
from msrepro.io import atomic_write_json
from msrepro.prefetch import cache_dir

logger = logging.getLogger(__name__)

REF = "ref"  # torch-fidelity's cache name of the reference input
PROVENANCE = "provenance.json"


class UInt8Images(Dataset):
    """A [N, C, H, W] image tensor (float in [0, 1] or uint8) served as uint8 RGB [3, H, W], torch-fidelity's input."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8:
            images = (images.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


class CachedReference(Dataset):
    """Stands for the reference set whose features torch-fidelity reads from its cache; touching it is a bug."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __len__(self) -> int:
        raise RuntimeError(f"reference statistics in {self.folder} are incomplete; delete the folder to recompute")

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.__len__()  # raises


def reference_dataset(dataset_cfg: Any):
    """The reference split as configured (no flips)."""
    from omegaconf import OmegaConf

    from msrepro.datasets.base import _as_cfg, build_dataset

    cfg = _as_cfg(OmegaConf.to_container(dataset_cfg, resolve=True) if OmegaConf.is_config(dataset_cfg)
                  else dataset_cfg)
    cfg.hflip = False
    return build_dataset(cfg)


def expected_files(folder: Path, extractor: Extractor, layer: str) -> list[Path]:
    name = extractor.fidelity_name
    return [folder / f"{REF}-{name}-features-{layer}.pt", folder / f"{REF}-{name}-stat-fid-{layer}.pt"]


def feature_layer(extractor: Extractor) -> str:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    return FEATURE_EXTRACTORS_REGISTRY[extractor.fidelity_name].get_default_feature_layer_for_metric("fid")


def refstats(dataset_cfg: Any, extractor: str | Extractor = "inception", *, params: EvalParams | None = None,
             device: str | torch.device = "cpu", batch_size: int = 256) -> Path:
    """The folder of the dataset's cached reference statistics in ``extractor``'s space, computed on first use."""
    ds = reference_dataset(dataset_cfg)
    ext = extractor if isinstance(extractor, Extractor) else resolve_extractor(extractor, ds.cfg, params)
    c = ds.cfg
    key = f"{c.name}-r{c.resolution}-{c.split}-n{len(ds)}-{ds.checksum()}-{ext.key}"
    folder = cache_dir() / "refstats" / key
    layer = feature_layer(ext)
    if (folder / PROVENANCE).is_file() and all(p.is_file() for p in expected_files(folder, ext, layer)):
        return folder
    logger.info("computing reference statistics %s (%d images, %s)", key, len(ds), ext.description)
    t0 = time.time()
    images = UInt8Images(ds.images)
    out = torch_fidelity.calculate_metrics(
        input1=images, input2=images, input1_cache_name=REF, input2_cache_name=REF, cache_root=str(folder),
        fid=True, cuda=torch.device(device).type == "cuda", batch_size=batch_size, verbose=False,
        save_cpu_ram=True, **ext.fidelity_kwargs())
    provenance = {
        "dataset": c.name, "resolution": int(c.resolution), "split": c.split, "limit": c.limit,
        "dataset_params": dict(c.params), "checksum": ds.checksum(), "count": len(ds),
        "extractor": ext.fidelity_name, "extractor_kind": ext.kind, "extractor_weights": str(ext.weights),
        "extractor_digest": ext.digest, "extractor_description": ext.description, "feature_layer": layer,
        "torch_fidelity": torch_fidelity.__version__, "self_fd": out[torch_fidelity.KEY_METRIC_FID],
        "wall_s": round(time.time() - t0, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": [p.name for p in expected_files(folder, ext, layer)],
    }
    atomic_write_json(folder / PROVENANCE, provenance)
    return folder


def provenance(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / PROVENANCE).read_text())
