"""The generation engine and ``msrepro sample``: per-seed images, seed lists, writers, grid, the command end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from msrepro.cli import main
from msrepro.samplers import build_sampler, count_nfe
from msrepro.generation import NPZWriter, PNGWriter, generate, parse_seeds, save_grid, to_uint8
from samplers_tiny_model import tiny_checkpoint, tiny_model

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tiny_model()[0]


def test_parse_seeds():
    assert parse_seeds("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]
    assert parse_seeds("5") == [5] and parse_seeds(3) == [0, 1, 2] and parse_seeds([4, 2]) == [4, 2]
    for bad in ["3-1", "a", "-2", "", "1-"]:
        with pytest.raises(ValueError, match="0-49999"):
            parse_seeds(bad)


@pytest.mark.parametrize("sampler,params", [("dpm_solver", {}), ("ddim", {"eta": 1.0, "steps": 8}),
                                            ("heun", {"steps": 5, "S_churn": 10.0})])
def test_images_depend_on_their_seed_not_on_the_batch(model, sampler, params):
    """Batch sizes 1, 3, 8 and a shuffled seed order give the same image per seed, up to float32 kernel
    round-off (batch 1 takes another conv kernel: ~1e-5, far below one uint8 level, 7.8e-3)."""
    seeds = list(range(8))
    runs = {}
    for bs in (1, 3, 8):
        cfg = {"sampler": sampler, "params": params, "batch_size": bs}
        runs[bs] = torch.cat(list(generate(model, cfg, SHAPE, seeds, "cpu", progress=False)))
    shuffled = [5, 2, 7, 0, 3, 6, 1, 4]
    gen = generate(model, {"sampler": sampler, "params": params, "batch_size": 3}, SHAPE, shuffled, "cpu", False)
    by_seed = {s: img for b in gen.batches() for s, img in zip(b.seeds, b.images)}
    runs["shuffled"] = torch.stack([by_seed[s] for s in seeds])
    for key, imgs in runs.items():
        assert torch.allclose(imgs, runs[8], rtol=0, atol=1e-4), (key, (imgs - runs[8]).abs().max())
    assert (runs[8][0] - runs[8][1]).abs().max() > 0.1  # different seeds: different images


def test_generation_reports_nfe_per_stage(model):
    gen = generate(model, {"sampler": "dpm_solver", "params": {}, "batch_size": 4}, SHAPE, "0-5", "cpu", False)
    batches = list(gen.batches())
    assert [b.seeds for b in batches] == [[0, 1, 2, 3], [4, 5]]
    assert gen.nfe == 20 and gen.nfe_per_stage == [12, 2, 6]
    assert all(b.images.shape == (len(b.seeds), *SHAPE) and b.images.abs().max() <= 1 for b in batches)
    ranks = [generate(model, {"batch_size": 2}, SHAPE, "0-5", "cpu", False, rank=r, world_size=2) for r in (0, 1)]
    assert [s for b in ranks[0].seed_batches for s in b] == [0, 1, 4, 5]
    assert [s for b in ranks[1].seed_batches for s in b] == [2, 3]


def test_writers_and_grid(tmp_path):
    images = torch.linspace(-1, 1, 70 * 3 * 4 * 5).reshape(70, 3, 4, 5)
    u8 = to_uint8(images)
    assert u8.shape == (70, 4, 5, 3) and u8.dtype == np.uint8 and u8.min() == 0 and u8.max() == 255
    png = PNGWriter(tmp_path / "png")
    png.write([7, 12], images[:2])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / "000012.png")), u8[1])
    npz = NPZWriter(tmp_path / "s.npz")
    npz.write([3, 4], images[:2])
    npz.write([9], images[2:3])
    with np.load(npz.close()) as f:
        assert f["seeds"].tolist() == [3, 4, 9] and np.array_equal(f["images"], u8[:3])
    grid = np.asarray(Image.open(save_grid(images, tmp_path / "grid.png", nrow=8, scale=1)))
    assert grid.shape == (2 + 8 * 6, 2 + 8 * 7, 3)  # first 64 only, 8 x 8, 2 px padding
    assert np.array_equal(grid[2 + 6:2 + 6 + 4, 2:2 + 5], u8[8])  # row 1, column 0 holds image 8
    gray = np.asarray(Image.open(save_grid(images[:5, :1], tmp_path / "g1.png", scale=1)))
    assert gray.shape == (2 + 2 * 6, 2 + 3 * 7)  # 1 channel stays grey, ceil(sqrt(5)) = 3 per row
    big = np.asarray(Image.open(save_grid(images[:4], tmp_path / "g2.png")))  # 4 x 5 px: 7x (ceil(32 / 5))
    assert big.shape == (2 + 2 * (28 + 2), 2 + 2 * (35 + 2), 3)
    block = big[2 + 30:2 + 30 + 28, 2:2 + 35]  # row 1, column 0: image 2, each pixel a 7 x 7 block
    assert np.array_equal(block, np.kron(u8[2], np.ones((7, 7, 1), dtype=np.uint8)))


def test_sample_command_end_to_end(tmp_path, capsys, model):
    ckpt = tiny_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt-0.pt")
    assert main(["sample", str(ckpt), "--num", "5", "--batch", "2", "--no-progress", "nfe=10"]) == 0
    out = tmp_path / "run" / "samples" / "ckpt-0"
    printed = capsys.readouterr().out
    split = count_nfe(build_sampler("dpm_solver", {"nfe": 10}), model.schedule, model.boundaries)["nfe_per_stage"]
    assert sum(split) == 10 and len(split) == 3
    assert f"NFE per image: 10 total; per stage (least noisy first): {' / '.join(map(str, split))}" in printed
    info = json.loads((out / "sample_info.json").read_text())
    assert info["nfe"] == 10 and info["nfe_per_stage"] == split and info["params"]["nfe"] == 10
    files = sorted(p.name for p in out.glob("0*.png"))
    assert files == [f"{s:06d}.png" for s in range(5)]
    # the files hold what the engine gives for the same seeds (an independent call, other batch size)
    direct = torch.cat(list(generate(model, {"params": {"nfe": 10}, "batch_size": 5}, SHAPE, "0-4", "cpu", False)))
    written = np.stack([np.asarray(Image.open(out / f)) for f in files])
    assert np.abs(written.astype(int) - to_uint8(direct)[..., 0].astype(int)).max() <= 1
    assert np.asarray(Image.open(out / "grid.png")).shape == (2 + 2 * 34, 2 + 3 * 34)  # 8 px shown 4x: 32 px

    npz_dir = tmp_path / "npz"
    assert main(["sample", str(ckpt), "--seeds", "3-4,9", "--format", "npz", "--out", str(npz_dir),
                 "--sampler", "heun", "steps=4", "--no-progress"]) == 0
    assert "NFE per image: 7 total" in capsys.readouterr().out
    with np.load(npz_dir / "samples.npz") as f:
        assert f["seeds"].tolist() == [3, 4, 9] and f["images"].shape == (3, 8, 8, 1)
        assert np.abs(f["images"][1].astype(int) - written[4].astype(int)).max() > 0  # other sampler, same seed


@pytest.mark.parametrize("argv,message", [
    (["--sampler", "dpm_solvr"], "Did you mean 'dpm_solver'"),
    (["nfee=3"], "Did you mean 'nfe'"),
    (["--num", "3", "--seeds", "0-9"], "gives 10 seeds but --num is 3"),
    (["--seeds", "9-1"], "0-49999"),
    (["spacing=cubic"], "allowed: logsnr, time_uniform"),
])
def test_sample_command_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt")
    assert main(["sample", str(ckpt), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_run_config_validation_checks_sampler_values():
    """A bad sampler option value in a run config fails at validation, before training or sampling starts."""
    from msrepro.config import ConfigError
    from msrepro.runconfig import validate_run_config
    from samplers_tiny_model import tiny_config

    validate_run_config(tiny_config())
    with pytest.raises(ConfigError, match="allowed: logsnr, time_uniform"):
        validate_run_config(tiny_config("sample.params.spacing=cubic"))
    with pytest.raises(ConfigError, match="order must be 1, 2 or 3"):
        validate_run_config(tiny_config("sample.params.order=5"))


@pytest.mark.parametrize("argv,message,cuda", [
    (["--device", "cuda"], "--device cuda: CUDA is not available on this machine", 0),
    (["--device", "cuda:3"], "--device cuda:3: this machine has 2 CUDA device(s), cuda:0 .. cuda:1", 2),
    (["--device", "gpu0"], "--device: 'gpu0' is not a device", 0),
    (["--out", "FILE/sub"], "cannot create the output folder", 0),
])
def test_sample_command_checks_device_and_output_before_sampling(tmp_path, capsys, monkeypatch, argv, message, cuda):
    """Bad devices and output folders fail before the model is loaded or anything is sampled (exit 2, one line);
    the CUDA devices this machine has are set here, so the test means the same on any machine."""
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt")
    (tmp_path / "FILE").write_text("a file, not a folder")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)

    def no_work(*a, **k):
        raise AssertionError("work started before the bad option was rejected")

    monkeypatch.setattr("msrepro.checkpoint.load_model", no_work)
    monkeypatch.setattr("msrepro.generation.generate", no_work)
    argv = [str(tmp_path / a) if a.startswith("FILE") else a for a in argv]
    assert main(["sample", str(ckpt), "--no-progress", "--num", "2", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
