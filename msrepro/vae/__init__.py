"""The first stage of latent diffusion: a KL-regularised autoencoder, its training, and the latent cache.

- :mod:`msrepro.vae.model`: ``AutoencoderKL`` (latent-diffusion ``kl-f4`` architecture, any factor 2^k).
- :mod:`msrepro.vae.loss`: L1 + LPIPS + KL (+ patch discriminator), prefetch target ``lpips``.
- :mod:`msrepro.vae.config`: the ``msrepro train-vae`` run config and its presets.
- :mod:`msrepro.vae.train`: ``train_vae``, ``evaluate_reconstruction``, ``load_vae``.
- :mod:`msrepro.vae.latents`: ``encode_latents`` (a dataset encoded once) and the ``latents`` dataset.
"""

from msrepro.vae.model import AutoencoderKL, VAEParams
from msrepro.vae.train import VAEResult, build_vae, evaluate_reconstruction, load_vae, psnr, train_vae

__all__ = ["AutoencoderKL", "VAEParams", "VAEResult", "build_vae", "evaluate_reconstruction", "load_vae", "psnr",
           "train_vae"]
