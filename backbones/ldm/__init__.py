"""LDM backbone: the latent-diffusion U-Net (openaimodel) on the discrete DDPM schedule, epsilon prediction, in
the latent space of a KL-VAE (:mod:`msrepro.backbones.ldm.autoencoder`, trained by ``autoencoder_training``,
encoded once into the ``latents`` dataset of :mod:`msrepro.backbones.ldm.latents`).

Registers itself through the ``msrepro.backbones`` entry point (``pyproject.toml``), exactly as an outside plugin
would. Over the shared machinery it adds only: the openaimodel encoder/decoder hooks, the time-input convention
(the network sees the DDPM step index, which is the ddpm_discrete schedule's own time), the latent data shape, and
a denoiser with ``decode(x)`` that maps sampled latents to images through the VAE (applied by
:mod:`msrepro.generation`), and its prerequisite step for the job graph: train the VAE and encode the dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from msrepro.backbones.base import Backbone
from msrepro.backbones.ldm import autoencoder_loss  # noqa: F401  registers prefetch target lpips
from msrepro.backbones.ldm.autoencoder_config import load_vae_config
from msrepro.backbones.ldm.autoencoder_training import load_vae, train_vae
from msrepro.backbones.ldm.latents import encode_latents, source_dataset_config  # registers dataset latents
from msrepro.backbones.ldm.presets import PRESETS
from msrepro.config import ConfigError, check_params, merge, to_dict
from msrepro.models import stage_widths
from msrepro.nets.openaimodel import DECODER_ATTENTION, TAG_LDM_ATTENTION, OpenAIDecoder, OpenAIEncoder, \
    OpenAIUNetParams, decoder_has_attention
from msrepro.precond import EpsPrecond, Preconditioning
from msrepro.registry import BACKBONES, SCHEDULES
from msrepro.schedules import NoiseSchedule


class LatentEpsPrecond(EpsPrecond):
    """EpsPrecond on latents, plus ``decode(z)``: the VAE decoder applied to ``z / scale_factor``.

    The VAE (``model.params.vae``, a ``msrepro train-vae`` checkpoint) is loaded on first use and kept outside the
    module tree: it is frozen, not part of the denoiser's state dict, optimizer or EMA.
    """

    def __init__(self, *args: Any, vae: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vae_path = vae
        self._vae: list[nn.Module] = []  # a list hides it from nn.Module registration

    def first_stage(self) -> nn.Module:
        """The frozen VAE (loaded once); a clear error if none is configured."""
        if not self._vae:
            if not self.vae_path:
                raise ConfigError("model.params.vae: not set; decoding LDM latents needs the VAE checkpoint written "
                                  "by `msrepro train-vae` (the one `msrepro encode-latents` used)")
            if not Path(self.vae_path).is_file():
                raise FileNotFoundError(f"model.params.vae: VAE checkpoint not found: {self.vae_path} (a relative path "
                                        f"is read from the current directory; give an absolute one)")
            self._vae.append(load_vae(self.vae_path).eval().requires_grad_(False))
        return self._vae[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from (scaled) latents."""
        vae = self.first_stage().to(z.device)
        return vae.decode(z.float() / vae.scale_factor).clamp(-1, 1)


@BACKBONES.register("ldm")
class LDMBackbone(Backbone):
    """openaimodel U-Net (ch 224, 1-2-3-4, 2 blocks, attention at ds 8/4/2) on 64x64x3 latents; eps prediction on
    ddpm_discrete; DPM-Solver++ 2M sampler."""

    Config = OpenAIUNetParams
    precond_class = LatentEpsPrecond
    default_sampler = "dpm_solver_pp"
    presets = PRESETS
    # SPEC 4's 96.0 / 114.8 / 76.1 / 51.3 count every conv and linear layer, the attention projections included
    # (leaving them out, tag TAG_LDM_ATTENTION, gives 88.36: the paper's Table 2 figure 88.39).
    gmacs_skip_tags: tuple[str, ...] = ()
    attention_tag = TAG_LDM_ATTENTION

    def build_encoder(self, params: DictConfig, channels: int, in_channels: int, resolution: int) -> nn.Module:
        return OpenAIEncoder(params, channels, in_channels)

    def build_decoder(self, params: DictConfig, encoder_channels: int, channels: int, out_channels: int,
                      resolution: int, stage: int) -> nn.Module:
        return OpenAIDecoder(params, encoder_channels, channels, out_channels, decoder_has_attention(params, stage))

    def time_input(self, t: torch.Tensor) -> torch.Tensor:
        """LDM's network input is the DDPM step index, which is ddpm_discrete's time t itself (0 .. T-1)."""
        return t

    def precond_options(self, schedule: NoiseSchedule, params: DictConfig) -> dict[str, Any]:
        return {"time_input": self.time_input, "vae": params.vae}

    def data_shape(self, cfg: DictConfig) -> tuple[int, int]:
        """(latent channels, latent resolution): the network sees latents, not the VAE's images."""
        p = check_params(self, cfg.model.params, "model.params")
        return int(p.latent_channels), int(cfg.dataset.resolution)

    def image_dataset(self, cfg: DictConfig) -> DictConfig:
        """Decoded samples are compared with the images the latent cache was encoded from."""
        if cfg.dataset.name != "latents":
            return cfg.dataset
        return source_dataset_config(cfg.dataset)

    def prerequisite(self, cfg: DictConfig, preset: str, overrides: dict[str, Any]) -> dict[str, Any] | None:
        """A latent cell without a cache (``dataset.root``) first trains the VAE (``msrepro train-vae``, the VAE
        preset of the same name < the row's overrides) and encodes its dataset once (``msrepro encode-latents``)."""
        if cfg.dataset.name != "latents" or cfg.dataset.root:
            return None
        vae = merge(load_vae_config(overrides=[f"preset={preset}"]), OmegaConf.create(overrides or {}),
                    where=f"prepare.{preset} (VAE run)")
        return to_dict(vae)

    def run_prerequisite(self, config: dict[str, Any], out_dir: Path, progress: bool) -> dict[str, Any]:
        cfg = OmegaConf.merge(load_vae_config(overrides=[f"preset={config['preset']}"]), config,
                              {"output_dir": str(out_dir), "name": "vae"})
        result = train_vae(cfg, progress=progress)
        latents = encode_latents(result.checkpoint, cfg.dataset, Path(out_dir) / "latents.pt", progress=progress)
        return {"checkpoint": str(result.checkpoint), "latents": str(latents), "metrics": dict(result.metrics)}

    def use_prerequisite(self, cfg: DictConfig, outputs: dict[str, Any]) -> DictConfig:
        """Train on the step's latent cache; decode with its VAE."""
        cfg.dataset.root = outputs["latents"]
        cfg.model.params.vae = outputs["checkpoint"]
        return cfg

    def validate(self, cfg: DictConfig) -> None:
        """Schedule, options, resolution and widths (GroupNorm groups, attention heads) agree; errors name the key."""
        name = cfg.schedule.get("name")
        if name not in SCHEDULES or not SCHEDULES.get(name).variance_preserving:
            raise ConfigError(f"schedule.name: backbone 'ldm' predicts epsilon on a variance-preserving schedule "
                              f"(ddpm_discrete); got '{name}'")
        p = check_params(self, cfg.model.params, "model.params")
        if p.ldm_decoder_attention not in DECODER_ATTENTION:
            raise ConfigError(f"model.params.ldm_decoder_attention: '{p.ldm_decoder_attention}' is not valid; "
                              f"allowed: {', '.join(DECODER_ATTENTION)}")
        if not p.channel_mult or p.num_res_blocks < 1 or p.latent_channels < 1:
            raise ConfigError("model.params: channel_mult must be non-empty, num_res_blocks and latent_channels >= 1")
        res, levels = int(cfg.dataset.resolution), len(p.channel_mult)
        if res % (2 ** (levels - 1)):
            raise ConfigError(f"dataset.resolution: {res} is not divisible by 2^{levels - 1} (model.params."
                              f"channel_mult has {levels} levels)")
        factors = [2 ** i for i in range(levels)]
        bad = [d for d in p.attention_ds if d not in factors]
        if bad:
            raise ConfigError(f"model.params.attention_ds: {bad} not among this network's downsample factors "
                              f"{factors}")
        self._check_widths(cfg, p, stage_widths(cfg))

    @staticmethod
    def _check_widths(cfg: DictConfig, p: Any, widths: tuple[list[int], list[int]]) -> None:
        attn_levels = [i for i in range(len(p.channel_mult)) if 2 ** i in p.attention_ds] + [len(p.channel_mult) - 1]
        for key, ws in zip(("model.encoder_channels", "model.decoder_channels"), widths):
            for w in ws:
                for level, mult in enumerate(p.channel_mult):
                    c = w * mult
                    if c % p.norm_groups:
                        raise ConfigError(f"{key}: width {w} x {mult} = {c} is not divisible by model.params."
                                          f"norm_groups={p.norm_groups}")
                    if level in attn_levels and c % p.num_head_channels:
                        raise ConfigError(f"{key}: width {w} x {mult} = {c} has attention but is not divisible by "
                                          f"model.params.num_head_channels={p.num_head_channels}")
