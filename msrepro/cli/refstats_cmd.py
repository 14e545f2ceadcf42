"""``msrepro refstats DATASET [--resolution R] [--extractor inception|digits] [--root PATH] [--split S]``: compute
(once) and show a dataset's cached reference statistics and their provenance."""

from __future__ import annotations

import argparse
import json

from omegaconf import OmegaConf

from msrepro.config import DatasetConfig
from msrepro.registry import DATASETS

NAME = "refstats"
HELP = "compute / show cached reference statistics of a dataset (features + FID statistics, with provenance)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="registered dataset name (digits, cifar10, image_folder, ...)")
    p.add_argument("--resolution", type=int, default=None, help="side length in pixels (default: the dataset's)")
    p.add_argument("--extractor", choices=("inception", "digits"), default=None,
                   help="feature space (default: digits for the digits dataset, else inception)")
    p.add_argument("--root", default=None, help="dataset file or folder (datasets that read one)")
    p.add_argument("--split", default="train", help="split (default: train, as evaluations use)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--inception-weights", default=None, help="Inception weights file (default: torch hub's folder)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")


def run(args: argparse.Namespace) -> int:
    import torch

    from msrepro.evaluation import refstats
    from msrepro.evaluation.metrics import EvalParams, resolve_extractor
    from msrepro.evaluation.reference import provenance

    DATASETS.get(args.dataset)  # unknown names list the valid ones
    cfg = DatasetConfig(name=args.dataset, root=args.root, split=args.split, limit=args.limit)
    if args.resolution is not None:
        cfg.resolution = args.resolution
    kind = args.extractor or ("digits" if args.dataset == "digits" else "inception")

    dcfg = OmegaConf.structured(cfg)
    ext = resolve_extractor(kind, dcfg, EvalParams(inception_weights=args.inception_weights))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    folder = refstats(dcfg, ext, device=device)
    print(folder)
    print(json.dumps(provenance(folder), indent=2))
    return 0
