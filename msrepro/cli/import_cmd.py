"""``msrepro import FORMAT FILE --out CKPT [--weights ema|raw] [key=value ...]``: an official checkpoint (score_sde,
EDM, latent-diffusion or the authors' multistage forks) as an msrepro checkpoint, without running pickled code.

The architecture is read from the file's shapes; ``key=value`` items give what the file does not record (the
error names each missing key) and may override the format's conventions (e.g. ``model.params.norm_groups``).
``vae.KEY=value`` items configure LDM's KL first stage, written next to CKPT as ``CKPT-vae.pt``.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

from msrepro.cli import UserError

NAME = "import"
HELP = "convert an official checkpoint (score_sde, edm, ldm, multistage_*) into an msrepro checkpoint"
INTERMIXED_ITEMS = True
FORMATS = ("score_sde", "multistage_sde", "edm", "multistage_edm", "ldm", "multistage_ldm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=FORMATS, help="the official format of FILE")
    p.add_argument("file", type=Path, help="official checkpoint (.pth, .pkl, .pt, .ckpt)")
    p.add_argument("--out", type=Path, required=True, help="msrepro checkpoint to write (.pt)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="EMA (default) or raw weights")
    p.add_argument("items", nargs="*", help="run-config items the file does not record, e.g. dataset.name=cifar10")


def run(args: argparse.Namespace) -> int:
    from msrepro.convert import import_checkpoint

    try:
        result = import_checkpoint(args.format, args.file, args.out, list(args.items), weights=args.weights)
    except pickle.UnpicklingError as exc:  # includes RefusedGlobal: nothing from the file was executed
        raise UserError(str(exc)) from None
    cfg = result.config
    widths = cfg.model.decoder_channels if cfg.model.variant != "unified" else [cfg.model.encoder_channels]
    print(f"wrote {result.checkpoint}: {result.format} ({result.weights} weights, {result.num_tensors} tensors) -> "
          f"backbone {cfg.model.backbone}, variant {cfg.model.variant}, encoder {cfg.model.encoder_channels}, "
          f"decoders {list(widths)}")
    for path in result.extra_files:
        print(f"wrote {path} (first stage, model.params.vae)")
    for note in result.notes:
        print(f"note: {note}")
    print(f"use it with: msrepro evaluate {result.checkpoint} | msrepro sample {result.checkpoint} --num 64")
    return 0
