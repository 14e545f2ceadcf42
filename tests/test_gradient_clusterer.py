"""The gradient clusterer on a tiny registered backbone (defined here) and real digits batches."""

import numpy as np
import pytest
import torch
from torch import nn

from msrepro.backbones.base import Backbone
from msrepro.checkpoint import save_checkpoint
from msrepro.clustering import ClusterInputs, build_clusterer
from msrepro.clustering.dp import affinity_cost, grid_limits, split
from msrepro.clustering.gradient import noise_for
from msrepro.config import ConfigError, to_dict
from msrepro.runconfig import load_config
from msrepro.models import build_denoiser
from msrepro.multidecoder import EncoderOutput
from msrepro.registry import BACKBONES
from msrepro.schedules import VPLinearSchedule

BACKBONE = "tiny_conv_for_gradient_tests"
GRID = 8


class TinyEncoder(nn.Module):
    def __init__(self, ch, in_ch):
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.emb = nn.Linear(1, ch)
        self.down = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, c_noise, **cond):
        e = self.emb(c_noise.reshape(-1, 1))
        h0 = torch.relu(self.conv_in(x) + e[:, :, None, None])
        return EncoderOutput(torch.relu(self.down(h0)), [h0], e)


class TinyDecoder(nn.Module):
    def __init__(self, enc_ch, ch, out_ch):
        super().__init__()
        self.up = nn.ConvTranspose2d(enc_ch, ch, 4, stride=2, padding=1)
        self.drop = nn.Dropout(0.0)
        self.out = nn.Conv2d(ch + enc_ch, out_ch, 3, padding=1)

    def forward(self, f):
        return self.out(torch.cat([self.drop(torch.relu(self.up(f.h))), f.skips[0]], 1))


class TinyConv(Backbone):
    """A two-level conv U-Net of a few hundred parameters (tests only)."""

    presets = {"tiny": {"model": {"encoder_channels": 4}, "dataset": {"resolution": 8}}}

    def build_encoder(self, params, channels, in_channels, resolution):
        return TinyEncoder(channels, in_channels)

    def build_decoder(self, params, encoder_channels, channels, out_channels, resolution, stage):
        return TinyDecoder(encoder_channels, channels, out_channels)


if BACKBONE not in BACKBONES:
    BACKBONES.register(BACKBONE, TinyConv())

OVERRIDES = [f"model.backbone={BACKBONE}", "model.variant=unified", "dataset.name=digits"]


def run_config():
    return load_config([], OVERRIDES, validate=False)


def fit(checkpoints=(), batch_size=16, seed=0, k=3):
    inputs = ClusterInputs(run_config=run_config(), checkpoints=list(checkpoints), device="cpu", seed=seed,
                           progress=False)
    clusterer = build_clusterer("gradient", {"grid": GRID, "batch_size": batch_size})
    return clusterer.fit(VPLinearSchedule(), inputs, k), inputs


def manual_affinity(model, x0, seed):
    """Cosine similarity of per-timestep gradients, recomputed by hand: eps-matching loss, autograd.grad."""
    sched = VPLinearSchedule()
    t = torch.tensor([(i + 1) / GRID for i in range(GRID)], dtype=torch.float64)
    grads = []
    for i, sigma in enumerate(sched.sigma(t).float()):
        eps = noise_for(i, x0.shape, seed)
        x = x0 + sigma * eps
        c_in = 1 / torch.sqrt(1 + sigma**2)
        t_in = torch.full((x0.shape[0],), float(t[i]))
        pred = model.net(c_in * x, t_in)  # EpsPrecond: F(c_in x, t) predicts eps
        loss = ((pred - eps) ** 2).flatten(1).mean(1).mean()
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]))
    g = torch.stack(grads).double()
    g = g / g.norm(dim=1, keepdim=True)
    return (g @ g.T).numpy()


def test_random_init_affinity_matches_a_manual_recomputation():
    r, inputs = fit()
    x0 = inputs.training_batch(16)
    assert x0.shape == (16, 1, 8, 8) and x0.min() < -0.9 and x0.max() > 0.9  # a real batch in [-1, 1]
    assert len(torch.unique(x0.flatten(1), dim=0)) == 16, "one real batch of distinct images, not one image"
    torch.manual_seed(0)
    model = build_denoiser(run_config())
    aff = np.array(r.diagnostics["matrix"]["values"])
    assert np.allclose(aff, manual_affinity(model, x0, seed=0), atol=1e-5)
    assert np.allclose(np.diag(aff), 1.0) and np.allclose(aff, aff.T)
    part = split(affinity_cost(aff), 3, grid_limits(GRID, 3))
    t = np.arange(1, GRID + 1) / GRID
    assert r.boundaries == pytest.approx(t[list(part.starts[1:])].tolist())
    assert r.diagnostics["batch_size"] == 16 and r.diagnostics["models"] == ["random-init"]


def test_checkpoints_are_averaged(tmp_path):
    cfg = run_config()
    paths, single = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = build_denoiser(cfg)
        path = tmp_path / f"ckpt-{seed}.pt"
        save_checkpoint(path, {"step": seed, "config": to_dict(cfg), "model": model.state_dict(), "ema": None})
        paths.append(path)
        single.append(np.array(fit([path])[0].diagnostics["matrix"]["values"]))
    both, _ = fit(paths)
    assert both.diagnostics["models"] == [str(p) for p in paths]
    assert np.allclose(both.diagnostics["matrix"]["values"], (single[0] + single[1]) / 2, atol=1e-9)
    assert not np.allclose(single[0], single[1]), "different weights must give different affinities"
    # the run config can come from the checkpoint itself
    inputs = ClusterInputs(checkpoints=[str(paths[0])], device="cpu", progress=False)
    alone = build_clusterer("gradient", {"grid": GRID, "batch_size": 16}).fit(VPLinearSchedule(), inputs, 3)
    assert np.allclose(alone.diagnostics["matrix"]["values"], single[0], atol=1e-9)


# -- the official size limits (cluster.py), on a fixed affinity matrix ------------------------------------------
def fixed_affinity() -> np.ndarray:
    """20 grid points in blocks of 9 / 3 / 3 / 3 / 2 (within 0.9, across 0.1, diagonal 1), lightly perturbed."""
    labels = np.repeat(np.arange(5), [9, 3, 3, 3, 2])
    aff = np.where(labels[:, None] == labels[None, :], 0.9, 0.1)
    aff = aff + 0.02 * np.sin(np.arange(20)[:, None] * 2.3 + np.arange(20)[None, :] * 1.1)
    aff = (aff + aff.T) / 2
    np.fill_diagonal(aff, 1.0)
    return aff


def brute_force_split(aff, k, first, others):
    """Every split of the grid into k contiguous clusters whose first size lies in ``first`` and the others in
    ``others`` ((lo, hi), hi None = no limit); each costs -sum_j aff[centre, j] with centre the upper median. Returns
    the cheapest start tuple and its margin to the runner-up."""
    import itertools

    n, scored = aff.shape[0], []
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = list(zip((0, *cuts), (*cuts, n)))
        sizes = [b - a for a, b in bounds]
        ok = [lo <= s <= (hi or n) for s, (lo, hi) in zip(sizes, [first] + [others] * (k - 1))]
        if all(ok):
            scored.append((sum(-aff[a + (b - a) // 2, a:b].sum() for a, b in bounds), (0, *cuts)))
    scored.sort()
    return scored[0][1], scored[1][0] - scored[0][0]


def test_gradient_dp_uses_the_official_size_limits_by_default():
    """cluster.py: the first cluster has no upper limit and >= floor(n/2k) + 1 points; the others [floor(n/2k),
    ceil(3n/2k)] = [2, 6] for n = 20, k = 5. Symmetric limits cap the first cluster at 6 and give another answer."""
    aff, k = fixed_affinity(), 5
    official, margin = brute_force_split(aff, k, (3, None), (2, 6))
    symmetric, margin_s = brute_force_split(aff, k, (2, 6), (2, 6))
    assert official == (0, 9, 12, 15, 18) and min(margin, margin_s) > 1e-3 and symmetric != official
    assert build_clusterer("gradient", {"grid": 20}).split(aff, k).starts == official
    assert build_clusterer("gradient", {"grid": 20, "size_limits": "symmetric"}).split(aff, k).starts == symmetric
    with pytest.raises(ConfigError, match="size_limits: 'True' is not valid; allowed: official, symmetric, none"):
        build_clusterer("gradient", {"size_limits": True})


# -- which network is differentiated: the unified model ----------------------------------------------------------
MULTI = [f"model.backbone={BACKBONE}", "dataset.name=digits", "model.variant=multistage", "stages.boundaries=[0.4,0.6]"]


def test_without_checkpoints_the_unified_network_is_differentiated():
    """The run config's default variant is multistage; the clusterer builds its unified model (the paper's)."""
    inputs = ClusterInputs(config_overrides=[f"model.backbone={BACKBONE}", "dataset.name=digits"], device="cpu",
                           progress=False)
    assert inputs.get_run_config().model.variant == "multistage"
    r = build_clusterer("gradient", {"grid": GRID, "batch_size": 16}).fit(VPLinearSchedule(), inputs, 3)
    unified, _ = fit()
    assert r.diagnostics["network"] == {"backbone": BACKBONE, "variant": "unified"}
    assert np.allclose(r.diagnostics["matrix"]["values"], unified.diagnostics["matrix"]["values"], atol=1e-9)


def test_a_multistage_network_is_refused_unless_asked_for(tmp_path):
    cfg = load_config([], MULTI, validate=False)
    torch.manual_seed(0)
    path = tmp_path / "multi.pt"
    save_checkpoint(path, {"step": 1, "config": to_dict(cfg), "model": build_denoiser(cfg).state_dict(), "ema": None})
    clusterer = build_clusterer("gradient", {"grid": GRID, "batch_size": 4})
    for inputs in (ClusterInputs(checkpoints=[str(path)], device="cpu", progress=False),
                   ClusterInputs(config_overrides=MULTI, device="cpu", progress=False)):
        with pytest.raises(ConfigError, match="'multistage' network.*allow_multistage=true|unified model.*"
                                              "allow_multistage=true"):
            clusterer.fit(VPLinearSchedule(), inputs, 3)
        assert not inputs.used_data, "refused before any data was read"
    inputs = ClusterInputs(checkpoints=[str(path)], device="cpu", progress=False)
    r = build_clusterer("gradient", {"grid": GRID, "batch_size": 4, "allow_multistage": True}).fit(
        VPLinearSchedule(), inputs, 3)
    assert r.diagnostics["network"]["variant"] == "multistage" and r.diagnostics["models"] == [str(path)]
