"""What a clusterer may need besides the schedule and k, loaded only when it asks (timestep / snr touch nothing)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from msrepro.config import DatasetConfig, merge


@dataclass
class ClusterInputs:
    """Lazily loaded inputs: a dataset, a run config (network) and its checkpoints, the device and the seed.

    ``dataset`` is a ``dataset`` config section (dict; default: the embedded digits). The run config comes from
    ``run_config`` if given, else from ``config_files`` + ``config_overrides`` (``resolve_config``), else from the first
    checkpoint. Nothing is read until a clusterer calls :meth:`data`, :meth:`get_run_config` or :meth:`training_batch`.
    """

    dataset: dict[str, Any] | DictConfig | None = None
    checkpoints: Sequence[str] = ()
    run_config: DictConfig | None = None
    config_files: Sequence[str] = ()
    config_overrides: Sequence[str] = ()
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    _datasets: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- data ----------------------------------------------------------------------------------------
    def dataset_config(self, **changes: Any) -> DictConfig:
        cfg = merge(OmegaConf.structured(DatasetConfig), self.dataset or {}, where="dataset")
        return merge(cfg, changes, where="dataset")

    def _load(self, cfg: DictConfig):
        from msrepro.datasets import build_dataset

        key = OmegaConf.to_yaml(cfg)
        if key not in self._datasets:
            self._datasets[key] = build_dataset(cfg)
        return self._datasets[key]

    def data(self, *, zero_one: bool = True) -> torch.Tensor:
        """The whole configured split as [N, C, H, W] float32, in [0, 1] (``zero_one``) or [-1, 1]."""
        return self._load(self.dataset_config(zero_one=zero_one)).tensor().to(torch.float32)

    def training_batch(self, batch_size: int) -> torch.Tensor:
        """One real batch of the run config's training data (its range), drawn with ``seed``."""
        ds = self._load(self.get_run_config().dataset)
        x = ds.tensor()
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.seed))[:batch_size]
        return x[idx].to(torch.float32)

    # -- network -------------------------------------------------------------------------------------
    def get_run_config(self) -> DictConfig:
        """The run config whose network the clusterer differentiates (validated where it matters)."""
        if self.run_config is None:
            from msrepro.config import resolve_config

            if self.config_files or not self.checkpoints:
                cfg = resolve_config(list(self.config_files), list(self.config_overrides))
            else:
                from msrepro.checkpoint import read_config

                cfg = merge(read_config(self.checkpoints[0]),
                            OmegaConf.from_dotlist(list(self.config_overrides)), where="overrides")
            from msrepro.boundaries import validate_stages

            validate_stages(cfg)
            self.run_config = cfg
        return self.run_config

    def network_config(self, *, allow_multistage: bool = False) -> DictConfig:
        """The run config of the network a model-reading clusterer differentiates: a *unified* model, as the paper's
        gradient baseline (Table 4). Without checkpoints a non-unified run config becomes its unified model (same
        backbone, width, params); a non-unified checkpoint or ``model.variant`` override is refused (ConfigError)
        unless ``allow_multistage``. Reads only the checkpoints' configs."""
        from msrepro.checkpoint import read_config
        from msrepro.config import ConfigError, normalize_unified

        cfg = self.get_run_config()
        if allow_multistage:
            return cfg
        how = "pass allow_multistage=true (cluster.params.allow_multistage) to differentiate it anyway"
        for path in self.checkpoints:
            variant = read_config(path).model.variant
            if variant != "unified":
                raise ConfigError(f"--checkpoint {path}: holds a '{variant}' network, but the gradient baseline "
                                  f"differentiates a unified model (paper Table 4); give checkpoints of a "
                                  f"model.variant=unified run, or {how}")
        for item in self.config_overrides:
            key, _, value = item.partition("=")
            if key.strip() == "model.variant" and value.strip() != "unified":
                raise ConfigError(f"{item}: the gradient baseline differentiates a unified model (paper Table 4); "
                                  f"drop the override, or {how}")
        if cfg.model.variant == "unified":
            return cfg
        return normalize_unified(merge(cfg, {"model": {"variant": "unified"}}, where="unified network"))

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    # -- provenance ----------------------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        """Seed, code version, time, and name/size/checksum of every dataset actually loaded."""
        from msrepro.io import code_version

        loaded = [{"name": ds.cfg.name, "split": ds.cfg.split, "resolution": int(ds.cfg.resolution),
                   "num_images": len(ds), "checksum": ds.checksum()} for ds in self._datasets.values()]
        return {"dataset": loaded[0] if len(loaded) == 1 else (loaded or None), "seed": self.seed,
                "checkpoints": list(self.checkpoints), "device": str(self.torch_device()),
                "code_version": code_version(), "created": _dt.datetime.now(_dt.timezone.utc).isoformat()}

    @property
    def used_data(self) -> bool:
        return bool(self._datasets)
