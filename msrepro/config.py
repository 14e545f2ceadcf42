"""Run configuration: OmegaConf structured configs, YAML files, ``key=value`` overrides, backbone presets.

The leaf of the package's layers: ``ConfigError``, the schema, ``merge`` and ``check_params``. Validation across
components lives above everything it checks, in :mod:`msrepro.runconfig`.

Precedence (later wins): schema defaults < the backbone's preset < YAML file(s) < command-line overrides.
Component-specific options (``*.params``) are checked against the dataclass the component registered as
``Config`` (a class attribute of the registered object), so a typo or a wrong type fails before any work, with a
message naming what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from msrepro.registry import BACKBONES, RegistryError

VARIANTS: tuple[str, ...] = ("unified", "separate", "separate_tp", "multistage")


class ConfigError(ValueError):
    """An invalid configuration: says what is wrong and what is allowed."""


# -- sections ------------------------------------------------------------------------------------------
@dataclass
class DatasetConfig:
    name: str = "digits"              # registered dataset: digits, cifar10, image_folder, image_zip, ...
    root: Optional[str] = None        # file or folder the loader reads (not used by digits)
    resolution: int = 16              # output side length in pixels
    split: str = "train"              # train, test or all (datasets without a test split define their own)
    hflip: bool = False               # random horizontal flips when training
    zero_one: bool = False            # yield [0, 1] instead of [-1, 1]
    limit: Optional[int] = None       # use only the first N items
    params: Dict[str, Any] = field(default_factory=dict)  # dataset-specific, checked against its Config


@dataclass
class ModelConfig:
    backbone: str = "dpm_solver"      # registered backbone
    preset: str = "tiny"              # backbone preset: full, tiny, smoke, ...
    variant: str = "multistage"       # unified, separate, separate_tp, multistage
    routing: str = "per_sample"       # per_sample (ours) or batch (official: first sample's stage)
    encoder_channels: Optional[int] = None       # base width of the (shared) encoder
    decoder_channels: Optional[List[int]] = None  # base width of each stage's decoder
    params: Dict[str, Any] = field(default_factory=dict)  # backbone network options, checked against its Config


@dataclass
class StagesConfig:
    num_stages: int = 3               # K; 1 for unified models
    boundaries: Optional[List[float]] = None  # K-1 cut points in `boundaries_schedule` time
    boundaries_schedule: Optional[str] = None  # schedule the cut points are stated in (default: the backbone's)
    from_result: Optional[str] = None  # a clusterer result JSON to take the cut points from instead
    convert: str = "log_snr"          # log_snr or time_fraction, when the cut points' schedule differs


@dataclass
class ClusterConfig:
    name: str = "optimal_denoiser"    # registered clusterer
    schedule: Optional[str] = None    # schedule to cluster on (default: the backbone's)
    params: Dict[str, Any] = field(default_factory=dict)  # clusterer options, checked against its Config


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    optimizer: str = "adam"           # adam or adamw
    lr: float = 2e-4                  # base learning rate (see scale_lr)
    scale_lr: bool = False            # latent-diffusion's flag: effective lr = lr x batch_size (SPEC 4)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_decay: str = "constant"        # constant (score_sde, EDM, LDM) or cosine (to 0 at train.steps; beyond the paper)
    grad_clip: Optional[float] = 1.0
    ema_decay: Optional[float] = 0.9999   # score_sde-style EMA (with ramp); null to use ema_halflife_kimg
    ema_halflife_kimg: Optional[float] = None  # EDM-style EMA half-life in thousands of images
    stage_policy: str = "per_sample"  # stage_uniform, native, per_sample (registered STAGE_POLICIES)
    loss: Dict[str, Any] = field(default_factory=dict)  # noise density: {density: lognormal, P_mean: -1.2, ...}
    augment_p: float = 0.0            # EDM non-leaky augmentation probability
    precision: str = "fp32"           # fp32 or bf16 (autocast, GPU)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    save_steps: List[int] = field(default_factory=list)  # steps whose checkpoint is kept for good (quality curves)
    log_every: int = 50
    early_stopping: Dict[str, Any] = field(default_factory=dict)  # per stage: {patience: 5, min_delta: 0.0}
    heldout_size: int = 256           # images of the held-out split used for the held-out denoising loss
    heldout_every: Optional[int] = None  # steps between held-out evaluations (default: checkpoint_every)
    params: Dict[str, Any] = field(default_factory=dict)  # stage policy options (per_sample: stage_weights)
    init_from: Optional[str] = None   # warm start (beyond the paper): checkpoint to initialise from
    init_mode: str = "all"            # encoder, or all (+ decoders whose shapes fit); msrepro.training.warm_start


@dataclass
class SampleConfig:
    sampler: str = "dpm_solver"       # registered sampler
    params: Dict[str, Any] = field(default_factory=dict)  # sampler options, checked against its Config
    num: int = 64
    seeds: Optional[str] = None       # e.g. "0-49999"; default 0..num-1
    batch_size: int = 64


@dataclass
class EvalConfig:
    metrics: List[str] = field(default_factory=lambda: ["fd_digits"])
    num_samples: int = 1000
    repeats: int = 1
    curve_samples: Optional[int] = None  # set: also score every saved checkpoint with this many samples (Fig. 1d)
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    device: str = "auto"              # auto, cpu, cuda, cuda:N
    output_dir: str = "runs"
    schedule: Dict[str, Any] = field(default_factory=lambda: {"name": "vp_linear"})
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# -- loading -------------------------------------------------------------------------------------------
def _explain(exc: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    if isinstance(exc, ConfigKeyError) or "not in" in str(exc):
        parent_type = getattr(exc, "object_type", None)
        allowed = sorted(f.name for f in dataclasses.fields(parent_type)) if dataclasses.is_dataclass(parent_type) else []
        leaf = str(key).split(".")[-1] if key else "?"
        close = difflib.get_close_matches(leaf, allowed, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return ConfigError(f"{where}: unknown key '{key}'. Allowed keys here: {', '.join(allowed)}.{hint}")
    if isinstance(exc, ValidationError):
        return ConfigError(f"{where}: wrong type for '{key}': {str(exc).splitlines()[0]}")
    return ConfigError(f"{where}: {str(exc).splitlines()[0]}")


def merge(base: DictConfig, *others: Any, where: str = "config") -> DictConfig:
    """OmegaConf.merge with errors turned into ConfigError messages."""
    try:
        return OmegaConf.merge(base, *others)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise _explain(exc, where) from None


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """``key=value`` strings (OmegaConf dotlist); a token without '=' is an error that says so."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value (e.g. train.steps=200), got: {' '.join(bad)}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"could not parse overrides {list(overrides)}: {exc}") from None


def load_yaml(path: str | Path) -> DictConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    cfg = OmegaConf.load(p)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{p}: a config file must hold a mapping at the top level")
    return cfg


def schema() -> DictConfig:
    return OmegaConf.structured(RunConfig)


def preset_names(backbone: str) -> list[str]:
    """The presets ``backbone`` declares (``full`` = the paper, ``tiny``/``smoke`` = digits)."""
    return sorted(getattr(BACKBONES.get(backbone), "presets", {}) or {})


def preset_overrides(backbone: str, preset: str) -> dict[str, Any]:
    """The config overrides of ``backbone``'s ``preset``; unknown names list the valid ones."""
    try:
        adapter = BACKBONES.get(backbone)
    except RegistryError as exc:
        raise ConfigError(f"model.backbone: {exc}") from None
    presets = getattr(adapter, "presets", {}) or {}
    if preset not in presets:
        raise ConfigError(f"model.preset: backbone '{backbone}' has no preset '{preset}'. "
                          f"Valid presets: {', '.join(sorted(presets)) or '(none)'}")
    out = dict(presets[preset])
    out.setdefault("model", {})
    out["model"] = {**out["model"], "backbone": backbone, "preset": preset}
    return out


def resolve_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = (), *,
                   preset: bool = True) -> DictConfig:
    """Merge a run config, not yet validated: defaults < backbone preset < files < overrides.
    :func:`msrepro.runconfig.load_config` resolves and validates."""
    layers = [(load_yaml(f), str(f)) for f in files] + [(parse_overrides(overrides), "overrides")]
    cfg = schema()
    for layer, where in layers:  # first pass: learn backbone and preset
        cfg = merge(cfg, layer, where=where)
    if preset:
        cfg = merge(schema(), preset_overrides(cfg.model.backbone, cfg.model.preset), where=(
            f"preset '{cfg.model.preset}' of backbone '{cfg.model.backbone}'"))
        for layer, where in layers:
            cfg = merge(cfg, layer, where=where)
    return normalize_unified(cfg)


def normalize_unified(cfg: DictConfig) -> DictConfig:
    """A unified model is one network for every noise level: drop the preset's stage settings (one stage, no cut
    points, no per-stage decoder widths), so ``model.variant=unified`` alone is a complete, canonical config."""
    if cfg.model.variant == "unified":
        cfg.stages.num_stages, cfg.stages.boundaries, cfg.stages.from_result = 1, None, None
        cfg.model.decoder_channels = None
    return cfg


def check_params(obj: Any, params: Any, where: str) -> DictConfig:
    """Validate ``params`` against ``obj.Config`` (a dataclass) if the component declares one."""
    cls = getattr(obj, "Config", None)
    container = OmegaConf.create(params if params is not None else {})
    if cls is None:
        return container  # type: ignore[return-value]
    return merge(OmegaConf.structured(cls), container, where=where)


def to_yaml(cfg: DictConfig | ListConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: Any) -> Any:
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
