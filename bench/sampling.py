"""Sampling throughput of the unified and the multistage model at the same NFE, next to the GMACs ratio.

    python bench/sampling.py                                  # dpm_solver backbone, tiny preset, 20 NFE, CPU
    python bench/sampling.py --preset full --device cuda --batch 500 --out results/bench/sampling-full.txt

Both models are timed in one run, on the same seeds and the same sampler (DPM-Solver-3, 20 NFE by default),
taking turns batch by batch; images/s is from the median batch time. The
expected speed-up of the multistage model is GMACs(unified) / GMACs(multistage, weighted by this sampler's NFE per
stage), from ``msrepro.flops.accounting``; the measured one is images/s(multistage) / images/s(unified). Small
models on a CPU are dominated by per-layer overheads, not MACs, so expect the measured ratio to track the GMACs
ratio only loosely there.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

VARIANTS = {"unified": ["model.variant=unified"], "multistage": ["model.variant=multistage"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="dpm_solver")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--sampler", default="dpm_solver")
    p.add_argument("--nfe", type=int, default=20, help="dpm_solver NFE (other samplers: their own params)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=5, help="timed batches per model (after one warm-up batch)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=Path("results/bench/sampling.txt"))
    p.add_argument("overrides", nargs="*", help="extra run-config key=value overrides for both models")
    return p.parse_args(argv)


def build(args: argparse.Namespace, variant: str):
    from msrepro.runconfig import load_config
    from msrepro.models import build_denoiser

    items = [f"model.backbone={args.backbone}", f"model.preset={args.preset}", f"sample.sampler={args.sampler}",
             *args.overrides, *VARIANTS[variant]]
    if args.sampler == "dpm_solver":
        items.append(f"sample.params.nfe={args.nfe}")
    cfg = load_config([], items, validate=False)
    torch.manual_seed(0)
    return build_denoiser(cfg).eval(), cfg


def timed_batches(models: dict, args: argparse.Namespace, device: str) -> tuple[dict, dict]:
    """Per model: seconds of each timed batch and the sampler's NFE info. After one warm-up batch each, the
    models take turns batch by batch (A B A B ...), so a change in machine load hits both alike."""
    from msrepro.models import data_shape
    from msrepro.generation import generate

    seeds = list(range(args.batch * (args.batches + 1)))
    gens, runs = {}, {}
    for name, (model, cfg) in models.items():
        c, r = data_shape(cfg)
        gens[name] = generate(model, {**dict(cfg.sample), "batch_size": args.batch}, (c, r, r), seeds, device,
                              progress=False)
        runs[name] = gens[name].batches()
        next(runs[name])  # warm-up: allocator, kernels, caches
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.batches):
        for name in models:
            sync()
            start = time.perf_counter()
            next(runs[name])
            sync()
            times[name].append(time.perf_counter() - start)
    return times, {name: {"nfe": g.nfe, "nfe_per_stage": g.nfe_per_stage} for name, g in gens.items()}


def nfe_weighted_gmacs(gmacs: list[float], nfe_per_stage: list[int]) -> float:
    """Mean GMACs per denoiser call over this sampler's calls: sum_k NFE_k GMACs_k / NFE."""
    return sum(g * n for g, n in zip(gmacs, nfe_per_stage)) / sum(nfe_per_stage)


def main(argv=None) -> str:
    from tabulate import tabulate

    from msrepro.flops import accounting

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    models = {variant: build(args, variant) for variant in VARIANTS}
    times, infos = timed_batches(models, args, device)
    rows, res = [], {}
    for variant, (model, cfg) in models.items():
        acc, info = accounting(cfg), infos[variant]
        ips = args.batch / statistics.median(times[variant])
        gm = nfe_weighted_gmacs(acc["gmacs"], info["nfe_per_stage"])
        res[variant] = (ips, gm)
        rows.append([variant, f"{sum(p.numel() for p in model.parameters()) / 1e6:.3f}",
                     " / ".join(f"{g:.3f}" for g in acc["gmacs"]), " / ".join(map(str, info["nfe_per_stage"])),
                     f"{gm:.3f}", f"{ips:.3f}", " ".join(f"{t:.2f}" for t in times[variant])])
    speedup, gmacs_ratio = res["multistage"][0] / res["unified"][0], res["unified"][1] / res["multistage"][1]
    hw = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    lines = [f"bench/sampling.py: {args.backbone} preset {args.preset}, {args.sampler} "
             f"({info['nfe']} NFE), batch {args.batch}, {args.batches} timed batches; device {device} ({hw}); "
             f"torch {torch.__version__}",
             tabulate(rows, headers=["model", "params (M)", "GMACs per stage", "NFE per stage",
                                     "NFE-weighted GMACs", "images/s (median)", "batch times (s)"],
                      disable_numparse=True),
             "",
             f"measured speed ratio multistage / unified (images/s):     {speedup:.3f}",
             f"expected from GMACs unified / multistage (NFE-weighted):  {gmacs_ratio:.3f}"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        from msrepro.io import atomic_write_text

        atomic_write_text(args.out, text)
    return text


if __name__ == "__main__":
    main()
