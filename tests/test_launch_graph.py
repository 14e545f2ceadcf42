"""Job graph: table rows -> cells -> deduplicated steps (SPEC 2: identical resolved configs run once)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from msrepro.config import ConfigError
from msrepro.launch.plan import cell_key, config_hash, plan
from msrepro.paper_tables import PRESETS, load_table, row_config, select_tables, table_names
from msrepro.registry import BACKBONES


@pytest.fixture(scope="module")
def smoke():
    return plan(["all"], "smoke")


def _canonical(cfg) -> str:
    d = OmegaConf.to_container(cfg, resolve=True)
    for k in ("name", "output_dir", "device"):
        d.pop(k)
    return json.dumps(d, sort_keys=True)


def test_registry_has_the_four_tables_with_the_papers_numbers():
    assert table_names() == ["table1", "table2", "table3", "table4"]
    t1, t2, t3, t4 = (load_table(f"table{i}") for i in range(1, 5))
    assert [(r.paper["nfe"], r.paper["quality"]) for r in t1.rows if r.quoted] == [
        (1000, 3.17), (2000, 2.20), (147, 2.35), (100, 4.16), (20, 2.97), (20, 2.86)]  # SPEC 5 literature rows
    assert t1.row("dpm_solver_multistage").paper == {"nfe": 20, "quality": 2.35}
    assert t1.row("edm_multistage").paper == {"nfe": 35, "quality": 1.96}
    assert t2.row("edm_celeba_multistage").paper["pflops"] == 8.28
    assert [r.paper["quality"] for r in t3.rows] == [2.73, 2.87, 2.80, 2.68, 2.52, 2.35]
    assert [(r.paper["t1"], r.paper["t2"]) for r in t4.rows] == [(0.330, 0.670), (0.348, 0.709), (0.360, 0.660),
                                                                  (0.442, 0.631)]
    # the paper's PFLOPs column is iterations x GFLOPs x 1e-6 (footnote 2); the registry's numbers agree
    for r in t2.rows:
        assert r.paper["iterations"] * r.paper["gflops"] * 1e-6 == pytest.approx(r.paper["pflops"], abs=0.011)


def test_identical_cells_across_tables_run_once(smoke):
    rows = smoke.rows
    same = {rows[r].cell for r in ("table1.dpm_solver", "table2.dpm_solver", "table3.unified")}
    assert len(same) == 1
    assert rows["table1.dpm_solver_multistage"].cell == rows["table3.multistage"].cell == \
        rows["table4.optimal_denoiser"].cell
    # independently: two rows share a cell exactly when their resolved configs are equal
    refs = [r for r, e in rows.items() if e.status == "cell"]
    canon = {r: _canonical(row_config(load_table(r.split(".")[0]).row(r.split(".")[1]), "smoke", validate=False))
             for r in refs}
    for a in refs:
        for b in refs:
            if canon[a] == canon[b]:
                assert rows[a].cell == rows[b].cell, (a, b)
    assert len(smoke.cells) == len({e.cell for e in rows.values() if e.cell})
    # one evaluate step per cell, each once
    assert sorted(s.key for s in smoke.steps.values() if s.kind == "evaluate") == sorted(smoke.cells)


def test_steps_dedup_at_their_own_level(smoke):
    c25, c35 = smoke.cells[smoke.rows["table1.edm_nfe25"].cell], smoke.cells[smoke.rows["table1.edm"].cell]
    assert c25.key != c35.key and c25.evaluate != c35.evaluate  # sampled differently ...
    assert c25.train == c35.train                                # ... from one training run
    # every multistage DPM-Solver row clustered with optimal_denoiser on digits shares one cluster step
    od = {smoke.cells[smoke.rows[r].cell].cluster for r in ("table1.dpm_solver_multistage", "table3.separate",
                                                             "table3.separate_tp", "table2.dpm_solver_multistage")}
    assert len(od) == 1
    unified = smoke.cells[smoke.rows["table3.unified"].cell]
    assert unified.cluster is None
    # the gradient clusterer differentiates the unified model: its cluster step waits for that train step
    grad = smoke.cells[smoke.rows["table4.gradient"].cell]
    assert smoke.steps[grad.cluster].deps == [unified.train]


def test_graph_is_topological_and_levels_respect_dependencies(smoke):
    seen = set()
    for sid, step in smoke.steps.items():
        assert set(step.deps) <= seen, sid
        seen.add(sid)
    depth = {s.id: i for i, level in enumerate(smoke.levels()) for s in level}
    for step in smoke.steps.values():
        assert all(depth[d] < depth[step.id] for d in step.deps)
    for cell in smoke.cells.values():
        assert smoke.steps[cell.evaluate].deps == [cell.train]
        deps = smoke.steps[cell.train].deps
        if cell.config.dataset.name == "latents":  # latent diffusion: the backbone's prerequisite comes first
            assert deps[0].startswith("prepare-")
            deps = deps[1:]
        assert deps == ([cell.cluster] if cell.cluster else [])


def test_hash_changes_with_what_a_step_reads():
    row = load_table("table3").row("multistage")
    cfg = row_config(row, "smoke")
    other = cfg.copy()
    other.train.lr = 1e-3
    assert cell_key(other) != cell_key(cfg)
    moved = cfg.copy()
    moved.output_dir = "elsewhere"
    moved.name = "x"
    assert cell_key(moved) == cell_key(cfg)
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})


def test_latent_rows_share_one_vae_step(smoke):
    assert "ldm" in BACKBONES, "the built-in ldm backbone must be registered"
    ldm = [smoke.cells[smoke.rows[r].cell] for r in ("table2.ldm", "table2.ldm_multistage")]
    vae = {d for c in ldm for d in smoke.steps[c.train].deps if d.startswith("prepare-")}
    assert len(vae) == 1 and smoke.steps[ldm[1].cluster].deps == list(vae)
    assert sum(s.kind == "prepare" for s in smoke.steps.values()) == 1
    # the step is LDM's own: its VAE run config, with the row's overrides for the preset
    assert smoke.steps[next(iter(vae))].config.train.steps == 4 and "latents" not in str(smoke.steps[next(iter(vae))].config)


def test_quoted_rows_are_not_run_and_every_builtin_row_is(smoke):
    assert all(smoke.rows[f"table1.{r}"].status == "quoted" for r in ("ddpm", "score_sde", "pfgm", "ddim", "gddim",
                                                                       "deis"))
    run_rows = [r for r, e in smoke.rows.items() if e.status != "quoted"]
    assert {"table2.ldm", "table2.ldm_multistage"} <= set(run_rows)
    assert [r for r in run_rows if smoke.rows[r].status != "cell"] == []  # built-in backbones only: all rows run


def _one_row_table(tmp_path, backbone: str) -> str:
    import yaml

    from msrepro.paper_tables import experiments_dir

    table = yaml.safe_load((experiments_dir() / "table3.yaml").read_text())
    table["rows"] = [{**table["rows"][0], "id": "mine", "backbone": backbone}]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(table))
    return str(path)


def test_an_outside_backbone_that_is_not_installed_is_skipped_with_the_reason(tmp_path):
    graph = plan([_one_row_table(tmp_path, "someone_elses_unet")], "smoke")
    assert (graph.rows["table3.mine"].status, graph.rows["table3.mine"].reason) == (
        "skipped", "backbone someone_elses_unet not installed")


def test_a_missing_builtin_backbone_is_an_error(tmp_path, monkeypatch):
    from msrepro._builtins import BUILTIN_BACKBONES

    monkeypatch.setitem(BUILTIN_BACKBONES, "ghost", "msrepro.backbones.ghost")
    with pytest.raises(ConfigError, match=r"table3.mine: built-in backbone 'ghost' is not registered: msrepro's "
                                          r"entry point ghost = msrepro.backbones.ghost is missing"):
        plan([_one_row_table(tmp_path, "ghost")], "smoke")


def test_a_broken_builtin_backbone_stops_submit_dry_run(tmp_path):
    """ldm failing to import (its module made unimportable in a fresh interpreter) is exit 2 naming the error,
    not Table 2 without its LDM rows; `msrepro list backbones` reports the failure too."""
    import subprocess
    import sys

    def run(*argv: str) -> subprocess.CompletedProcess:
        code = ("import sys; sys.modules['msrepro.backbones.ldm'] = None\n"  # import of it is halted: ImportError
                f"from msrepro.cli import main; sys.exit(main({list(argv)!r}))")
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    out = run("submit", "table2", "--preset", "smoke", "--dry-run", "--executor", "local")
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert "msrepro submit: error: table2.ldm: backbone 'ldm' (msrepro.backbones.ldm) failed to import: " \
           "ModuleNotFoundError: import of msrepro.backbones.ldm halted" in out.stderr
    listed = run("list", "backbones")
    assert listed.returncode == 1 and "plugin ldm = msrepro.backbones.ldm (group msrepro.backbones) FAILED" in listed.stdout


def test_presets_scale_the_budgets():
    t2 = load_table("table2")
    full = row_config(t2.row("dpm_solver_multistage"), "full")
    assert full.train.steps == 250_000 and full.dataset.name == "cifar10"
    assert row_config(t2.row("edm_celeba"), "full").train.steps == 570_000
    for preset in ("tiny", "smoke"):
        assert row_config(t2.row("edm_celeba"), preset).dataset.name == "digits"
    assert set(PRESETS) == {"full", "tiny", "smoke"}


@pytest.mark.parametrize("unified,multistage", [("dpm_solver", "dpm_solver_multistage"),
                                                ("edm_celeba", "edm_celeba_multistage"), ("ldm", "ldm_multistage")])
def test_tiny_table2_keeps_the_papers_iteration_ratio_and_curve_checkpoints(unified, multistage):
    t2 = load_table("table2")
    uni, ms = (row_config(t2.row(r), "tiny") for r in (unified, multistage))
    ratio = t2.row(multistage).paper["iterations"] / t2.row(unified).paper["iterations"]  # e.g. 250k / 450k
    assert ms.train.steps == round(uni.train.steps * ratio)
    for cfg in (uni, ms):  # checkpoints kept at 20 / 40 / 60 / 80 % of training (the last one is the final)
        assert list(cfg.train.save_steps) == [round(cfg.train.steps * f / 5) for f in range(1, 5)]


@pytest.mark.parametrize("bad, valid", [(["table9"], "table1, table2, table3, table4"), (["all"], None)])
def test_bad_names_list_the_valid_ones(bad, valid):
    if valid is None:
        with pytest.raises(ConfigError, match="valid presets: full, tiny, smoke"):
            plan(bad, "huge")
    else:
        with pytest.raises(ConfigError, match=valid):
            select_tables(bad)


def test_a_cluster_step_that_cannot_meet_its_k_fails_the_plan(tmp_path):
    """The grid checks each cluster step's k against its clusterer (here: snr on a 10-point grid allows k <= 5)
    before anything is queued; the message names the row, the key and the valid range."""
    import yaml

    from msrepro.paper_tables import experiments_dir

    table = yaml.safe_load((experiments_dir() / "table4.yaml").read_text())
    row = {**table["rows"][1], "id": "snr_k6"}
    row["config"] = {"model": {"variant": "multistage", "decoder_channels": [8] * 6},
                     "stages": {"num_stages": 6, "boundaries": None},
                     "cluster": {"name": "snr", "params": {"grid": 10}}}
    table["rows"] = [row]
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(table))
    with pytest.raises(ConfigError, match=r"table4.snr_k6 \(smoke\): stages.num_stages: snr cannot split the time "
                                          r"axis into k=6 stages .*valid k: 2..5"):
        plan([str(path)], "smoke")
    row["config"]["cluster"]["params"]["grid"] = 12  # 12 points: k = 6 fits
    path.write_text(yaml.safe_dump(table))
    assert plan([str(path)], "smoke").rows["table4.snr_k6"].status == "cell"
