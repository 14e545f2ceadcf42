"""Decoder swap test (issue 10, part 6): which stage's decoder makes a multistage model worse than its unified one.

    python bench/multistage_swap.py UNIFIED_RUN MULTISTAGE_RUN [--blocks 2] [--threads 1]

Both run directories are ``msrepro train`` outputs of the same backbone and dataset (e.g. ``bench/multistage_swap_train.py``
or two ``msrepro train`` calls with ``model.variant=unified`` / ``multistage``); their latest checkpoints are loaded
(EMA weights). Prints the held-out denoising loss of both on the multistage model's stage bands (same images, noise
and sigmas), which decoder serves each sampler step, and FD-digits of: the unified model, the multistage model, and
three hybrids ``hyb<k>`` = the multistage model inside stage k's band, the unified model elsewhere. The hybrids run
the same sampler on the same seeds, so the difference ``hyb<k> - unified`` is a paired comparison within a seed
block: a positive difference names a decoder that is worse than the unified network in its own band.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("unified", type=Path, help="run directory of the unified model")
    p.add_argument("multistage", type=Path, help="run directory of the multistage model")
    p.add_argument("--blocks", type=int, default=2, help="disjoint seed blocks of eval.num_samples samples")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


class Hybrid(torch.nn.Module):
    """The multistage denoiser on the samples whose sigma falls in stage ``k``, the unified one on the others."""

    def __init__(self, unified: torch.nn.Module, multistage: torch.nn.Module, k: int) -> None:
        super().__init__()
        self.unified, self.multistage, self.k = unified, multistage, k
        self.schedule, self.num_stages = multistage.schedule, multistage.num_stages

    def stage_of(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.multistage.stage_of(sigma)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kw) -> torch.Tensor:
        mine = (self.multistage.stage_of(sigma) == self.k).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(mine, self.multistage(x, sigma, **kw), self.unified(x, sigma, **kw))


def main(argv=None) -> None:
    from msrepro.checkpoint import load_model
    from msrepro.evaluation.metrics import build_metrics, parse_params
    from msrepro.evaluation.reference import UInt8Images, refstats
    from msrepro.evaluation.scoring import compute, image_dataset, plan
    from msrepro.generation import generate
    from msrepro.models import data_shape
    from msrepro.samplers import build_sampler
    from msrepro.training.builders import heldout_images, noise_setup
    from msrepro.training.heldout import HeldoutSet, heldout_losses, heldout_set
    from msrepro.training.state import latest_checkpoint

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    uni, ucfg = load_model(latest_checkpoint(args.unified))
    ms, mcfg = load_model(latest_checkpoint(args.multistage))
    if mcfg.dataset.name == "latents":  # a Hybrid is no Preconditioning: generate() would not decode its latents
        raise SystemExit("bench/multistage_swap.py: pixel-space models only (dpm_solver, edm); this run trains on "
                         "latents (ldm)")
    channels, res = data_shape(mcfg)
    print(f"unified {latest_checkpoint(args.unified)}\nmultistage {latest_checkpoint(args.multistage)}")
    print("stage bands (sigma):", [tuple(round(v, 4) for v in b) for b in ms.boundaries.sigma_intervals()])

    _, policy = noise_setup(mcfg, ms)
    held = heldout_set(heldout_images(mcfg), policy, 1234)
    as_unified = HeldoutSet(held.x0, held.noise, held.sigma, {k: None for k in held.sigma})
    print("held-out loss per band, unified:   ", heldout_losses(uni, as_unified, 256, torch.device("cpu")))
    print("held-out loss per band, multistage:", heldout_losses(ms, held, 256, torch.device("cpu")))

    log: list[tuple[float, int]] = []
    build_sampler(mcfg.sample.sampler, dict(mcfg.sample.params))(
        ms, torch.randn(4, channels, res, res), ms.schedule,
        callback=lambda d: log.append((round(float(d["sigma"]), 4), int(d["stage"]))))
    print("sampler steps (sigma, stage served):", log)

    params, chosen = parse_params(ucfg.eval.params), build_metrics(["fd_digits"])
    groups = plan(chosen, image_dataset(ucfg), params)
    refs = [refstats(image_dataset(ucfg), ext, params=params, device="cpu") for ext, _ in groups]
    n = int(ucfg.eval.num_samples)
    models = {"unified": uni, "multistage": ms, **{f"hyb{k}": Hybrid(uni, ms, k) for k in range(ms.num_stages)}}
    rows: dict[str, list[float]] = {name: [] for name in models}
    for b in range(args.blocks):
        for name, den in models.items():
            gen = generate(den, ucfg.sample, (channels, res, res), list(range(b * n, (b + 1) * n)), "cpu",
                           progress=False)
            images = torch.cat([batch.images for batch in gen.batches()])
            u8 = (images * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
            rows[name].append(compute(UInt8Images(u8), chosen, groups, refs, params=params)["fd_digits"])
    print(f"\nFD-digits, {n} samples per block (seeds 0-{args.blocks * n - 1}); paired difference to unified")
    for name, vals in rows.items():
        diff = "" if name == "unified" else "  diff " + " | ".join(f"{v - u:+7.1f}" for v, u in zip(vals, rows["unified"]))
        print(f"  {name:<11}" + " | ".join(f"{v:7.1f}" for v in vals) + diff)


if __name__ == "__main__":
    main()
