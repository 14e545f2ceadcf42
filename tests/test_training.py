"""The training engine: exact resume, kill/SIGTERM recovery, corrupt checkpoint fallback, DDP, stage intervals."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from msrepro.checkpoint import load_checkpoint
from msrepro.config import ConfigError
from msrepro.runconfig import load_config
from msrepro.training import latest_checkpoint, list_checkpoints, train
from msrepro.training.early_stopping import EarlyStopping
from msrepro.training.state import load_latest

FAST = ["model.preset=smoke", "dataset.resolution=8", "model.encoder_channels=8", "model.decoder_channels=[8,8,8]",
        "model.params.channel_mult=[1]", "model.params.num_blocks=1", "model.params.attn_resolutions=[]",
        "train.batch_size=8", "train.heldout_size=16", "train.log_every=5", "train.checkpoint_every=5",
        "train.warmup_steps=2"]


def cfg_for(tmp: Path, name: str, *extra: str):
    return load_config([], [*FAST, f"output_dir={tmp}", f"name={name}", *extra])


def weights(path: Path, key: str = "model") -> dict:
    return load_checkpoint(path)[key]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_is_bitwise_identical(tmp_path):
    full = train(cfg_for(tmp_path, "full", "train.steps=12"), progress=False)
    train(cfg_for(tmp_path, "split", "train.steps=7"), progress=False)
    part = train(cfg_for(tmp_path, "split", "train.steps=12"), progress=False)  # resumes from step 7
    assert part.step == full.step == 12
    for key in ("model", "ema"):
        assert_same(weights(full.checkpoint, key), weights(part.checkpoint, key))
    opt_a, opt_b = load_checkpoint(full.checkpoint)["optimizer"], load_checkpoint(part.checkpoint)["optimizer"]
    for k in opt_a["state"]:
        assert torch.equal(opt_a["state"][k]["exp_avg_sq"], opt_b["state"][k]["exp_avg_sq"])
    assert len(list_checkpoints(full.run_dir)) == 2  # keep_checkpoints


def test_heldout_loss_decreases_and_is_logged_per_stage(tmp_path):
    res = train(cfg_for(tmp_path, "learn", "train.steps=30", "train.lr=2e-3"), progress=False)
    import json

    recs = [json.loads(ln) for ln in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    held = [r for r in recs if r["kind"] == "heldout"]
    assert held[0]["step"] == 0 and held[-1]["step"] == 30
    assert held[-1]["heldout_loss"] < held[0]["heldout_loss"] - 0.05
    assert len(held[-1]["heldout_loss_stage"]) == 3
    train_recs = [r for r in recs if r["kind"] == "train"]
    assert sum(train_recs[-1]["stage_counts"]) == 30 * 8  # per-stage sample counts cover every sample
    assert (res.run_dir / "config.yaml").is_file() and res.metrics["heldout_loss"] == held[-1]["heldout_loss"]


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    ref = train(cfg_for(tmp_path, "ref", "train.steps=10"), progress=False)
    run = train(cfg_for(tmp_path, "broken", "train.steps=10"), progress=False)
    ckpts = list_checkpoints(run.run_dir)
    assert [p.name for p in ckpts] == ["ckpt-00000005.pt", "ckpt-00000010.pt"]
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:1000])  # truncated newest checkpoint
    with caplog.at_level(logging.WARNING):
        path, state = load_latest(run.run_dir)
    assert path == ckpts[0] and state["step"] == 5 and "unreadable" in caplog.text
    ckpts[-1].unlink()
    again = train(cfg_for(tmp_path, "broken", "train.steps=10"), progress=False)
    assert_same(weights(ref.checkpoint), weights(again.checkpoint))


def test_resuming_with_another_config_is_refused(tmp_path):
    train(cfg_for(tmp_path, "r", "train.steps=5"), progress=False)
    with pytest.raises(ConfigError, match="different config"):
        train(cfg_for(tmp_path, "r", "train.steps=5", "train.lr=1e-2"), progress=False)
    res = train(cfg_for(tmp_path, "r", "train.steps=5", "train.lr=1e-2"), progress=False, fresh=True)
    assert res.step == 5


def test_separate_variant_trains_each_network_only_on_its_interval(tmp_path):
    """Every network of a separate model sees only noise levels of its own stage (hooks on each encoder)."""
    from msrepro.training.loop import Trainer, prepare_run_dir
    from msrepro.training.distributed import DistInfo

    cfg = cfg_for(tmp_path, "sep", "model.variant=separate", "train.stage_policy=per_sample", "train.steps=4")
    prepare_run_dir(cfg, DistInfo())
    tr = Trainer(cfg, DistInfo())
    seen = {k: [] for k in range(3)}
    for k, enc in enumerate(tr.model.net.encoders):
        enc.register_forward_hook(lambda m, args, out, k=k: seen[k].append(args[1].detach().double()))
    for step in range(4):
        tr.train_step(step)
    for k in range(3):
        t = torch.cat(seen[k]) / 999.0  # the dpm_solver time input is 999 t
        assert t.numel() > 0 and torch.equal(tr.model.boundaries.stage_of_t(t), torch.full_like(t, k).long())


def test_stopped_stage_is_frozen_and_never_drawn(tmp_path):
    from msrepro.training.loop import Trainer, prepare_run_dir
    from msrepro.training.distributed import DistInfo

    cfg = cfg_for(tmp_path, "es", "model.variant=separate", "train.early_stopping.patience=2", "train.steps=4")
    prepare_run_dir(cfg, DistInfo())
    tr = Trainer(cfg, DistInfo())
    tr.es.stopped[1] = 0
    frozen = [p.clone() for p in [*tr.model.net.encoders[1].parameters(), *tr.model.net.decoders[1].parameters()]]
    for step in range(4):
        tr.train_step(step)
    after = [*tr.model.net.encoders[1].parameters(), *tr.model.net.decoders[1].parameters()]
    assert all(torch.equal(a, b) for a, b in zip(frozen, after)) and tr.stage_counts[1] == 0
    assert tr.stage_counts[0] > 0 and tr.stage_counts[2] > 0


def test_stopped_stage_keeps_its_ema(tmp_path):
    # a frozen stage's raw weights stop moving; its EMA must stop too, not drift towards the last raw weights
    from msrepro.training.loop import Trainer, prepare_run_dir
    from msrepro.training.distributed import DistInfo

    cfg = cfg_for(tmp_path, "es_ema", "model.variant=separate", "train.early_stopping.patience=2", "train.steps=4")
    prepare_run_dir(cfg, DistInfo())
    tr = Trainer(cfg, DistInfo())
    stage = lambda m, k: [*m.net.encoders[k].parameters(), *m.net.decoders[k].parameters()]  # noqa: E731
    tr.train_step(0)  # the EMA of every stage has moved off the initial weights once
    tr.es.stopped[1] = 1
    kept, moving = [p.clone() for p in stage(tr.ema.module, 1)], [p.clone() for p in stage(tr.ema.module, 0)]
    for step in range(1, 4):
        tr.train_step(step)
    assert all(torch.equal(a, b) for a, b in zip(kept, stage(tr.ema.module, 1)))
    assert not all(torch.equal(a, b) for a, b in zip(moving, stage(tr.ema.module, 0)))


def test_ema_update_leaves_frozen_positions():
    from msrepro.training.ema import EMA

    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    ema = EMA(net)
    before = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net, 0.75, frozen={0, 3})
    for i, (e, b, p) in enumerate(zip(ema.module.parameters(), before, net.parameters())):
        assert torch.allclose(e, b if i in (0, 3) else 0.75 * b + 0.25 * p)


@pytest.mark.parametrize("monitor", ["ema", "raw"])
def test_early_stopping_watches_the_monitored_weights(tmp_path, monitor):
    from msrepro.training.heldout import heldout_losses
    from msrepro.training.loop import Trainer, prepare_run_dir
    from msrepro.training.distributed import DistInfo

    cfg = cfg_for(tmp_path, f"es_{monitor}", "model.variant=separate", "train.early_stopping.patience=9",
                  f"train.early_stopping.monitor={monitor}", "train.steps=4")
    prepare_run_dir(cfg, DistInfo())
    tr = Trainer(cfg, DistInfo())
    for step in range(3):
        tr.train_step(step)
    tr.step = 3
    rec = tr.evaluate()
    watched = tr.ema.module if monitor == "ema" else tr.model
    expect = heldout_losses(watched, tr.heldout, 64, tr.device)  # a second computation, all keys
    assert tr.es.best == pytest.approx([expect[f"stage{k}"] for k in range(3)], rel=1e-6)
    other = heldout_losses(tr.model if monitor == "ema" else tr.ema.module, tr.heldout, 64, tr.device)
    assert tr.es.best != pytest.approx([other[f"stage{k}"] for k in range(3)], rel=1e-6)
    assert ("heldout_loss_ema_stage" in rec) == (monitor == "ema")


def test_early_stopping_monitor_is_checked(tmp_path):
    from msrepro.training.builders import check_train_options

    with pytest.raises(ConfigError, match="'best' is not one of ema, raw"):
        check_train_options(cfg_for(tmp_path, "x", "model.variant=separate", "train.early_stopping.monitor=best"))
    with pytest.raises(ConfigError, match="monitor=ema watches the EMA weights"):
        check_train_options(cfg_for(tmp_path, "x", "model.variant=separate", "train.early_stopping.patience=2",
                                    "train.ema_decay=null"))
    check_train_options(cfg_for(tmp_path, "x", "model.variant=separate", "train.early_stopping.patience=2",
                                "train.early_stopping.monitor=raw", "train.ema_decay=null"))


def test_early_stopping_rule():
    es = EarlyStopping(2, patience=2, min_delta=0.01)
    assert es.update([1.0, 1.0], 10) == []
    assert es.update([0.95, 0.995], 20) == []      # stage 1 improved by less than min_delta: one bad evaluation
    assert es.update([0.90, 1.2], 30) == [1]       # second bad evaluation: stage 1 stops at step 30
    assert es.active() == [0] and es.stopped == [None, 30]


# -- processes: SIGKILL, SIGTERM, DDP ---------------------------------------------------------------------
def cli(tmp: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "msrepro", "train", *FAST, f"output_dir={tmp}", f"name={name}", "--no-progress",
            *extra]


def env1() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, min_step: int, timeout: float = 120) -> None:
    """Until a checkpoint at >= min_step exists (also when the process has already finished: a fast machine)."""
    def reached() -> bool:
        last = latest_checkpoint(run_dir)
        return last is not None and int(last.stem.split("-")[1]) >= min_step

    end = time.time() + timeout
    while time.time() < end and proc.poll() is None and not reached():
        time.sleep(0.05)
    if not reached():
        raise AssertionError(f"no checkpoint at step >= {min_step} (process status {proc.poll()})")


@pytest.mark.slow
def test_sigkill_then_same_command_ends_equal_to_uninterrupted(tmp_path):
    """Killed after its first checkpoint, the same command resumes and ends equal to an uninterrupted run. A fast
    machine may finish the run before the kill lands: then the run is made 4x longer and tried again, so the kill
    is always mid-run, whatever the machine's speed."""
    for attempt, total in enumerate((24, 96, 384)):
        steps = [f"train.steps={total}", "train.checkpoint_every=6"]
        name = f"killed{attempt}"
        proc = subprocess.Popen(cli(tmp_path, name, *steps), env=env1(), stderr=subprocess.DEVNULL)
        wait_for_checkpoint(tmp_path / name, proc, 6)
        proc.kill()
        proc.wait()
        if int(latest_checkpoint(tmp_path / name).stem.split("-")[1]) < total:
            break  # killed mid-run
    else:
        pytest.fail("every run finished before SIGKILL landed")
    ref = train(cfg_for(tmp_path, f"ref{attempt}", *steps), progress=False)
    subprocess.run(cli(tmp_path, name, *steps), env=env1(), check=True, capture_output=True)
    assert_same(weights(ref.checkpoint), weights(latest_checkpoint(tmp_path / name)))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    proc = subprocess.Popen(cli(tmp_path, "term", "train.steps=100000", "train.checkpoint_every=1000"), env=env1(),
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "term" / "metrics.jsonl"
    end = time.time() + 120
    while time.time() < end and '"train"' not in (metrics.read_text() if metrics.is_file() else ""):
        time.sleep(0.05)  # wait until it is training (a train record every 5 steps)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 124, err
    last = latest_checkpoint(tmp_path / "term")
    assert last is not None and 0 < load_checkpoint(last)["step"] < 1000  # saved at a step boundary, off-schedule
    assert "preempted" in err


def _ddp_worker(rank: int, tmp: str, port: int, policy: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from msrepro.training import distributed as D
    from msrepro.training.loop import Trainer, prepare_run_dir

    cfg = cfg_for(Path(tmp), "ddp", *DDP_ARGS, f"train.stage_policy={policy}")
    info = D.init_distributed("cpu")
    prepare_run_dir(cfg, info)
    tr = Trainer(cfg, info)
    tr.run(progress=False)
    torch.save(tr.model.state_dict(), Path(tmp) / f"rank{rank}.pt")  # each rank's live parameters
    torch.distributed.destroy_process_group()


DDP_ARGS = ["train.steps=4", "model.params.dropout=0.0", "train.checkpoint_every=2"]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["per_sample"])  # mixed routing: decoders unused on one rank, used on the other
def test_two_process_gloo_ddp_equals_one_process_with_the_same_global_batch(tmp_path, policy):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(str(tmp_path), port, policy), nprocs=2, join=True)
    single = train(cfg_for(tmp_path, "single", *DDP_ARGS, f"train.stage_policy={policy}"), progress=False)
    one = weights(single.checkpoint)
    ddp = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert_same(ddp, weights(latest_checkpoint(tmp_path / "ddp")))  # rank 0 wrote the checkpoint
    assert_same(ddp, torch.load(tmp_path / "rank1.pt", weights_only=True))
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(ddp[k], v) for k, v in build_initial(tmp_path).items())  # it did train


def build_initial(tmp: Path) -> dict:
    from msrepro.training.builders import build_model

    return build_model(cfg_for(tmp, "init", *DDP_ARGS), torch.device("cpu")).state_dict()


def test_a_start_that_fails_on_missing_data_leaves_no_run_directory(tmp_path):
    """The data (and every file the run needs) is found before the run directory is written, so fixing the
    config and starting again is not refused as 'a run with a different config' (issue 11)."""
    from msrepro.datasets import OfflineDataError

    with pytest.raises(OfflineDataError, match="msrepro prefetch cifar10"):
        train(cfg_for(tmp_path, "r", "dataset.name=cifar10", f"dataset.root={tmp_path / 'missing'}"), progress=False)
    assert not (tmp_path / "r").exists()
    assert train(cfg_for(tmp_path, "r", "train.steps=1"), progress=False).step == 1


def test_save_steps_are_kept_for_good_and_hold_that_steps_weights(tmp_path):
    run = train(cfg_for(tmp_path, "curve", "train.steps=12", "train.save_steps=[3,5]"), progress=False)
    names = [p.name for p in list_checkpoints(run.run_dir)]
    # 3 and 5 are permanent; the rolling window (keep_checkpoints=2) holds 10 and 12
    assert names == ["ckpt-00000003.pt", "ckpt-00000005.pt", "ckpt-00000010.pt", "ckpt-00000012.pt"]
    short = train(cfg_for(tmp_path, "short", "train.steps=3"), progress=False)  # an independent 3-step run
    saved = load_checkpoint(run.run_dir / "checkpoints" / "ckpt-00000003.pt")
    assert saved["step"] == 3
    assert_same(saved["model"], weights(short.checkpoint))
    plain = train(cfg_for(tmp_path, "plain", "train.steps=12"), progress=False)
    assert [p.name for p in list_checkpoints(plain.run_dir)] == ["ckpt-00000010.pt", "ckpt-00000012.pt"]


def test_early_stopped_steps_are_reported_per_stage(tmp_path):
    # min_delta larger than any loss: no evaluation after the first improves, so patience 1 stops every stage at
    # the first held-out evaluation after step 0 (heldout_every = checkpoint_every = 5) and training ends there
    stop = train(cfg_for(tmp_path, "es", "model.variant=separate", "train.steps=12", "train.early_stopping.patience=1",
                         "train.early_stopping.min_delta=1e9"), progress=False)
    assert stop.step == 5 and stop.metrics["early_stopped"] == {"0": 5, "1": 5, "2": 5}
    never = train(cfg_for(tmp_path, "es_off", "model.variant=separate", "train.steps=6",
                          "train.early_stopping.patience=100"), progress=False)
    assert never.step == 6 and never.metrics["early_stopped"] == {"0": None, "1": None, "2": None}
    assert "early_stopped" not in train(cfg_for(tmp_path, "no_es", "train.steps=2"), progress=False).metrics


def test_learning_rate_cosine_decay_closed_form(tmp_path: Path):
    """``train.lr_decay=cosine``: the warm-up ramp, then lr x (1 + cos(pi s)) / 2 with s the post-warm-up fraction of
    ``train.steps`` (0 at the last step); ``constant`` keeps the plain ramp."""
    import math

    from msrepro.training.builders import learning_rate

    cfg = load_config([], [f"output_dir={tmp_path}", "name=lr", "model.preset=smoke", "train.steps=10",
                           "train.warmup_steps=2", "train.lr=1e-3", "train.lr_decay=cosine"])
    want = [1e-3 * min(1.0, (s + 1) / 2) * 0.5 * (1 + math.cos(math.pi * max(0, s - 1) / 8)) for s in range(10)]
    got = [learning_rate(cfg, s) for s in range(10)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[-1] == pytest.approx(0.0, abs=1e-15) and got[1] == pytest.approx(1e-3)
    cfg.train.lr_decay = "constant"
    assert [learning_rate(cfg, s) for s in range(10)] == pytest.approx([5e-4] + [1e-3] * 9)


def test_learning_rate_decay_unknown_name_lists_valid(tmp_path: Path):
    with pytest.raises(ConfigError, match="train.lr_decay.*constant, cosine"):  # rejected when the config loads
        load_config([], [f"output_dir={tmp_path}", "name=lr", "model.preset=smoke", "train.lr_decay=linear"])
