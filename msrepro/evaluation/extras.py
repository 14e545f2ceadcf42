"""What an evaluate step adds to a cell's result besides its own metrics: the real-data floor, the
compute-to-quality curve and the early-stopping record (read by :mod:`msrepro.comparison` for the tables).

- ``floor``: the dataset's *test split* scored like a model's samples (same metrics, feature extractor, reference
  statistics and sample count; disjoint test-split blocks stand for the seed blocks when the split is big enough).
  It is what a perfect generator would score at this sample count, so it is the bar the tables measure against.
  Cached in ``<run>/floors/`` per protocol, so a run computes it once.
- ``curve``: the metric at every checkpoint the training run kept (``train.save_steps``; the paper's Figure 1d),
  with training PFLOPs = iterations x GFLOPs x 1e-6 (paper footnote 2), through :func:`evaluate_run`. Only cells
  that set ``eval.curve_samples`` (samples per checkpoint, one seed block): an evaluation setting, so rows that
  share a training run still share it when only some of them (Table 2's) ask for the curve.
- ``early_stopped``: the train step's ``{stage: step | null}`` record, copied as is (absent: not recorded).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from msrepro.config import merge, to_dict
from msrepro.evaluation.scoring import build_metrics, compute, image_dataset, mean_std, parse_params, plan
from msrepro.evaluation.reference import UInt8Images, reference_dataset, refstats
from msrepro.evaluation.runs import evaluate_run
from msrepro.io import atomic_write_json


def real_data_floor(cfg: DictConfig, *, cache: Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """The cell's metrics on the real test split: ``{"metrics", "metrics_std", "num_samples", "blocks", "split",
    "protocol"}``. ``num_samples`` = ``eval.num_samples`` capped at the split's size; ``blocks`` = how many disjoint
    blocks of that size the split holds, at most ``eval.repeats`` (std 0 with one block)."""
    images_cfg = image_dataset(cfg)
    test_cfg = {**to_dict(images_cfg), "split": "test", "limit": None, "hflip": False}
    params = parse_params(cfg.eval.params)
    chosen = build_metrics(list(cfg.eval.metrics))
    want, repeats = int(cfg.eval.num_samples), max(1, int(cfg.eval.repeats))
    key = hashlib.sha256(json.dumps([test_cfg, to_dict(images_cfg), sorted(chosen), want, repeats,
                                     to_dict(cfg.eval.params)], sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = Path(cache) / f"floor-{key}.json" if cache is not None else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    images = reference_dataset(test_cfg).images  # [0, 1], as the reference was built
    n = min(want, images.shape[0])
    blocks = max(1, min(repeats, images.shape[0] // n))
    groups = plan(chosen, images_cfg, params)
    refs = [refstats(images_cfg, ext, params=params, device=device) for ext, _ in groups]
    runs = [compute(UInt8Images(images[b * n:(b + 1) * n]), chosen, groups, refs, params=params, device=device)
            for b in range(blocks)]
    mean, std = mean_std(runs)
    out = {"metrics": mean, "metrics_std": std, "num_samples": n, "blocks": blocks, "split": "test",
           "dataset": test_cfg.get("name"), "requested_samples": want,
           "protocol": f"{test_cfg.get('name')} test split, {blocks} disjoint block(s) of {n} images, same "
                       f"reference and feature extractor as the samples"}
    if path is not None:
        atomic_write_json(path, out)
    return out


def checkpoint_curve(cfg: DictConfig, run_dir: str | Path, progress: bool = False) -> list[dict[str, Any]]:
    """The quality metric at each saved checkpoint of the training run (one seed block of ``eval.curve_samples``):
    ``[{"step", "pflops", "metrics", "num_samples"}]`` by step."""
    num = int(cfg.eval.curve_samples or cfg.eval.num_samples)
    records = evaluate_run(run_dir, metrics=list(cfg.eval.metrics), num=num, repeats=1, sample=to_dict(cfg.sample),
                           progress=progress)
    return [{"step": r["step"], "pflops": r.get("pflops"), "metrics": r["metrics"], "num_samples": r["num_samples"]}
            for r in records]


def trained_data(cfg: DictConfig, train: dict[str, Any]) -> DictConfig:
    """``cfg`` with the dataset the model was trained on, as its training run recorded it (``config.yaml``: e.g.
    the latent cache a prerequisite step wrote, which the evaluate step's own config does not name)."""
    path = Path(train.get("run_dir") or "") / "config.yaml"
    if not path.is_file():
        return cfg
    return merge(cfg, OmegaConf.create({"dataset": to_dict(OmegaConf.load(path).dataset)}), where=str(path))


def cell_extras(run_dir: str | Path, cfg: DictConfig, train: dict[str, Any], progress: bool = False) -> dict[str, Any]:
    """The evaluate step's additions to the cell result: ``floor``, ``curve`` (if ``eval.curve_samples``) and
    ``early_stopped`` (if the train step recorded it). A failure is recorded under ``extras_errors``, never
    raised: the cell's own metrics are the result."""
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        out["floor"] = real_data_floor(trained_data(cfg, train), cache=Path(run_dir) / "floors")
    except Exception as exc:  # e.g. a dataset without a test split
        errors["floor"] = f"{type(exc).__name__}: {exc}"
    if cfg.eval.curve_samples:
        try:
            out["curve"] = checkpoint_curve(cfg, train["run_dir"], progress)
        except Exception as exc:
            errors["curve"] = f"{type(exc).__name__}: {exc}"
    if "early_stopped" in (train.get("metrics") or {}):  # the trainer's record (msrepro.training.loop)
        out["early_stopped"] = train["metrics"]["early_stopped"]
    if errors:
        out["extras_errors"] = errors
    return out
