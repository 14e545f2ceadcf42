"""``msrepro train-vae [CONFIG.yaml ...] [key=value ...]``: train the KL autoencoder of latent diffusion.

``preset=full|tiny|smoke`` picks the preset (default tiny: digits, factor 2). Prints held-out PSNR and LPIPS (or
why LPIPS is unavailable), the latent scale factor and the checkpoint path.
"""

from __future__ import annotations

import argparse

from omegaconf import OmegaConf

from msrepro.cli.config_cmd import split_items

NAME = "train-vae"
HELP = "train the VAE (KL autoencoder) for latent diffusion; reports held-out PSNR and LPIPS"
INTERMIXED_ITEMS = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", help="YAML files and key=value overrides (e.g. preset=tiny train.steps=500)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from msrepro.backbones.ldm.autoencoder_config import load_vae_config
    from msrepro.backbones.ldm.autoencoder_training import train_vae

    files, overrides = split_items(args.items)
    cfg = load_vae_config(files, overrides)
    if args.dry_run:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    result = train_vae(cfg, progress=not args.no_progress)
    m = result.metrics
    lp = f"{m['lpips']:.4f}" if m.get("lpips") is not None else f"unavailable ({m.get('lpips_missing') or 'off'})"
    print(f"held-out PSNR: {m['psnr']:.2f} dB over {m['num']} images")
    print(f"held-out LPIPS: {lp}")
    print(f"latent shape: {'x'.join(map(str, m['latent_shape']))}, scale factor: {m['scale_factor']:.5f}")
    print(f"checkpoint: {result.checkpoint}")
    return 0
