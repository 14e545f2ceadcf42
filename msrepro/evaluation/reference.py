"""Reference statistics: a dataset's features and FID statistics in one feature space, computed once, cached.

Layout: ``<cache>/refstats/<dataset>-r<res>-<split>-n<count>-<checksum>-<extractor>-<digest>/`` holding
torch-fidelity's own cache files (input name ``ref``: features and FID statistics) and ``provenance.json``
(dataset, checksum, count, extractor and its weights digest, torch-fidelity version); torch-fidelity adds the
FID statistics (mean, covariance) to the same cache on first use. The dataset checksum and the extractor digest are part of the folder name, so changed data or weights
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

from msrepro.evaluation import digits_classifier  # noqa: F401  registers msrepro-digits with torch-fidelity
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


def expected_files(folder: Path, extractor: Extractor, layers: list[str]) -> list[Path]:
    return [folder / f"{REF}-{extractor.fidelity_name}-features-{layer}.pt" for layer in layers]


def feature_layers(extractor: Extractor) -> list[str]:
    """The layers the metrics read (torch-fidelity's defaults for fid, kid and prc of this extractor)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    cls = FEATURE_EXTRACTORS_REGISTRY[extractor.fidelity_name]
    return sorted({cls.get_default_feature_layer_for_metric(m) for m in ("fid", "kid", "prc")})


def is_complete(folder: Path, extractor: Extractor) -> bool:
    return (folder / PROVENANCE).is_file() and all(p.is_file() for p in expected_files(
        folder, extractor, feature_layers(extractor)))


def build_reference(images: Dataset, folder: Path, extractor: Extractor, info: dict[str, Any], *,
                    device: str | torch.device = "cpu", batch_size: int = 256) -> Path:
    """Extract ``images``' features with torch-fidelity into its cache in ``folder`` (input name ``ref``), then
    write ``provenance.json`` (``info`` plus the extractor's identity). FID statistics are derived from the cached
    features and cached next to them by torch-fidelity on the first FID evaluation."""
    t0 = time.time()
    n = len(images)
    # KID on two samples is the cheapest call that makes torch-fidelity extract and cache the features
    torch_fidelity.calculate_metrics(
        input1=images, input2=images, input1_cache_name=REF, input2_cache_name=REF, cache_root=str(folder),
        kid=True, kid_subsets=1, kid_subset_size=min(2, n), cuda=torch.device(device).type == "cuda",
        batch_size=batch_size, verbose=False, save_cpu_ram=True, **extractor.fidelity_kwargs())
    layers = feature_layers(extractor)
    record = {**info, "count": n, "extractor": extractor.fidelity_name, "extractor_kind": extractor.kind,
              "extractor_weights": str(extractor.weights), "extractor_digest": extractor.digest,
              "extractor_description": extractor.description, "feature_layers": layers,
              "torch_fidelity": torch_fidelity.__version__, "wall_s": round(time.time() - t0, 3),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "files": [p.name for p in expected_files(folder, extractor, layers)]}
    atomic_write_json(folder / PROVENANCE, record)
    return folder


def refstats(dataset_cfg: Any, extractor: str | Extractor = "inception", *, params: EvalParams | None = None,
             device: str | torch.device = "cpu", batch_size: int = 256) -> Path:
    """The folder of the dataset's cached reference features in ``extractor``'s space, computed on first use."""
    ds = reference_dataset(dataset_cfg)
    ext = extractor if isinstance(extractor, Extractor) else resolve_extractor(extractor, ds.cfg, params)
    c, checksum = ds.cfg, ds.checksum()
    key = f"{c.name}-r{c.resolution}-{c.split}-n{len(ds)}-{checksum}-{ext.key}"
    folder = cache_dir() / "refstats" / key
    if is_complete(folder, ext):
        return folder
    logger.info("computing reference statistics %s (%d images, %s)", key, len(ds), ext.description)
    info = {"dataset": c.name, "resolution": int(c.resolution), "split": c.split, "limit": c.limit,
            "root": c.root, "dataset_params": dict(c.params), "checksum": checksum}
    return build_reference(UInt8Images(ds.images), folder, ext, info, device=device, batch_size=batch_size)


def provenance(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / PROVENANCE).read_text())
