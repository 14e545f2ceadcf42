"""The backbone adapter: what a network family must provide to get every variant, sampler and test for free.

Subclass :class:`Backbone`, implement :meth:`build_encoder` and :meth:`build_decoder` (and, if the network's
time input is not the schedule's time, :meth:`time_input`), give it ``presets``, and register an instance::

    from msrepro.backbones.base import Backbone
    from msrepro.registry import BACKBONES

    @BACKBONES.register("my_unet")
    class MyUNet(Backbone): ...

The shared-encoder/decoder routing, the preconditioning and the four variants live in msrepro once
(:mod:`msrepro.multidecoder`, :mod:`msrepro.precond`, :mod:`msrepro.models`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import nn

from msrepro.boundaries import StageBoundaries
from msrepro.config import ConfigError
from msrepro.precond import EpsPrecond, Preconditioning
from msrepro.registry import DATASETS
from msrepro.schedules import NoiseSchedule


class Backbone:
    """A network family with its schedule, preconditioning and presets (one hook per concern).

    Every hook has a default, so a pixel-space eps-prediction family needs only the two ``build_*`` hooks. A latent
    family overrides :meth:`data_shape` (the latent shape), ``precond_class`` (one with ``decode``, latents ->
    images), :meth:`image_dataset` and :meth:`prerequisite` (the step that makes its latent cache).
    """

    #: dataclass of ``model.params`` (backbone-specific network options), or None
    Config: ClassVar[type | None] = None
    #: preset name -> run-config overrides (nested dict); ``full`` is the paper's setting
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: registered sampler used when a preset names none
    default_sampler: ClassVar[str] = "dpm_solver"
    #: the preconditioning (SPEC 3): EpsPrecond (noise prediction), EDMPrecond, or a subclass (e.g. with decode)
    precond_class: ClassVar[type[Preconditioning]] = EpsPrecond
    #: ``flops_tag`` of layers the paper's GMAC figure for this family leaves out (see :mod:`msrepro.flops`)
    gmacs_skip_tags: ClassVar[tuple[str, ...]] = ()

    # -- network hooks ----------------------------------------------------------------------------------
    def build_encoder(self, params: DictConfig, channels: int, in_channels: int, resolution: int) -> nn.Module:
        """Encoder of base width ``channels``: ``forward(x, c_noise, **cond) -> EncoderOutput``."""
        raise NotImplementedError

    def build_decoder(self, params: DictConfig, encoder_channels: int, channels: int, out_channels: int,
                      resolution: int, stage: int) -> nn.Module:
        """Decoder of base width ``channels`` consuming an encoder of width ``encoder_channels``."""
        raise NotImplementedError

    # -- conventions -------------------------------------------------------------------------------------
    def time_input(self, t: torch.Tensor) -> torch.Tensor:
        """Map the schedule's time t to the network's noise input (identity unless overridden)."""
        return t

    def precond_options(self, schedule: NoiseSchedule, params: DictConfig) -> dict[str, Any]:
        """Keyword arguments of ``precond_class`` beyond (net, schedule, boundaries, routing)."""
        return {"time_input": self.time_input}

    def make_precond(self, net: nn.Module, schedule: NoiseSchedule, boundaries: StageBoundaries | None,
                     routing: str, params: DictConfig) -> Preconditioning:
        return self.precond_class(net, schedule, boundaries, routing, **self.precond_options(schedule, params))

    def default_density(self, schedule: NoiseSchedule) -> str:
        """The training noise density when ``train.loss.density`` names none: uniform in the schedule's time
        (continuous VP or discrete steps), as score_sde and LDM train."""
        return "discrete_uniform" if hasattr(schedule, "num_steps") else "vp_uniform"

    def data_shape(self, cfg: DictConfig) -> tuple[int, int]:
        """(channels, resolution) the network sees: the dataset's, unless the family works in another space."""
        channels = getattr(DATASETS.get(cfg.dataset.name), "channels", None)
        if channels is None:
            raise ConfigError(f"dataset '{cfg.dataset.name}' does not declare its number of channels")
        return int(channels(cfg.dataset) if callable(channels) else channels), int(cfg.dataset.resolution)

    def validate(self, cfg: DictConfig) -> None:
        """Backbone-specific consistency checks on a resolved run config (raise ConfigError)."""

    def image_dataset(self, cfg: DictConfig) -> DictConfig:
        """The image dataset that samples are compared with (reference statistics): ``cfg.dataset`` unless the
        network works in another space (latent models: the dataset the latents were encoded from)."""
        return cfg.dataset

    # -- the job graph -----------------------------------------------------------------------------------
    def prerequisite(self, cfg: DictConfig, preset: str, overrides: dict[str, Any]) -> dict[str, Any] | None:
        """The config (JSON-able) of a step this cell needs before clustering and training, or None (default).
        The launcher runs it once per distinct config (its hash is the step's key) through :meth:`run_prerequisite`
        and hands its outputs to :meth:`use_prerequisite`. ``overrides``: the table row's ``prepare`` section for
        ``preset``. A latent family trains its autoencoder and encodes the latent cache here."""
        return None

    def run_prerequisite(self, config: dict[str, Any], out_dir: Path, progress: bool) -> dict[str, Any]:
        """Run the prerequisite step of ``config`` into ``out_dir``; returns its outputs (JSON-able)."""
        raise NotImplementedError(f"{type(self).__name__} declares a prerequisite but does not run it")

    def use_prerequisite(self, cfg: DictConfig, outputs: dict[str, Any]) -> DictConfig:
        """``cfg`` pointed at the prerequisite step's ``outputs`` (e.g. the latent cache and the VAE)."""
        return cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
