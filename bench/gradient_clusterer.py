"""The gradient clusterer at the paper's scale: time and peak memory of the streamed Gram (clustering.gram), and
the error of its cosine similarities against the exact matrix on a small model, in one run.

    python bench/gradient_clusterer.py                     # full DPM-Solver (107.5 M params), 3 levels, batch 8
    python bench/gradient_clusterer.py --levels 4 --batch 16 --out results/bench/gradient_clusterer.txt

Part 1 runs the clusterer's own gradient function (:meth:`GradientClusterer.gradient_fn`) and
:func:`msrepro.clustering.gram.streamed_gram` on the full-size unified network for ``--levels`` noise levels of a
100-point grid (random-init weights, a random batch in [-1, 1]: the cost does not depend on either), with the block
the clusterer picks for ``max_gradient_gb``. It prints seconds per gradient, the process's peak resident memory
(VmHWM) and, **extrapolated** to the 100-point grid: the number of gradient computations (closed form), the time,
and the peak memory (measured peak plus the block rows this short run did not hold). Part 2 compares the streamed
cosines (block 3, micro-batches) with the exact all-gradients-held float64 matrix on the tiny preset.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from msrepro.clustering.gradient import GradientClusterer, cosine_matrix
from msrepro.clustering.gram import cosine_from_gram, evaluations, streamed_gram


def vm_hwm_gb() -> float:
    """Peak resident set size of this process (Linux /proc/self/status VmHWM), in GiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def unified(backbone: str, preset: str):
    from msrepro.models import build_denoiser, data_shape
    from msrepro.runconfig import load_config

    cfg = load_config([], [f"model.backbone={backbone}", f"model.preset={preset}", "model.variant=unified"],
                      validate=False)
    torch.manual_seed(0)
    return build_denoiser(cfg), data_shape(cfg)


def sigmas_for(grid: int):
    from msrepro.models import resolve_schedule
    from msrepro.runconfig import load_config

    sched = resolve_schedule(load_config([], ["model.backbone=dpm_solver"], validate=False))
    t = torch.arange(1, grid + 1, dtype=torch.float64) / grid
    return sched.sigma(t).to(torch.float32)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="dpm_solver")
    p.add_argument("--preset", default="full")
    p.add_argument("--levels", type=int, default=3, help="noise levels measured at full size")
    p.add_argument("--grid", type=int, default=100, help="the grid the figures are extrapolated to")
    p.add_argument("--batch", type=int, default=8, help="training batch at full size (paper: 128)")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--max-gradient-gb", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("results/bench/gradient_clusterer.txt"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = [f"$ python bench/gradient_clusterer.py --levels {args.levels} --batch {args.batch} "
             f"--micro-batch {args.micro_batch} --max-gradient-gb {args.max_gradient_gb}",
             f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, {os.cpu_count()} cpus, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu",
             "# load average (1/5/15 min) before {:.2f}/{:.2f}/{:.2f}".format(*os.getloadavg())]
    say = lambda s: (print(s, flush=True), lines.append(s))  # noqa: E731

    # -- part 1: full size ------------------------------------------------------------------------------------
    model, (c, r) = unified(args.backbone, args.preset)
    numel = sum(q.numel() for q in model.parameters() if q.requires_grad)
    clusterer = GradientClusterer({"grid": args.grid, "batch_size": args.batch, "micro_batch": args.micro_batch,
                                   "max_gradient_gb": args.max_gradient_gb})
    block = clusterer.block_size(model)
    x0 = torch.rand(args.batch, c, r, r, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sigmas = sigmas_for(args.grid)
    levels = torch.linspace(0, args.grid - 1, args.levels).round().long()
    grad = clusterer.gradient_fn(model, x0, sigmas[levels], seed=0)
    say(f"{args.backbone} preset {args.preset}, unified: {numel / 1e6:.1f} M parameters = "
        f"{numel * 4 / 2**30:.2f} GiB per float32 gradient; all {args.grid} held would be "
        f"{args.grid * numel * 4 / 2**30:.1f} GiB")
    say(f"batch {args.batch} ({args.micro_batch} per forward/backward), max_gradient_gb {args.max_gradient_gb}: "
        f"block {block} gradients held = {block * numel * 4 / 2**30:.2f} GiB")
    base = vm_hwm_gb()
    stamps: list[float] = []
    start = time.perf_counter()
    gram = streamed_gram(grad, args.levels, block, on_vector=lambda i: stamps.append(time.perf_counter()))
    wall = time.perf_counter() - start
    per = np.diff([start, *stamps])
    peak = vm_hwm_gb()
    held = min(block, args.levels)
    say(f"measured, {args.levels} noise levels (grid points {levels.tolist()}), {len(stamps)} gradient computations:"
        f" {wall:.1f} s, s/gradient {' '.join(f'{t:.1f}' for t in per)} (median {np.median(per):.1f})")
    say(f"measured peak resident memory (VmHWM, whole process): {peak:.2f} GiB (after building the model: "
        f"{base:.2f} GiB); {held} gradient rows held")
    n_eval = evaluations(args.grid, block)
    extra = max(0, block - held) * numel * 4 / 2**30
    say(f"EXTRAPOLATED to the {args.grid}-point grid (not measured): {n_eval} gradient computations "
        f"(block {block}; closed form n + sum over blocks of the later points), "
        f"{n_eval * np.median(per) / 3600:.2f} h per checkpoint at batch {args.batch} "
        f"(x {128 / args.batch:.0f} at the paper's batch 128, linear in batch), "
        f"peak memory {peak + extra:.2f} GiB = measured {peak:.2f} + {block - held} more block rows "
        f"{extra:.2f} (goal < 8 GB)")
    say(f"cosines at full size (these levels): {np.round(cosine_from_gram(gram), 4).tolist()}")
    del model, grad, gram

    # -- part 2: error against the exact matrix on a small model ---------------------------------------------
    small, (c, r) = unified(args.backbone, "tiny")
    n_small = 20
    x0 = torch.rand(16, c, r, r, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sig = sigmas_for(n_small)
    exact_cl = GradientClusterer({"grid": n_small, "batch_size": 16})
    exact = cosine_matrix(exact_cl.gradients(small, x0, sig, seed=0).double())
    for storage in ("float32", "bfloat16"):
        cl = GradientClusterer({"grid": n_small, "batch_size": 16, "micro_batch": 5, "storage_dtype": storage})
        calls: list[int] = []
        got = cosine_from_gram(streamed_gram(cl.gradient_fn(small, x0, sig, seed=0), n_small, 3,
                                             dtype=torch.bfloat16 if storage == "bfloat16" else torch.float32,
                                             on_vector=calls.append))
        say(f"small model ({sum(q.numel() for q in small.parameters()) / 1e6:.2f} M params, tiny preset), "
            f"{n_small} levels, block 3, micro-batch 5 of 16, {storage} storage, {len(calls)} computations: "
            f"max |cos_streamed - cos_exact| = {np.abs(got - exact).max():.2e} (goal <= 1e-3; exact = all held, "
            f"whole batch, float64 products)")
    lines.append("# load average (1/5/15 min) after {:.2f}/{:.2f}/{:.2f}".format(*os.getloadavg()))
    print(lines[-1])
    text = "\n".join(lines) + "\n"
    if args.out:
        from msrepro.io import atomic_write_text

        atomic_write_text(args.out, text)
    return text


if __name__ == "__main__":
    main()
