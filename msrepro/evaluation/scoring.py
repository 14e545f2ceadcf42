"""Evaluate a checkpoint (or a whole run) with torch-fidelity: exact seeded sample counts, cached references.

Order of work, so that a bad request costs seconds, not an hour of sampling: read the checkpoint's config ->
resolve metrics and their feature spaces (a missing Inception file raises here) -> reference statistics (cached)
-> load the model -> stream samples into torch-fidelity. Repeats use disjoint seed blocks (repeat r: seeds
shifted by r x span) and are reported as mean ± std.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch_fidelity
from omegaconf import DictConfig

from msrepro.evaluation import digits_classifier  # noqa: F401  registers msrepro-digits with torch-fidelity
from msrepro.evaluation.metrics import (LABELS, EvalParams, Extractor, Metric, build_metrics, extractor_kind,
                                        parse_params, resolve_extractor)
from msrepro.evaluation.reference import REF, CachedReference, provenance, refstats

logger = logging.getLogger(__name__)


def plan(metrics: Mapping[str, Metric], dataset_cfg: Any, params: EvalParams) -> list[tuple[Extractor, list[str]]]:
    """Group metrics by feature space and resolve each extractor (offline errors surface here, before sampling)."""
    groups: dict[str, list[str]] = {}
    for name, m in metrics.items():
        groups.setdefault(extractor_kind(m, dataset_cfg.name, params), []).append(name)
    return [(resolve_extractor(kind, dataset_cfg, params), names) for kind, names in groups.items()]


def compute(input1: Any, metrics: Mapping[str, Metric], groups: Sequence[tuple[Extractor, list[str]]],
            refs: Sequence[Path], *, params: EvalParams, num: int | None = None, device: str = "cpu",
            batch_size: int = 64) -> dict[str, float]:
    """torch-fidelity on ``input1`` (a SampleStream, a Dataset or a folder of images) against cached references.

    With several feature spaces a SampleStream must record its images: the later groups replay them.
    """
    values: dict[str, float] = {}
    for i, ((ext, names), ref) in enumerate(zip(groups, refs)):
        n_ref = provenance(ref)["count"]
        n_gen = num if num is not None else len(input1)
        flags = {metrics[n].flag: True for n in names}
        out = torch_fidelity.calculate_metrics(
            input1=input1, input1_model_num_samples=num, input2=CachedReference(ref), input2_cache_name=REF,
            cache_root=str(ref), cuda=torch.device(device).type == "cuda", batch_size=batch_size, verbose=False,
            save_cpu_ram=True, kid_subsets=params.kid_subsets,
            kid_subset_size=min(params.kid_subset_size, n_gen, n_ref), prc_neighborhood=params.prc_neighborhood,
            **flags, **ext.fidelity_kwargs())
        for n in names:
            values.update(metrics[n].read(out))
        if i + 1 < len(groups) and hasattr(input1, "replay"):
            input1, num = input1.replay(), None
    return values


def _seed_blocks(seeds: list[int], repeats: int) -> list[list[int]]:
    span = max(seeds) + 1
    return [[s + r * span for s in seeds] for r in range(repeats)]


def _seed_text(seeds: list[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else f"{len(seeds)} seeds"


def mean_std(runs: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per metric: mean and sample std over the disjoint seed blocks (std 0 with one block)."""
    keys = runs[0].keys()
    mean = {k: float(statistics.fmean(r[k] for r in runs)) for k in keys}
    std = {k: float(statistics.stdev(r[k] for r in runs)) if len(runs) > 1 else 0.0 for k in keys}
    return mean, std


def image_dataset(cfg: DictConfig) -> Any:
    """The dataset samples are compared with: the backbone's ``image_dataset(cfg)`` hook, else ``cfg.dataset``."""
    from msrepro.models import get_backbone
    from msrepro.registry import RegistryError

    try:
        hook = getattr(get_backbone(cfg.model.backbone), "image_dataset", None)
    except RegistryError:  # reported where the model is built; offline errors come first
        return cfg.dataset
    return hook(cfg) if hook is not None else cfg.dataset


def evaluate_checkpoint(checkpoint: str | Path, *, metrics: Sequence[str] | str | None = None,
                        num: int | None = None, seeds: str | Sequence[int] | None = None, batch: int | None = None,
                        device: str | None = None, ema: bool = True, progress: bool = True,
                        repeats: int | None = None, png_dir: str | Path | None = None,
                        sample: Mapping[str, Any] | DictConfig | None = None) -> dict[str, Any]:
    """Metrics of a checkpoint's samples: ``{"metrics", "metrics_std", "labels", "num_samples", "protocol", "nfe",
    "checkpoint", "step", ...}``. Defaults come from the checkpoint config's ``eval`` and ``sample`` sections."""
    from msrepro.checkpoint import checkpoint_config, load_checkpoint, load_model
    from msrepro.config import ConfigError, to_dict
    from msrepro.models import data_shape
    from msrepro.generation import generate, parse_seeds

    t0 = time.time()
    state = load_checkpoint(checkpoint)
    cfg, step = checkpoint_config(state), int(state.get("step", 0))
    del state
    params = parse_params(cfg.eval.params)
    chosen = build_metrics(list(metrics) if metrics is not None and not isinstance(metrics, str)
                           else metrics or list(cfg.eval.metrics))
    seed_list = parse_seeds(seeds) if seeds is not None else list(range(int(num or cfg.eval.num_samples)))
    if num is not None and len(seed_list) != num:
        raise ConfigError(f"{len(seed_list)} seeds but num={num}; give one or make them agree")
    repeats = int(repeats or cfg.eval.repeats)
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    images_cfg = image_dataset(cfg)  # latent models: the image dataset the latents were encoded from
    groups = plan(chosen, images_cfg, params)  # offline errors here: nothing sampled yet
    dev = str(device or cfg.device)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
    refs = [refstats(images_cfg, ext, params=params, device=dev) for ext, _ in groups]
    sample_cfg = dict(to_dict(sample if sample is not None else cfg.sample))
    if batch is not None:
        sample_cfg["batch_size"] = int(batch)
    batch_size = int(sample_cfg.get("batch_size") or 64)
    model, cfg = load_model(checkpoint, ema=ema, map_location=dev)
    channels, res = data_shape(cfg)
    runs, nfe = [], None
    t_sample = time.time()
    for r, block in enumerate(_seed_blocks(seed_list, repeats)):
        gen = generate(model, sample_cfg, (channels, res, res), block, dev, progress=False)
        from msrepro.evaluation.stream import SampleStream

        stream = SampleStream(gen, block, png_dir=Path(png_dir) / f"repeat{r}" if png_dir and repeats > 1
                              else png_dir, record=len(groups) > 1, progress=progress,
                              desc=f"evaluating {Path(checkpoint).name}" + (f" [{r + 1}/{repeats}]" if repeats > 1
                                                                             else ""))
        runs.append(compute(stream, chosen, groups, refs, params=params, num=len(block), device=dev,
                            batch_size=batch_size))
        nfe = gen.nfe
    mean, std = mean_std(runs)
    protocol = describe_protocol(groups, refs, len(seed_list), repeats, sample_cfg, nfe)
    return {"metrics": mean, "metrics_std": std, "repeats": runs, "labels": {k: LABELS[k] for k in mean},
            "num_samples": len(seed_list), "seeds": _seed_text(seed_list), "num_repeats": repeats,
            "protocol": protocol, "nfe": nfe, "sampler": sample_cfg.get("sampler"),
            "sampler_params": sample_cfg.get("params") or {}, "checkpoint": str(checkpoint), "step": step,
            "references": [str(p) for p in refs], "wall_s": round(time.time() - t0, 3),
            "images_per_s": round(len(seed_list) * repeats / max(time.time() - t_sample, 1e-9), 3)}


def describe_protocol(groups: Sequence[tuple[Extractor, list[str]]], refs: Sequence[Path], num: int, repeats: int,
                      sample_cfg: Mapping[str, Any], nfe: int | None) -> str:
    """One line for tables: tool, feature spaces, reference sets, sample count, sampler."""
    parts = [f"torch-fidelity {torch_fidelity.__version__}"]
    for (ext, names), ref in zip(groups, refs):
        p = provenance(ref)
        labels = "/".join(LABELS[k] for n in names for k in build_metrics([n])[n].keys)
        parts.append(f"{labels} on {ext.description}; reference {p['dataset']} {p['split']} {p['resolution']}px "
                     f"n={p['count']} sha={p['checksum']}")
    parts.append(f"{num} samples x {repeats} repeat(s), {sample_cfg.get('sampler')} {nfe} NFE")
    return " | ".join(parts)
