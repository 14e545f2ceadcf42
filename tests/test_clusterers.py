"""The built-in clusterers: SPEC §3 numbers, the optimal-denoiser similarity against a dense recomputation,
Algorithm 1's threshold rule, result JSON that ``stages.from_result`` reads, plots, lazy inputs."""

import json

import numpy as np
import pytest
import torch

from msrepro.clustering import ClusterInputs, ClusterResult, build_clusterer
from msrepro.clustering.dp import max_mean_similarity
from msrepro.clustering.optimal_denoiser import denoise_on_grid, od_grid, pairwise_similarity, threshold_cuts
from msrepro.config import ConfigError
from msrepro.empirical_denoiser import OptimalDenoiser
from msrepro.registry import CLUSTERERS
from msrepro.schedules import EDMSchedule, VPLinearSchedule

VP = VPLinearSchedule()
PNG = b"\x89PNG\r\n\x1a\n"


def unreadable_inputs():
    """Inputs whose dataset cannot be loaded: a data-free clusterer must never try."""
    return ClusterInputs(dataset={"name": "cifar10", "root": "/nonexistent"}, progress=False)


def test_all_four_are_registered_with_descriptions():
    names = CLUSTERERS.list()
    assert {"timestep", "snr", "gradient", "optimal_denoiser"} <= set(names)
    for n in ["timestep", "snr", "gradient", "optimal_denoiser"]:
        assert CLUSTERERS.entry(n).description and CLUSTERERS.entry(n).origin == "builtin"


@pytest.mark.parametrize("limits", [None, "official", "symmetric"])
@pytest.mark.parametrize("name,cuts", [("timestep", [0.334, 0.667]), ("snr", [0.348, 0.709])])
def test_baselines_give_the_spec_numbers_without_touching_data(name, cuts, limits):
    """SPEC 3 under the official DP's size limits (the default) and the symmetric ones: the optimum is interior."""
    inputs = unreadable_inputs()
    r = build_clusterer(name, {} if limits is None else {"size_limits": limits}).fit(VP, inputs, 3)
    assert r.params["size_limits"] == (limits or "official") == r.diagnostics["size_limits"]["mode"]
    assert r.boundaries == cuts  # exact grid values (i + 1) / 1000
    assert not inputs.used_data and r.provenance["dataset"] is None
    assert r.diagnostics["cluster_sizes"] == {"timestep": [333, 333, 334], "snr": [347, 361, 292]}[name]
    assert r.log_snr == pytest.approx([float(VP.log_snr(c)) for c in cuts])


def test_snr_cost_equals_official_half_log_snr_form():
    """|log-SNR(c) - log-SNR(t)| = |2 (lambda(c) - lambda(t))| with DPM-Solver's lambda = log alpha - log sigma_VP."""
    t = torch.linspace(1e-3, 1, 50, dtype=torch.float64)
    log_alpha = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1
    lam_half = log_alpha - 0.5 * torch.log(1 - torch.exp(2 * log_alpha))
    assert torch.allclose(VP.log_snr(t), 2 * lam_half, atol=1e-9)


def test_baselines_k_and_other_schedules():
    r = build_clusterer("snr").fit(VP, unreadable_inputs(), 4)
    assert len(r.boundaries) == 3 and r.boundaries == sorted(r.boundaries)
    edm = EDMSchedule()
    r = build_clusterer("timestep").fit(edm, unreadable_inputs(), 3)  # same fractions, EDM's time (sigma)
    assert [float(edm.fraction(c)) for c in r.boundaries] == pytest.approx([0.334, 0.667])


def test_params_are_validated_at_construction():
    with pytest.raises(ConfigError, match="Did you mean 'eta'"):
        build_clusterer("optimal_denoiser", {"etaa": 0.1})
    with pytest.raises(ConfigError, match="allowed: interval_dp, threshold"):
        build_clusterer("optimal_denoiser", {"objective": "gurobi"})
    with pytest.raises(ConfigError, match="allowed: x0, eps"):
        build_clusterer("optimal_denoiser", {"space": "latent"})
    with pytest.raises(ConfigError, match="wrong type"):
        build_clusterer("snr", {"grid": "many"})


# -- optimal denoiser ----------------------------------------------------------------------------------
def test_od_grid_is_the_official_grid():
    g = od_grid(VP, 21, 1e-3)
    assert len(g) == 21 and g[0] == 0.001 and g[-2] == pytest.approx(0.951) and g[-1] == 1.0
    assert np.allclose(np.diff(g[:-1]), 0.05)


def test_similarity_matches_a_dense_recomputation():
    g = torch.Generator().manual_seed(0)
    data = torch.rand(40, 12, generator=g, dtype=torch.float64)
    y, eps = data[torch.randint(40, (16,), generator=g)], torch.randn(16, 12, generator=g, dtype=torch.float64)
    sigmas, eta = [0.05, 0.3, 1.0, 4.0], 0.05
    for space in ["x0", "eps"]:
        outs = denoise_on_grid(OptimalDenoiser(data, dtype=torch.float64), y, eps, sigmas, space, batch=5)
        want = []
        for s in sigmas:  # dense softmax posterior mean, written out
            x = y + s * eps
            w = torch.softmax(-((x[:, None] - data[None]) ** 2).sum(-1) / (2 * s * s), dim=1)
            d = w @ data
            want.append(d if space == "x0" else (x - d) / s)
        for a in range(4):
            for b in range(4):
                frac = ((want[a] - want[b]).abs() <= eta).double().mean().item()
                assert pairwise_similarity(outs, eta)[a, b] == pytest.approx(frac, abs=1e-6)


def test_one_training_point_is_similar_everywhere():
    """With one training image E[x0 | x] = y at every t, and eps*(x) = eps: S = 1 in both spaces."""
    class OnePoint(ClusterInputs):
        def data(self, *, zero_one=True):
            return torch.full((1, 1, 4, 4), 0.3)

    for space in ["x0", "eps"]:
        r = build_clusterer("optimal_denoiser", {"samples": 8, "space": space, "eta": 1e-3}).fit(
            VP, OnePoint(progress=False), 3)
        assert np.allclose(r.diagnostics["matrix"]["values"], 1.0)


def test_threshold_rule_closed_form():
    grid = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    s = np.eye(6)
    s[:, 0] = [1.0, 0.9, 0.8, 0.1, 0.0, 0.0]   # running means 1, .95, .9, .7, .56, .47
    s[:, -1] = [0.0, 0.0, 0.3, 0.9, 0.95, 1.0]  # tail means   .525, .63, .7875, .95, .975, 1
    assert threshold_cuts(s, grid, 0.9) == (0.4, 0.6)
    assert threshold_cuts(s, grid, 0.6) == (0.6, 0.2)  # t2 < t1: the rule can fail
    assert threshold_cuts(s, grid, 1.01) == (None, None)


def test_optimal_denoiser_on_digits_both_objectives_and_k4(tmp_path):
    inputs = ClusterInputs(dataset={"name": "digits", "resolution": 8}, progress=False)
    r3 = build_clusterer("optimal_denoiser", {"samples": 64}).fit(VP, inputs, 3)  # the official 21-point grid
    sim = np.array(r3.diagnostics["matrix"]["values"])
    assert np.allclose(np.diag(sim), 1) and np.allclose(sim, sim.T)
    assert sim[0, 1] > sim[0, -1] and sim[-1, -2] > sim[-1, 0]  # nearby noise levels behave alike
    assert r3.diagnostics["threshold"]["valid"] and r3.diagnostics["interval_dp"]["cuts"] == r3.boundaries
    # both weightings are reported, whichever produced the cut points; the objective says which one did
    grid = np.array(r3.diagnostics["grid"])
    for w in ("per_point", "per_interval"):
        starts = max_mean_similarity(sim, 3, weighting=w).starts[1:]
        assert r3.diagnostics["weightings"][w]["cuts"] == pytest.approx([(grid[s - 1] + grid[s]) / 2 for s in starts])
    assert r3.objective.startswith("interval DP, weighting=per_point") and "not the official" in r3.objective
    official = build_clusterer("optimal_denoiser", {"samples": 64, "weighting": "per_interval"}).fit(VP, inputs, 3)
    assert official.boundaries == r3.diagnostics["weightings"]["per_interval"]["cuts"]
    assert official.objective.startswith("interval DP, weighting=per_interval") and "official" in official.objective
    params = {"samples": 32, "grid": 11}
    r_th = build_clusterer("optimal_denoiser", {**params, "objective": "threshold"}).fit(VP, inputs, 3)
    assert r_th.boundaries == [r_th.diagnostics["threshold"]["t1"], r_th.diagnostics["threshold"]["t2"]]
    assert r_th.objective.startswith("threshold rule (Algorithm 1") and "alpha=0.8" in r_th.objective
    r4 = build_clusterer("optimal_denoiser", params).fit(VP, inputs, 4)
    assert len(r4.boundaries) == 3 and "threshold" not in r4.diagnostics
    with pytest.raises(ConfigError, match="k must be 3"):
        build_clusterer("optimal_denoiser", {**params, "objective": "threshold"}).fit(VP, inputs, 4)
    assert r3.provenance["dataset"]["name"] == "digits" and len(r3.provenance["dataset"]["checksum"]) == 16
    again = build_clusterer("optimal_denoiser", params).fit(VP, ClusterInputs(
        dataset={"name": "digits", "resolution": 8}, progress=False), 4)
    assert again.diagnostics["matrix"]["values"] == r4.diagnostics["matrix"]["values"]  # seeded


def test_result_json_plots_and_from_result(tmp_path):
    from msrepro.runconfig import load_config
    from msrepro.models import resolve_boundaries

    from msrepro.clustering.plots import save_result

    r = build_clusterer("snr").fit(VP, unreadable_inputs(), 3)
    files = save_result(r, tmp_path / "snr")
    for key in ["curves", "matrix"]:
        assert open(files[key], "rb").read(8) == PNG
    d = json.loads(open(files["json"]).read())
    assert d["boundaries"] == [0.348, 0.709] and d["stage_boundaries"]["cuts"] == [0.348, 0.709]
    assert d["clusterer"] == "snr" and d["k"] == 3 and d["params"]["grid"] == 1000
    assert d["objective"] == "DP minimising sum |log-SNR - log-SNR at the cluster's upper median| on 1000 grid " \
                             "points, size_limits=official" == ClusterResult.load(tmp_path / "snr").objective
    assert {"code_version", "seed", "dataset"} <= set(d["provenance"])
    assert ClusterResult.load(tmp_path / "snr").boundaries == r.boundaries
    assert ClusterResult.load(tmp_path / "snr").files == files
    r.files = {}
    r.save(tmp_path / "bare")  # the record alone: JSON, no plots
    assert sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["result.json"]
    cfg = load_config(overrides=[f"stages.from_result={files['json']}", "schedule.name=edm"], validate=False,
                      preset=False)
    sb = resolve_boundaries(cfg, EDMSchedule())  # read by models.py and converted by matched log-SNR
    assert [float(EDMSchedule().log_snr(c)) for c in sb.cuts] == pytest.approx(d["log_snr"])


def test_fit_from_run_config(tmp_path):
    from msrepro.clustering import fit_from_config
    from msrepro.runconfig import load_config

    cfg = load_config([], ["cluster.name=snr", "cluster.params.grid=1000", "stages.num_stages=3"], validate=False,
                      preset=False)
    r = fit_from_config(cfg, out_dir=tmp_path, progress=False)
    assert r.boundaries == [0.348, 0.709] and (tmp_path / "result.json").is_file()
