"""``msrepro encode-latents VAE_CKPT --out FILE [--dataset NAME] [dataset.KEY=value ...]``: encode a dataset once
into a latent cache for the ``latents`` dataset (default dataset: the one the VAE was trained on)."""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from msrepro.cli import UserError
from msrepro.config import merge, parse_overrides
from msrepro.registry import DATASETS, RegistryError

NAME = "encode-latents"
HELP = "encode a dataset with a trained VAE into a latent cache (read by dataset 'latents')"
INTERMIXED_ITEMS = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="VAE checkpoint written by msrepro train-vae")
    p.add_argument("--out", type=Path, required=True, help="cache file to write (.pt)")
    p.add_argument("--dataset", default=None, help="registered image dataset (default: the VAE's training dataset)")
    p.add_argument("--batch", type=int, default=64, help="images per encoder batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("items", nargs="*", help="dataset overrides, e.g. dataset.split=train dataset.root=DIR")


def run(args: argparse.Namespace) -> int:
    from msrepro.checkpoint import load_checkpoint
    from msrepro.backbones.ldm.latents import encode_latents, read_cache
    from msrepro.backbones.ldm.autoencoder_training import resolve_device, vae_config_of

    bad = [i for i in args.items if not i.startswith("dataset.")]
    if bad:
        raise UserError(f"only dataset.KEY=value items are accepted, got: {' '.join(bad)}")
    state = load_checkpoint(args.checkpoint)
    if state.get("kind") != "vae":
        raise UserError(f"{args.checkpoint} is not a VAE checkpoint (written by `msrepro train-vae`)")
    ds_cfg = vae_config_of(state).dataset
    if args.dataset is not None:
        try:
            DATASETS.get(args.dataset)
        except RegistryError as exc:
            raise UserError(f"--dataset: {exc}") from None
        ds_cfg = merge(ds_cfg, {"name": args.dataset, "root": None, "params": {}}, where="--dataset")
    ds_cfg = merge(OmegaConf.create({"dataset": ds_cfg}), parse_overrides(args.items), where="overrides").dataset
    out = encode_latents(args.checkpoint, ds_cfg, args.out, batch=args.batch, device=resolve_device(args.device),
                         progress=not args.no_progress)
    cache = read_cache(out)
    n, c, h, w = cache["mean"].shape
    print(f"wrote {out}: {n} latents of {c}x{h}x{w} (scale factor {cache['scale_factor']:.5f})")
    print(f"train the LDM on it with: dataset.name=latents dataset.root={out} dataset.resolution={h} "
          f"model.params.latent_channels={c} model.params.vae={Path(cache['vae'])}")
    return 0
