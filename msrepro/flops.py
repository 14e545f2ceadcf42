"""Parameter and compute accounting per stage (paper Sec. 5 "GFLOPs", Tables 2-3; SPEC 4).

Per stage k (the modules a sample of stage k runs through: its encoder and decoder k), per sample:

- ``params``: parameters of encoder + decoder k; ``params_total``: the whole multi-decoder model.
- ``gmacs``: multiply-accumulates of the convolution and linear layers, in units of 1e9 - what the paper calls
  "GFLOPs". Counted with forward hooks on every ``nn.Conv2d`` / ``nn.Linear`` (MACs = output elements x
  input channels per group x kernel area, or x in_features). Layers whose ``flops_tag`` is in the backbone's
  ``gmacs_skip_tags`` are left out: the official score_sde code computes its attention projections with einsum and
  its input-pyramid conv with ``F.conv2d``, so the module-hook count behind the paper's 17.65 never saw them.
  ``gmacs_all`` counts every conv and linear layer.
- ``flops``: true floating-point operations, 2 x MAC of every convolution and matrix product *including* the
  attention products, from :class:`torch.utils.flop_counter.FlopCounterMode` (elementwise ops not counted).

Multistage figures: ``gmacs_weighted_length`` = sum_k w_k GMACs_k with w = each stage's share of the schedule's
time axis (:meth:`StageBoundaries.fraction_lengths`), ``gmacs_weighted_nfe`` with w = the default sampler's
share of function evaluations per stage (counted by the sampler itself). Models are built on the ``meta`` device: full-size counts allocate no
weights and take about a second on a CPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import astuple, dataclass
from typing import Any, Mapping, Sequence

import torch
from omegaconf import DictConfig
from tabulate import tabulate
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from msrepro.boundaries import StageBoundaries
from msrepro.clustering import build_clusterer
from msrepro.clustering.base import FitCost
from msrepro.config import to_dict
from msrepro.models import build_net, data_shape, get_backbone, resolve_boundaries, resolve_schedule, stage_widths
from msrepro.multidecoder import MultiStageNet
from msrepro.registry import DATASETS, RegistryError
from msrepro.samplers import build_sampler, count_nfe
from msrepro.schedules import NoiseSchedule


@dataclass(frozen=True)
class StageCost:
    """Per-sample cost of one stage's forward pass (encoder + its decoder)."""

    params: int
    macs: int       # conv + linear MACs, paper convention (backbone's gmacs_skip_tags left out)
    macs_all: int   # conv + linear MACs, every layer
    flops: int      # 2 x MAC of all convolutions and matrix products, attention included


def _layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return out.numel() // out.shape[0] * per_output
    if isinstance(module, nn.Linear):
        return out.numel() // out.shape[0] * module.in_features
    return 0


def forward_cost(module: nn.Module, *args: Any, skip_tags: Sequence[str] = ()) -> tuple[Any, StageCost]:
    """Run ``module(*args)`` once and count it: (output, cost). Works on the ``meta`` device."""
    counts = {"macs": 0, "macs_all": 0}

    def hook(layer: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        macs = _layer_macs(layer, out)
        counts["macs_all"] += macs
        if getattr(layer, "flops_tag", None) not in skip_tags:
            counts["macs"] += macs

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = module(*args)
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in module.parameters())
    return out, StageCost(params, counts["macs"], counts["macs_all"], int(counter.get_total_flops()))


def stage_costs(net: MultiStageNet, channels: int, resolution: int, skip_tags: Sequence[str] = ()) -> list[StageCost]:
    """Per-sample cost of each stage: its encoder (counted once when shared) plus its decoder."""
    device = next(net.parameters()).device
    x = torch.zeros(1, channels, resolution, resolution, device=device)
    c_noise = torch.zeros(1, device=device)
    encoded: dict[int, tuple[Any, StageCost]] = {}
    costs = []
    for k in range(net.num_stages):
        encoder = net.encoder_for(k)
        if id(encoder) not in encoded:
            encoded[id(encoder)] = forward_cost(encoder, x, c_noise, skip_tags=skip_tags)
        feats, enc = encoded[id(encoder)]
        _, dec = forward_cost(net.decoders[k], feats, skip_tags=skip_tags)
        costs.append(StageCost(*(a + b for a, b in zip(astuple(enc), astuple(dec)))))
    return costs


# -- NFE split of the configured sampler ---------------------------------------------------------------------------
def nfe_split(sampler: str, params: Mapping[str, Any], schedule: NoiseSchedule,
              boundaries: StageBoundaries | None) -> list[int] | None:
    """Function evaluations per stage of the registered ``sampler`` with ``params`` (e.g. DPM-Solver-3, 20 NFE,
    logSNR, t 1 -> 1e-4: 12 / 2 / 6), from the sampler's own count; None if the sampler is not registered."""
    try:
        solver = build_sampler(sampler, params)
    except RegistryError:
        return None
    return list(count_nfe(solver, schedule, boundaries)["nfe_per_stage"])


# -- the report -----------------------------------------------------------------------------------------------------
def _weighted(values: Sequence[float], weights: Sequence[float] | None) -> float | None:
    if weights is None or sum(weights) == 0:
        return None
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


def accounting(cfg: DictConfig, channels: int | None = None) -> dict[str, Any]:
    """Per-stage parameters, GMACs and FLOPs of the run config's model, and its weighted multistage figures.

    ``channels`` overrides the dataset's number of channels (e.g. 3 for CIFAR-10 without loading it).
    """
    backbone = get_backbone(cfg.model.backbone)
    if channels is None:
        channels = data_shape(cfg)[0]
    resolution = int(cfg.dataset.resolution)
    schedule = resolve_schedule(cfg)
    boundaries = resolve_boundaries(cfg, schedule)
    with torch.device("meta"):
        net = build_net(cfg, channels=channels)
    skip = tuple(backbone.gmacs_skip_tags)
    costs = stage_costs(net, channels, resolution, skip)
    lengths = boundaries.fraction_lengths() if boundaries is not None else [1.0]
    nfe = nfe_split(cfg.sample.sampler, cfg.sample.params, schedule, boundaries)
    gmacs = [c.macs / 1e9 for c in costs]
    gflops = [c.flops / 1e9 for c in costs]
    enc_w, dec_w = stage_widths(cfg)
    return {
        "backbone": cfg.model.backbone, "preset": cfg.model.preset, "variant": cfg.model.variant,
        "input_shape": [channels, resolution, resolution], "encoder_channels": enc_w, "decoder_channels": dec_w,
        "intervals": boundaries.intervals() if boundaries is not None else [(schedule.t_min, schedule.t_max)],
        "params": [c.params for c in costs],
        "params_total": sum(p.numel() for p in net.parameters()),
        "gmacs": gmacs,
        "gmacs_all": [c.macs_all / 1e9 for c in costs],
        "flops": [c.flops for c in costs],
        "gflops": gflops,
        "length_weights": lengths,
        "gmacs_weighted_length": _weighted(gmacs, lengths),
        "gflops_weighted_length": _weighted(gflops, lengths),
        "sampler": cfg.sample.sampler,
        "nfe_per_stage": nfe,
        "gmacs_weighted_nfe": _weighted(gmacs, nfe),
        "gflops_weighted_nfe": _weighted(gflops, nfe),
        "gmacs_skipped_layers": list(skip),
        "units": "per sample and forward pass; params in parameters, gmacs in 1e9 MACs (the paper's 'GFLOPs'), "
                 "flops in FLOPs (2 x MAC, attention included), gflops = flops / 1e9",
    }


def format_report(acc: Mapping[str, Any]) -> str:
    """A table per stage plus the weighted figures (``msrepro flops``)."""
    num = lambda v: f"{v:.2f}" if v >= 1 else f"{v:.3g}"  # noqa: E731
    rows = []
    for k in range(len(acc["params"])):
        lo, hi = acc["intervals"][k]
        nfe = acc["nfe_per_stage"][k] if acc["nfe_per_stage"] is not None else "-"
        rows.append([k, f"[{lo:.4g}, {hi:.4g})", acc["decoder_channels"][k], num(acc["params"][k] / 1e6),
                     num(acc["gmacs"][k]), num(acc["gmacs_all"][k]), num(acc["gflops"][k]),
                     f"{acc['length_weights'][k]:.3f}", nfe])
    table = tabulate(rows, headers=["stage", "interval (t)", "decoder", "params (M)", "GMACs", "GMACs (all)",
                                    "GFLOPs (true)", "length w", "NFE"], disable_numparse=True)
    fmt = lambda v: "-" if v is None else num(v)  # noqa: E731
    lines = [f"{acc['backbone']} / {acc['variant']} / preset {acc['preset']}, input {'x'.join(map(str, acc['input_shape']))}",
             table, "",
             f"total parameters: {acc['params_total'] / 1e6:.2f} M",
             f"GMACs weighted by interval length: {fmt(acc['gmacs_weighted_length'])}   "
             f"(true GFLOPs: {fmt(acc['gflops_weighted_length'])})",
             f"GMACs weighted by {acc['sampler']} NFE split {acc['nfe_per_stage']}: {fmt(acc['gmacs_weighted_nfe'])}   "
             f"(true GFLOPs: {fmt(acc['gflops_weighted_nfe'])})",
             "GMACs = conv + linear multiply-adds per sample (the paper's 'GFLOPs')"
             + (f"; left out as in the official count: {', '.join(acc['gmacs_skipped_layers'])}"
                if acc["gmacs_skipped_layers"] else "")]
    return "\n".join(lines)


def paper_gflops(acc: dict[str, Any]) -> float | None:
    """The paper's "GFLOPs" of a model from its ``accounting``: GMACs per forward pass, length-weighted over the
    stages of a multistage model (Table 2); None when nothing was counted."""
    gmacs = acc.get("gmacs") or []
    if not gmacs:
        return None
    return float(gmacs[0]) if len(gmacs) == 1 else acc.get("gmacs_weighted_length")


def training_pflops(iterations: float, gflops: float | None) -> float | None:
    """Total training PFLOPs as the paper's Table 2 footnote counts them: iterations x GFLOPs x 1e-6."""
    return None if gflops is None else float(iterations) * gflops * 1e-6


# -- compute estimates of launcher steps (``msrepro reproduce --dry-run``) ------------------------------------------
#: FLOPs of a training pass (forward + backward) per forward pass: the backward costs about two forwards
TRAIN_PASSES = 3
_ACCOUNTING_CACHE: dict[str, dict[str, Any]] = {}


def model_accounting(cfg: DictConfig) -> dict[str, Any] | None:
    """:func:`accounting` of a run config's model (cached per model config); None if it cannot be counted."""
    try:
        shape = data_shape(cfg)
    except Exception:
        shape = None
    key = json.dumps({"shape": shape, **{k: to_dict(cfg[k]) for k in ("model", "stages", "schedule", "sample")}},
                     sort_keys=True, default=str)
    if key not in _ACCOUNTING_CACHE:
        try:
            _ACCOUNTING_CACHE[key] = accounting(cfg)
        except Exception as exc:  # e.g. a dataset whose channel count needs the files
            _ACCOUNTING_CACHE[key] = {"error": f"{type(exc).__name__}: {exc}"}
    return None if "error" in _ACCOUNTING_CACHE[key] else _ACCOUNTING_CACHE[key]


def forward_flops(acc: Mapping[str, Any], weighting: str = "length") -> float:
    """True FLOPs of one forward pass per sample, stage-weighted (``length`` or ``nfe``)."""
    w = acc.get(f"gflops_weighted_{weighting}") if len(acc["gflops"]) > 1 else acc["gflops"][0]
    return float(w if w is not None else sum(acc["gflops"]) / len(acc["gflops"])) * 1e9


def step_flops(kind: str, cfg: DictConfig) -> float | None:
    """FLOPs of one launcher step of ``kind`` (train, evaluate, cluster; prepare: None) on the run config ``cfg``.

    train = steps x batch x :data:`TRAIN_PASSES` x forward FLOPs; evaluate = samples x NFE x NFE-weighted forward
    FLOPs (feature network not counted); cluster = what the clusterer states (``cost_flops``).
    """
    if kind == "prepare":
        return None  # a backbone's prerequisite (e.g. an autoencoder) is not counted here
    acc = model_accounting(cfg)
    if kind == "train":
        return None if acc is None else cfg.train.steps * cfg.train.batch_size * TRAIN_PASSES * forward_flops(acc)
    if kind == "evaluate":
        if acc is None:
            return None
        nfe = sum(acc["nfe_per_stage"]) if acc.get("nfe_per_stage") else 1
        return cfg.eval.num_samples * nfe * forward_flops(acc, "nfe" if acc.get("nfe_per_stage") else "length")
    fwd = None if acc is None else forward_flops(acc)
    checkpoints = min(int(cfg.train.keep_checkpoints), int(cfg.train.steps) // int(cfg.train.checkpoint_every))
    return build_clusterer(cfg.cluster.name, to_dict(cfg.cluster.params)).cost_flops(FitCost(
        forward_flops=fwd, train_flops=None if fwd is None else TRAIN_PASSES * fwd,
        item_numel=(acc["input_shape"][0] if acc else 3) * int(cfg.dataset.resolution) ** 2,
        dataset_size=int(getattr(DATASETS.get(cfg.dataset.name), "estimate_size", 50_000)), checkpoints=checkpoints))


def fmt_flops(f: float | None) -> str:
    """``1.23e15``-style engineering notation; ``?`` for unknown."""
    if f is None:
        return "?"
    if f == 0:
        return "0"
    e = int(math.floor(math.log10(f) / 3)) * 3
    return f"{f / 10 ** e:.2f}e{e}"
