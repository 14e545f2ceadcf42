"""GPU acceptance: the CUDA, mixed-precision, DDP, FID and optimal-denoiser paths in one run (< 10 min, one GPU).

    bash bench/gpu_acceptance.sh                 # needs CUDA; writes results/bench/gpu.txt
    bash bench/gpu_acceptance.sh --cpu-dry-run   # every stage on CPU at toy sizes (plumbing only; writes nothing)

Stages, each timed, all through the project's own entry points (no reimplementation):
  train  ``msrepro.training.train`` on the full DPM-Solver and EDM presets, unified and multistage (bf16 autocast
         on CUDA, ``train.precision``); digits at the preset's resolution stands in for CIFAR-10 (not downloadable)
  ddp    ``torchrun --nproc_per_node 2 -m msrepro train`` (NCCL on one GPU, gloo on CPU); on one GPU NCCL may refuse
         two ranks on one device: then the stage says why and is skipped, not failed
  fid    FID (torch-fidelity, Inception) of samples of the trained multistage DPM-Solver model against reference
         statistics built from other samples of the same model (``msrepro.evaluation.reference.build_reference``)
  od     ``bench/optimal_denoiser.py`` on the device
Any failure exits non-zero naming the stage. ``MSREPRO_ACCEPTANCE_FAIL=<stage>`` makes that stage raise (tests).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from msrepro.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("train", "ddp", "fid", "od")
NO_CUDA = ("gpu_acceptance: no CUDA device (torch.cuda.is_available() is False); this script checks the GPU paths. "
           "Run it on a machine with a GPU, or use --cpu-dry-run to check the script's plumbing on CPU.")


class Skipped(Exception):
    """A stage that cannot run here (the reason is printed; not a failure)."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-dry-run", action="store_true", help="all stages on CPU at toy sizes; writes no results")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default 200; dry run 2)")
    p.add_argument("--num", type=int, default=None, help="FID samples, each side (default 5000; dry run 32)")
    p.add_argument("--out", type=Path, default=ROOT / "results/bench/gpu.txt")
    p.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages to run (of {','.join(STAGES)})")
    p.add_argument("--workdir", type=Path, default=None, help="run directories (default: a temporary folder)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only.split(",")) - set(STAGES))
    if unknown:
        p.error(f"unknown stage(s) {', '.join(unknown)} in --only; valid stages: {', '.join(STAGES)}")
    return args


def sizes(dry: bool, args: argparse.Namespace) -> dict:
    if dry:
        return {"preset": "smoke", "device": "cpu", "steps": args.steps or 2, "batch": 4, "num": args.num or 32,
                "metric": "digits", "precision": "fp32", "res": 8}
    return {"preset": "full", "device": "cuda:0", "steps": args.steps or 200, "batch": 128, "num": args.num or 5000,
            "metric": "inception", "precision": "bf16", "res": 32}


def items(s: dict, backbone: str, variant: str, workdir: Path, name: str) -> list[str]:
    return [f"model.backbone={backbone}", f"model.preset={s['preset']}", f"model.variant={variant}",
            "dataset.name=digits", f"dataset.resolution={s['res']}", f"train.steps={s['steps']}",
            f"train.batch_size={s['batch']}", f"train.precision={s['precision']}", "train.heldout_size=16",
            f"train.checkpoint_every={s['steps']}", f"train.log_every={max(1, s['steps'] // 4)}",
            f"device={s['device']}", f"output_dir={workdir}", f"name={name}"]


def peak_mb(device: str) -> str:
    if device.startswith("cuda"):
        mb = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        return f"peak GPU memory {mb:.0f} MB"
    with open("/proc/self/status") as f:
        hwm = next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")), float("nan"))
    return f"peak RSS {hwm:.0f} MB (process)"


def stage_train(s: dict, workdir: Path, out: list[str], ckpts: dict) -> None:
    from msrepro.runconfig import load_config
    from msrepro.training import train

    for backbone in ("dpm_solver", "edm"):
        for variant in ("unified", "multistage"):
            cfg = load_config([], items(s, backbone, variant, workdir, f"{backbone}-{variant}"))
            t0 = time.perf_counter()
            result = train(cfg, progress=False, fresh=True)
            dt = time.perf_counter() - t0
            ckpts[(backbone, variant)] = result.checkpoint
            out.append(f"train {backbone:<10} {variant:<10} {s['steps']} steps batch {s['batch']} "
                       f"{s['precision']}: {dt:.1f} s, {s['steps'] * s['batch'] / dt:.1f} images/s, "
                       f"held-out loss {result.metrics.get('heldout_loss', float('nan')):.4f}, {peak_mb(s['device'])}")


def stage_ddp(s: dict, workdir: Path, out: list[str]) -> None:
    s = {**s, "steps": min(s["steps"], 50)}  # the path, not the speed: a few steps
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "msrepro",
           "train", "--fresh", "--no-progress",
           *items(s, "dpm_solver", "multistage", workdir, "ddp-dpm_solver-multistage")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        text = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        one_gpu = s["device"].startswith("cuda") and torch.cuda.device_count() < 2
        if one_gpu and "Duplicate GPU" in proc.stdout + proc.stderr:
            raise Skipped("NCCL refuses two ranks on one GPU (Duplicate GPU detected); needs >= 2 GPUs:\n" + text)
        raise RuntimeError(f"torchrun exited {proc.returncode}:\n{text}")
    out.append(f"ddp   2 processes ({'nccl' if s['device'].startswith('cuda') else 'gloo'}) {s['steps']} steps "
               f"batch {s['batch']}/rank: {dt:.1f} s wall incl. start-up")


def samples(model, cfg, seeds: list[int], device: str) -> torch.Tensor:
    from msrepro.generation import generate, quantize
    from msrepro.models import data_shape

    c, r = data_shape(cfg)
    sample_cfg = {**cfg.sample, "batch_size": min(500, len(seeds))}
    return torch.cat([quantize(b).cpu() for b in generate(model, sample_cfg, (c, r, r), seeds, device,
                                                          progress=False)])


def stage_fid(s: dict, workdir: Path, out: list[str], ckpts: dict) -> None:
    from msrepro.checkpoint import load_model
    from msrepro.evaluation.scoring import compute
    from msrepro.evaluation.metrics import build_metrics, parse_params, resolve_extractor
    from msrepro.evaluation.reference import UInt8Images, build_reference

    ckpt = ckpts.get(("dpm_solver", "multistage"))
    if ckpt is None:
        raise RuntimeError("no trained dpm_solver multistage checkpoint (the train stage failed)")
    model, cfg = load_model(ckpt, map_location=s["device"])
    params = parse_params(cfg.eval.params)
    ext = resolve_extractor(s["metric"], cfg.dataset, params)  # Inception missing: a clear error, no download
    n = s["num"]
    t0 = time.perf_counter()
    ref = samples(model, cfg, list(range(10**6, 10**6 + n)), s["device"])
    gen = samples(model, cfg, list(range(n)), s["device"])
    t_sample = time.perf_counter() - t0
    folder = build_reference(UInt8Images(ref), workdir / "refstats", ext, {"dataset": "generated", "count": n},
                             device=s["device"])
    name = "fid" if s["metric"] == "inception" else "fd_digits"
    metrics = build_metrics(name)
    t1 = time.perf_counter()
    values = compute(UInt8Images(gen), metrics, [(ext, [name])], [folder], params=params, device=s["device"],
                     batch_size=250)
    t_fid = time.perf_counter() - t1
    out.append(f"fid   {name} of {n} samples vs {n} other samples of the same model ({ext.fidelity_name}): "
               f"{values}; sampling {2 * n / t_sample:.1f} images/s ({t_sample:.1f} s), features+FID {t_fid:.1f} s, "
               f"{peak_mb(s['device'])}")


def stage_od(s: dict, out: list[str]) -> None:
    small = ["--n-data", "2000", "--dim", "64", "--batch", "16", "--chunks", "512,1024", "--repeats", "1"]
    cmd = [sys.executable, str(ROOT / "bench/optimal_denoiser.py"), "--device", s["device"], "--out", "",
           *(small if s["device"] == "cpu" else [])]  # its figures go to gpu.txt, not the CPU record
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"bench/optimal_denoiser.py exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    out.extend("od    " + line for line in proc.stdout.strip().splitlines())


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    s = sizes(args.cpu_dry_run, args)
    fail = os.environ.get("MSREPRO_ACCEPTANCE_FAIL", "")
    load1, load5, _ = os.getloadavg()
    dev = torch.cuda.get_device_name(0) if not args.cpu_dry_run else "cpu (dry run)"
    out = [f"# bench/gpu_acceptance.py  {dev}  torch {torch.__version__}  {platform.node()}  "
           f"load {load1:.2f} / {load5:.2f}  {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"]
    print(out[0], flush=True)
    failed: list[str] = []
    ckpts: dict = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        runs = {"train": lambda: stage_train(s, workdir, out, ckpts), "ddp": lambda: stage_ddp(s, workdir, out),
                "fid": lambda: stage_fid(s, workdir, out, ckpts), "od": lambda: stage_od(s, out)}
        for name in [st for st in STAGES if st in args.only.split(",")]:
            n0, t0 = len(out), time.perf_counter()
            try:
                if fail == name:
                    raise RuntimeError(f"deliberate failure (MSREPRO_ACCEPTANCE_FAIL={name})")
                runs[name]()
                status = "ok"
            except Skipped as exc:
                status = f"SKIPPED: {exc}"
            except Exception:  # noqa: BLE001  every stage runs; the failures are reported together
                status = "FAILED:\n" + traceback.format_exc(limit=4)
                failed.append(name)
            out.append(f"stage {name}: {status} ({time.perf_counter() - t0:.1f} s)")
            print("\n".join(out[n0:]), flush=True)
    out.append(f"total {time.perf_counter() - t_all:.1f} s; " + (f"FAILED stages: {', '.join(failed)}" if failed
                                                                  else "all stages passed"))
    print(out[-1])
    if not args.cpu_dry_run:
        atomic_write_text(args.out, "\n".join(out) + "\n")
        print(f"wrote {args.out}")
    if failed:
        print(f"gpu_acceptance: FAILED stage(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
