"""Contracts every registered clusterer, dataset, metric, stage policy and noise density must meet, parametrised over
the registries themselves (timm-style, as tests/test_backbones.py is for backbones): an installed plugin is checked
without writing a test. Small inputs for the built-ins that need them are made here in their real formats."""

from __future__ import annotations

import json
import math

import pytest
import torch

from msrepro.boundaries import StageBoundaries
from msrepro.clustering import ClusterInputs, ClusterResult, build_clusterer
from msrepro.config import ConfigError
from msrepro.runconfig import load_config
from msrepro.datasets import build_dataset
from msrepro.datasets.base import ImageDataset
from msrepro.registry import CLUSTERERS, DATASETS, METRICS, NOISE_DENSITIES, SCHEDULES, STAGE_POLICIES
from msrepro.schedules import EDMSchedule, VPLinearSchedule, build_schedule

VP = VPLinearSchedule()


# -- clusterers ------------------------------------------------------------------------------------------------
#: cheap options for the built-ins that compute something (a plugin runs with its defaults)
SMALL_CLUSTER_PARAMS = {"optimal_denoiser": {"samples": 16, "grid": 6}, "gradient": {"grid": 6, "batch_size": 4},
                        "timestep": {"grid": 60}, "snr": {"grid": 60}}


def small_inputs() -> ClusterInputs:
    cfg = load_config([], ["model.preset=smoke", "dataset.resolution=8", "model.encoder_channels=8"], validate=False)
    return ClusterInputs(dataset={"name": "digits", "resolution": 8}, run_config=cfg, device="cpu", progress=False)


@pytest.mark.parametrize("name", CLUSTERERS.list())
def test_clusterer_states_its_valid_k(name):
    clusterer = build_clusterer(name, SMALL_CLUSTER_PARAMS.get(name))
    lo, hi = clusterer.k_range()
    assert lo >= 2 and clusterer.accepts_k(lo) and not clusterer.accepts_k(lo - 1)
    if hi is not None:
        assert clusterer.accepts_k(hi) and not clusterer.accepts_k(hi + 1)
        with pytest.raises(ConfigError, match=f"k={hi + 1} .*valid k: {lo}..{hi}, the largest valid k is {hi}"):
            clusterer.check_k(hi + 1)
    assert isinstance(clusterer.objective(), str) and clusterer.objective()


@pytest.mark.parametrize("name", CLUSTERERS.list())
def test_clusterer_fit_gives_ordered_cuts_inside_the_schedule_and_a_json_round_trip(name):
    clusterer = build_clusterer(name, SMALL_CLUSTER_PARAMS.get(name))
    k = 3 if clusterer.accepts_k(3) else clusterer.k_range()[0]
    r = clusterer.fit(VP, small_inputs(), k)
    assert r.clusterer == name and r.k == k and len(r.boundaries) == k - 1
    edges = [VP.t_min, *r.boundaries, VP.t_max]
    assert all(a < b for a, b in zip(edges, edges[1:])), edges  # strictly increasing, strictly inside the domain
    assert r.objective == clusterer.objective()
    back = ClusterResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert (back.boundaries, back.objective, back.schedule) == (r.boundaries, r.objective, r.schedule)


# -- datasets --------------------------------------------------------------------------------------------------
def _cifar(tmp_path):
    from test_datasets import write_cifar

    write_cifar(tmp_path)
    return {"root": str(tmp_path), "resolution": 32}


def _folder(tmp_path):
    from test_datasets import SIZES, write_images

    write_images(tmp_path / "imgs", SIZES)
    return {"root": str(tmp_path / "imgs"), "resolution": 16}


def _zip(tmp_path):
    import zipfile

    cfg = _folder(tmp_path)
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as z:
        for p in sorted((tmp_path / "imgs").iterdir()):
            z.write(p, f"imgs/{p.name}")
    return {"root": str(tmp_path / "imgs.zip"), "resolution": 16}


def _latents(tmp_path):
    from msrepro.backbones.ldm.latents import FORMAT

    g = torch.Generator().manual_seed(0)
    state = {"format": FORMAT, "mean": torch.randn(5, 3, 4, 4, generator=g), "std": torch.rand(5, 3, 4, 4, generator=g),
             "scale_factor": 1.3, "vae": "vae.pt", "dataset": {"name": "digits", "split": "train", "resolution": 8},
             "dataset_checksum": "0" * 16}
    torch.save(state, tmp_path / "latents.pt")
    return {"root": str(tmp_path / "latents.pt"), "resolution": 4, "params": {"sample_posterior": False}}


#: small data, in each built-in dataset's real format
SMALL_DATA = {"digits": lambda tmp: {"resolution": 8}, "cifar10": _cifar, "image_folder": _folder,
              "image_zip": _zip, "latents": _latents}


def test_every_builtin_dataset_has_small_data_here():
    builtin = [e.name for e in DATASETS.entries() if e.origin == "builtin"]
    assert sorted(builtin) == sorted(SMALL_DATA), "add a small-data maker to SMALL_DATA for a new built-in dataset"


@pytest.mark.parametrize("name", DATASETS.list())
def test_dataset_serves_its_split_consistently(name, tmp_path):
    cfg = {"name": name, **SMALL_DATA.get(name, lambda tmp: {})(tmp_path)}
    ds = build_dataset(cfg)
    x = ds.tensor()
    res = int(cfg.get("resolution", ds.cfg.resolution))
    assert len(ds) == x.shape[0] > 1 and x.shape[2:] == (res, res) and x.dtype == torch.float32
    assert torch.equal(ds[1], x[1])  # no flips by default: item i is row i
    assert ds.checksum() == build_dataset(cfg).checksum() and len(ds.checksum()) == 16
    two = build_dataset({**cfg, "limit": 2})
    assert len(two) == 2 and torch.equal(two.tensor(), x[:2])
    if type(ds)._range is ImageDataset._range:  # image datasets: [-1, 1], or [0, 1] with zero_one
        assert x.min() >= -1 and x.max() <= 1
        torch.testing.assert_close(build_dataset({**cfg, "zero_one": True}).tensor(), (x + 1) / 2)


# -- metrics ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METRICS.list())
def test_metric_reads_its_values_from_torch_fidelity_output(name):
    import torch_fidelity

    from msrepro.evaluation.metrics import LABELS, build_metrics

    metric = build_metrics([name])[name]
    assert metric.flag in ("fid", "kid", "prc", "isc") and metric.extractor in ("inception", "digits", "dataset")
    assert metric.keys and all(k in LABELS for k in metric.keys)
    consts = [v for k, v in vars(torch_fidelity).items() if k.startswith("KEY_METRIC_")]
    out = {key: float(i) + 0.5 for i, key in enumerate(consts)}  # every output torch-fidelity can give, distinct
    values = metric.read(out)
    assert list(values) == list(metric.keys) and all(v in out.values() for v in values.values())
    assert len(set(values.values())) == len(values)  # each key reads its own torch-fidelity output


# -- stage policies --------------------------------------------------------------------------------------------
def edm_setup():
    from msrepro.training.densities import build_density

    sched = EDMSchedule()
    return build_density({}, sched, "lognormal"), StageBoundaries((2.5103, 7.6577), sched)


def make_policy(name: str):
    from msrepro.training.policies import build_policy

    density, bounds = edm_setup()
    policy = build_policy(name, {}, density, bounds)
    if hasattr(policy, "world_size"):  # as the trainer sets it; one process per stage
        policy.world_size = policy.num_stages
    return policy, density, bounds


@pytest.mark.parametrize("name", STAGE_POLICIES.list())
def test_policy_draws_noise_levels_inside_their_stage(name):
    policy, density, bounds = make_policy(name)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        sb = policy.draw(12, g, g)
        assert sb.t.shape == sb.sigma.shape == sb.stage.shape == (12,)
        assert torch.equal(bounds.stage_of_sigma(sb.sigma), sb.stage)  # each sigma lies in its stage's [lo, hi)
        torch.testing.assert_close(sb.sigma, density.schedule.sigma(sb.t))
    assert sum(policy.masses) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", STAGE_POLICIES.list())
def test_policy_trains_only_the_active_stages(name):
    policy, _, _ = make_policy(name)
    g = torch.Generator().manual_seed(1)
    assert {int(s) for _ in range(20) for s in policy.draw(6, g, g, active=[0, 2]).stage} <= {0, 2}


# -- noise densities -------------------------------------------------------------------------------------------
def density_cases():
    """Every (density, schedule) pair that builds (a density may accept only some schedules)."""
    cases = []
    for name in NOISE_DENSITIES.list():
        for sname in SCHEDULES.list():
            try:
                NOISE_DENSITIES.get(name)(build_schedule({"name": sname}))
            except ConfigError:
                continue
            cases.append((name, sname))
    return cases


def test_every_density_has_a_schedule():
    assert {d for d, _ in density_cases()} == set(NOISE_DENSITIES.list())


@pytest.mark.parametrize("name,schedule", density_cases())
def test_density_cdf_sampling_and_restriction_agree(name, schedule):
    sched = build_schedule({"name": schedule})
    d = NOISE_DENSITIES.get(name)(sched)
    inf = torch.tensor([-math.inf, math.inf], dtype=torch.float64)
    assert d.cdf(inf).tolist() == [0.0, 1.0]
    grid = torch.linspace(sched.t_min, sched.t_max, 301, dtype=torch.float64)
    assert (d.cdf(grid).diff() >= 0).all()
    g = torch.Generator().manual_seed(0)
    draw = d.sample(4000, g)
    assert draw.t.min() >= sched.t_min and draw.t.max() <= sched.t_max
    torch.testing.assert_close(draw.sigma, sched.sigma(draw.t))
    lo, hi = (float(d.icdf(torch.tensor([u], dtype=torch.float64))) for u in (0.3, 0.7))
    inside = ((draw.t >= lo) & (draw.t < hi)).double().mean().item()
    mass = d.mass(lo, hi)
    assert abs(inside - mass) <= 5 * math.sqrt(mass * (1 - mass) / 4000) + 1e-3
    sub = d.sample(500, g, lo, hi).t
    assert sub.min() >= lo and sub.max() < hi
