"""Sampling throughput of the unified and the multistage model at the same NFE, next to the GMACs ratio.

    python bench/sampling.py                                    # dpm_solver, tiny preset, 20 NFE: both modes
    python bench/sampling.py --preset full --mode calls --batch 64 --rounds 4 --append   # full size, per call

Both models are built in one run and timed side by side. The expected speed ratio of the multistage model is
GMACs(unified) / GMACs(multistage, weighted by this sampler's NFE per stage) from ``msrepro.flops.accounting``
(below 1 where the multistage model costs more per call); the measured one is images/s(multistage) /
images/s(unified). Two modes:

- ``sample``: whole sampler runs (DPM-Solver-3, 20 NFE by default) on the same seeds, the models taking turns
  batch by batch; images/s from the median batch time.
- ``calls``: one denoiser call per stage at a noise level inside that stage (the midpoint of its interval in
  schedule time), batch ``--batch``, in rotating rounds (unified, stage 0, stage 1, stage 2; then stage 0, ...):
  what one sampler step costs, without running 20 NFE of an ~18 GMAC network. The unified net is timed once per
  round (its work does not depend on the noise level). Seconds per image of the sampler = sum_k NFE_k t_k / batch,
  with the same NFE per stage as the GMACs ratio; the per-stage rows compare each stage's time ratio to its
  GMACs ratio. Wall and process-CPU time are both reported (CPU time at ``--threads 1`` is not inflated by other
  load on the machine).

Small models on a CPU are dominated by per-layer overheads (a fixed cost per op whatever its width), not MACs, so
at the tiny preset the measured ratio tracks the GMACs ratio only loosely; at the full preset it should not.
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

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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
    p.add_argument("--mode", choices=("sample", "calls", "both"), default="both")
    p.add_argument("--rounds", type=int, default=3, help="calls mode: timed rounds (after one warm-up call each)")
    p.add_argument("--warmup-batch", type=int, default=None,
                   help="calls mode: batch of the warm-up calls (default: --batch; a small warm-up leaves the "
                        "allocator cold for the first full-size call: 2026-12-03 the identical unified and "
                        "stage-1 networks timed 1.17x apart at full size)")
    p.add_argument("--out", type=lambda v: Path(v) if v else None, default=Path("results/bench/sampling.txt"),
                   help="report file ('': none)")
    p.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
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


def stage_sigmas(model) -> list[float]:
    """One noise level per stage: the midpoint of the stage's interval in schedule time."""
    return [float(model.schedule.sigma(torch.tensor((lo + hi) / 2, dtype=torch.float64)))
            for lo, hi in model.boundaries.intervals()]


class _OpCounter(TorchDispatchMode):
    """Counts the ATen ops one call dispatches (each a fixed per-op cost on the CPU, whatever its width)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def ops_per_call(model, x: torch.Tensor, sigma: float) -> int:
    with torch.no_grad(), _OpCounter() as counter:
        model(x, torch.full((x.shape[0],), sigma, device=x.device))
    return counter.count


def timed_calls(models: dict, args: argparse.Namespace, device: str, sigmas: list[float]) -> dict:
    """Wall and process-CPU seconds per round of each (model, stage) denoiser call, in rotating order."""
    from msrepro.models import data_shape

    (_, cfg), = [models["unified"]]
    c, r = data_shape(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, c, r, r, generator=g).to(device)
    calls = {("unified", 0): (models["unified"][0], sigmas[0])}
    calls.update({("multistage", k): (models["multistage"][0], s) for k, s in enumerate(sigmas)})
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: dict = {key: {"wall": [], "cpu": [], "ops": ops_per_call(m, x[:1], s)} for key, (m, s) in calls.items()}
    with torch.no_grad():
        for key, (model, sigma) in calls.items():  # warm-up: kernels, allocator
            wb = args.warmup_batch or args.batch
            model(x[:wb] * (1 + sigma), torch.full((wb,), sigma, device=device))
            if key[0] == "multistage":
                assert int(model.last_stages[0]) == key[1], (key, model.last_stages)  # routed to stage k
        keys = list(calls)
        for rnd in range(args.rounds):
            k = rnd % len(keys)
            for key in keys[k:] + keys[:k]:
                model, sigma = calls[key]
                xs, sig = x * (1 + sigma), torch.full((args.batch,), sigma, device=device)
                sync()
                start, start_cpu = time.perf_counter(), time.process_time()
                model(xs, sig)
                sync()
                times[key]["wall"].append(time.perf_counter() - start)
                times[key]["cpu"].append(time.process_time() - start_cpu)
    return times


def calls_report(models: dict, args: argparse.Namespace, device: str) -> list[str]:
    """The calls-mode table and ratios (see the module docstring)."""
    from tabulate import tabulate

    from msrepro.flops import accounting

    sigmas = stage_sigmas(models["multistage"][0])
    times = timed_calls(models, args, device, sigmas)
    acc = {v: accounting(cfg) for v, (_, cfg) in models.items()}
    nfe = acc["multistage"]["nfe_per_stage"]
    g_uni, g_ms = acc["unified"]["gmacs"][0], acc["multistage"]["gmacs"]
    med = {key: {kind: statistics.median(t[kind]) for kind in ("wall", "cpu")} for key, t in times.items()}
    rows = [["unified", "all", "-", str(times["unified", 0]["ops"]), f"{g_uni:.3f}", "1.000", f"{med['unified', 0]['wall'] * 1e3:.0f}",
             f"{med['unified', 0]['cpu'] * 1e3:.0f}", "1.000", "1.000",
             f"{acc['unified']['gflops'][0] * args.batch / med['unified', 0]['wall']:.1f}",
             " ".join(f"{t:.2f}" for t in times["unified", 0]["wall"])]]
    for k, sigma in enumerate(sigmas):
        m = med["multistage", k]
        rows.append(["multistage", f"{k} (sigma {sigma:.3g})", str(nfe[k]), str(times["multistage", k]["ops"]),
                     f"{g_ms[k]:.3f}",
                     f"{g_ms[k] / g_uni:.3f}", f"{m['wall'] * 1e3:.0f}", f"{m['cpu'] * 1e3:.0f}",
                     f"{m['wall'] / med['unified', 0]['wall']:.3f}", f"{m['cpu'] / med['unified', 0]['cpu']:.3f}",
                     f"{acc['multistage']['gflops'][k] * args.batch / m['wall']:.1f}",
                     " ".join(f"{t:.2f}" for t in times["multistage", k]["wall"])])

    def per_image(kind: str, rnd: int | None = None) -> tuple[float, float]:
        pick = (lambda ts: statistics.median(ts)) if rnd is None else (lambda ts: ts[rnd])
        uni = sum(nfe) * pick(times["unified", 0][kind]) / args.batch
        ms = sum(n * pick(times["multistage", k][kind]) for k, n in enumerate(nfe)) / args.batch
        return uni, ms

    gmacs_ratio = g_uni / nfe_weighted_gmacs(g_ms, nfe)
    lines = [tabulate(rows, headers=["model", "stage", "NFE", "ops/call", "GMACs", "GMACs / unified", "ms/call (wall)",
                                     "ms/call (CPU)", "time / unified (wall)", "time / unified (CPU)",
                                     "GFLOP/s (wall)", "call times (s)"], disable_numparse=True), ""]
    for kind in ("wall", "cpu"):
        uni, ms = per_image(kind)
        paired = statistics.median(per_image(kind, r)[0] / per_image(kind, r)[1] for r in range(args.rounds))
        lines.append(f"{kind:>4} time: sampler s/image (sum_k NFE_k t_k / batch) unified {uni:.3f}, multistage "
                     f"{ms:.3f}; speed ratio multistage / unified {uni / ms:.3f} (median of per-round paired "
                     f"ratios {paired:.3f})")
    # t = a + b GMACs over the four calls: a is the part of a call that does not scale with MACs (per-op overhead)
    gm = [g_uni, *g_ms]
    for kind in ("wall", "cpu"):
        ts = [med["unified", 0][kind], *(med["multistage", k][kind] for k in range(len(sigmas)))]
        mean_g, mean_t = statistics.fmean(gm), statistics.fmean(ts)
        slope = sum((g - mean_g) * (t - mean_t) for g, t in zip(gm, ts)) / sum((g - mean_g) ** 2 for g in gm)
        icpt = mean_t - slope * mean_g
        lines.append(f"{kind:>4} time: least-squares t = a + b GMACs over the four calls: a = {icpt * 1e3:.0f} ms "
                     f"(the MAC-independent part: {icpt / ts[0]:.0%} of a unified call), b = "
                     f"{slope * 1e3:.1f} ms per GMAC of one sample, at this batch")
    # a stage whose decoder is the unified decoder's width runs the same network: its time ratio is pure noise
    for k in (k for k, g in enumerate(g_ms) if abs(g / g_uni - 1) < 1e-3):
        lines.append(f"same network: multistage stage {k} has the unified model's GMACs (its decoder is 1.0x); its "
                     f"time / unified: wall {med['multistage', k]['wall'] / med['unified', 0]['wall']:.3f}, CPU "
                     f"{med['multistage', k]['cpu'] / med['unified', 0]['cpu']:.3f} (1 up to this measurement's noise)")
    lines.append(f"expected from GMACs unified / multistage (NFE-weighted {' / '.join(map(str, nfe))}): "
                 f"{gmacs_ratio:.3f}")
    for kind in ("wall", "cpu"):
        uni, ms = per_image(kind)
        lines.append(f"measured ({kind} time, medians) / expected: {uni / ms / gmacs_ratio:.3f} (goal: within 10 %)")
    return lines


def nfe_weighted_gmacs(gmacs: list[float], nfe_per_stage: list[int]) -> float:
    """Mean GMACs per denoiser call over this sampler's calls: sum_k NFE_k GMACs_k / NFE."""
    return sum(g * n for g, n in zip(gmacs, nfe_per_stage)) / sum(nfe_per_stage)


def sample_report(models: dict, args: argparse.Namespace, device: str) -> list[str]:
    """The sample-mode table and ratios: whole sampler runs, batch by batch in turns."""
    from tabulate import tabulate

    from msrepro.flops import accounting

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
    return [f"sample mode: {args.sampler} ({infos['unified']['nfe']} NFE), {args.batches} timed batches per model",
            tabulate(rows, headers=["model", "params (M)", "GMACs per stage", "NFE per stage",
                                    "NFE-weighted GMACs", "images/s (median)", "batch times (s)"],
                     disable_numparse=True),
            "",
            f"measured speed ratio multistage / unified (images/s):     {speedup:.3f}",
            f"expected from GMACs unified / multistage (NFE-weighted):  {gmacs_ratio:.3f}",
            f"measured / expected: {speedup / gmacs_ratio:.3f}"]


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" (1/5/15 min) on {os.cpu_count()} cpus"


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    start = time.perf_counter()
    hw = torch.cuda.get_device_name(0) if device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    lines = [f"# {datetime.now(timezone.utc):%Y-%m-%dT%H:%MZ} $ python bench/sampling.py "
             f"{shlex.join(sys.argv[1:] if argv is None else argv)}",
             f"bench/sampling.py: {args.backbone} preset {args.preset}, batch {args.batch}; device {device} ({hw}); "
             f"torch {torch.__version__}; load average before {loadavg()}"]
    models = {variant: build(args, variant) for variant in VARIANTS}
    if args.mode in ("sample", "both"):
        lines += sample_report(models, args, device) + [""]
    if args.mode in ("calls", "both"):
        lines += [f"calls mode: one denoiser call per stage, batch {args.batch}, {args.rounds} rotating rounds"]
        lines += calls_report(models, args, device) + [""]
    lines.append(f"load average after {loadavg()}; bench wall time {time.perf_counter() - start:.0f} s")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        from msrepro.io import atomic_write_text

        old = args.out.read_text() + "\n" if args.append and args.out.is_file() else ""
        atomic_write_text(args.out, old + text)
    return text


if __name__ == "__main__":
    main()
