"""Samplers against analytic denoisers: closed-form ODE solutions, measured convergence orders, the optimal
denoiser of a few points, and the official per-stage NFE split (SPEC section 4)."""

import math

import numpy as np
import pytest
import torch

from msrepro.boundaries import StageBoundaries
from msrepro.config import ConfigError
from msrepro.empirical_denoiser import OptimalDenoiser
from msrepro.registry import SAMPLERS
from msrepro.samplers import (StagedDenoiser, build_sampler, count_nfe, karras_sigmas, singlestep_orders, time_grid,
                              time_range)
from msrepro.schedules import EDMSchedule, VPLinearSchedule

VP = VPLinearSchedule()
# Recommended settings, plus time_uniform spacing: its last steps are long in log-SNR (t 0.05 -> 1e-4 is h = 4 at
# 20 NFE), too long for the nearly discontinuous optimal denoiser of 5 points, so it gets 60 NFE here.
ODE_SAMPLERS = [("dpm_solver", {}), ("dpm_solver_pp", {}), ("heun", {}), ("ddim", {}), ("euler", {}),
                ("dpm_solver", {"order": 2}), ("ddim", {"spacing": "time_uniform"}),
                ("euler", {"spacing": "time_uniform"}), ("dpm_solver", {"spacing": "time_uniform", "nfe": 60}),
                ("dpm_solver_pp", {"spacing": "time_uniform", "steps": 60})]


@pytest.fixture(scope="module")
def points():
    """Five well-separated training points in 8 dimensions (pairwise distances 1.6-2.9) and 16 starting noises."""
    g = torch.Generator().manual_seed(1)
    data = torch.rand(5, 8, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(16, 8, generator=g, dtype=torch.float64)
    return data, noise


# -- Gaussian data: D(x, sigma) = x c^2 / (c^2 + sigma^2), ODE solution x(sigma) = x(s0) sqrt((c^2+sigma^2)/(c^2+s0^2))
C = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)


def gaussian_denoiser(x, sigma):
    return x * C**2 / (C**2 + sigma.reshape(-1, 1) ** 2)


def gaussian_error(name: str, params: dict, schedule=VP) -> tuple[int, float]:
    """(NFE, relative error against the closed-form solution) at the sampler's last ODE state."""
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = []
    x, info = build_sampler(name, params)(gaussian_denoiser, noise, schedule, callback=steps.append)
    s0 = steps[0]["sigma"]
    if name == "heun":  # EDM's last step is Euler to sigma = 0: measure the Heun part, at sigma_min
        x, s_end = steps[-1]["x"], steps[-1]["sigma"]
    else:
        s_end = float(schedule.sigma(time_range(schedule, None, None)[1]))
    exact = noise * s0 * torch.sqrt((C**2 + s_end**2) / (C**2 + s0**2))
    return info["nfe"], float((x - exact).norm() / exact.norm())


ORDERS = [("euler", {}, "steps", [40, 80, 160, 320], 1), ("ddim", {}, "steps", [40, 80, 160, 320], 1),
          ("dpm_solver", {"order": 1}, "nfe", [16, 32, 64, 128], 1),
          ("dpm_solver_pp", {"order": 1}, "steps", [40, 80, 160, 320], 1),
          ("dpm_solver", {"order": 2}, "nfe", [32, 64, 128, 256], 2),
          ("dpm_solver_pp", {"order": 2}, "steps", [40, 80, 160, 320], 2),
          ("heun", {}, "steps", [16, 32, 64, 128], 2),
          ("dpm_solver", {"order": 3}, "nfe", [48, 96, 192, 384], 3)]


@pytest.mark.parametrize("name,params,key,sizes,nominal", ORDERS, ids=[f"{o[0]}-{o[4]}" for o in ORDERS])
def test_measured_convergence_order_matches_nominal(name, params, key, sizes, nominal):
    """Slope of log(error) against log(NFE) on Gaussian data (exact solution known) within 0.2 of the order."""
    nfe, err = zip(*(gaussian_error(name, {**params, key: n}) for n in sizes))
    slope = -np.polyfit(np.log(nfe), np.log(err), 1)[0]
    assert abs(slope - nominal) < 0.2, f"{name} {params}: measured order {slope:.2f}, errors {err}"


def test_convergence_orders_do_not_depend_on_the_schedule():
    """On EDM's schedule (sigma = t) with VP's sigma range, DPM-Solver-3 takes the same sigmas, so the same error:
    only the schedule's time axis differs, and the samplers see sigma alone."""
    edm = EDMSchedule(sigma_min=float(VP.sigma(1e-4)), sigma_max=float(VP.sigma(1.0)))
    for n in (48, 96):
        _, e_vp = gaussian_error("dpm_solver", {"nfe": n})
        _, e_edm = gaussian_error("dpm_solver", {"nfe": n}, edm)
        assert e_edm == pytest.approx(e_vp, rel=1e-6)


# -- optimal denoiser of a few points ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", ODE_SAMPLERS, ids=[f"{n}{p}" for n, p in ODE_SAMPLERS])
def test_ode_samplers_land_on_training_points(points, name, params):
    data, noise = points
    x, info = build_sampler(name, params)(OptimalDenoiser(data, dtype=torch.float64), noise, VP)
    dist = torch.cdist(x, data)
    # ends at sigma(1e-4) = 0.0032 (Heun: 0), so x = y + O(sigma sqrt(n)); neighbours are >= 1.6 away
    assert dist.min(1).values.max() < 0.05, (name, dist.min(1).values)
    assert len(set(dist.argmin(1).tolist())) >= 3  # not all collapsed onto one point


def test_dpm_solver3_at_20_nfe_matches_fine_euler_reference(points):
    """Tolerance: 1e-2 in data units (1.3 uint8 levels) per coordinate. The reference is Euler with 1000 and 2000
    steps, Richardson-extrapolated; DPM-Solver-3 with 600 NFE agrees with it to 1e-5, which vouches for it."""
    data, noise = points
    d = OptimalDenoiser(data, dtype=torch.float64)
    e1, _ = build_sampler("euler", {"steps": 1000})(d, noise, VP)
    e2, _ = build_sampler("euler", {"steps": 2000})(d, noise, VP)
    ref = 2 * e2 - e1
    fine, _ = build_sampler("dpm_solver", {"nfe": 600})(d, noise, VP)
    assert (fine - ref).abs().max() < 1e-5
    x, info = build_sampler("dpm_solver", {})(d, noise, VP)
    assert info["nfe"] == 20
    err = (x - ref).abs().max()
    assert err < 1e-2
    x1, _ = build_sampler("dpm_solver", {"order": 1})(d, noise, VP)  # same NFE, first order: clearly worse
    assert (x1 - ref).abs().max() > 2 * err


def test_first_order_methods_are_one_update_written_three_ways(points):
    """Euler in sigma, DDIM (eta 0), DPM-Solver-1 and DPM-Solver++-1 are the same map (independent code paths)."""
    data, noise = points
    d = OptimalDenoiser(data, dtype=torch.float64)
    outs = [build_sampler(n, p)(d, noise, VP)[0] for n, p in
            [("euler", {"steps": 12}), ("ddim", {"steps": 12}), ("dpm_solver", {"order": 1, "nfe": 12}),
             ("dpm_solver_pp", {"order": 1, "steps": 12})]]
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], rtol=0, atol=1e-12)


# -- NFE per stage -------------------------------------------------------------------------------------------------
def test_default_dpm_solver_nfe_split_is_the_official_12_2_6():
    """SPEC section 4: DPM-Solver-3, 20 NFE, logSNR, t 1 -> 1e-4 with boundaries 0.4420 / 0.6308 -> 12/2/6 NFE
    (least noisy stage first). Intermediate evaluations count for the stage of their own time."""
    info = count_nfe(build_sampler("dpm_solver", {}), VP, StageBoundaries((0.4420, 0.6308), VP))
    assert info["nfe"] == 20 and info["nfe_per_stage"] == [12, 2, 6]


def test_heun_nfe_split_matches_counting_the_rho_ramp():
    """EDM Heun, 18 steps, EDM boundaries sigma 2.5103 / 7.6577: D is evaluated at sigma_0..17 and, for the
    corrections, sigma_1..17; count them per interval with EDM's Eq. 5 written out here."""
    edm = EDMSchedule()
    ramp = [(80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(18)]
    evals = ramp + ramp[1:]
    expected = [sum(s < 2.5103 for s in evals), sum(2.5103 <= s < 7.6577 for s in evals),
                sum(s >= 7.6577 for s in evals)]
    info = count_nfe(build_sampler("heun", {}), edm, StageBoundaries((2.5103, 7.6577), edm))
    assert info["nfe"] == 35 and info["nfe_per_stage"] == expected


def test_callback_stage_is_the_decoder_that_served_the_call():
    """With a real multi-decoder Preconditioning the stage in the callback equals the routing it did."""
    from samplers_tiny_model import tiny_model

    model, _ = tiny_model()
    seen = []

    def cb(d):
        seen.append((d["stage"], int(model.last_stages[0])))

    with torch.no_grad():
        _, info = build_sampler("dpm_solver", {})(model, torch.randn(2, 1, 8, 8), model.schedule, callback=cb)
    assert len(seen) == 7 and all(a == b for a, b in seen)
    assert info["nfe_per_stage"] == [12, 2, 6]
    assert [s for s, _ in seen] == sorted((s for s, _ in seen), reverse=True)  # noisy stages first


def test_unstaged_denoiser_counts_one_stage(points):
    data, noise = points
    _, info = build_sampler("heun", {"steps": 5})(OptimalDenoiser(data), noise.float(), VP)
    assert info == {"nfe": 9, "nfe_per_stage": [9], "sigmas": info["sigmas"]} and len(info["sigmas"]) == 9


# -- grids, orders, options ----------------------------------------------------------------------------------------
def test_singlestep_orders_use_exactly_nfe():
    assert singlestep_orders(20, 3) == [3] * 6 + [2]
    assert singlestep_orders(21, 3) == [3] * 6 + [2, 1]
    assert singlestep_orders(19, 3) == [3] * 6 + [1]
    assert singlestep_orders(7, 2) == [2, 2, 2, 1]
    for order in (1, 2, 3):
        for nfe in range(1, 40):
            assert sum(singlestep_orders(nfe, order)) == nfe


def test_time_grids_are_uniform_in_their_variable():
    t = time_grid(VP, 10, "logsnr", 1.0, 1e-4)
    lam = VP.log_snr(t)
    assert t[0] == 1.0 and t[-1] == 1e-4
    assert torch.allclose(lam.diff(), lam.diff()[:1].expand(10), rtol=1e-9)
    assert torch.allclose(time_grid(VP, 4, "time_uniform", 0.9, 0.1), torch.tensor([0.9, 0.7, 0.5, 0.3, 0.1],
                                                                                   dtype=torch.float64))
    sig = karras_sigmas(18, 0.002, 80.0, 7.0)
    assert len(sig) == 19 and sig[0] == pytest.approx(80.0) and sig[17] == pytest.approx(0.002) and sig[18] == 0


def test_contract_names_and_defaults():
    assert {"dpm_solver", "dpm_solver_pp", "heun", "ddim", "euler"} <= set(SAMPLERS.list())
    assert build_sampler("dpm_solver").params() == {"order": 3, "nfe": 20, "spacing": "logsnr", "t_start": None,
                                                   "t_end": None}
    assert build_sampler("dpm_solver_pp").params()["order"] == 2 and build_sampler("dpm_solver_pp").params()[
        "steps"] == 20
    heun = build_sampler("heun").params()
    assert heun["steps"] == 18 and heun["rho"] == 7.0 and heun["S_churn"] == 0 and heun["S_max"] == math.inf
    assert build_sampler("ddim").params()["eta"] == 0.0
    assert count_nfe(build_sampler("heun"), EDMSchedule())["nfe"] == 35


@pytest.mark.parametrize("name,params,match", [
    ("dpm_solver", {"order": 4}, "order must be 1, 2 or 3"),
    ("dpm_solver", {"spacing": "quadratic"}, "allowed: logsnr, time_uniform"),
    ("dpm_solver", {"nfee": 20}, "Did you mean 'nfe'"),
    ("dpm_solver_pp", {"order": 3}, "order must be 1 or 2"),
    ("heun", {"steps": 0}, "must be >= 1"),
    ("ddim", {"eta": -1.0}, "eta"),
])
def test_bad_options_fail_naming_what_is_allowed(name, params, match):
    with pytest.raises(ConfigError, match=match):
        build_sampler(name, params)


def test_bad_time_range_fails_early():
    with pytest.raises(ConfigError, match="t_end < t_start"):
        build_sampler("dpm_solver", {"t_start": 0.5, "t_end": 0.7})(gaussian_denoiser, torch.zeros(1, 3), VP)


def test_stochastic_samplers_use_the_given_generator():
    """DDIM eta=1 and Heun with churn draw their extra noise from the generator: same generator, same result."""
    class Gen:
        def __init__(self):
            self.g = torch.Generator().manual_seed(3)

        def randn_like(self, x):
            return torch.randn(x.shape, generator=self.g, dtype=x.dtype)

    noise = torch.randn(4, 3, dtype=torch.float64)
    for name, p in [("ddim", {"eta": 1.0, "steps": 10}), ("heun", {"S_churn": 40.0, "steps": 10})]:
        a = build_sampler(name, p)(gaussian_denoiser, noise, VP, generator=Gen())[0]
        b = build_sampler(name, p)(gaussian_denoiser, noise, VP, generator=Gen())[0]
        ode = build_sampler(name, {**p, "eta": 0.0} if name == "ddim" else {**p, "S_churn": 0.0})(
            gaussian_denoiser, noise, VP)[0]
        assert torch.equal(a, b) and not torch.allclose(a, ode, atol=1e-3)


def test_staged_denoiser_wraps_any_denoiser():
    b = StageBoundaries((0.4420, 0.6308), VP)
    d = StagedDenoiser(gaussian_denoiser, b)
    assert d.num_stages == 3
    assert d.stage_of(torch.tensor([float(VP.sigma(0.1)), float(VP.sigma(0.5)), float(VP.sigma(0.9))])).tolist() \
        == [0, 1, 2]


@pytest.mark.parametrize("name", SAMPLERS.list())
def test_every_registered_sampler_keeps_the_contract(name):
    """Any registered sampler, default options: shape and dtype kept, finite output, NFE bookkeeping consistent,
    one callback per step with the documented keys, stages counted."""
    steps = []
    noise = torch.randn(2, 1, 4, 4)
    staged = StagedDenoiser(lambda x, s: x / (1 + s.reshape(-1, 1, 1, 1) ** 2), StageBoundaries((0.4420, 0.6308), VP))
    x, info = build_sampler(name)(staged, noise, VP, callback=steps.append)
    assert x.shape == noise.shape and x.dtype == noise.dtype and torch.isfinite(x).all()
    assert info["nfe"] == len(info["sigmas"]) == sum(info["nfe_per_stage"]) and len(info["nfe_per_stage"]) == 3
    assert steps and {"i", "sigma", "sigma_next", "x", "denoised", "stage", "nfe"} <= set(steps[0])
    assert [s["i"] for s in steps] == list(range(len(steps)))
