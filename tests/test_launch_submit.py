"""submit: dry run (job graph, resources, GPU-hours from the FLOP accounting) and early errors on bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from msrepro.cli import main
from msrepro.flops import step_flops
from msrepro.launch.execution import plan_groups
from msrepro.profiles import load_profile, parse_time
from msrepro.launch.plan import plan
from msrepro.launch.results import array_plan
from msrepro.launch.run_folder import StepState


@pytest.fixture(scope="module")
def dry_full(tmp_path_factory):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["submit", "all", "--preset", "full", "--executor", "slurm", "--profile", "example",
                     "--dry-run"]) == 0  # planning needs no sbatch
    return buf.getvalue()


@pytest.mark.slow
def test_dry_run_lists_every_cell_once_with_resources(dry_full):
    graph = plan(["all"], "full")
    for key in graph.cells:
        assert len(re.findall(rf"^{key}\s", dry_full, re.M)) == 1, key  # the cell table: one line per cell
    for sid, step in graph.steps.items():
        line = next(ln for ln in dry_full.splitlines() if f" {sid} " in ln)
        gpus = {"train": 4, "cluster": 1, "evaluate": 1, "prepare": 1}[step.kind]
        limit = {"train": "48:00:00", "cluster": "04:00:00", "evaluate": "08:00:00", "prepare": "48:00:00"}[step.kind]
        assert re.search(rf"\s{gpus}\s+\d+\s+{limit}\s", line), line
        for d in step.deps:
            assert d in line
    assert "table1.ddpm: quoted" in dry_full
    assert "dry run: nothing submitted" in dry_full
    # the sbatch plan: level-0 cluster steps of one kind go out as one array; each later job names its afterok
    plan_lines = dry_full.split("sbatch submissions")[1].split("\n\n")[0].splitlines()[1:]
    first = next(ln for ln in plan_lines if " cluster " in ln)
    level0 = [s for s in graph.levels()[0] if s.kind == "cluster"]
    assert f"array of {len(level0)}" in first and first.endswith("afterok: -")
    sizes = [1 if ln.split()[2] == "single" else int(ln.split()[4]) for ln in plan_lines]
    assert sum(sizes) == len(graph.steps)  # every step goes out exactly once


@pytest.mark.slow
def test_gpu_hours_come_from_the_flop_accounting(dry_full):
    from msrepro.flops import accounting

    graph = plan(["table3"], "full")
    unified = graph.cells[graph.rows["table3.unified"].cell]
    cfg = graph.steps[unified.train].config
    acc = accounting(cfg)
    flops = 450_000 * 128 * 3 * acc["gflops"][0] * 1e9  # steps x batch x (forward + backward) x forward FLOPs
    assert step_flops("train", cfg) == pytest.approx(flops)
    hours = flops / (125e12 * 0.3) / 3600  # example profile: 125 TFLOP/s at 30 %
    m = re.search(r"estimated GPU-hours: ([\d,.]+)", dry_full)
    assert m and float(m.group(1).replace(",", "")) > hours  # the whole grid costs more than one of its runs
    line = next(ln for ln in dry_full.splitlines() if f" {unified.train} " in ln)
    assert f"{hours:.1f}h" in line


@pytest.mark.parametrize("argv, message", [
    (["submit", "table7", "--preset", "smoke"], "valid tables: table1, table2, table3, table4"),
    (["submit", "all", "--preset", "huge"], "valid presets: full, tiny, smoke"),
    (["submit", "all", "--preset", "smoke", "--executor", "cloud"], "valid executors: debug, local, slurm"),
    (["submit", "all", "--preset", "smoke", "--executor", "debug", "--profile", "nope"], "valid profiles:"),
])
def test_bad_input_fails_before_anything_is_submitted(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_profile_without_partition(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "p.yaml"
    bad.write_text("jobs: {train: {gpus: 1}}\n")
    assert main(["submit", "all", "--preset", "smoke", "--executor", "debug", "--profile", str(bad)]) == 2
    assert "'partition' is required" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    bad.write_text("partition: gpu\njobs: {train: {gpu: 1}}\n")
    with pytest.raises(Exception, match="allowed: cpus, gpus, mem_gb, nodes, time"):
        load_profile(str(bad))


def test_time_limits():
    assert [parse_time(t) for t in ("48:00:00", "1-00:00:00", "10", "05:30", "00:20:01")] == [2880, 1440, 10, 6, 21]
    assert load_profile("local").resources("train").timeout_min == 60
    assert Path(load_profile("example").name) == Path("example")


def test_groups_larger_than_the_max_array_size_are_split():
    from dataclasses import replace

    graph = plan(["table4"], "smoke")
    states = {s: StepState(s, "missing") for s in graph.steps}
    groups = plan_groups(graph, set(graph.steps), states)
    assert sum(len(g.steps) for g in groups) == len(graph.steps)
    clusters = next(g for g in groups if g.kind == "cluster" and not g.deps)
    assert len(clusters.steps) == 3  # timestep, snr, optimal_denoiser: no upstream, one array
    text = "\n".join(array_plan(graph, "slurm", replace(load_profile("local"), max_array_size=2)))
    assert "array of 3 (split into 2)" in text
    # a step whose upstream is still queued from an earlier submission waits on that job id
    cell = graph.cells[graph.rows["table4.snr"].cell]
    states[cell.cluster] = StepState(cell.cluster, "queued", job_id="77_1")
    later = plan_groups(graph, set(graph.steps) - {cell.cluster}, states)
    train = next(g for g in later if any(s.id == cell.train for s in g.steps))
    assert train.deps == ("77_1",)


def test_local_worker_takes_ready_steps_by_kind_then_topological_order(tmp_path, monkeypatch):
    """Two trainings ready at once with an evaluation of the first: the worker runs the second training before the
    evaluation (WORKER_PRIORITY), and a cluster step that waits on a training runs as soon as it is ready."""
    import json

    from msrepro.launch import execution
    from msrepro.launch.run_folder import CLAIM, DONE, SPEC, step_dir

    steps = [("train-a", "train", []), ("evaluate-a", "evaluate", ["train-a"]), ("train-b", "train", []),
             ("cluster-c", "cluster", ["train-a"]), ("train-c", "train", ["cluster-c"]),
             ("evaluate-b", "evaluate", ["train-b"]), ("evaluate-c", "evaluate", ["train-c"])]
    for sid, kind, deps in steps:
        d = step_dir(tmp_path, sid)
        d.mkdir(parents=True)
        (d / SPEC).write_text(json.dumps({"id": sid, "kind": kind, "deps": deps}))
    ran: list[str] = []

    def fake_run(run_dir, sid):
        ran.append(sid)
        (step_dir(run_dir, sid) / DONE).write_text("{}")

    def fake_claim(self, run_dir, sid):
        (step_dir(run_dir, sid) / CLAIM).write_text("")
        return True

    monkeypatch.setattr(execution, "run_step", fake_run)
    monkeypatch.setattr(execution.StepWorker, "_claim", fake_claim)
    worker = execution.StepWorker(str(tmp_path), [s for s, _, _ in steps], "local", threads=0)
    assert worker() == len(steps)
    assert ran == ["train-a", "cluster-c", "train-b", "train-c", "evaluate-a", "evaluate-b", "evaluate-c"]
