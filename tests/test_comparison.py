"""Scale-free comparison columns (ratios to the baseline, verdicts, real-data floor, compute to reach, ES notes),
checked against values computed here from the cell JSONs of a hand-made run folder in the real cell format."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from msrepro import comparison
from msrepro.paper_tables import load_table
from msrepro.launch.results import Run, assemble_table, render, write_tables

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = json.loads(next(iter(sorted((ROOT / "results" / "tiny" / "cells").glob("*.json")))).read_text())
FLOOR = {"metrics": {"fd_digits": 33.79}, "metrics_std": {"fd_digits": 0.0}, "num_samples": 297, "blocks": 1,
         "split": "test", "dataset": "digits", "requested_samples": 297,
         "protocol": "digits test split, 1 disjoint block(s) of 297 images, same reference and feature extractor"}


def cell(key: str, rows: list[str], mean: float, std: float, *, repeats: int = 3, steps: int = 200,
         gmacs: float = 0.1, curve: list[tuple[int, float]] | None = None, early_stopped: dict | None = None,
         es: bool = False) -> dict:
    """A cell result JSON in the format of results/tiny/cells/*.json, with the given quality and extras."""
    res = copy.deepcopy(TEMPLATE)
    res.update(cell=key, hash=key, rows=rows, metrics={"fd_digits": mean}, metrics_std={"fd_digits": std},
               num_samples=297, step=steps, floor=FLOOR)
    res["config"]["eval"].update(metrics=["fd_digits"], repeats=repeats, num_samples=297)
    res["config"]["train"].update(steps=steps, early_stopping={"patience": 5} if es else {})
    res["train"].update(step=steps, steps=steps)
    res["flops"].update(gmacs=[gmacs], gmacs_weighted_length=gmacs)
    if curve is not None:
        res["curve"] = [{"step": s, "pflops": s * gmacs * 1e-6, "metrics": {"fd_digits": q}, "num_samples": 100}
                        for s, q in curve]
    if early_stopped is not None:
        res["early_stopped"] = early_stopped
    return res


def make_run(root: Path, cells: dict[str, dict], name: str = "T", preset: str = "tiny") -> Path:
    run = root / name
    (run / "cells").mkdir(parents=True)
    graph: dict = {"rows": {}, "cells": {}, "steps": {}}
    for key, res in cells.items():
        for ref in res["rows"]:
            graph["rows"][ref] = {"ref": ref, "status": "cell", "cell": key, "reason": ""}
        graph["cells"][key] = {"rows": res["rows"], "cluster": None, "train": f"train-{key}",
                               "evaluate": f"evaluate-{key}"}
        (run / "cells" / f"{key}.json").write_text(json.dumps(res))
    tables = sorted({ref.split(".")[0] for res in cells.values() for ref in res["rows"]})
    (run / "graph.json").write_text(json.dumps(graph))
    (run / "run.json").write_text(json.dumps({"name": name, "preset": preset, "tables": tables}))
    return run


@pytest.fixture
def run(tmp_path) -> Path:
    uni_curve = [(50, 300.0), (100, 120.0), (200, 60.0)]
    return make_run(tmp_path, {
        "u": cell("u", ["table3.unified", "table2.dpm_solver"], 60.0, 2.0, curve=uni_curve),
        "m": cell("m", ["table3.multistage", "table2.dpm_solver_multistage"], 52.0, 1.0, steps=111, gmacs=0.0994,
                  curve=[(25, 280.0), (50, 110.0), (111, 52.0)]),
        "s": cell("s", ["table3.separate"], 66.0, 3.0),
        "se": cell("se", ["table3.separate_es"], 61.0, 2.0, es=True, early_stopped={"0": 120, "1": None, "2": 80}),
        "stp": cell("stp", ["table3.separate_tp"], 67.0, 1.0),
        "setp": cell("setp", ["table3.separate_es_tp"], 62.0, 1.0, es=True),   # no early-stopping record
        "e": cell("e", ["table2.edm_celeba"], 40.0, 1.0, gmacs=0.2, curve=[(100, 90.0), (200, 40.0)]),
        "em": cell("em", ["table2.edm_celeba_multistage"], 45.0, 1.0, steps=151, gmacs=0.21,
                   curve=[(75, 95.0), (151, 45.0)]),
        "l": cell("l", ["table2.ldm"], 80.0, 2.0, gmacs=0.0228, curve=[(100, 200.0), (200, 80.0)]),
        "lm": cell("lm", ["table2.ldm_multistage"], 70.0, 2.0, steps=69, gmacs=0.0251, curve=[(69, 75.0)]),
    })


def rows_of(table: str, run_dir: Path) -> dict[str, dict[str, str]]:
    return {r["Method"]: r for r in csv.DictReader(io.StringIO(render(load_table(table), [Run.load(run_dir)], "csv")))}


def cells_of(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "cells").glob("*.json")}


def expected_verdict(a: dict, b: dict, paper_a: float, paper_b: float) -> str:
    """Written out independently of msrepro.comparison.verdict, from the JSON fields."""
    da = a["metrics"]["fd_digits"] - b["metrics"]["fd_digits"]
    sigma = (a["metrics_std"]["fd_digits"] ** 2 + b["metrics_std"]["fd_digits"] ** 2) ** 0.5
    if abs(da) <= sigma:
        return "inconclusive"
    return "agrees" if np.sign(da) == np.sign(paper_a - paper_b) else "disagrees"


def test_quality_is_mean_plus_minus_std_and_no_quality_column_is_all_nc(run):
    t3 = rows_of("table3", run)
    c = cells_of(run)
    assert t3["Unified"]["FD_digits (T)"] == f"{c['u']['metrics']['fd_digits']:.2f} ± " \
                                              f"{c['u']['metrics_std']['fd_digits']:.2f}" == "60.00 ± 2.00"
    for table in ("table1", "table2", "table3", "table4"):
        view = assemble_table(load_table(table), [Run.load(run)])
        for i, h in enumerate(view.headers):
            if "FD_digits" in h:
                assert any(line[i] not in ("n/c", "") for line in view.rows), (table, h)
        assert not any(h.startswith("Δ FD_digits") for h in view.headers)  # nothing comparable: dropped


def test_ratio_to_baseline_beside_the_paper(run):
    t3, c, paper = rows_of("table3", run), cells_of(run), load_table("table3")
    col = "FD_digits ÷ baseline (T / paper)"
    for label, key, row_id in (("Multistage (ours)", "m", "multistage"), ("Separate", "s", "separate")):
        ours = c[key]["metrics"]["fd_digits"] / c["u"]["metrics"]["fd_digits"]
        theirs = paper.row(row_id).paper["quality"] / paper.row("unified").paper["quality"]
        assert t3[label][col] == f"{ours:.2f} / {theirs:.2f}"
    assert t3["Multistage (ours)"][col] == "0.87 / 0.86"  # 52 / 60, 2.35 / 2.73
    assert t3["Unified"][col] == "baseline"
    t2 = rows_of("table2", run)
    pf = "Total training PFLOPs ÷ baseline (T / paper)"
    ours = (111 * 0.0994) / (200 * 0.1)  # iterations x GFLOPs, the 1e-6 cancels
    assert t2["Multistage DPM-Solver (ours)"][pf] == f"{ours:.2f} / {4.66 / 7.94:.2f}" == "0.55 / 0.59"
    assert t2["Multistage DPM-Solver (ours)"]["GFLOPs ÷ baseline (T / paper)"] == f"{0.0994 / 0.1:.2f} / " \
                                                                                  f"{18.65 / 17.65:.2f}"


def test_verdicts_against_an_independent_computation(run):
    t3, c, paper = rows_of("table3", run), cells_of(run), load_table("table3")
    col = "ordering vs baseline (T)"
    for label, key, row_id in (("Multistage (ours)", "m", "multistage"), ("Separate", "s", "separate"),
                               ("Separate (+ ES)", "se", "separate_es"), ("Separate (+ TP)", "stp", "separate_tp")):
        want = expected_verdict(c[key], c["u"], paper.row(row_id).paper["quality"], paper.row("unified").paper["quality"])
        assert t3[label][col] == want
    # by hand: 52-60 = -8 beyond sqrt(5), paper -0.38: agrees; 67-60 = +7 beyond sqrt(5), paper -0.05: disagrees;
    # 61-60 = 1 within sqrt(8): inconclusive
    assert [t3[x][col] for x in ("Multistage (ours)", "Separate (+ TP)", "Separate (+ ES)")] == \
        ["agrees", "disagrees", "inconclusive"]
    counts = comparison.agreement([load_table("table3")], Run.load(run), assemble_table)
    assert counts == {"agrees": 2, "disagrees": 1, "inconclusive": 2}  # + separate (agrees), + ES,TP (62: within)
    assert comparison.agreement_text(counts) == "2 of 5 orderings agree with the paper, 2 inconclusive, 1 disagree"


def test_floor_row(run):
    t3 = rows_of("table3", run)
    floor = t3["Real digits (test split)"]
    assert floor["FD_digits (T)"] == f"{FLOOR['metrics']['fd_digits']:.2f}" == "33.79"  # one block: no ± shown
    assert floor["FID (paper)"] == "-"
    assert floor["FD_digits ÷ baseline (T / paper)"] == f"{33.79 / 60.0:.2f} / -"
    assert floor["ordering vs baseline (T)"] == "real data"
    assert "Real digits (test split)" in rows_of("table2", run)
    assert "Real digits (test split)" not in rows_of("table4", run)  # no cell of table 4 in this run: no floor
    md = render(load_table("table3"), [Run.load(run)], "md")
    assert "Real digits (test split): digits test split, 1 disjoint block(s) of 297 images" in md


def test_compute_to_reach(run):
    t2, c = rows_of("table2", run), cells_of(run)
    col = "compute to reach baseline quality (T / paper)"
    uni, ms = c["u"]["curve"], c["m"]["curve"]
    target, total = uni[-1]["metrics"]["fd_digits"], uni[-1]["pflops"]
    # np.interp on the decreasing curve (reversed to increasing FD): PFLOPs where FD = target
    fd = [p["metrics"]["fd_digits"] for p in ms][::-1]
    pf = [p["pflops"] for p in ms][::-1]
    want = float(np.interp(target, fd, pf)) / total
    assert t2["Multistage DPM-Solver (ours)"][col] == f"{want:.2f} / {4.66 / 7.94:.2f}"
    assert math.isclose(want, (50 * 0.0994e-6 + (110 - 60) / (110 - 52) * 61 * 0.0994e-6) / 200e-7)
    assert t2["Multistage EDM (ours)"][col] == f"not reached / {8.28 / 10.06:.2f}"  # 45 never reaches 40
    assert t2["Multistage LDM (ours)"][col] == f"≤ {69 * 0.0251 / (200 * 0.0228):.2f} / {12.95 / 43.31:.2f}"
    assert t2["DPM-Solver"][col] == "baseline"


def test_early_stopping_notes(run):
    md = render(load_table("table3"), [Run.load(run)], "md")
    assert "- T: Separate (+ ES): early stopping: stage 0: step 120, stage 1: not triggered, stage 2: step 80." in md
    assert "- T: Separate (+ ES, TP): early stopping: not recorded." in md
    assert "Separate (+ TP): early stopping" not in md  # no early stopping configured: no note
    assert comparison.early_stopping_note({"early_stopped": {"0": None, "1": None}}) == "not triggered"
    assert comparison.early_stopping_note({"early_stopped": {"1": 40, "0": None}}) == \
        "stage 0: not triggered, stage 1: step 40"
    assert comparison.early_stopping_note({"train": {"metrics": {}}}) == "not recorded"


def test_verdict_closed_forms():
    v = comparison.verdict
    assert v(2.0, 0.1, 3.0, 0.1, 2.35, 2.73) == "agrees"          # both lower, |Δ| = 1 > 0.14
    assert v(3.0, 0.1, 2.0, 0.1, 2.35, 2.73) == "disagrees"
    assert v(2.9, 0.1, 3.0, 0.1, 2.35, 2.73) == "inconclusive"    # |Δ| = 0.1 <= 0.141
    assert v(2.9, 0.1, 3.0, 0.1, 2.05, 2.05) == "agrees"          # paper tie, within the error bars
    assert v(2.0, 0.1, 3.0, 0.1, 2.05, 2.05) == "disagrees"
    assert v(2.0, None, 3.0, 0.1, 2.35, 2.73) == "inconclusive"   # one seed block: no error bars


def test_one_seed_block_is_inconclusive_and_marked(tmp_path):
    r = make_run(tmp_path, {"u": cell("u", ["table3.unified"], 60.0, 0.0, repeats=1),
                            "m": cell("m", ["table3.multistage"], 30.0, 0.0, repeats=1)})
    t3 = rows_of("table3", r)
    assert t3["Multistage (ours)"]["ordering vs baseline (T)"] == "inconclusive (1 seed block)"
    assert t3["Multistage (ours)"]["FD_digits (T)"] == "30.00"  # no ± with one block


def test_all_formats_and_plot(run, tmp_path):
    files = write_tables([load_table(f"table{i}") for i in (1, 2, 3, 4)], [Run.load(run)], tmp_path / "out")
    assert len(files) == 16
    tex = (tmp_path / "out" / "table2.tex").read_text()
    assert "\\toprule" in tex and "compute to reach" in tex
    js = json.loads((tmp_path / "out" / "table3.json").read_text())
    assert js["rows"][-1][0] == "Real digits (test split)" and len(js["rows"][-1]) == len(js["headers"])
    pngs = comparison.compute_plots(load_table("table2"), Run.load(run), tmp_path / "plots")
    assert sorted(Path(p).name for p in pngs) == [f"compute-to-quality-{b}.png" for b in ("dpm_solver", "edm", "ldm")]
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_real_data_floor_counts_and_cache(tmp_path):
    from msrepro.evaluation.extras import real_data_floor
    from msrepro.paper_tables import row_config

    cfg = row_config(load_table("table3").row("unified"), "smoke")
    cfg.eval.metrics, cfg.eval.num_samples, cfg.eval.repeats = ["fd_digits"], 100, 3
    f = real_data_floor(cfg, cache=tmp_path)
    assert (f["num_samples"], f["blocks"]) == (100, 2)  # 297 test images hold two disjoint blocks of 100
    assert f["metrics"]["fd_digits"] > 0 and f["metrics_std"]["fd_digits"] > 0
    cached = next(tmp_path.glob("floor-*.json"))
    cached.write_text(json.dumps({**f, "metrics": {"fd_digits": -1.0}}))
    assert real_data_floor(cfg, cache=tmp_path)["metrics"]["fd_digits"] == -1.0  # computed once, then read
    cfg.eval.num_samples = 1000
    g = real_data_floor(cfg, cache=tmp_path)
    assert (g["num_samples"], g["blocks"], g["requested_samples"]) == (297, 1, 1000)


def test_cell_extras_copy_the_es_record_and_never_raise(tmp_path):
    from msrepro.evaluation.extras import cell_extras
    from msrepro.paper_tables import row_config

    cfg = row_config(load_table("table3").row("separate_es"), "smoke")
    cfg.eval.num_samples, cfg.eval.curve_samples = 64, 32
    train = {"run_dir": str(tmp_path / "no-such-run"), "metrics": {"early_stopped": {"0": 7, "1": None}}}
    out = cell_extras(tmp_path, cfg, train)
    assert out["early_stopped"] == {"0": 7, "1": None}
    assert out["floor"]["num_samples"] == 64 and list((tmp_path / "floors").glob("floor-*.json"))
    assert "no checkpoints" in out["extras_errors"]["curve"]  # asked for a curve, the run has no checkpoints
    cfg.eval.curve_samples = None
    assert "curve" not in cell_extras(tmp_path, cfg, {"run_dir": "x"}) and "early_stopped" not in \
        cell_extras(tmp_path, cfg, {"run_dir": "x"})
