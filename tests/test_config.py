"""Run-config resolution: the unified variant's canonical form, and stage settings checked for the others."""

import pytest

from msrepro.config import ConfigError
from msrepro.runconfig import load_config
from msrepro.flops import accounting


def test_unified_variant_drops_the_presets_stage_settings():
    cfg = load_config(overrides=["model.preset=full", "model.variant=unified"], validate=False)
    assert (cfg.stages.num_stages, cfg.stages.boundaries, cfg.model.decoder_channels) == (1, None, None)
    # canonical: spelling the stage settings out gives the very same config (same hash for the launcher)
    spelled = load_config(overrides=["model.preset=full", "model.variant=unified", "stages.num_stages=1",
                                     "stages.boundaries=null", "model.decoder_channels=null"], validate=False)
    assert cfg == spelled
    # and it is the paper's unified DPM-Solver model: one stage of 107.52 M parameters (SPEC 4)
    acc = accounting(load_config(overrides=["model.preset=full", "model.variant=unified", "dataset.name=cifar10"],
                                 validate=False), channels=3)
    assert len(acc["params"]) == 1 and acc["params"][0] / 1e6 == pytest.approx(107.52, rel=5e-4)


def test_multistage_keeps_its_stages_and_rejects_a_wrong_decoder_count():
    cfg = load_config(overrides=["model.variant=multistage"])
    assert cfg.stages.num_stages == 3 and len(cfg.model.decoder_channels) == 3
    with pytest.raises(ConfigError, match="decoder widths"):
        load_config(overrides=["model.variant=multistage", "model.decoder_channels=[32,16]"])
