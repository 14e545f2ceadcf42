"""Benchmark the optimal denoiser (Eq. 4) at CIFAR-10 scale: N = 50 000 training points of n = 3 072 values.

The reference is a plain ``torch.matmul`` of the same shape, [B, n] @ [n, N] (2 B N n flops), written into a
preallocated output (``out=``) so that it pays no allocation either; the denoiser does two GEMMs of that size
(4 B N n flops), so its ratio to matmul is 2 t(matmul) / t(denoiser) (goal >= 0.9). Each thread setting times the
reference and every chunk size call by call, in a rotating order (ref, c1, c2, ...; then c1, c2, ..., ref; ...),
after one warm-up call each, so load swings and cache effects hit all alike. Per candidate it prints the median
time, the ratio of medians and the median of the per-round paired ratios (2 t_ref / t_ours within one round: the
figure most robust to a load change between rounds) and the same paired ratio of process CPU time (at 1 thread,
insensitive to being descheduled by other load), then the process's peak memory (VmHWM, goal < 2 GB) and
the denoiser's own working memory on top of the data (VmHWM reset through /proc/self/clear_refs).

    python bench/optimal_denoiser.py [--threads 1,0] [--chunks 4096,16384,auto] [--repeats 5] [--out FILE]

``--threads 0`` means torch's default (the only setting off the CPU); ``auto`` in ``--chunks`` is the
denoiser's default chunk (``auto_chunk``: 64 MB of logits, the whole dataset at B = 256). Writes the printed
report to ``--out`` (results/bench/optimal_denoiser.txt by default; ``--out ''`` to skip).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from msrepro.empirical_denoiser import OptimalDenoiser, auto_chunk
from msrepro.io import atomic_write_text


def vm_kb(field: str) -> float:
    """A field of /proc/self/status (VmHWM: peak resident set, VmRSS: current), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def interleaved(fns: dict[str, Callable[[], object]], repeats: int,
                sync: Callable[[], None]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU seconds of each of ``repeats`` calls per function, one call each per round in a
    rotating order."""
    for fn in fns.values():  # warm-up: allocator, BLAS packing buffers, caches
        fn()
        sync()
    names = list(fns)
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            sync()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cpus"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-data", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=3_072)
    ap.add_argument("--batch", type=int, default=256, help="queries per call")
    ap.add_argument("--chunks", type=str, default="4096,16384,auto",
                    help="chunk sizes to compare (auto: the default, 64 MB of logits)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per thread setting")
    ap.add_argument("--threads", type=str, default="1,0", help="comma list of torch CPU threads; 0 = default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=str, default="results/bench/optimal_denoiser.txt")
    args = ap.parse_args(argv)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    default_threads = torch.get_num_threads()
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # count true fp32 flops on both sides
    t_start = time.perf_counter()
    say(f"# bench/optimal_denoiser.py, {datetime.now(timezone.utc):%Y-%m-%dT%H:%MZ}")
    say(f"$ python bench/{Path(__file__).name} {shlex.join(sys.argv[1:] if argv is None else argv)}")
    say(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"default {default_threads} threads, device {dev}")
    say(f"load average before: {loadavg()}")
    g = torch.Generator(device="cpu").manual_seed(0)
    n, d, b = args.n_data, args.dim, args.batch
    data = torch.rand(n, d, generator=g).mul_(2).sub_(1).to(dev)  # CIFAR-shaped random values in [-1, 1]
    queries = data[torch.randint(n, (b,), generator=g).to(dev)] + 0.5 * torch.randn(b, d, generator=g).to(dev)
    ref_out = torch.empty(b, n, device=dev)
    chunks = [auto_chunk(b, n) if c == "auto" else int(c) for c in args.chunks.split(",")]
    ods = {c: OptimalDenoiser(data, chunk_size=c) for c in chunks}  # share `data` (no copy); ||y||^2 cached
    say(f"data [{n}, {d}] float32 = {data.numel() * 4 / 2**20:.0f} MB; queries [{b}, {d}]; sigma 0.5; "
        f"{args.repeats} interleaved rounds per thread setting")

    rows: list[tuple[int, int, float]] = []  # (threads, chunk, median paired ratio)
    thread_settings = [int(t) for t in args.threads.split(",")] if dev.type == "cpu" else [0]
    for threads in thread_settings:
        torch.set_num_threads(threads or default_threads)
        fns: dict[str, Callable[[], object]] = {"matmul": lambda: torch.matmul(queries, data.T, out=ref_out)}
        fns.update({f"chunk {c}": (lambda od=od: od(queries, 0.5)) for c, od in ods.items()})
        times, cpu = interleaved(fns, args.repeats, sync)
        t_ref = statistics.median(times["matmul"])
        say(f"\n{torch.get_num_threads()} thread(s): torch.matmul [{b}, {d}] @ [{d}, {n}] (out=) median "
            f"{t_ref * 1e3:.1f} ms = {2.0 * b * n * d / t_ref / 1e9:.1f} GFLOP/s "
            f"(calls: {' '.join(f'{t * 1e3:.0f}' for t in times['matmul'])} ms)")
        say(f"{'chunk':>7} {'ms/call':>8} {'queries/s':>9} {'GFLOP/s':>8} {'ratio of medians':>16} "
            f"{'median paired ratio':>19} {'CPU-time paired':>15}  calls (ms)")
        for c in chunks:
            ts = times[f"chunk {c}"]
            t = statistics.median(ts)
            paired = statistics.median(2 * tr / to for tr, to in zip(times["matmul"], ts))
            paired_cpu = statistics.median(2 * tr / to for tr, to in zip(cpu["matmul"], cpu[f"chunk {c}"]))
            say(f"{c:>7} {t * 1e3:>8.1f} {b / t:>9.1f} {4.0 * b * n * d / t / 1e9:>8.1f} {2 * t_ref / t:>16.3f} "
                f"{paired:>19.3f} {paired_cpu:>15.3f}  {' '.join(f'{x * 1e3:.0f}' for x in ts)}")
            rows.append((threads, c, paired))
    torch.set_num_threads(default_threads)

    at_default = [r for r in rows if r[0] == 0] or [r for r in rows if r[0] == rows[-1][0]]  # torch's default threads
    threads, chunk, paired = max(at_default, key=lambda r: r[2])
    default_chunk = auto_chunk(b, n)
    shipped = [r for r in at_default if r[1] == default_chunk]
    if shipped:
        say(f"\nthe default chunk ({default_chunk}) at {shipped[0][0] or default_threads} thread(s): ratio to "
            f"torch.matmul {shipped[0][2]:.3f} (median paired; goal >= 0.9)")
    say(f"{'' if shipped else chr(10)}best chunk at {threads or default_threads} thread(s): {chunk}, ratio "
        f"{paired:.3f} (median paired)")
    if dev.type == "cuda":
        say(f"peak GPU memory: {torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MB")
    hwm = vm_kb("VmHWM")
    say(f"peak resident memory (VmHWM, whole process incl. torch, the {data.numel() * 4 / 2**20:.0f} MB data and "
        f"the {ref_out.numel() * 4 / 2**20:.0f} MB matmul output): {hwm:.0f} MB = {hwm / 1024:.2f} GB (goal < 2 GB)")
    fresh = OptimalDenoiser(data)  # the default chunk; allocates its workspace in the measured call
    rss = vm_kb("VmRSS")
    if reset_peak_rss():
        fresh(queries, 0.5)
        extra = vm_kb("VmHWM") - rss
        say(f"denoiser working memory on top of the data (default chunk {default_chunk}, B {b}; VmHWM after reset "
            f"minus VmRSS before): {extra:.1f} MB")
    say(f"load average after: {loadavg()}; bench wall time {time.perf_counter() - t_start:.0f} s")
    text = "\n".join(lines) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
    return text


if __name__ == "__main__":
    main()
