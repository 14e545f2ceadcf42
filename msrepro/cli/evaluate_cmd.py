"""``msrepro evaluate CHECKPOINT [--num N] [--metrics fd_digits,kid,prc] [--repeats R] [--write-png DIR] [key=value
...]``: FID / FD-digits / KID / precision-recall of a checkpoint's samples, streamed into torch-fidelity.

``key=value`` items set sampler options (``nfe=10``) or, with a ``sample.`` prefix, the sample section, as in
``msrepro sample``. Defaults: the checkpoint config's ``eval`` and ``sample`` sections.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tabulate import tabulate

from msrepro.cli import UserError
from msrepro.cli.sample_cmd import output_folder, pick_device, read_checkpoint, sample_section
from msrepro.io import atomic_write_json

NAME = "evaluate"
HELP = "compute FID / FD-digits / KID / precision-recall of a checkpoint (torch-fidelity, streamed samples)"
INTERMIXED_ITEMS = True


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by ``evaluate`` and ``evaluate-run``."""
    p.add_argument("--num", type=int, default=None, help="samples per repeat (default: the config's eval.num_samples)")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0-49999 (default: 0..num-1)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated registered metrics: fid, fd_digits, kid, prc (default: eval.metrics)")
    p.add_argument("--repeats", type=int, default=None, help="repeats on disjoint seed blocks -> mean ± std")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default: sample.batch_size)")
    p.add_argument("--sampler", default=None, help="registered sampler (default: the config's sample.sampler)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: the config's device)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("items", nargs="*", help="sampler options key=value, or sample.KEY=value")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="checkpoint file (.pt) written by msrepro train")
    p.add_argument("--write-png", type=Path, default=None, metavar="DIR",
                   help="also write every sample as DIR/{seed:06d}.png (streaming needs no files)")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    add_common(p)


def request(args: argparse.Namespace, checkpoint: Path) -> dict[str, Any]:
    """evaluate_checkpoint keyword arguments from the command line (sampler options checked now)."""
    from msrepro.checkpoint import checkpoint_config

    for name in ("num", "repeats", "batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be >= 1, got {value}")
    if args.device is not None:
        pick_device(args.device)  # an absent device fails now, not after the reference statistics
    cfg = checkpoint_config(read_checkpoint(checkpoint))
    return {"metrics": args.metrics, "num": args.num, "seeds": args.seeds, "repeats": args.repeats,
            "device": args.device, "ema": not args.no_ema, "progress": not args.no_progress,
            "sample": sample_section(cfg, args.sampler, args.batch, list(args.items))}


def format_result(result: dict[str, Any]) -> str:
    rows = []
    for key, value in result["metrics"].items():
        std = result["metrics_std"].get(key, 0.0)
        rows.append([result["labels"][key], f"{value:.4g}" + (f" ± {std:.2g}" if result["num_repeats"] > 1 else "")])
    head = f"{result['checkpoint']} (step {result['step']}): {result['num_samples']} samples"
    tail = f"protocol: {result['protocol']}\n{result['images_per_s']:.1f} images/s, {result['wall_s']:.1f} s in all"
    return f"{head}\n{tabulate(rows, headers=['metric', 'value'], disable_numparse=True)}\n{tail}"


def run(args: argparse.Namespace) -> int:
    from msrepro.evaluation import evaluate_checkpoint

    kwargs = request(args, args.checkpoint)
    for folder in ([args.write_png] if args.write_png else []) + ([args.json.parent] if args.json else []):
        output_folder(folder)  # an unwritable place fails now, not after sampling
    result = evaluate_checkpoint(args.checkpoint, png_dir=args.write_png, **kwargs)
    print(format_result(result))
    if args.json:
        atomic_write_json(args.json, result)
    return 0
