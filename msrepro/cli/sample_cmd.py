"""``msrepro sample CHECKPOINT --num N [--seeds a-b] [--batch B] [--out DIR] [--format png|npz] [--sampler NAME]
[key=value ...]``: generate images from a checkpoint, write them and a PNG grid of the first 64, print the NFE.

``key=value`` items set sampler options (``nfe=10 order=2``) or, with a ``sample.`` prefix, the run config's
sample section (``sample.params.nfe=10``). The checkpoint's own ``sample`` section is the default.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from omegaconf import OmegaConf

from msrepro.cli import UserError
from msrepro.config import merge, parse_overrides, to_dict
from msrepro.io import atomic_write_json, code_version

NAME = "sample"
HELP = "generate images from a checkpoint (PNG files or .npz, plus a PNG grid of the first 64)"
FORMATS = ("png", "npz")


INTERMIXED_ITEMS = True  # `msrepro sample CKPT --num 8 nfe=10`: items may follow the options (see cli.main)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="checkpoint file (.pt) written by msrepro train")
    p.add_argument("--num", type=int, default=None,
                   help="number of images (default: one per seed, else the config's sample.num)")
    p.add_argument("--seeds", default=None,
                   help="seeds, e.g. 0-49999 or 0-9,20 (default: 0..num-1, or the config's sample.seeds)")
    p.add_argument("--batch", type=int, default=None, help="images per batch (default: the config's sample.batch_size)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <run dir>/samples/<checkpoint>)")
    p.add_argument("--format", choices=FORMATS, default="png", help="png: one file per image; npz: one array file")
    p.add_argument("--sampler", default=None, help="registered sampler (default: the config's sample.sampler)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: the config's device)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("items", nargs="*", help="sampler options key=value, or sample.KEY=value")


def resolve_seeds(num: int | None, spec: str | None, default_num: int = 64) -> list[int]:
    """The seeds: ``spec`` (its count must equal ``num`` if both are given), else 0..num-1."""
    from msrepro.generation import parse_seeds

    if num is not None and num < 1:
        raise UserError(f"--num must be >= 1, got {num}")
    if spec is None:
        return list(range(num if num is not None else default_num))
    try:
        seeds = parse_seeds(spec)
    except ValueError as exc:
        raise UserError(f"--seeds: {exc}") from None
    if num is not None and num != len(seeds):
        raise UserError(f"--seeds {spec} gives {len(seeds)} seeds but --num is {num}; give one or make them agree")
    return seeds


def sample_section(cfg, sampler: str | None, batch: int | None, items: list[str]):
    """The run config's sample section with --sampler, --batch and key=value items applied, sampler checked."""
    from msrepro.samplers import build_sampler

    sample = OmegaConf.create(OmegaConf.to_container(cfg.sample, resolve=True))
    if sampler is not None and sampler != sample.sampler:
        sample.sampler, sample.params = sampler, {}
    if batch is not None:
        if batch < 1:
            raise UserError(f"--batch must be >= 1, got {batch}")
        sample.batch_size = batch
    bad = [i for i in items if "=" not in i]
    if bad:
        raise UserError(f"expected key=value items (sampler options), got: {' '.join(bad)}")
    dotted = [i if i.startswith("sample.") else f"sample.params.{i}" for i in items]
    sample = merge(OmegaConf.create({"sample": sample}), parse_overrides(dotted), where="overrides").sample
    build_sampler(sample.sampler, sample.params)  # unknown sampler / option / value: fail before any work
    return sample


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's contents; a damaged or foreign file is a one-line error, not a traceback."""
    from msrepro.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch.load raises many types on a damaged file
        raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def default_out(checkpoint: Path) -> Path:
    parent = checkpoint.resolve().parent
    run_dir = parent.parent if parent.name == "checkpoints" else parent
    return run_dir / "samples" / checkpoint.stem


def pick_device(name: str | None) -> str:
    """``auto``: cuda where available, else cpu. A malformed or absent device is a UserError, before any work."""
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"--device: '{name}' is not a device ({exc}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= count:
            raise UserError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}")
    return name


def output_folder(path: Path) -> Path:
    """Create the output folder now, so that an unwritable place fails before any image is sampled."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot create the output folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"--out {path}: the output folder is not writable")
    return path


def run(args: argparse.Namespace) -> int:
    import torch

    from msrepro.checkpoint import checkpoint_config, load_model
    from msrepro.models import data_shape
    from msrepro.generation import NPZWriter, PNGWriter, generate, save_grid

    cfg = checkpoint_config(read_checkpoint(args.checkpoint))
    seeds_spec = args.seeds if args.seeds is not None or args.num is not None else cfg.sample.seeds
    seeds = resolve_seeds(args.num, seeds_spec, cfg.sample.num)
    sample = sample_section(cfg, args.sampler, args.batch, list(args.items))
    device = pick_device(args.device or cfg.device)
    out = output_folder(args.out or default_out(args.checkpoint))
    model, cfg = load_model(args.checkpoint, ema=not args.no_ema, map_location=device)
    channels, resolution = data_shape(cfg)
    writer = NPZWriter(out / "samples.npz") if args.format == "npz" else PNGWriter(out)
    gen = generate(model, sample, (channels, resolution, resolution), seeds, device, progress=not args.no_progress)
    grid: list[torch.Tensor] = []
    for batch in gen.batches():
        writer.write(batch.seeds, batch.images)
        grid.extend(batch.images[: max(0, 64 - len(grid))].cpu())
    where = writer.close()
    grid_path = save_grid(torch.stack(grid), out / "grid.png")
    info = {"checkpoint": str(args.checkpoint), "sampler": sample.sampler, "params": to_dict(sample.params),
            "num_images": len(seeds), "seeds": seeds_spec or f"0-{len(seeds) - 1}", "nfe": gen.nfe,
            "nfe_per_stage": gen.nfe_per_stage, "format": args.format, "device": device,
            "code_version": code_version()}
    atomic_write_json(out / "sample_info.json", info)
    print(f"wrote {len(seeds)} images to {where} and a grid of the first {len(grid)} to {grid_path}")
    per_stage = " / ".join(str(n) for n in gen.nfe_per_stage)
    print(f"NFE per image: {gen.nfe} total; per stage (least noisy first): {per_stage}")
    return 0
