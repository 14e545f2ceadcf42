"""(After bench/multistage_swap_train.py) Swap test: FD-digits of unified, multistage, and hybrids (multistage decoder k only in its stage, unified elsewhere);
per-band held-out loss of both on the same bands; which decoder serves each sampler step."""
import torch, json
torch.set_num_threads(2)
from msrepro.checkpoint import load_model
from msrepro.training.state import latest_checkpoint
from msrepro.training.builders import heldout_images, noise_setup
from msrepro.training.heldout import heldout_set, heldout_losses
from msrepro.generation import generate
from msrepro.evaluation.scoring import plan, compute, image_dataset
from msrepro.evaluation.metrics import build_metrics, parse_params
from msrepro.evaluation.reference import refstats
from pathlib import Path
R = Path("/tmp/r10/runs")
uni, ucfg = load_model(latest_checkpoint(R / "dpm_unified"))
ms, mcfg = load_model(latest_checkpoint(R / "dpm_multistage"))
dens, pol = noise_setup(mcfg, ms)
hs = heldout_set(heldout_images(mcfg), pol, 1234)
print("bands (sigma):", ms.boundaries.sigma_intervals())
from msrepro.training.heldout import HeldoutSet
hu = HeldoutSet(hs.x0, hs.noise, hs.sigma, {k: None for k in hs.sigma})
print("unified    per band:", heldout_losses(uni, hu, 256, torch.device("cpu")))
print("multistage per band:", heldout_losses(ms, hs, 256, torch.device("cpu")))
class Hybrid(torch.nn.Module):
    def __init__(self, k): super().__init__(); self.k = k; self.schedule = ms.schedule
    num_stages = 3
    def stage_of(self, s): return ms.stage_of(s)
    def forward(self, x, sigma):
        st = ms.stage_of(sigma)
        return torch.where((st == self.k).view(-1, 1, 1, 1), ms(x, sigma), uni(x, sigma))
params = parse_params(ucfg.eval.params); chosen = build_metrics(["fd_digits"])
groups = plan(chosen, image_dataset(ucfg), params)
refs = [refstats(image_dataset(ucfg), ext, params=params, device="cpu") for ext, _ in groups]
class DS(torch.utils.data.Dataset):
    def __init__(self, imgs): self.imgs = imgs
    def __len__(self): return len(self.imgs)
    def __getitem__(self, i): return self.imgs[i]
steps = []
def fd(den, name, seeds=range(297)):
    gen = generate(den, ucfg.sample, (1, 8, 8), list(seeds), "cpu", progress=False)
    imgs = torch.cat([b.images for b in gen.batches()])
    u8 = ((imgs * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8))
    v = compute(DS(u8), chosen, groups, refs, params=params, num=len(u8))
    print(name, v, "nfe/stage", gen.nfe_per_stage, flush=True)
    return v
from msrepro.samplers import build_sampler
smp = build_sampler("dpm_solver", dict(ucfg.sample.params))
log = []
smp(ms, torch.randn(4, 1, 8, 8), ms.schedule, callback=lambda d: log.append((round(d["sigma"], 4), d["stage"], ms.last_stages.tolist())))
print("multistage steps (sigma, stage, last_stages):", log)
for name, den in [("unified", uni), ("multistage", ms), ("hyb0", Hybrid(0)), ("hyb1", Hybrid(1)), ("hyb2", Hybrid(2))]:
    fd(den, name)
