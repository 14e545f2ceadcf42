"""``msrepro cluster``: JSON and readable output, files written, and bad input that fails at once."""

import json

import pytest

from msrepro.cli import main
from msrepro.clustering import ClusterInputs
from msrepro.config import ConfigError
from msrepro.runconfig import load_config
from msrepro.boundaries import validate_stages


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


@pytest.mark.parametrize("args,expected", [
    (["timestep", "--k", "2000"], "valid k: 2..500, the largest valid k is 500"),
    (["snr", "--k", "501", "size_limits=symmetric"], "size_limits=symmetric (a finer grid allows more); valid k: 2.."),
    (["snr", "--k", "30", "grid=40"], "valid k: 2..20, the largest valid k is 20"),
    (["gradient", "--k", "51"], "valid k: 2..50, the largest valid k is 50"),
    (["optimal_denoiser", "--dataset", "digits", "--k", "100"], "valid k: 2..21, the largest valid k is 21"),
    (["optimal_denoiser", "--k", "8", "min_size=3"], "valid k: 2..7, the largest valid k is 7"),
    (["snr", "size_limits=loose"], "allowed: official, symmetric, none"),
])
def test_impossible_k_fails_before_any_work(capsys, tmp_path, monkeypatch, args, expected):
    """Exit 2 with one line naming the valid range, before any data, network or similarity is touched."""
    def no_work(*a, **k):
        raise AssertionError("the clusterer started work before rejecting k")

    for hook in ("data", "training_batch", "get_run_config", "network_config"):
        monkeypatch.setattr(ClusterInputs, hook, no_work)
    rc, out, err = cluster(capsys, *args, "--out", str(tmp_path))
    assert rc == 2 and expected in err and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "result.json").exists()


@pytest.mark.parametrize("name,k", [("timestep", 501), ("snr", 2000), ("gradient", 60), ("optimal_denoiser", 22)])
def test_fit_rejects_an_impossible_k_with_a_config_error(name, k):
    from msrepro.clustering import build_clusterer
    from msrepro.schedules import VPLinearSchedule

    clusterer = build_clusterer(name)
    lo, hi = clusterer.k_range()
    assert (lo, clusterer.accepts_k(hi), clusterer.accepts_k(hi + 1)) == (2, True, False) and k > hi
    with pytest.raises(ConfigError, match=f"k={k} .*the largest valid k is {hi}"):
        clusterer.fit(VPLinearSchedule(), ClusterInputs(dataset={"name": "cifar10", "root": "/nonexistent"},
                                                        progress=False), k)


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
    assert rc == 2 and "stages.boundaries must be strictly increasing, got [0.6, 0.4]" in err, err
