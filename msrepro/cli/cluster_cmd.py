"""``msrepro cluster NAME [--dataset D] [--k K] [--json] [--out DIR] [key=value ...]``: stage boundaries.

Items after the name: ``key=value`` sets a clusterer option (``eta=0.01``, checked against its Config);
``dataset.key=value`` sets the dataset section; other ``section.key=value`` items and YAML files make the run config
of clusterers that need a network (``gradient``), as in ``msrepro config show``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from tabulate import tabulate

from msrepro.cli import UserError
from msrepro.config import check_params, parse_overrides
from msrepro.registry import CLUSTERERS, DATASETS

NAME = "cluster"
INTERMIXED_ITEMS = True  # `msrepro cluster NAME --k 4 eta=0.01`: items may follow the options
HELP = "split the diffusion time axis into K stages with a registered clusterer (Table 4); writes JSON + PNG plots"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="registered clusterer (msrepro list clusterers)")
    p.add_argument("items", nargs="*", help="key=value clusterer options, dataset.key=value, run-config items")
    p.add_argument("--dataset", default=None, help="registered dataset for clusterers that read data (default: digits)")
    p.add_argument("--k", type=int, default=3, help="number of stages (k - 1 cut points; default 3)")
    p.add_argument("--schedule", default="vp_linear", help="noise schedule whose time the cut points are in")
    p.add_argument("--checkpoint", action="append", default=[], help="network checkpoint (repeat to average)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/cluster/NAME-kK[-DATASET])")
    p.add_argument("--json", action="store_true", help="print one JSON object (boundaries = the cut points)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def split_cluster_items(items: list[str]) -> tuple[dict[str, Any], list[str], list[str], list[str]]:
    """(clusterer params, dataset overrides, run-config files, run-config overrides) from the trailing items."""
    files = [i for i in items if "=" not in i]
    plain = [i for i in items if "=" in i and "." not in i.split("=", 1)[0]]
    dataset = [i.split(".", 1)[1] for i in items if "=" in i and i.startswith("dataset.")]
    run = [i for i in items if "=" in i and i not in plain]
    params = OmegaConf.to_container(parse_overrides(plain)) if plain else {}
    return params, dataset, files, run  # type: ignore[return-value]


def build_inputs(args: argparse.Namespace, dataset_items: list[str], files: list[str], run_items: list[str]):
    """The lazily loaded ClusterInputs; the dataset name and options are checked here, before any work."""
    from msrepro.clustering import ClusterInputs

    dataset = OmegaConf.to_container(parse_overrides(dataset_items)) if dataset_items else {}
    if args.dataset:
        dataset["name"] = args.dataset
        run_items = [*run_items, f"dataset.name={args.dataset}"]
    inputs = ClusterInputs(dataset=dataset, checkpoints=list(args.checkpoint), config_files=files,
                           config_overrides=run_items, device=args.device, seed=args.seed,
                           progress=not args.no_progress and not args.json)
    cfg = inputs.dataset_config()
    check_params(DATASETS.get(cfg.name), cfg.params, "dataset.params")
    for path in [*files, *args.checkpoint]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"not found: {path}")
    return inputs


def summary(result: Any, elapsed: float) -> str:
    """A readable account: stages table, the threshold rule where recorded, the files written."""
    sb = result.stage_boundaries
    rows = [(j, f"[{lo:.4g}, {hi:.4g})", f"[{slo:.4g}, {shi:.4g})", f"{frac:.3f}")
            for j, ((lo, hi), (slo, shi), frac) in enumerate(zip(sb.intervals(), sb.sigma_intervals(),
                                                                  sb.fraction_lengths()))]
    data = result.provenance.get("dataset")
    src = f" on {data['name']} ({data['num_images']} images, {data['resolution']} px, sha {data['checksum']})" \
        if isinstance(data, dict) else ""
    lines = [f"{result.clusterer}, k={result.k}, schedule {result.schedule.name}{src}: {elapsed:.1f} s",
             f"cut points (t):  {'  '.join(f'{c:.4g}' for c in result.boundaries)}",
             f"from:            {result.objective}",
             f"log-SNR at cuts: {'  '.join(f'{c:.4g}' for c in result.log_snr)}", "",
             tabulate(rows, headers=["stage", "t interval", "sigma interval", "length"],
                      disable_numparse=True), ""]
    for key in ("interval_dp", "threshold"):
        d = result.diagnostics.get(key)
        if isinstance(d, dict) and key == "threshold":
            lines.append(f"threshold rule (Alg. 1, alpha={d['alpha']}): t1={d['t1']}, t2={d['t2']}"
                         + ("" if d["valid"] else "  (not a valid split)"))
        elif isinstance(d, dict):
            for w, dw in (result.diagnostics.get("weightings") or {d["weighting"]: d}).items():
                used = "  <- these cut points" if w == d["weighting"] and "interval" in result.objective else ""
                lines.append(f"interval DP ({w}): cuts {dw['cuts']}, sizes {dw['sizes']}{used}")
    lines += [f"{k:7s} {v}" for k, v in result.files.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from msrepro.clustering.plots import save_result
    from msrepro.schedules import build_schedule

    cls = CLUSTERERS.get(args.name)  # unknown names fail here, listing the valid ones
    if args.k < 2:
        raise UserError(f"--k: need at least 2 stages (k - 1 >= 1 cut points), got {args.k}")
    params, dataset_items, files, run_items = split_cluster_items(args.items)
    clusterer = cls(params)
    clusterer.check_k(args.k, "--k")  # an impossible k fails here, before any data, model or work
    schedule = build_schedule({"name": args.schedule})
    inputs = build_inputs(args, dataset_items, files, run_items)
    start = time.perf_counter()
    result = clusterer.fit(schedule, inputs, args.k)
    elapsed = time.perf_counter() - start
    result.provenance["elapsed_s"] = round(elapsed, 3)
    tag = f"-{inputs.dataset_config().name}" if inputs.used_data else ""
    out = args.out or Path("runs") / "cluster" / f"{args.name}-k{args.k}{tag}"
    save_result(result, out, plots=not args.no_plots)
    if args.json:
        print(json.dumps(result.to_dict(full=False), indent=2, default=str))
    else:
        print(summary(result, elapsed))
    return 0
