"""Parameter and GMAC parity with the official models (SPEC 4), the NFE split of the default samplers, true FLOPs
against an analytic count, and the ``msrepro flops`` command. Full-size models are built on the meta device and
counted once per test session."""

import functools
import json
import math

import pytest
import torch

from msrepro.runconfig import load_config
from msrepro.flops import accounting, nfe_split
from msrepro.models import resolve_boundaries, resolve_schedule

def config(backbone, variant, preset="full", extra=()):
    overrides = [f"model.backbone={backbone}", f"model.preset={preset}", f"model.variant={variant}", *extra]
    return load_config(overrides=overrides, validate=False)


@functools.lru_cache(maxsize=None)
def full(backbone, variant):
    """Accounting of a full-size CIFAR-10 (3 x 32 x 32) model, computed once per session."""
    return accounting(config(backbone, variant), channels=3)


def close(ours, paper, rel=0.005):
    return abs(ours - paper) <= rel * abs(paper)


# SPEC 4: (params per stage in M or None, GMACs per stage, total params in M, length-weighted GMACs or None)
PARITY = {
    ("dpm_solver", "unified"): ([107.52], [17.64], 107.52, None),
    ("dpm_solver", "multistage"): ([169.5, 107.5, 47.1], [29.93, 17.64, 6.31], 237.17, 18.89),
    ("edm", "unified"): ([55.73], [21.02], 55.73, None),
    ("edm", "multistage"): (None, [35.56, 21.02, 7.58], 128.79, None),
}


@pytest.mark.parametrize("backbone,variant", list(PARITY))
def test_parity_with_the_official_models(backbone, variant):
    params, gmacs, total, weighted = PARITY[(backbone, variant)]
    acc = full(backbone, variant)
    if params is not None:
        assert all(close(o / 1e6, p) for o, p in zip(acc["params"], params, strict=True)), acc["params"]
    assert all(close(o, p) for o, p in zip(acc["gmacs"], gmacs, strict=True)), acc["gmacs"]
    assert close(acc["params_total"] / 1e6, total), acc["params_total"]
    if weighted is not None:
        assert close(acc["gmacs_weighted_length"], weighted), acc["gmacs_weighted_length"]


def test_weighted_figures_are_the_stated_weighted_sums():
    acc = full("dpm_solver", "multistage")
    assert acc["length_weights"] == pytest.approx([0.4420, 0.6308 - 0.4420, 1 - 0.6308])
    assert acc["nfe_per_stage"] == [12, 2, 6]  # SPEC 4: DPM-Solver-3, 20 NFE, logSNR, t 1 -> 1e-4
    assert acc["gmacs_weighted_nfe"] == pytest.approx(sum(n * g for n, g in zip([12, 2, 6], acc["gmacs"])) / 20)


def test_dpm_solver_gmacs_leave_out_what_score_sde_computes_outside_conv_modules():
    """The difference between all conv+linear MACs and the paper's figure is exactly the attention projections
    (4 C^2 per pixel) and the input-pyramid convs, counted by hand for the unified network."""
    acc = full("dpm_solver", "unified")
    attn = 9 * 4 * 256**2 * 16**2 + 4 * 256**2 * 4**2       # 8 encoder + 1 decoder at 16x16, middle at 4x4
    pyramid = 9 * (3 * 128 * 16**2 + 128 * 256 * 8**2 + 256 * 256 * 4**2)
    assert round((acc["gmacs_all"][0] - acc["gmacs"][0]) * 1e9) == attn + pyramid


def test_true_flops_add_attention_products_to_twice_the_macs():
    """EDM unified: FlopCounterMode = 2 x (conv+linear MACs) + attention q.k and w.v products + the [1,1] box
    resampling convolutions, each counted by hand from the architecture."""
    acc = full("edm", "unified")
    attn = sum(2 * 2 * hw**2 * 256 for hw in [16 * 16] * 5 + [8 * 8])  # 4 enc + 1 dec at 16x16, in0 at 8x8
    box_down = sum(2 * 2 * 256 * (r // 2) ** 2 * 4 for r in (32, 16))  # h and x, 2x2 kernel, stride 2
    box_up = sum(2 * 2 * 256 * r**2 * 4 for r in (8, 16))             # transposed: per input pixel
    assert acc["flops"][0] == round(acc["gmacs_all"][0] * 1e9) * 2 + attn + box_down + box_up


def test_heun_nfe_split_from_the_karras_grid():
    cfg = config("edm", "multistage")
    schedule = resolve_schedule(cfg)
    bounds = resolve_boundaries(cfg, schedule)
    # independent: EDM edm_sampler's t_steps, evaluated at t_i (i < 18) and at t_{i+1} (i < 17)
    ramp = [(80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(18)]
    calls = ramp + ramp[1:]
    expected = [sum(lo <= s < hi for s in calls) for lo, hi in [(0, 2.5103), (2.5103, 7.6577), (7.6577, 81)]]
    assert nfe_split("heun", cfg.sample.params, schedule, bounds) == expected
    assert sum(expected) == 35 and full("edm", "multistage")["nfe_per_stage"] == expected
    assert nfe_split("not_a_sampler", {}, schedule, bounds) is None


def test_flops_command_json(capsys):
    from msrepro.cli import main

    assert main(["flops", "edm", "--preset", "tiny", "--variant", "multistage", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("params", "gmacs", "gmacs_weighted_length", "gmacs_weighted_nfe", "params_total", "flops"):
        assert key in out
    acc = accounting(config("edm", "multistage", preset="tiny"))
    assert out["params"] == acc["params"] and out["gmacs"] == pytest.approx(acc["gmacs"])
    assert out["input_shape"] == [1, 8, 8] and len(out["gmacs"]) == 3  # digits at their native 8 px
    assert math.isclose(sum(out["length_weights"]), 1.0)


def test_flops_command_table_and_errors(capsys):
    from msrepro.cli import main

    assert main(["flops", "dpm_solver", "--preset", "smoke", "--variant", "unified"]) == 0
    assert "total parameters" in capsys.readouterr().out
    assert main(["flops", "dpm_solver", "--preset", "nope"]) == 2
    assert "Valid presets: full, smoke, tiny" in capsys.readouterr().err
    if "cifar10" not in __import__("msrepro.registry", fromlist=["DATASETS"]).DATASETS:
        assert main(["flops", "dpm_solver"]) == 2
        assert "--channels" in capsys.readouterr().err



def test_paper_gflops_and_training_pflops_follow_table_2():
    from msrepro.flops import paper_gflops, training_pflops

    multi = accounting(config("dpm_solver", "multistage"))
    assert paper_gflops(multi) == pytest.approx(18.89, rel=5e-3)  # SPEC 4: length-weighted multistage GMACs
    assert paper_gflops(accounting(config("dpm_solver", "unified"))) == pytest.approx(17.64, rel=5e-3)
    # Table 2's own columns: iterations x GFLOPs x 1e-6 = PFLOPs (7.94 and 4.66 for DPM-Solver)
    assert training_pflops(450_000, 17.65) == pytest.approx(7.94, abs=5e-3)
    assert training_pflops(250_000, 18.65) == pytest.approx(4.66, abs=5e-3)
    assert paper_gflops({}) is None and training_pflops(10, None) is None
