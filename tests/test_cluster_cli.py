"""``msrepro cluster``: JSON and readable output, files written, and bad input that fails at once."""

import json

import pytest

from msrepro.cli import main
from msrepro.config import ConfigError, load_config
from msrepro.validate import validate_stages


def cluster(capsys, *args):
    rc = main(["cluster", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("name,cuts", [("snr", [0.348, 0.709]), ("timestep", [0.334, 0.667])])
def test_json_prints_one_object_with_the_cut_points(capsys, tmp_path, name, cuts):
    rc, out, err = cluster(capsys, name, "--json", "--out", str(tmp_path))
    assert rc == 0, err
    d = json.loads(out)  # exactly one JSON object on stdout
    assert d["boundaries"] == cuts and d["k"] == 3 and d["clusterer"] == name
    assert "matrix" not in d["diagnostics"]  # the plotted arrays stay in the file
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["boundaries"] == cuts and "matrix" in saved["diagnostics"]
    assert d["files"]["curves"].endswith("curves.png") and (tmp_path / "matrix.png").is_file()


def test_readable_summary_and_k4_with_overrides(capsys, tmp_path):
    rc, out, err = cluster(capsys, "optimal_denoiser", "--dataset", "digits", "--k", "4", "samples=64",
                           "eta=0.01", "dataset.resolution=8", "--out", str(tmp_path), "--no-progress")
    assert rc == 0, err
    d = json.loads((tmp_path / "result.json").read_text())
    assert len(d["boundaries"]) == 3 and d["params"]["eta"] == 0.01 and d["params"]["samples"] == 64
    assert d["provenance"]["dataset"]["resolution"] == 8
    assert "cut points (t):" in out and str(tmp_path / "result.json") in out and str(tmp_path / "curves.png") in out


def test_default_output_folder_names_the_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = cluster(capsys, "snr", "--k", "2", "--json", "--no-plots")
    assert rc == 0, err
    assert (tmp_path / "runs" / "cluster" / "snr-k2" / "result.json").is_file()


@pytest.mark.parametrize("args,expected", [
    (["optimal_denoiser", "etaa=0.1"], "Did you mean 'eta'?"),
    (["optimal_denoiser", "objective=gurobi"], "allowed: interval_dp, threshold"),
    (["optimal_denoiser", "--dataset", "cifar"], "Valid names: cifar10, digits, image_folder, image_zip"),
    (["snr", "--k", "1"], "need at least 2 stages"),
    (["snr", "--schedule", "cosine"], "Valid names: ddpm_discrete, edm, vp_linear"),
    (["optimal_denoiser", "--k", "4", "objective=threshold", "samples=4"], "k must be 3"),
    (["optimal_denoiser", "--dataset", "cifar10", "dataset.root=/nonexistent"], "msrepro prefetch cifar10"),
])
def test_bad_input_fails_at_once_naming_valid_options(capsys, tmp_path, args, expected):
    rc, out, err = cluster(capsys, *args, "--out", str(tmp_path))
    assert rc == 2 and expected in err and out == ""
    assert not (tmp_path / "result.json").exists()


def test_unknown_clusterer_lists_the_registered_ones(capsys, tmp_path):
    rc, out, err = cluster(capsys, "nonsense", "--out", str(tmp_path))
    assert rc == 2 and "unknown clusterers 'nonsense'. Valid names: gradient, " in err
    assert all(n in err.split("Valid names:")[1] for n in ["optimal_denoiser", "snr", "timestep"])


def test_stage_boundaries_must_increase():
    cfg = load_config([], ["stages.boundaries=[0.6,0.4]"], validate=False, preset=False)
    with pytest.raises(ConfigError, match=r"strictly increasing, got \[0.6, 0.4\]"):
        validate_stages(cfg)
    cfg = load_config([], ["stages.boundaries=[0.4,1.2]"], validate=False, preset=False)
    with pytest.raises(ConfigError, match=r"strictly inside the schedule's time domain \(0.0, 1.0\)"):
        validate_stages(cfg)


def test_config_show_with_t2_below_t1_fails(capsys):
    rc = main(["config", "show", "stages.boundaries=[0.6,0.4]"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "strictly increasing" in err or "Valid names" in err  # which check fires first depends on what is registered
