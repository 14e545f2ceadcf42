"""Evaluated images per second: streaming samples into torch-fidelity vs writing PNGs, then torch-fidelity on the folder.

    python bench/evaluation.py                                   # a random-init smoke digits model, 500 images, CPU
    python bench/evaluation.py --checkpoint runs/x/checkpoints/ckpt-00001500.pt --num 1000 --metrics fd_digits,kid

Both paths are measured in one run on the same checkpoint, seeds and sampler, after the reference statistics and
the digits classifier are cached (a warm-up evaluation), in alternating order (stream, png, stream, png ...).
Both include sampling; the PNG path adds encoding/writing the files and decoding them again. The metric values of
the two paths must agree (same uint8 pixels), which the bench prints as a check.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="default: a random-init model of --preset")
    p.add_argument("--preset", default="smoke", help="dpm_solver preset for the random-init model")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--metrics", default="fd_digits")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per path (alternating)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("results/bench/evaluation.txt"))
    return p.parse_args(argv)


def random_checkpoint(preset: str, folder: Path) -> Path:
    from msrepro.checkpoint import save_checkpoint
    from msrepro.config import to_dict
    from msrepro.runconfig import load_config
    from msrepro.models import build_denoiser

    cfg = load_config([], ["model.backbone=dpm_solver", f"model.preset={preset}"])
    torch.manual_seed(0)
    model = build_denoiser(cfg)
    return save_checkpoint(folder / "ckpt-00000000.pt", {"step": 0, "config": to_dict(cfg), "model": model.state_dict(),
                                                         "ema": None, "optimizer": None, "extra": {}})


def png_path(ckpt: Path, args, sample: dict, folder: Path) -> tuple[float, dict]:
    """Sample -> PNG files -> torch-fidelity on the folder; returns (seconds, metrics)."""
    import torch_fidelity

    from msrepro.checkpoint import load_model
    from msrepro.evaluation.scoring import plan
    from msrepro.evaluation.metrics import build_metrics, parse_params
    from msrepro.evaluation.reference import REF, CachedReference, refstats
    from msrepro.models import data_shape
    from msrepro.generation import PNGWriter, generate

    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    model, cfg = load_model(ckpt, map_location=args.device)
    c, r = data_shape(cfg)
    writer = PNGWriter(folder)
    for b in generate(model, sample, (c, r, r), list(range(args.num)), args.device, progress=False).batches():
        writer.write(b.seeds, b.images)
    metrics = build_metrics(args.metrics)
    params = parse_params(cfg.eval.params)
    values = {}
    for ext, names in plan(metrics, cfg.dataset, params):
        ref = refstats(cfg.dataset, ext, params=params)
        out = torch_fidelity.calculate_metrics(
            input1=str(folder), input2=CachedReference(ref), input2_cache_name=REF, cache_root=str(ref),
            fid="fid" in {metrics[n].flag for n in names}, kid="kid" in names, prc="prc" in names,
            kid_subset_size=min(1000, args.num), cuda=args.device.startswith("cuda"), batch_size=args.batch,
            verbose=False, save_cpu_ram=True, **ext.fidelity_kwargs())
        for n in names:
            values.update(metrics[n].read(out))
    return time.perf_counter() - t0, values


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from msrepro.evaluation import evaluate_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="msrepro-bench-eval-"))
    try:
        ckpt = args.checkpoint or random_checkpoint(args.preset, tmp)
        sample = {"sampler": "dpm_solver", "params": {"nfe": args.nfe}, "batch_size": args.batch}
        kw = dict(metrics=args.metrics, sample=sample, device=args.device, progress=False)
        evaluate_checkpoint(ckpt, num=min(args.num, 16), **kw)  # warm-up: classifier + reference statistics
        times = {"stream": [], "png": []}
        values = {}
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            values["stream"] = evaluate_checkpoint(ckpt, num=args.num, **kw)["metrics"]
            times["stream"].append(time.perf_counter() - t0)
            dt, values["png"] = png_path(ckpt, args, sample, tmp / "png")
            times["png"].append(dt)
        lines = [f"# bench/evaluation.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
                 f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                 f"torch threads {torch.get_num_threads()}, device {args.device}",
                 f"# checkpoint {args.checkpoint or f'random-init dpm_solver {args.preset}'}; {args.num} images, "
                 f"DPM-Solver {args.nfe} NFE, batch {args.batch}, metrics {args.metrics}, {args.rounds} rounds",
                 f"{'path':8s} {'median s':>9s} {'images/s':>9s}  metrics"]
        for path in ("stream", "png"):
            med = statistics.median(times[path])
            vals = " ".join(f"{k}={v:.6g}" for k, v in values[path].items())
            lines.append(f"{path:8s} {med:9.2f} {args.num / med:9.1f}  {vals}")
        ratio = statistics.median(times["png"]) / statistics.median(times["stream"])
        lines.append(f"stream speed-up over png: {ratio:.2f}x; metrics equal: "
                     f"{all(abs(values['stream'][k] - values['png'][k]) <= 1e-6 * max(1.0, abs(values['png'][k])) for k in values['png'])}")
        text = "\n".join(lines)
        print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
