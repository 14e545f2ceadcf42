"""Noise-level densities against closed forms, stage policies' frequencies and intervals, the EMA formulas."""

import math

import pytest
import torch
from scipy import stats

from msrepro.boundaries import StageBoundaries
from msrepro.config import ConfigError
from msrepro.runconfig import load_config
from msrepro.registry import NOISE_DENSITIES, STAGE_POLICIES
from msrepro.schedules import DiscreteDDPMSchedule, EDMSchedule, VPLinearSchedule
from msrepro.models import get_backbone
from msrepro.training.densities import build_density
from msrepro.training.ema import EMA, edm_decay, score_sde_decay
from msrepro.training.policies import build_policy

N = 5000


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_registered_names():
    assert {"vp_uniform", "lognormal", "discrete_uniform"} <= set(NOISE_DENSITIES.list())
    assert {"stage_uniform", "native", "per_sample"} <= set(STAGE_POLICIES.list())


def test_vp_uniform_is_uniform_eps_to_one_and_sigma_from_schedule():
    sched = VPLinearSchedule(eps=1e-3)
    d = build_density({}, sched, get_backbone("dpm_solver").default_density(sched))
    draw = d.sample(N, gen())
    assert stats.kstest(draw.t.numpy(), stats.uniform(loc=1e-3, scale=1 - 1e-3).cdf).pvalue > 1e-3
    assert draw.t.min() >= 1e-3 and draw.t.max() <= 1.0
    torch.testing.assert_close(draw.sigma, sched.sigma(draw.t))


def test_lognormal_matches_edm_closed_form():
    d = build_density({}, EDMSchedule(), get_backbone("edm").default_density(EDMSchedule()))
    sigma = d.sample(N, gen()).sigma.numpy()
    assert stats.kstest(sigma, stats.lognorm(s=1.2, scale=math.exp(-1.2)).cdf).pvalue > 1e-3


def test_lognormal_restricted_to_a_stage_is_the_truncated_density():
    d = build_density({"P_mean": -1.2, "P_std": 1.2}, EDMSchedule(), "lognormal")
    lo, hi = 2.5103, 7.6577
    s = d.sample(N, gen(1), lo, hi).sigma.numpy()
    assert s.min() >= lo and s.max() < hi
    ref = stats.lognorm(s=1.2, scale=math.exp(-1.2))
    trunc = lambda x: (ref.cdf(x) - ref.cdf(lo)) / (ref.cdf(hi) - ref.cdf(lo))  # noqa: E731
    assert stats.kstest(s, trunc).pvalue > 1e-3


def test_discrete_uniform_over_steps_and_within_a_stage():
    sched = DiscreteDDPMSchedule()
    d = build_density({}, sched, get_backbone("ldm").default_density(sched))
    t = d.sample(N, gen()).t
    assert torch.equal(t, t.round()) and t.min() >= 0 and t.max() <= 999
    sub = d.sample(N, gen(2), 442.0, 631.0).t.long()
    assert sub.min() == 442 and sub.max() == 630  # [442, 631): 189 integer steps
    counts = torch.bincount(sub - 442, minlength=189).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3


def test_density_option_errors_are_config_errors():
    with pytest.raises(ConfigError, match="discrete_uniform"):
        build_density({"density": "discrete_uniform"}, VPLinearSchedule())
    with pytest.raises(ConfigError, match="P_sd"):
        build_density({"P_sd": 1.0}, EDMSchedule(), "lognormal")
    with pytest.raises(ConfigError, match="Valid names"):
        build_density({"density": "nope"}, EDMSchedule(), "lognormal")


def edm_policy(name, **params):
    sched = EDMSchedule()
    bounds = StageBoundaries((2.5103, 7.6577), sched)
    return build_policy(name, params, build_density({}, sched, "lognormal"), bounds), bounds


def test_native_stage_masses_are_the_lognormal_shares_of_spec():
    policy, _ = edm_policy("native")
    assert [round(100 * m, 2) for m in policy.masses] == [96.14, 3.51, 0.35]  # SPEC 4: 96.1 / 3.5 / 0.35 %


@pytest.mark.parametrize("name,params,expect", [
    ("stage_uniform", {}, "uniform"), ("native", {}, "mass"), ("per_sample", {}, "uniform"),
    ("per_sample", {"stage_weights": "density"}, "mass")])
def test_policy_stage_frequencies_and_intervals(name, params, expect):
    policy, bounds = edm_policy(name, **params)
    per_batch = name in ("stage_uniform", "native")
    g = gen(3)
    draws = [policy.draw(4, g, g) for _ in range(1500)] if per_batch else [policy.draw(6000, g, g)]
    if per_batch:
        assert all(d.stage.unique().numel() == 1 for d in draws)  # one stage for the whole batch
    sigma, stage = torch.cat([d.sigma for d in draws]), torch.cat([d.stage for d in draws])
    assert torch.equal(bounds.stage_of_sigma(sigma), stage)  # every sigma inside its stage's interval
    st = torch.stack([d.stage[0] for d in draws]) if per_batch else stage
    p = torch.tensor([1 / 3] * 3 if expect == "uniform" else policy.masses, dtype=torch.float64)
    freq = torch.bincount(st, minlength=3).double() / st.numel()
    tol = 5 * torch.sqrt(p * (1 - p) / st.numel()) + 2e-3
    assert torch.all((freq - p).abs() <= tol), (freq, p)


def test_native_marginal_is_the_native_density():
    """A stage drawn by mass, then sigma within it, gives sigma ~ lognormal overall (mixture of truncations)."""
    policy, _ = edm_policy("native")
    g = gen(4)
    s = torch.cat([policy.draw(1, g, g).sigma for _ in range(1500)]).numpy()
    assert stats.kstest(s, stats.lognorm(s=1.2, scale=math.exp(-1.2)).cdf).pvalue > 1e-3


def test_active_stages_only():
    policy, _ = edm_policy("per_sample")
    g = gen(5)
    assert set(policy.draw(500, g, g, active=[0, 2]).stage.tolist()) == {0, 2}
    stage_uniform, _ = edm_policy("stage_uniform")
    assert {int(stage_uniform.draw(4, g, g, active=[1]).stage[0]) for _ in range(20)} == {1}


def test_presets_validate_with_their_policies():
    for backbone, policy in (("dpm_solver", "stage_uniform"), ("edm", "native")):
        cfg = load_config([], [f"model.backbone={backbone}", "model.preset=full"])
        assert cfg.train.stage_policy == policy
    with pytest.raises(ConfigError, match="stage_weights"):
        load_config([], ["train.stage_policy=per_sample", "train.params.stage_weights=bogus"])


def test_score_sde_ema_ramp_and_edm_halflife():
    assert score_sde_decay(0.9999, 0) == pytest.approx(0.1)
    assert score_sde_decay(0.9999, 5) == pytest.approx(6 / 15)
    assert score_sde_decay(0.9999, 10**6) == 0.9999
    assert edm_decay(500.0, 128, 10**9) == pytest.approx(0.5 ** (128 / 500_000))
    assert edm_decay(500.0, 128, 1000) == pytest.approx(0.5 ** (128 / 50))  # half-life capped at 5 % of images


def test_ema_update_is_the_moving_average():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net)
    old = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net, 0.9)
    for e, o, p in zip(ema.module.parameters(), old, net.parameters()):
        torch.testing.assert_close(e, 0.9 * o + 0.1 * p)


def test_per_rank_fixes_the_stage_of_each_rank_slice():
    policy, bounds = edm_policy("per_rank")
    policy.world_size = 6
    g = gen(6)
    sb = policy.draw(12, g, g)
    assert sb.stage.tolist() == [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]
    assert torch.equal(bounds.stage_of_sigma(sb.sigma), sb.stage)
    policy.world_size = 2
    with pytest.raises(ConfigError, match="multiple of 3"):
        policy.draw(12, g, g)


def test_per_rank_hands_a_stopped_stage_ranks_to_the_active_stages():
    policy, bounds = edm_policy("per_rank")
    policy.world_size = 3
    g = gen(7)
    sb = policy.draw(6, g, g, active=[0, 2])  # stage 1 stopped early: its rank trains active[1 % 2] = stage 2
    assert sb.stage.tolist() == [0, 0, 2, 2, 0, 0]
    assert torch.equal(bounds.stage_of_sigma(sb.sigma), sb.stage)
