"""Train the KL autoencoder (``msrepro train-vae``), measure reconstructions on held-out images, set the latent
scale factor from data, and load the result back (:func:`load_vae`).

Run dir ``<output_dir>/<name>/``: ``config.yaml``, ``metrics.jsonl`` (training and held-out records),
``vae.pt`` (an msrepro checkpoint: ``kind: vae``, model/optimizer state dicts, resolved config, ``scale_factor``,
final metrics) and ``reconstructions.png`` (held-out originals over their reconstructions).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from msrepro.checkpoint import load_checkpoint, save_checkpoint
from msrepro.config import merge
from msrepro.datasets import build_dataset
from msrepro.datasets.base import OfflineDataError
from msrepro.generation import save_grid
from msrepro.io import append_jsonl, atomic_write_json, atomic_write_text, code_version
from msrepro.registry import DATASETS
from msrepro.backbones.ldm.autoencoder import AutoencoderKL, VAEParams
from msrepro.backbones.ldm.autoencoder_config import VAERunConfig
from msrepro.backbones.ldm.autoencoder_loss import VAELoss, build_lpips, lpips_distance

CHECKPOINT_NAME = "vae.pt"


@dataclass
class VAEResult:
    run_dir: Path
    checkpoint: Path
    step: int
    metrics: dict  # heldout psnr / lpips (None with the reason when LPIPS weights are missing), scale_factor, wall_s


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_vae(cfg: DictConfig) -> AutoencoderKL:
    """The autoencoder of a VAE run config (channels from the dataset)."""

    ds = DATASETS.get(cfg.dataset.name)
    channels = int(ds.channels(cfg.dataset) if callable(ds.channels) else ds.channels)
    params = OmegaConf.merge(OmegaConf.structured(VAEParams), cfg.model)
    return AutoencoderKL(params, channels, int(cfg.dataset.resolution))


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image for images in [-1, 1] (peak-to-peak 2): 10 log10(4 / MSE)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10.0 * torch.log10(4.0 / mse)


@torch.no_grad()
def evaluate_reconstruction(vae: AutoencoderKL, images: torch.Tensor, *, batch: int = 64,
                            lpips_model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Mean PSNR (dB) and LPIPS of deterministic (posterior-mean) reconstructions of ``images`` in [-1, 1]."""

    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    psnrs, dists = [], []
    for i in range(0, images.shape[0], batch):
        x = images[i:i + batch].to(device)
        rec = vae(x, sample=False)[0].clamp(-1, 1)
        psnrs.append(psnr(x, rec).cpu())
        if lpips_model is not None:
            dists.append(lpips_distance(lpips_model.to(device), x, rec).cpu())
    vae.train(was_training)
    return {"psnr": float(torch.cat(psnrs).mean()), "lpips": float(torch.cat(dists).mean()) if dists else None,
            "num": int(images.shape[0])}


def _lpips_for_eval(cfg: DictConfig, loss_lpips: torch.nn.Module | None) -> tuple[Any, str | None]:
    """The LPIPS model for held-out evaluation, or (None, why not)."""

    if loss_lpips is not None:
        return loss_lpips, None
    try:
        return build_lpips(cfg.loss.lpips_net), None
    except OfflineDataError as exc:
        return None, str(exc)


def _batches(data: torch.Tensor, batch: int, gen: torch.Generator):
    while True:
        perm = torch.randperm(data.shape[0], generator=gen)
        for i in range(0, data.shape[0] - batch + 1, batch):
            yield data[perm[i:i + batch]]


def train_vae(cfg: DictConfig, *, progress: bool = True) -> VAEResult:
    """Adam (betas 0.5, 0.9) on L1 + LPIPS + KL (+ discriminator after ``loss.disc_start``); held-out PSNR/LPIPS
    every ``train.eval_every`` steps; the scale factor 1/std(z) from ``train.scale_samples`` training latents."""

    torch.manual_seed(int(cfg.seed))
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.output_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    train_data = build_dataset(cfg.dataset).tensor()
    held = build_dataset(OmegaConf.merge(cfg.dataset, {"split": cfg.eval_split, "hflip": False})).tensor()
    held = held[: int(cfg.train.eval_num)]
    vae = build_vae(cfg).to(device)
    loss_fn = VAELoss(cfg.loss, vae.in_channels).to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=float(cfg.train.lr), betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(loss_fn.disc.parameters(), lr=float(cfg.train.lr), betas=(0.5, 0.9)) \
        if loss_fn.disc is not None else None
    eval_lpips, lpips_missing = _lpips_for_eval(cfg, loss_fn.lpips)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    batches = _batches(train_data, min(int(cfg.train.batch_size), train_data.shape[0]), gen)
    start, metrics = time.time(), {}
    steps = int(cfg.train.steps)
    for step in tqdm(range(1, steps + 1), desc="train-vae", disable=not progress):
        x = next(batches).to(device)
        rec, post = vae(x)
        loss, logs = loss_fn.generator_loss(x, rec, post.kl(), step, vae.last_layer())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if opt_d is not None and loss_fn.disc_active(step):
            d_loss = loss_fn.discriminator_loss(x, rec)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            logs["d_loss"] = d_loss.item()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"train-vae: loss is {loss.item()} at step {step}; lower train.lr")
        if step % int(cfg.train.log_every) == 0 or step == steps:
            append_jsonl(run_dir / "metrics.jsonl", {"step": step, "loss": loss.item(), **logs})
        if step % int(cfg.train.eval_every) == 0 or step == steps:
            metrics = evaluate_reconstruction(vae, held, lpips_model=eval_lpips)
            append_jsonl(run_dir / "metrics.jsonl", {"step": step, "heldout": metrics})
    scale = _set_scale(vae, train_data[: int(cfg.train.scale_samples)])
    metrics = {**metrics, "lpips_missing": lpips_missing, "scale_factor": scale, "wall_s": time.time() - start,
               "latent_shape": list(vae.latent_shape)}
    ckpt = save_checkpoint(run_dir / CHECKPOINT_NAME, {
        "kind": "vae", "step": steps, "config": OmegaConf.to_container(cfg, resolve=True),
        "model": vae.state_dict(), "ema": None, "optimizer": opt.state_dict(), "scale_factor": scale,
        "metrics": metrics, "code_version": code_version()})
    atomic_write_json(run_dir / "summary.json", {"checkpoint": str(ckpt), "step": steps, **metrics})
    with torch.no_grad():
        n = min(8, held.shape[0])
        rec = vae.eval()(held[:n].to(device), sample=False)[0].clamp(-1, 1).cpu()
    save_grid(torch.cat([held[:n], rec]), run_dir / "reconstructions.png", nrow=n)
    return VAEResult(run_dir, ckpt, steps, metrics)


@torch.no_grad()
def _set_scale(vae: AutoencoderKL, images: torch.Tensor, batch: int = 64) -> float:
    """LDM's scale factor from posterior samples of the given training images."""
    vae.eval()
    device = next(vae.parameters()).device
    gen = torch.Generator(device=device).manual_seed(0)
    z = torch.cat([vae.encode(images[i:i + batch].to(device)).sample(gen).cpu()
                   for i in range(0, images.shape[0], batch)])
    return vae.set_scale_factor(z)


def load_vae(path: str | Path, map_location: str | torch.device = "cpu") -> AutoencoderKL:
    """The trained autoencoder (with its scale factor) from a ``msrepro train-vae`` checkpoint."""
    state = load_checkpoint(path, map_location)
    if state.get("kind") != "vae":
        raise ValueError(f"{path} is not a VAE checkpoint (written by `msrepro train-vae`)")
    cfg = vae_config_of(state)
    vae = build_vae(cfg)
    vae.load_state_dict(state["model"])
    return vae.to(map_location).eval()


def vae_config_of(state: dict) -> DictConfig:

    return merge(OmegaConf.structured(VAERunConfig), OmegaConf.create(state["config"]), where="VAE checkpoint")

