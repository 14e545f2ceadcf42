"""The registered metrics (``fid``, ``fd_digits``, ``kid``, ``prc``) and the feature space each is computed in.

A metric is a small object: the torch-fidelity switch it turns on (``fid``, ``kid``, ``prc``), the feature
extractor it needs and how to read torch-fidelity's result. The arithmetic (Fréchet distance, polynomial-kernel
MMD, k-NN precision/recall) is torch-fidelity's; nothing here re-implements it.

Feature spaces: ``inception`` (torch-fidelity's ``inception-v3-compat``, pool 2048-d: FID) and ``digits`` (the
embedded digits classifier's 64-d features: FD-digits). ``kid`` and ``prc`` follow the dataset: digits space for
the digits dataset, Inception otherwise, unless ``eval.params.feature_extractor`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional

from msrepro.config import ConfigError
from msrepro.registry import METRICS

EXTRACTOR_KINDS = ("inception", "digits")

#: how tables label each value; FD-digits is never called FID
LABELS = {"fid": "FID", "fd_digits": "FD-digits", "kid": "KID", "precision": "precision", "recall": "recall"}


class Metric:
    """Base: ``flag`` is torch-fidelity's switch, ``extractor`` a kind or ``dataset`` (decided by the dataset)."""

    flag: ClassVar[str]
    extractor: ClassVar[str]
    keys: ClassVar[tuple[str, ...]]

    def read(self, out: Mapping[str, float]) -> dict[str, float]:
        raise NotImplementedError


@METRICS.register("fid")
class FID(Metric):
    """Fréchet Inception Distance (torch-fidelity, inception-v3-compat pool features; Heusel et al. 2017)."""

    flag, extractor, keys = "fid", "inception", ("fid",)

    def read(self, out: Mapping[str, float]) -> dict[str, float]:
        import torch_fidelity

        return {"fid": float(out[torch_fidelity.KEY_METRIC_FID])}


@METRICS.register("fd_digits")
class FDDigits(Metric):
    """FD-digits: the Fréchet distance of FID, computed on the digits classifier's features (embedded default)."""

    flag, extractor, keys = "fid", "digits", ("fd_digits",)

    def read(self, out: Mapping[str, float]) -> dict[str, float]:
        import torch_fidelity

        return {"fd_digits": float(out[torch_fidelity.KEY_METRIC_FID])}


@METRICS.register("kid")
class KID(Metric):
    """Kernel Inception Distance (torch-fidelity: unbiased MMD², cubic polynomial kernel, mean over subsets)."""

    flag, extractor, keys = "kid", "dataset", ("kid",)

    def read(self, out: Mapping[str, float]) -> dict[str, float]:
        import torch_fidelity

        return {"kid": float(out[torch_fidelity.KEY_METRIC_KID_MEAN])}


@METRICS.register("prc")
class PrecisionRecall(Metric):
    """Improved precision and recall (torch-fidelity; Kynkäänniemi et al. 2019, k = 3 neighbours)."""

    flag, extractor, keys = "prc", "dataset", ("precision", "recall")

    def read(self, out: Mapping[str, float]) -> dict[str, float]:
        import torch_fidelity

        return {"precision": float(out[torch_fidelity.KEY_METRIC_PRECISION]),
                "recall": float(out[torch_fidelity.KEY_METRIC_RECALL])}


@dataclass
class EvalParams:
    """``eval.params`` options (checked like every component's Config)."""

    feature_extractor: Optional[str] = None  # kid/prc feature space: inception or digits (default: by dataset)
    inception_weights: Optional[str] = None  # Inception weights file (default: $MSREPRO_INCEPTION_WEIGHTS, torch hub)
    kid_subsets: int = 100                  # torch-fidelity's KID subsets
    kid_subset_size: int = 1000             # capped at the smaller of the two sample counts
    prc_neighborhood: int = 3               # k of the k-NN manifold estimate


def parse_params(params: Any) -> EvalParams:
    from omegaconf import OmegaConf

    from msrepro.config import merge, to_dict

    p = OmegaConf.to_object(merge(OmegaConf.structured(EvalParams), OmegaConf.create(to_dict(params) or {}),
                                  where="eval.params"))
    if p.feature_extractor is not None and p.feature_extractor not in EXTRACTOR_KINDS:
        raise ConfigError(f"eval.params.feature_extractor: '{p.feature_extractor}' is not valid; "
                          f"allowed: {', '.join(EXTRACTOR_KINDS)}")
    return p


def build_metrics(names: list[str] | tuple[str, ...] | str) -> dict[str, Metric]:
    """Registered metric objects by name (``"fid,kid"`` or a list); unknown names list the valid ones."""
    if isinstance(names, str):
        names = [n for n in names.replace(" ", "").split(",") if n]
    if not names:
        raise ConfigError(f"no metrics given; registered metrics: {', '.join(METRICS.list())}")
    return {n: METRICS.get(n)() for n in dict.fromkeys(names)}


def extractor_kind(metric: Metric, dataset_name: str, params: EvalParams) -> str:
    """The feature space a metric is computed in for this dataset."""
    if metric.extractor != "dataset":
        kind = metric.extractor
    else:
        kind = params.feature_extractor or ("digits" if dataset_name == "digits" else "inception")
    if kind == "digits" and dataset_name != "digits":
        raise ConfigError(f"the digits feature space (fd_digits, or eval.params.feature_extractor=digits) needs "
                          f"dataset.name=digits, not '{dataset_name}'; use fid")
    return kind


@dataclass(frozen=True)
class Extractor:
    """A resolved feature extractor: torch-fidelity name, weights file, a digest of it, a description."""

    kind: str
    fidelity_name: str
    weights: Path
    digest: str
    description: str

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.digest}"

    def fidelity_kwargs(self) -> dict[str, Any]:
        return {"feature_extractor": self.fidelity_name, "feature_extractor_weights_path": str(self.weights)}


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _digest(path: Path) -> str:
    from msrepro.evaluation.digits_classifier import file_digest

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(path)
    return _DIGESTS[key]


def resolve_extractor(kind: str, dataset_cfg: Any, params: EvalParams | None = None) -> Extractor:
    """Locate (digits: train once and cache) the extractor's weights; Inception offline: an error, no download."""
    params = params or EvalParams()
    if kind == "inception":
        from msrepro.evaluation.inception import EXTRACTOR_NAME, require_weights

        path = require_weights(params.inception_weights)
        return Extractor(kind, EXTRACTOR_NAME, path, _digest(path), f"{EXTRACTOR_NAME} pool3 2048-d ({path.name})")
    if kind == "digits":
        from msrepro.evaluation.digits_classifier import EXTRACTOR_NAME, describe, ensure_classifier

        if dataset_cfg.name != "digits":
            raise ConfigError(f"the digits feature space needs dataset.name=digits, not '{dataset_cfg.name}'")
        path = ensure_classifier(int(dataset_cfg.resolution))
        return Extractor(kind, EXTRACTOR_NAME, path, _digest(path), f"{describe(path)}, 64-d features")
    raise ConfigError(f"unknown feature extractor '{kind}'; allowed: {', '.join(EXTRACTOR_KINDS)}")
