"""Stage boundaries: exact [lo, hi) routing, validation, conversion between schedules."""

import pytest
import torch

from msrepro.boundaries import StageBoundaries
from msrepro.schedules import build_schedule

VP = build_schedule({"name": "vp_linear"})
EDM = build_schedule({"name": "edm"})
DDPM = build_schedule({"name": "ddpm_discrete"})


def test_stage_of_t_half_open_intervals():
    b = StageBoundaries((0.4420, 0.6308), VP)
    t = torch.tensor([0.0, 0.1, 0.4419999, 0.4420, 0.5, 0.6308, 0.9, 1.0], dtype=torch.float64)
    assert b.stage_of_t(t).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


def test_stage_of_sigma_agrees_with_time():
    b = StageBoundaries((0.3, 0.7), VP)
    t = torch.rand(1000, dtype=torch.float64) * 0.999 + 1e-4
    assert torch.equal(b.stage_of_sigma(VP.sigma(t)), b.stage_of_t(t))


@pytest.mark.parametrize("cuts, msg", [((0.6, 0.4), "strictly increasing"), ((0.4, 0.4), "strictly increasing"),
                                       ((0.0, 0.5), "inside"), ((0.5, 1.0), "inside"), ((-0.1, 0.5), "inside")])
def test_invalid_cuts_rejected(cuts, msg):
    with pytest.raises(ValueError, match=msg):
        StageBoundaries(cuts, VP)


def test_convert_by_log_snr_matches_sigma():
    b = StageBoundaries((0.4420, 0.6308), VP).convert(EDM, by="log_snr")
    assert b.cuts[0] == pytest.approx(2.5103, abs=5e-4)
    assert b.cuts[1] == pytest.approx(float(VP.sigma(0.6308)), rel=1e-9)
    assert b.converted_by == "log_snr" and b.source["cuts"] == [0.4420, 0.6308]
    back = b.convert(VP, by="log_snr")
    assert back.cuts == pytest.approx((0.4420, 0.6308), abs=1e-12)


def test_convert_by_time_fraction_to_ldm_steps():
    b = StageBoundaries((0.442, 0.631), VP).convert(DDPM, by="time_fraction")
    assert b.cuts == pytest.approx((442.0, 631.0))


def test_lengths_and_round_trip_dict():
    b = StageBoundaries((0.4420, 0.6308), VP)
    assert b.fraction_lengths() == pytest.approx([0.442, 0.1888, 0.3692])
    assert StageBoundaries.from_dict(b.to_dict()) == b
    with pytest.raises(ValueError, match="valid: log_snr, time_fraction"):
        b.convert(EDM, by="nonsense")
