"""Training throughput of the unified and the multistage model: images/s and step time, and their ratio, one run.

    python bench/training.py                                   # dpm_solver tiny preset, batch 32, CPU
    python bench/training.py --preset full --device cuda --batch 128 --out results/bench/training-full.txt

Both models are trained with the engine's own step (:meth:`msrepro.training.loop.Trainer.train_step`: forward,
backward, gradient clipping, Adam, EMA) under the configured stage policy (``train.stage_policy``, dpm_solver:
``stage_uniform``), taking turns step by step so a change in machine load hits both alike; images/s is from the
median step time. A multistage step runs one stage's decoder (one stage per batch) or all decoders on sub-batches
(``per_sample``), so its cost depends on which stage the batch drew: the median is over the stage mix.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = {"unified": ["model.variant=unified"], "multistage": ["model.variant=multistage"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="dpm_solver")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=12, help="timed steps per model (after two warm-up steps)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=Path("results/bench/training.txt"))
    p.add_argument("overrides", nargs="*", help="extra run-config key=value overrides for both models")
    return p.parse_args(argv)


def trainer(args: argparse.Namespace, variant: str, tmp: str):
    from msrepro.runconfig import load_config
    from msrepro.training.distributed import DistInfo
    from msrepro.training.loop import Trainer

    items = [f"model.backbone={args.backbone}", f"model.preset={args.preset}", f"train.batch_size={args.batch}",
             f"device={args.device}", f"output_dir={tmp}", f"name={variant}", "train.heldout_size=8",
             *args.overrides, *VARIANTS[variant]]
    return Trainer(load_config([], items), DistInfo())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(trainers: dict, steps: int) -> dict[str, list[float]]:
    """Seconds of each timed step per model; two warm-up steps each, then A B A B ..."""
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for i in range(steps + 2):
        for name, tr in trainers.items():
            sync(tr.device)
            t0 = time.perf_counter()
            tr.train_step(i)
            sync(tr.device)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    return times


def report(args: argparse.Namespace, trainers: dict, times: dict) -> str:
    dev = next(iter(trainers.values())).device
    lines = [f"# bench/training.py  backbone={args.backbone} preset={args.preset} batch={args.batch} "
             f"steps={args.steps} device={dev} threads={torch.get_num_threads()} "
             f"policy={trainers['multistage'].cfg.train.stage_policy}",
             f"# {platform.platform()}  torch {torch.__version__}", ""]
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, tr in trainers.items():
        n = sum(p.numel() for p in tr.params) / 1e6
        lines.append(f"{k:<11} params {n:7.2f} M   step {1000 * med[k]:9.1f} ms (median; min {1000 * min(times[k]):.1f})"
                     f"   {args.batch / med[k]:9.1f} images/s")
    lines.append(f"\nmultistage / unified images/s: {med['unified'] / med['multistage']:.3f}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {v: trainer(args, v, tmp) for v in VARIANTS}
        text = report(args, trainers, timed_steps(trainers, args.steps))
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
