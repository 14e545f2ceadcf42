"""``msrepro flops BACKBONE [CONFIG.yaml ...] [key=value ...] [--variant V] [--preset P] [--channels C] [--json]``."""

from __future__ import annotations

import argparse
import json

from msrepro.cli import UserError
from msrepro.cli.config_cmd import split_items
from msrepro.config import VARIANTS
from msrepro.registry import RegistryError

NAME = "flops"
INTERMIXED_ITEMS = True  # key=value items may also follow the options (see cli.main)
HELP = "parameters, GMACs (the paper's 'GFLOPs') and true FLOPs per stage, weighted multistage figures"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("backbone", help="registered backbone, e.g. dpm_solver, edm")
    p.add_argument("--variant", default="multistage", choices=VARIANTS, help="model variant (default: multistage)")
    p.add_argument("--preset", default="full", help="backbone preset (default: full, the paper's sizes)")
    p.add_argument("--channels", type=int, default=None,
                   help="input channels (default: the dataset's; e.g. 3 to count CIFAR-10 models offline)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("items", nargs="*", help="YAML files and key=value overrides, in order (right after BACKBONE)")


def run(args: argparse.Namespace) -> int:
    from msrepro.runconfig import load_config
    from msrepro.flops import accounting, format_report
    from msrepro.models import data_shape, get_backbone
    from msrepro.boundaries import validate_stages

    files, overrides = split_items(args.items)
    base = [f"model.backbone={args.backbone}", f"model.preset={args.preset}", f"model.variant={args.variant}"]
    cfg = load_config(files, base + overrides, validate=False)
    validate_stages(cfg)  # counting needs the network and the stages only, not the sampler/clusterer/dataset
    get_backbone(cfg.model.backbone).validate(cfg)
    if args.channels is None:
        try:
            data_shape(cfg)
        except RegistryError as exc:
            raise UserError(f"{exc} (pass --channels N to count without the dataset)") from None
    acc = accounting(cfg, channels=args.channels)
    print(json.dumps(acc, indent=2) if args.json else format_report(acc))
    return 0
