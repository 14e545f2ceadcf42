"""Noise schedules: closed forms, inverse round trips, monotone log-SNR, the paper's boundary facts."""

import math

import pytest
import torch

from msrepro.registry import SCHEDULES
from msrepro.schedules import NoiseSchedule, build_schedule


#: every registered schedule with its defaults, plus the options that change its numerics
CONFIGS = [{"name": n} for n in SCHEDULES.list()] + [{"name": "ddpm_discrete", "interpolation": "log_sigma"}]
IDS = ["-".join(str(v) for v in c.values()) for c in CONFIGS]


def all_schedules() -> list[NoiseSchedule]:
    return [build_schedule(c) for c in CONFIGS]


def interior_times(s: NoiseSchedule, n: int = 257) -> torch.Tensor:
    lo = s.t_min if s.t_min > 0 else 1e-4
    return torch.linspace(lo, s.t_max, n, dtype=torch.float64)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_sigma_inverse_round_trip(cfg):
    s = build_schedule(cfg)
    t = interior_times(s)
    assert torch.allclose(s.sigma_inv(s.sigma(t)), t, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_log_snr_round_trip_and_monotone(cfg):
    s = build_schedule(cfg)
    t = interior_times(s)
    lam = s.log_snr(t)
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must fall as t grows"
    assert torch.allclose(s.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-9)
    assert torch.allclose(lam, -2 * torch.log(s.sigma(t)))


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_fraction_round_trip(cfg):
    s = build_schedule(cfg)
    t = interior_times(s)
    assert torch.allclose(s.from_fraction(s.fraction(t)), t, rtol=1e-9, atol=1e-9)
    f = s.fraction(t)
    assert (f[1:] > f[:-1]).all() and f.min() >= 0 and f.max() <= 1 + 1e-12


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_schedule_rebuilds_from_its_config(cfg):
    s = build_schedule(cfg)
    assert build_schedule(s.to_config()) == s


def test_vp_linear_closed_form():
    s = build_schedule({"name": "vp_linear"})
    for t in [1e-5, 0.1, 0.4420, 0.9, 1.0]:
        log_alpha = -0.25 * t * t * (20 - 0.1) - 0.5 * t * 0.1  # score_sde VPSDE.marginal_prob
        alpha, std = math.exp(log_alpha), math.sqrt(1 - math.exp(2 * log_alpha))
        assert s.s(t) == pytest.approx(alpha, rel=1e-12)
        assert s.sigma(t) == pytest.approx(std / alpha, rel=1e-10)
        assert s.s(t) == pytest.approx(1 / math.sqrt(1 + s.sigma(t) ** 2), rel=1e-12)


def test_vp_t_0442_is_edm_sigma_25103():
    """SPEC §4: the EDM boundary sigma = 2.5103 is the VP sigma at t = 0.4420."""
    vp, edm = build_schedule({"name": "vp_linear"}), build_schedule({"name": "edm"})
    assert vp.sigma(0.4420) == pytest.approx(2.5103, abs=5e-4)
    assert edm.t_from_log_snr(vp.log_snr(0.4420)) == pytest.approx(2.5103, abs=5e-4)
    # and 7.6577 is VP t ~ 0.636, not the 0.6308 the DPM-Solver model used: the official inconsistency
    assert vp.sigma_inv(7.6577) == pytest.approx(0.636, abs=1e-3)
    assert vp.sigma(0.6308) == pytest.approx(7.4, abs=0.1)


def test_ddpm_discrete_matches_ldm_alphas_cumprod():
    s = build_schedule({"name": "ddpm_discrete"})
    betas = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2  # LDM make_beta_schedule
    acp = torch.cumprod(1 - betas, 0)
    n = torch.arange(1000, dtype=torch.float64)
    assert torch.allclose(s.sigma(n), ((1 - acp) / acp).sqrt(), rtol=1e-12)
    assert torch.allclose(s.s(n), acp.sqrt(), rtol=1e-12)
    assert s.fraction(442.0) == pytest.approx(0.442)


def ldm_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2  # LDM make_beta_schedule
    return torch.cumprod(1 - betas, 0)


@pytest.mark.parametrize("k", [0, 1, 17, 441, 998])
def test_ddpm_discrete_half_steps_closed_form(k):
    """Default (DPM-Solver's discrete NoiseScheduleVP): log alpha linear between steps, so at k + 1/2
    alpha = (acp_k acp_{k+1})^(1/4) and sigma = sqrt(1 / sqrt(acp_k acp_{k+1}) - 1); the log_sigma option
    gives the geometric mean of the two sigmas instead."""
    acp = ldm_alphas_cumprod()
    official, ksigma = build_schedule({"name": "ddpm_discrete"}), build_schedule(
        {"name": "ddpm_discrete", "interpolation": "log_sigma"})
    a, b = float(acp[k]), float(acp[k + 1])
    assert official.sigma(k + 0.5) == pytest.approx(math.sqrt(1 / math.sqrt(a * b) - 1), rel=1e-12)
    assert official.s(k + 0.5) == pytest.approx((a * b) ** 0.25, rel=1e-12)
    sig = lambda c: math.sqrt((1 - c) / c)  # noqa: E731
    assert ksigma.sigma(k + 0.5) == pytest.approx(math.sqrt(sig(a) * sig(b)), rel=1e-12)
    if k == 0:  # near t = 0 the log_sigma interpolation's sigma is 2.9 % below the official one
        assert 1 - ksigma.sigma(0.5) / official.sigma(0.5) == pytest.approx(0.0292, abs=5e-4)


@pytest.mark.parametrize("interpolation", ["log_alpha", "log_sigma"])
def test_ddpm_discrete_integer_steps_invert_exactly(interpolation):
    """t(sigma(n)) == n bit for bit: a stage cut at step 442 must put step 442 in the upper stage ([lo, hi))."""
    s = build_schedule({"name": "ddpm_discrete", "interpolation": interpolation})
    n = torch.arange(1000, dtype=torch.float64)
    assert torch.equal(s.sigma_inv(s.sigma(n)), n)


def test_ddpm_discrete_matches_dpm_solver_discrete_convention():
    """DPM-Solver: t_array = (n + 1) / N, log_alpha_array = 0.5 log acp, piecewise-linear log alpha(t); its model
    input (t - 1/N) * 1000 is our step index n. Independent: numpy interpolation at random fractional steps."""
    import numpy as np

    acp, n_steps = ldm_alphas_cumprod().numpy(), 1000
    t_array, log_alpha_array = (np.arange(n_steps) + 1) / n_steps, 0.5 * np.log(acp)
    n = np.random.default_rng(0).uniform(0, n_steps - 1, 200)
    t_cont = (n + 1) / n_steps
    assert np.allclose((t_cont - 1 / n_steps) * 1000, n)
    log_alpha = np.interp(t_cont, t_array, log_alpha_array)
    s = build_schedule({"name": "ddpm_discrete"})
    got = torch.log(s.s(torch.as_tensor(n))).numpy()
    assert np.allclose(got, log_alpha, rtol=0, atol=1e-13)
    sigma_vp = np.sqrt(1 - np.exp(2 * log_alpha))  # DPM-Solver's marginal_std; ours is sigma_VP / alpha
    assert np.allclose(s.sigma(torch.as_tensor(n)).numpy(), sigma_vp / np.exp(log_alpha), rtol=1e-12)
    assert s.to_config()["interpolation"] == "log_alpha"
    with pytest.raises(ValueError, match="allowed: log_alpha, log_sigma"):
        build_schedule({"name": "ddpm_discrete", "interpolation": "linear"})


def test_float_in_float_out_tensor_dtype_kept():
    s = build_schedule({"name": "vp_linear"})
    assert isinstance(s.sigma(0.5), float)
    t32 = torch.tensor([0.5], dtype=torch.float32)
    assert s.sigma(t32).dtype == torch.float32
    # computed in float64: no float32 cancellation at tiny t
    t = float(torch.tensor(1e-6, dtype=torch.float32))
    exact = math.sqrt(math.expm1(0.5 * 19.9 * t * t + 0.1 * t))
    assert s.sigma(torch.tensor([t], dtype=torch.float32)).item() == pytest.approx(exact, rel=1e-6)


def test_bad_schedule_parameters_are_rejected():
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        build_schedule({"name": "vp_linear", "beta_min": 5.0, "beta_max": 1.0})
