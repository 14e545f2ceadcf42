"""Benchmark the optimal denoiser (Eq. 4) at CIFAR-10 scale: N = 50 000 training points of n = 3 072 values.

Prints queries/s, achieved GFLOP/s (counting 4 B N n: the two GEMMs per query), that figure as a ratio of
``torch.matmul`` on the same shapes ([B, n] @ [n, N], 2 B N n flops) measured in the same run (goal >= 0.9), the
chunk-size sweep, and peak memory (goal < 2 GB: the whole process's VmHWM).

    python bench/optimal_denoiser.py [--n-data 50000] [--dim 3072] [--batch 256] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from msrepro.empirical_denoiser import OptimalDenoiser


def vm_hwm_mb() -> float:
    """Peak resident set size of this process (Linux /proc/self/status VmHWM), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def timed(fn, repeats: int, sync) -> float:
    """Best wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-data", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=3_072)
    ap.add_argument("--batch", type=int, default=256, help="queries per call")
    ap.add_argument("--chunks", type=str, default="2048,4096,8192,16384", help="chunk sizes to sweep")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # count true fp32 flops on both sides

    load1, load5, _ = os.getloadavg()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {dev}")
    print(f"load average before the run: {load1:.2f} (1 min), {load5:.2f} (5 min)")
    g = torch.Generator(device="cpu").manual_seed(0)
    n, d, b = args.n_data, args.dim, args.batch
    data = torch.rand(n, d, generator=g).mul_(2).sub_(1).to(dev)  # CIFAR-shaped random values in [-1, 1]
    queries = (data[torch.randint(n, (b,), generator=g).to(dev)] + 0.5 * torch.randn(b, d, generator=g).to(dev))
    print(f"data [{n}, {d}] float32 = {data.numel() * 4 / 2**20:.0f} MB; queries [{b}, {d}]; sigma 0.5")

    flops = 4.0 * b * n * d
    t_mm = timed(lambda: torch.matmul(queries, data.T), args.repeats, sync)
    gflops_mm = 2.0 * b * n * d / t_mm / 1e9
    print(f"torch.matmul [{b}, {d}] @ [{d}, {n}]: {t_mm * 1e3:.1f} ms = {gflops_mm:.1f} GFLOP/s")

    print(f"{'chunk':>7} {'ms/call':>9} {'queries/s':>10} {'GFLOP/s':>9} {'ratio':>6}")
    best = None
    for chunk in [int(c) for c in args.chunks.split(",")]:
        od = OptimalDenoiser(data, chunk_size=chunk)
        t = timed(lambda: od(queries, 0.5), args.repeats, sync)
        gf = flops / t / 1e9
        print(f"{chunk:>7} {t * 1e3:>9.1f} {b / t:>10.1f} {gf:>9.1f} {gf / gflops_mm:>6.2f}")
        if best is None or t < best[1]:
            best = (chunk, t)
        del od
    chunk, t = best
    print(f"best chunk {chunk}: {b / t:.1f} queries/s, {flops / t / 1e9:.1f} GFLOP/s, "
          f"ratio to torch.matmul {flops / t / 1e9 / gflops_mm:.2f} (goal >= 0.9)")
    if dev.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MB")
    hwm = vm_hwm_mb()
    print(f"peak resident memory (VmHWM, whole process incl. torch and the {data.numel() * 4 / 2**20:.0f} MB data): "
          f"{hwm:.0f} MB = {hwm / 1024:.2f} GB (goal < 2 GB)")
    load1, load5, _ = os.getloadavg()
    print(f"load average after the run: {load1:.2f} (1 min), {load5:.2f} (5 min)")


if __name__ == "__main__":
    main()
