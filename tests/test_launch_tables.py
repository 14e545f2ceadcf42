"""Results tables from hand-made cell result JSONs: ours, the paper's, and the difference, computed here by hand."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from msrepro.cli import main
from msrepro.paper_tables import load_table
from msrepro.launch.results import Run, render, write_tables


def _result(metric: str, value: float, *, steps: int, gmacs: list[float], weighted: float | None = None,
            nfe: int = 20, cuts: list[float] | None = None) -> dict:
    return {"config": {"eval": {"metrics": [metric]}, "train": {"steps": steps},
                       "dataset": {"name": "digits", "resolution": 16}},
            "metrics": {metric: value}, "nfe": nfe, "train": {"step": steps},
            "flops": {"gmacs": gmacs, "gmacs_weighted_length": weighted},
            "cluster": None if cuts is None else {"boundaries": cuts}}


def make_run(root: Path, name: str, preset: str, cells: dict[str, tuple[str, dict | None]]) -> Path:
    """A run folder: ``cells`` maps row refs to (cell key, result or None = never finished)."""
    run = root / name
    (run / "cells").mkdir(parents=True)
    graph = {"rows": {}, "cells": {}, "steps": {}}
    tables = sorted({ref.split(".")[0] for ref in cells})
    for ref, (key, res) in cells.items():
        graph["rows"][ref] = {"ref": ref, "status": "cell", "cell": key, "reason": ""}
        graph["cells"].setdefault(key, {"rows": [], "cluster": None, "train": f"train-{key}",
                                        "evaluate": f"evaluate-{key}"})["rows"].append(ref)
        if res is not None:
            (run / "cells" / f"{key}.json").write_text(json.dumps(res))
    (run / "graph.json").write_text(json.dumps(graph))
    (run / "run.json").write_text(json.dumps({"name": name, "preset": preset, "tables": tables}))
    return run


@pytest.fixture
def full_run(tmp_path):
    return make_run(tmp_path, "A", "full", {
        "table3.unified": ("u", _result("fid", 2.80, steps=450_000, gmacs=[17.64])),
        "table3.multistage": ("m", _result("fid", 2.40, steps=450_000, gmacs=[29.93, 17.64, 6.31], weighted=18.89)),
        "table3.separate": ("s", None),
        "table2.dpm_solver_multistage": ("m2", _result("fid", 2.60, steps=250_000, gmacs=[29.93, 17.64, 6.31],
                                                       weighted=18.89)),
        "table4.snr": ("snr", _result("fid", 2.9, steps=450_000, gmacs=[1.0, 1.0, 1.0], weighted=1.0,
                                      cuts=[0.3481, 0.7090])),
    })


def _csv(table: str, runs: list[Run]) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(render(load_table(table), runs, "csv"))))


def test_ours_paper_and_difference(full_run):
    rows = {r["Method"]: r for r in _csv("table3", [Run.load(full_run)])}
    uni, ms = rows["Unified"], rows["Multistage (ours)"]
    assert (uni["GFLOPs (paper)"], uni["GFLOPs (A)"], uni["Δ GFLOPs (A)"]) == ("17.65", "17.64", "-0.01")
    assert (uni["FID (paper)"], uni["FID (A)"], uni["Δ FID (A)"]) == ("2.73", "2.80", "+0.07")  # 2.80 - 2.73
    assert (ms["GFLOPs (A)"], ms["FID (A)"]) == ("18.89", "2.40")
    assert ms["Δ FID (A)"] == "+0.05"     # 2.40 - 2.35
    assert ms["Δ GFLOPs (A)"] == "+0.24"  # 18.89 - 18.65


def test_pflops_are_iterations_times_gflops(full_run):
    row = {r["Method"]: r for r in _csv("table2", [Run.load(full_run)])}["Multistage DPM-Solver (ours)"]
    assert row["Training iterations (A)"] == "2.50e+05"
    assert row["Total training PFLOPs (A)"] == f"{250_000 * 18.89 * 1e-6:.2f}" == "4.72"
    assert row["Total training PFLOPs (paper)"] == "4.66"
    assert row["Δ Total training PFLOPs (A)"] == "+0.06"  # 4.72 - 4.66


def test_cut_points_and_missing_cells(full_run):
    t4 = {r["Method"]: r for r in _csv("table4", [Run.load(full_run)])}
    assert (t4["SNR [20]"]["t1 (A)"], t4["SNR [20]"]["t2 (A)"]) == ("0.348", "0.709")
    assert t4["Timestep [20, 21]"]["t1 (A)"] == "not in run"
    t3 = {r["Method"]: r for r in _csv("table3", [Run.load(full_run)])}
    assert t3["Separate"]["GFLOPs (A)"] == "missing"  # never submitted in this hand-made run
    step = full_run / "steps" / "train-s"
    step.mkdir(parents=True)
    (step / "failed.json").write_text(json.dumps({"error": "boom"}))
    t3 = {r["Method"]: r for r in _csv("table3", [Run.load(full_run)])}
    assert t3["Separate"]["GFLOPs (A)"] == "failed (train)"


def test_runs_side_by_side_and_metrics_that_are_not_fid(full_run, tmp_path):
    tiny = make_run(tmp_path, "B", "tiny", {"table3.unified": ("u", _result("fd_digits", 5.5, steps=2000,
                                                                             gmacs=[0.05]))})
    text = render(load_table("table3"), [Run.load(full_run), Run.load(tiny)], "csv")
    header = next(csv.reader(io.StringIO(text)))
    # B's Δ columns hold nothing comparable (n/c only), so they are dropped; its ratios to the baseline stay
    assert header[:5] == ["Method", "GFLOPs (paper)", "GFLOPs (A)", "Δ GFLOPs (A)", "GFLOPs (B)"]
    assert "Δ GFLOPs (B)" not in header and "Δ FD_digits (B)" not in header and "GFLOPs ÷ baseline (B / paper)" in header
    assert "FD_digits (B)" in header and "FID (A)" in header
    uni = {r["Method"]: r for r in csv.DictReader(io.StringIO(text))}["Unified"]
    assert uni["FD_digits (B)"] == "5.50"
    assert uni["GFLOPs (B)"] == "0.05"
    assert "n/c" not in uni.values()  # tiny GFLOPs and FD_digits are not the paper's: their Δ columns are gone
    md = render(load_table("table3"), [Run.load(full_run), Run.load(tiny)], "md")
    assert "not the paper's FID" in md


def test_all_formats_written_and_cli(full_run, tmp_path, capsys):
    files = write_tables([load_table("table3")], [Run.load(full_run)], tmp_path / "out")
    assert sorted(p.name for p in files) == ["table3.csv", "table3.json", "table3.md", "table3.tex"]
    assert "\\toprule" in (tmp_path / "out" / "table3.tex").read_text()
    assert json.loads((tmp_path / "out" / "table3.json").read_text())["headers"][0] == "Method"
    assert main(["tables", str(full_run), "--tables", "3", "--format", "latex", "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "Multistage (ours)" in out and "2.40" in out
    assert (tmp_path / "cli" / "table3.md").is_file()


def test_runs_with_the_same_name_are_told_apart_by_folder(full_run, tmp_path):
    other = make_run(tmp_path / "elsewhere", "A", "full", {"table3.unified": ("u", _result("fid", 2.60, steps=1,
                                                                                          gmacs=[17.64]))})
    header = next(csv.reader(io.StringIO(render(load_table("table3"), [Run.load(full_run), Run.load(other)], "csv"))))
    assert f"FID ({full_run})" in header and f"FID ({other})" in header


def test_table_notes_say_which_objective_gave_the_cut_points(tmp_path):
    od = _result("fid", 2.4, steps=1, gmacs=[1.0, 1.0, 1.0], weighted=1.0, cuts=[0.226, 0.676])
    od["cluster"]["objective"] = "interval DP, weighting=per_point: mean within-interval similarity"
    run = Run.load(make_run(tmp_path, "A", "full", {"table4.optimal_denoiser": ("od", od),
                                                     "table4.snr": ("snr", _result("fid", 2.9, steps=1, gmacs=[1.0],
                                                                                   cuts=[0.348, 0.709]))}))
    md = render(load_table("table4"), [run], "md")
    assert "- A: cut points of Optimal Denoiser (ours): interval DP, weighting=per_point: mean within-interval " \
           "similarity." in md
    assert "cut points of SNR" not in md  # a result without an objective (older runs) adds no note
    assert json.loads(render(load_table("table4"), [run], "json"))["notes"][0].startswith("A: cut points of Optimal")
    assert "cut points of" not in render(load_table("table3"), [run], "md")  # no cut-point columns there


def test_copy_run_results_replaces_what_an_earlier_run_left(tmp_path):
    """results/<run> is rebuilt from the work folder: a cell, grid or plot of an earlier run does not survive."""
    from msrepro.launch.results import copy_run_results

    run_dir, out = tmp_path / "runs" / "r", tmp_path / "results" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text("{}")
    (run_dir / "graph.json").write_text('{"steps": {}, "cells": {}}')
    for sub in ("cells", "grids", "plots"):
        (out / sub).mkdir(parents=True)
        (out / sub / "stale.json").write_text("{}")
    made = copy_run_results(run_dir, out)
    assert made == {"cells": [], "grids": [], "plots": []}
    assert not any((out / sub).exists() for sub in ("cells", "grids", "plots"))
    assert (out / "run.json").is_file() and (out / "states.json").is_file()
