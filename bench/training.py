"""Training throughput of the unified and the multistage model: images/s and step time, and their ratio, one run.

    python bench/training.py --threads 1                       # dpm_solver tiny preset (its batch), CPU
    python bench/training.py --threads 1 --before              # + the old tiny recipe, interleaved: the speed-up
    python bench/training.py --preset full --device cuda --batch 128 --out results/bench/training-full.txt

``--before`` also times the tiny recipe this suite had before issue 10 (digits upsampled to 16 px, 3 levels, 2
residual blocks per level, attention at 8 px, dropout 0.1, encoder 32 / decoders 48-32-8, batch 32), given as
overrides of the current preset, step by step in turn with the current recipe, and prints the per-step and
per-image ratios of the two. (GroupNorm 8 groups in both: the old multistage widths, 8 + 64 = 72 channels at a
skip concatenation, do not split into the 16 groups today's layer check asks for.)

Both models are trained with the engine's own step (:meth:`msrepro.training.loop.Trainer.train_step`: forward,
backward, gradient clipping, Adam, EMA) under the configured stage policy (``train.stage_policy``; dpm_solver tiny:
``per_sample``, full: ``stage_uniform``), taking turns step by step so a change in machine load hits both alike; images/s is from the
median step time. A multistage step runs one stage's decoder (one stage per batch) or all decoders on sub-batches
(``per_sample``), so its cost depends on which stage the batch drew: the median is over the stage mix.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = {"unified": ["model.variant=unified"], "multistage": ["model.variant=multistage"]}
#: the tiny recipe before issue 10 (dpm_solver / edm), as overrides of the current tiny preset
BEFORE = {
    "dpm_solver": ["dataset.resolution=16", "model.encoder_channels=32", "model.decoder_channels=[48,32,8]",
                   "model.params.channel_mult=[1,2,2]", "model.params.num_blocks=2", "model.params.attn_resolutions=[8]",
                   "model.params.dropout=0.1", "train.batch_size=32", "model.params.norm_groups=8"],
    "edm": ["dataset.resolution=16", "model.encoder_channels=32", "model.decoder_channels=[48,32,8]",
            "model.params.channel_mult=[2,2,2]", "model.params.num_blocks=2", "model.params.attn_resolutions=[8]",
            "model.params.dropout=0.13", "train.batch_size=32", "model.params.norm_groups=8"],
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="dpm_solver")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    p.add_argument("--before", action="store_true", help="also time the pre-issue-10 tiny recipe (speed-up)")
    p.add_argument("--steps", type=int, default=12, help="timed steps per model (after two warm-up steps)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=Path("results/bench/training.txt"))
    p.add_argument("overrides", nargs="*", help="extra run-config key=value overrides for both models")
    return p.parse_args(argv)


def trainer(args: argparse.Namespace, variant: str, tmp: str, recipe: list[str] = ()):
    from msrepro.runconfig import load_config
    from msrepro.training.distributed import DistInfo
    from msrepro.training.loop import Trainer

    batch = [f"train.batch_size={args.batch}"] if args.batch else []
    name = variant.replace(" ", "_")
    items = [f"model.backbone={args.backbone}", f"model.preset={args.preset}", *batch, *recipe,
             f"device={args.device}", f"output_dir={tmp}", f"name={name}", "train.heldout_size=8",
             *args.overrides, *VARIANTS[variant.split()[0]]]
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
    cfg = trainers["multistage"].cfg
    lines = [f"# bench/training.py  backbone={args.backbone} preset={args.preset} batch={cfg.train.batch_size} "
             f"resolution={cfg.dataset.resolution} steps={args.steps} device={dev} threads={torch.get_num_threads()} "
             f"policy={cfg.train.stage_policy}",
             f"# {platform.platform()}  torch {torch.__version__}", f"# load average at the end: {load_average()}", ""]
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, tr in trainers.items():
        n = sum(p.numel() for p in tr.params) / 1e6
        b, r = tr.cfg.train.batch_size, tr.cfg.dataset.resolution
        lines.append(f"{k:<18} {r:2d} px  batch {b:3d}  params {n:6.2f} M   step {1000 * med[k]:8.1f} ms (median; "
                     f"min {1000 * min(times[k]):.1f})   {b / med[k]:8.1f} images/s")
    lines.append(f"\nmultistage / unified images/s: {med['unified'] / med['multistage']:.3f}")
    for v in VARIANTS:
        if f"{v} before" in trainers:
            old, new = trainers[f"{v} before"], trainers[v]
            per_img = (med[f"{v} before"] / old.cfg.train.batch_size) / (med[v] / new.cfg.train.batch_size)
            lines.append(f"{v}: before / now step time {med[f'{v} before'] / med[v]:.2f}x, "
                         f"time per image {per_img:.2f}x")
    return "\n".join(lines) + "\n"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (``uptime``'s figures); timings under load are indicative only."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {v: trainer(args, v, tmp) for v in VARIANTS}
        if args.before:
            trainers.update({f"{v} before": trainer(args, f"{v} before", tmp, BEFORE[args.backbone]) for v in VARIANTS})
        text = report(args, trainers, timed_steps(trainers, args.steps))
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
