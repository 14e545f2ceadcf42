"""Per-sample routing cost: training-step time of multistage over unified, next to their GMACs ratio.

One training step = forward + backward of the denoising loss on a mixed batch whose stage counts follow the
stages' shares of the time axis (what a per-sample policy draws with a uniform-in-time density). The multistage
model routes per sample: the shared encoder runs on the whole batch, each decoder on its sub-batch. The expected
cost ratio is sum_k n_k GMACs_k / (B GMACs_unified) from :mod:`msrepro.flops`; the goal is a measured time ratio
within 15 % of it. Steps of the two models are interleaved so that load changes on a shared machine hit both.

    python bench/routing.py                       # tiny and full presets, both backbones, CPU
    python bench/routing.py --presets tiny --out results/bench/routing.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from tabulate import tabulate

from msrepro.runconfig import load_config
from msrepro.flops import accounting
from msrepro.io import atomic_write_text
from msrepro.losses import denoising_loss
from msrepro.models import build_denoiser

BATCH = {"tiny": 32, "smoke": 32, "full": 12}
STEPS = {"tiny": 6, "smoke": 6, "full": 2}
CHANNELS = {"full": 3}  # CIFAR-10 shape without needing the dataset on disk


def configs(backbone: str, preset: str):
    base = [f"model.backbone={backbone}", f"model.preset={preset}", "model.routing=per_sample"]
    unified = load_config(overrides=base + ["model.variant=unified", "stages.num_stages=1", "stages.boundaries=null",
                                            "model.decoder_channels=null"], validate=False)
    return unified, load_config(overrides=base + ["model.variant=multistage"], validate=False)


def stage_counts(weights: list[float], batch: int) -> list[int]:
    """Largest-remainder rounding of batch x weights (every stage gets at least one sample)."""
    raw = [w * batch for w in weights]
    counts = [max(1, int(r)) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True):
        if sum(counts) >= batch:
            break
        counts[i] += 1
    return counts


def mixed_batch(model, counts: list[int], channels: int, res: int):
    """Noise levels at each stage's interval midpoint (geometric), interleaved; data and noise from a fixed seed."""
    mids = []
    for lo, hi in model.boundaries.sigma_intervals():
        mids.append((lo * hi) ** 0.5 if lo > 0 else hi / 2)
    order = [k for i in range(max(counts)) for k in range(len(counts)) if i < counts[k]]
    sigma = torch.tensor([mids[k] for k in order])
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(len(order), channels, res, res, generator=g) * 2 - 1
    return x0, sigma, torch.randn(x0.shape, generator=g)


def train_step(model, x0, sigma, noise) -> float:
    t0 = time.perf_counter()
    denoising_loss(model, x0, sigma, noise).mean().backward()
    elapsed = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return elapsed


def bench(backbone: str, preset: str, batch: int, steps: int) -> dict:
    cfg_u, cfg_m = configs(backbone, preset)
    channels = CHANNELS.get(preset)
    acc_u, acc_m = accounting(cfg_u, channels=channels), accounting(cfg_m, channels=channels)
    torch.manual_seed(0)
    uni, multi = build_denoiser(cfg_u, channels).train(), build_denoiser(cfg_m, channels).train()
    counts = stage_counts(acc_m["length_weights"], batch)
    shape = acc_m["input_shape"]
    x0, sigma, noise = mixed_batch(multi, counts, shape[0], shape[1])
    assert multi.resolve_stages(sigma).bincount(minlength=len(counts)).tolist() == counts
    train_step(uni, x0, sigma, noise), train_step(multi, x0, sigma, noise)  # warm-up (allocator, oneDNN kernels)
    t_u, t_m = [], []
    for _ in range(steps):  # interleaved
        t_u.append(train_step(uni, x0, sigma, noise))
        t_m.append(train_step(multi, x0, sigma, noise))
    gmacs_ratio = sum(n * g for n, g in zip(counts, acc_m["gmacs"])) / (sum(counts) * acc_u["gmacs"][0])
    flops_ratio = sum(n * g for n, g in zip(counts, acc_m["gflops"])) / (sum(counts) * acc_u["gflops"][0])
    time_ratio = statistics.median(t_m) / statistics.median(t_u)
    return {"backbone": backbone, "preset": preset, "batch": batch, "counts": counts,
            "t_unified": statistics.median(t_u), "t_multistage": statistics.median(t_m),
            "time_ratio": time_ratio, "gmacs_ratio": gmacs_ratio, "flops_ratio": flops_ratio,
            "within_15pct": abs(time_ratio / gmacs_ratio - 1) <= 0.15}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "full"])
    ap.add_argument("--backbones", nargs="+", default=["dpm_solver", "edm"])
    ap.add_argument("--steps", type=int, default=None, help="timed steps per model (default: 6 tiny, 2 full)")
    ap.add_argument("--batch", nargs="+", type=int, default=None,
                    help="batch size per preset, in --presets order (default: 32 tiny, 12 full)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: robust on a shared machine)")
    ap.add_argument("--out", default=None, help="also write the report to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    batches = dict(zip(args.presets, args.batch)) if args.batch else BATCH
    rows = [bench(b, p, batches[p], args.steps or STEPS[p]) for p in args.presets for b in args.backbones]
    load_after = os.getloadavg()
    table = tabulate([[r["backbone"], r["preset"], r["batch"], "/".join(map(str, r["counts"])),
                       f"{r['t_unified']:.3f}", f"{r['t_multistage']:.3f}", f"{r['time_ratio']:.3f}",
                       f"{r['gmacs_ratio']:.3f}", f"{r['flops_ratio']:.3f}", "yes" if r["within_15pct"] else "NO"]
                      for r in rows],
                     headers=["backbone", "preset", "batch", "per stage", "unified s/step", "multistage s/step",
                              "time ratio", "GMACs ratio", "FLOPs ratio", "within 15 %"], disable_numparse=True)
    header = [f"# bench/routing.py  {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
              f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, device cpu",
              f"# load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
              f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}",
              "# step = forward + backward of the denoising loss, median over interleaved steps; ratio = multistage"
              " (per-sample routing, mixed batch) / unified; GMACs ratio = sum_k n_k GMACs_k / (B GMACs_unified)"]
    report = "\n".join(header + [table]) + "\n"
    print(report, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, report)


if __name__ == "__main__":
    main()
