"""Build a denoiser from a run config: schedule, stage boundaries, variant, backbone, preconditioning.

Variants (paper Sec. 5.3, Table 3), all from :class:`~msrepro.multidecoder.MultiStageNet`:

=============  ==========================  =====================================
variant        encoders                    decoders
=============  ==========================  =====================================
unified        1 at E                      1 at E
separate       K at E (one per stage)      K at E
separate_tp    K at E (one per stage)      K at ``decoder_channels`` (tailored)
multistage     1 at E (shared)             K at ``decoder_channels`` (tailored)
=============  ==========================  =====================================
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from msrepro.backbones.base import Backbone
from msrepro.boundaries import StageBoundaries
from msrepro.config import ConfigError, check_params
from msrepro.multidecoder import MultiStageNet
from msrepro.precond import Preconditioning
from msrepro.registry import BACKBONES, DATASETS
from msrepro.schedules import NoiseSchedule, build_schedule


def get_backbone(name: str) -> Backbone:
    obj = BACKBONES.get(name)
    return obj() if isinstance(obj, type) else obj


def stage_widths(cfg: DictConfig) -> tuple[list[int], list[int]]:
    """(encoder widths, decoder widths) of the configured variant; see the module table."""
    e, k, variant = cfg.model.encoder_channels, cfg.stages.num_stages, cfg.model.variant
    if e is None:
        raise ConfigError("model.encoder_channels: not set (the backbone preset should set it)")
    tailored = list(cfg.model.decoder_channels) if cfg.model.decoder_channels is not None else [e] * k
    if variant == "unified":
        return [e], [e]
    if variant == "separate":
        return [e] * k, [e] * k
    if variant == "separate_tp":
        return [e] * k, tailored
    if variant == "multistage":
        return [e], tailored
    raise ConfigError(f"model.variant: unknown '{variant}'")


def resolve_schedule(cfg: DictConfig) -> NoiseSchedule:
    return build_schedule(dict(cfg.schedule))


def resolve_boundaries(cfg: DictConfig, schedule: NoiseSchedule) -> StageBoundaries | None:
    """The stage boundaries in ``schedule``'s time, from the config or a clusterer result file."""
    if cfg.model.variant == "unified" or cfg.stages.num_stages == 1:
        return None
    if cfg.stages.from_result:
        path = Path(cfg.stages.from_result)
        if not path.is_file():
            raise ConfigError(f"stages.from_result: clusterer result not found: {path}")
        data = json.loads(path.read_text())
        source = StageBoundaries.from_dict(data["stage_boundaries"])
    elif cfg.stages.boundaries is not None:
        src_sched = build_schedule({"name": cfg.stages.boundaries_schedule}) if cfg.stages.boundaries_schedule \
            else schedule
        source = StageBoundaries(tuple(cfg.stages.boundaries), src_sched, source={"from": "config"})
    else:
        raise ConfigError(f"stages.boundaries: {cfg.stages.num_stages} stages need cut points; set "
                          f"stages.boundaries=[...] or stages.from_result=<clusterer result JSON>")
    if len(source.cuts) != cfg.stages.num_stages - 1:
        raise ConfigError(f"stages: {cfg.stages.num_stages} stages but {len(source.cuts)} cut points {source.cuts}")
    if source.schedule == schedule:
        return source
    return source.convert(schedule, by=cfg.stages.convert)


def data_shape(cfg: DictConfig) -> tuple[int, int]:
    """(channels, resolution) the network sees (the backbone's ``data_shape`` hook)."""
    return get_backbone(cfg.model.backbone).data_shape(cfg)


def build_net(cfg: DictConfig, channels: int | None = None) -> MultiStageNet:
    """The raw multi-decoder network of a run config (no schedule, no preconditioning).

    Touches no tensor outside the modules, so ``with torch.device("meta"): build_net(cfg)`` builds a full-size
    model for counting without allocating it (:mod:`msrepro.flops`). ``channels`` overrides the dataset's.
    """
    backbone = get_backbone(cfg.model.backbone)
    return _build_net(cfg, backbone, check_params(backbone, cfg.model.params, "model.params"), channels)


def _build_net(cfg: DictConfig, backbone: Backbone, params: DictConfig, channels: int | None) -> MultiStageNet:
    if channels is None:
        channels, resolution = data_shape(cfg)
    else:
        resolution = int(cfg.dataset.resolution)
    enc_widths, dec_widths = stage_widths(cfg)
    encoders = [backbone.build_encoder(params, w, channels, resolution) for w in enc_widths]
    decoders = [backbone.build_decoder(params, enc_widths[0 if len(enc_widths) == 1 else k], w, channels, resolution, k)
                for k, w in enumerate(dec_widths)]
    return MultiStageNet(encoders, decoders)


def build_denoiser(cfg: DictConfig, channels: int | None = None) -> Preconditioning:
    """The full model of a run config: a Preconditioning around a MultiStageNet (``channels`` as in build_net)."""
    backbone = get_backbone(cfg.model.backbone)
    params = check_params(backbone, cfg.model.params, "model.params")
    schedule = resolve_schedule(cfg)
    boundaries = resolve_boundaries(cfg, schedule)
    net = _build_net(cfg, backbone, params, channels)
    return backbone.make_precond(net, schedule, boundaries, cfg.model.routing, params)
