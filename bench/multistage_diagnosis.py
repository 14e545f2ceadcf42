"""Diagnose multistage vs unified at the tiny recipe: per-band held-out error, decoder per sampler step, hybrids."""
import json, math, sys, time
import numpy as np
import torch
from scipy import linalg

from msrepro.runconfig import load_config
from msrepro.training.distributed import DistInfo
from msrepro.training.loop import Trainer
from msrepro.generation import StackedRandomGenerator
from msrepro.samplers import build_sampler
from msrepro.datasets import build_dataset
from msrepro.evaluation.digits_classifier import ensure_classifier, load_classifier

torch.set_num_threads(1)
OUT = "/tmp/recipe10_diag/runs"
BACKBONE = sys.argv[1] if len(sys.argv) > 1 else "dpm_solver"
STEPS = int(sys.argv[2]) if len(sys.argv) > 2 else 800
COMMON = {
    "dpm_solver": ["dataset.resolution=8", "model.encoder_channels=32", "model.decoder_channels=[48,32,4]",
                   "model.params.channel_mult=[1,2]", "model.params.num_blocks=1", "model.params.attn_resolutions=[4]",
                   "model.params.dropout=0.0", "stages.boundaries=[0.176,0.626]", "stages.boundaries_schedule=vp_linear",
                   "train.lr=2e-3", "train.warmup_steps=50", "train.stage_policy=per_sample"],
    "edm": ["dataset.resolution=8", "model.encoder_channels=32", "model.decoder_channels=[48,32,4]",
            "model.params.channel_mult=[1,2]", "model.params.num_blocks=1", "model.params.attn_resolutions=[4]",
            "model.params.dropout=0.0", "train.lr=2e-3", "train.warmup_steps=50", "train.stage_policy=per_sample",
            "train.params.stage_weights=density", "model.params.augment_dim=0"],
}[BACKBONE]


def make(variant):
    items = [f"model.backbone={BACKBONE}", "model.preset=tiny", f"model.variant={variant}", f"output_dir={OUT}",
             f"name={BACKBONE}_{variant}", f"train.steps={STEPS}", "train.batch_size=128", "device=cpu",
             "train.heldout_every=200", "train.checkpoint_every=100000", *COMMON]
    if variant == "unified":
        items.append("stages.num_stages=1")
    return Trainer(load_config([], items), DistInfo())


def train(tr):
    t0 = time.time()
    tr.evaluate()
    while tr.step < tr.cfg.train.steps:
        tr.train_step(tr.step); tr.step += 1
        if tr.step % 200 == 0:
            rec = tr.evaluate(); print(tr.cfg.name, tr.step, rec["heldout_loss"], rec.get("heldout_loss_ema"), flush=True)
    print(tr.cfg.name, "train s", time.time() - t0, flush=True)
    return tr.ema.module.eval()


@torch.no_grad()
def band_errors(model, x0, sig_edges, n_per=4):
    """mean eps-MSE (loss) and x0-MSE per log-sigma band, fixed noise."""
    g = torch.Generator().manual_seed(123)
    res = []
    for lo, hi in zip(sig_edges[:-1], sig_edges[1:]):
        el, ex = [], []
        for _ in range(n_per):
            u = torch.rand(x0.shape[0], generator=g, dtype=torch.float64)
            sigma = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).float()
            noise = torch.randn(x0.shape, generator=g)
            x = x0 + sigma.view(-1, 1, 1, 1) * noise
            d = model(x, sigma)
            f = model.network_output(x, sigma); tgt = model.network_target(x, x0, sigma)
            el.append((f - tgt).pow(2).flatten(1).mean(1)); ex.append((d - x0).pow(2).flatten(1).mean(1))
        res.append((float(torch.cat(el).mean()), float(torch.cat(ex).mean())))
    return res


class Hybrid(torch.nn.Module):
    """Stage k (in the multistage model's routing) served by model `other`, the rest by `base`."""
    def __init__(self, base, other, k):
        super().__init__(); self.base, self.other, self.k = base, other, k
        self.num_stages, self.schedule = base.num_stages, base.schedule
    def stage_of(self, s): return self.base.stage_of(s)
    def forward(self, x, sigma):
        st = int(self.base.stage_of(sigma)[0])
        return (self.other if st == self.k else self.base)(x, sigma)


def feats_of(images, clf):
    with torch.no_grad():
        return clf.forward_features(images.float().clamp(-1, 1))[0].double().numpy()


def fd(a, b):
    mu1, mu2 = a.mean(0), b.mean(0); s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cs, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * cs.real))


def sample(model, cfg, seeds, callback=None):
    sampler = build_sampler(cfg.sample.sampler, dict(cfg.sample.params))
    rng = StackedRandomGenerator(seeds)
    noise = rng.randn([len(seeds), 1, 8, 8])
    x, info = sampler(model, noise, model.schedule, callback=callback, generator=rng)
    return x.clamp(-1, 1), info


if __name__ == "__main__":
    U, M = make("unified"), make("multistage")
    print("cuts", M.model.boundaries.cuts, "sigma intervals", M.model.boundaries.sigma_intervals(), flush=True)
    mu, mm = train(U), train(M)
    torch.save({"u": mu.state_dict(), "m": mm.state_dict()}, f"{OUT}/{BACKBONE}_ema.pt")
    test = build_dataset({**dict(U.cfg.dataset), "split": "test", "hflip": False}).tensor().float()
    trainset = build_dataset({**dict(U.cfg.dataset), "split": "train", "hflip": False}).tensor().float()
    sched = U.model.schedule
    smin, smax = max(sched.sigma_min, 2e-3), sched.sigma_max
    edges = list(np.exp(np.linspace(math.log(smin), math.log(smax), 9)))
    bu, bm = band_errors(mu, test, edges), band_errors(mm, test, edges)
    print("band sigma_lo sigma_hi stage | loss U  loss M | x0mse U  x0mse M")
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        st = int(M.model.stage_of(torch.tensor([math.sqrt(lo * hi)]))[0])
        print(f"{i} {lo:9.4f} {hi:9.3f} {st} | {bu[i][0]:.5f} {bm[i][0]:.5f} | {bu[i][1]:.5f} {bm[i][1]:.5f}")
    steps = []
    sample(mm, M.cfg, list(range(4)), callback=lambda d: steps.append((d["i"], round(d["sigma"], 4), d["stage"],
                                                                       int(mm.last_stages[0]))))
    print("sampler steps (i, sigma, stage reported, stage served last call):", steps)
    clf, _ = load_classifier(ensure_classifier(8))
    clf.eval()
    ref = feats_of(trainset * 2 - 1 if trainset.min() >= 0 else trainset, clf)
    print("data range", float(trainset.min()), float(trainset.max()))
    print("floor FD test vs train:", fd(feats_of(test * 2 - 1 if test.min() >= 0 else test, clf), ref))
    cands = {"unified": mu, "multistage": mm, **{f"M_with_U_stage{k}": Hybrid(mm, mu, k) for k in range(3)}}
    for name, m in cands.items():
        vals = []
        for blk in range(3):
            x, info = sample(m, M.cfg, list(range(blk * 297, (blk + 1) * 297)))
            vals.append(fd(feats_of(x, clf), ref))
        print(f"FD {name:18s} {np.mean(vals):8.2f} +- {np.std(vals, ddof=1):6.2f}  nfe/stage {info['nfe_per_stage']}", flush=True)
