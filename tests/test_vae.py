"""The KL autoencoder (first stage of the LDM backbone): posterior and KL against closed forms, PSNR, LPIPS loading
(offline error, prefetched weights mapped into the lpips slices), the adaptive discriminator weight, and one smoke
run through train-vae -> encode-latents -> latents dataset -> LatentEpsPrecond.decode."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from msrepro.config import ConfigError
from msrepro.datasets.base import OfflineDataError
from msrepro.backbones.ldm.autoencoder import AutoencoderKL, VAEParams
from msrepro.backbones.ldm.autoencoder_training import load_vae, psnr
from msrepro.backbones.ldm.autoencoder_config import load_vae_config
from msrepro.backbones.ldm.autoencoder import DiagonalGaussian


def test_kl_of_the_posterior_is_the_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    post = DiagonalGaussian(torch.cat([mean, logvar], 1))
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(post.kl(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(post.mode(), mean)


@pytest.mark.parametrize("mult,res,latent", [([1, 2, 4], 16, 4), ([1, 2], 16, 8), ([1], 8, 8)])
def test_downsampling_factor_and_shapes(mult, res, latent):
    p = OmegaConf.structured(VAEParams(ch=8, ch_mult=mult, num_res_blocks=1, z_channels=3, norm_groups=4))
    vae = AutoencoderKL(p, 1, res)
    x = torch.rand(2, 1, res, res) * 2 - 1
    post = vae.encode(x)
    assert post.mean.shape == (2, 3, latent, latent) == (2, *vae.latent_shape)
    assert vae.decode(post.mode()).shape == x.shape and vae.factor == res // latent


def test_psnr_closed_form():
    x = torch.zeros(3, 1, 4, 4)
    assert psnr(x, x + 0.1).tolist() == pytest.approx([10 * math.log10(4 / 0.01)] * 3)


def test_lpips_offline_error_and_prefetched_weights(tmp_path, monkeypatch):
    import torchvision

    from msrepro.backbones.ldm.autoencoder_loss import build_lpips, lpips_weights_path

    monkeypatch.setenv("MSREPRO_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(OfflineDataError, match="msrepro prefetch lpips"):
        build_lpips("alex")
    with torch.device("meta"):  # torchvision's key names and shapes, without building the weights
        shapes = {k: v.shape for k, v in torchvision.models.alexnet().state_dict().items()}
    g = torch.Generator().manual_seed(0)
    ref = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items() if k.startswith("features.")}
    path = lpips_weights_path("alex")
    path.parent.mkdir(parents=True)
    torch.save(ref, path)
    model = build_lpips("alex")
    assert torch.equal(model.net.slice1[0].weight, ref["features.0.weight"])
    assert torch.equal(getattr(model.net.slice5, "10").bias, ref["features.10.bias"])
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert float(model(x, x)) == pytest.approx(0.0, abs=1e-6) and float(model(x, -x)) > 0


def test_adaptive_discriminator_weight_is_the_gradient_norm_ratio():
    from msrepro.backbones.ldm.autoencoder_loss import VAELoss

    w = torch.tensor([1.0, 2.0], requires_grad=True)
    nll, g = 3 * (w * torch.tensor([1.0, 0.0])).sum(), (w * torch.tensor([0.0, 4.0])).sum()
    assert float(VAELoss.adaptive_weight(nll, g, w)) == pytest.approx(3 / (4 + 1e-4))


def test_vae_config_presets_and_errors():
    cfg = load_vae_config(overrides=["preset=full"])
    assert (list(cfg.model.ch_mult), cfg.model.z_channels, cfg.dataset.resolution) == ([1, 2, 4], 3, 256)
    assert cfg.loss.lpips_weight == 1.0 and cfg.loss.kl_weight == 1e-6 and cfg.loss.disc_start == 50001
    tiny = load_vae_config()
    assert (tiny.dataset.name, tiny.dataset.resolution, list(tiny.model.ch_mult)) == ("digits", 8, [1, 2])  # native 8 px
    with pytest.raises(ConfigError, match="Valid presets: full, smoke, tiny"):
        load_vae_config(overrides=["preset=huge"])
    with pytest.raises(ConfigError, match="dataset.resolution"):
        load_vae_config(overrides=["dataset.resolution=15"])
    with pytest.raises(ConfigError, match="loss.lpips_net"):
        load_vae_config(overrides=["loss.lpips_net=squeeze"])


@pytest.fixture(scope="module")
def smoke_vae(tmp_path_factory):
    """One smoke VAE run (a few steps, discriminator on from step 2) and its latent cache."""
    from msrepro.cli import main

    out = tmp_path_factory.mktemp("vae")
    assert main(["train-vae", "preset=smoke", f"output_dir={out}", "name=v", "--no-progress"]) == 0
    ckpt = out / "v" / "vae.pt"
    cache = out / "latents.pt"
    assert main(["encode-latents", str(ckpt), "--out", str(cache), "dataset.limit=40", "--no-progress"]) == 0
    return ckpt, cache


def test_train_vae_writes_checkpoint_with_data_scale_factor(smoke_vae):
    from msrepro.checkpoint import load_checkpoint
    from msrepro.datasets import load_tensor

    ckpt, _ = smoke_vae
    state = load_checkpoint(ckpt)
    vae = load_vae(ckpt)
    assert float(vae.scale_factor) == pytest.approx(state["scale_factor"]) and state["scale_factor"] != 1.0
    x = load_tensor({"name": "digits", "resolution": 8})[:32]  # smoke: scale_samples 32, one batch, seed 0
    with torch.no_grad():
        z = vae.encode(x).sample(torch.Generator().manual_seed(0))
    assert float(z.std() * vae.scale_factor) == pytest.approx(1.0, rel=1e-4)
    assert math.isfinite(state["metrics"]["psnr"]) and state["metrics"]["num"] == 16


def test_latent_cache_and_dataset(smoke_vae):
    from msrepro.datasets import build_dataset, load_tensor
    from msrepro.backbones.ldm.latents import read_cache

    ckpt, cache = smoke_vae
    vae = load_vae(ckpt)
    x = load_tensor({"name": "digits", "resolution": 8, "limit": 40})
    with torch.no_grad():
        expected = vae.encode(x).mean * vae.scale_factor
    state = read_cache(cache)
    torch.testing.assert_close(state["mean"], expected, rtol=1e-4, atol=1e-5)
    ds = build_dataset({"name": "latents", "root": str(cache), "resolution": 4, "params": {"sample_posterior": False}})
    assert len(ds) == 40 and torch.equal(ds[3], state["mean"][3])
    sampled = build_dataset({"name": "latents", "root": str(cache), "resolution": 4})
    torch.manual_seed(0)
    draws = torch.stack([sampled[3] for _ in range(400)])
    torch.testing.assert_close(draws.mean(0), state["mean"][3], atol=4 * float(state["std"][3].max()) / 20, rtol=0)
    with pytest.raises(ConfigError, match="dataset.resolution=4"):
        build_dataset({"name": "latents", "root": str(cache), "resolution": 8})
    with pytest.raises(ConfigError, match="hflip"):
        build_dataset({"name": "latents", "root": str(cache), "resolution": 4, "hflip": True})
    with pytest.raises(ConfigError, match="dataset.split=test"):
        build_dataset({"name": "latents", "root": str(cache), "resolution": 4, "split": "test"})
    with pytest.raises(FileNotFoundError, match="encode-latents"):
        build_dataset({"name": "latents", "root": str(cache) + ".missing", "resolution": 4})


def test_ldm_denoiser_decodes_through_the_vae(smoke_vae):
    from msrepro.runconfig import load_config
    from msrepro.models import build_denoiser

    ckpt, cache = smoke_vae
    cfg = load_config(overrides=["model.backbone=ldm", "model.preset=smoke", f"dataset.root={cache}",
                                 f"model.params.vae={ckpt}"], validate=False)
    model = build_denoiser(cfg)
    z = torch.randn(2, 3, 8, 8)
    vae = load_vae(ckpt)
    with torch.no_grad():
        expected = vae.decode(z / vae.scale_factor).clamp(-1, 1)
    torch.testing.assert_close(model.decode(z), expected)
    assert not any("first_stage" in k or "decoder.conv_out" in k and "net." not in k for k in model.state_dict())
    no_vae = build_denoiser(load_config(overrides=["model.backbone=ldm", "model.preset=smoke"], validate=False))
    with pytest.raises(ConfigError, match="model.params.vae"):
        no_vae.decode(z)


def test_multistage_ldm_trains_on_the_cache_and_samples_decode_to_images(smoke_vae, tmp_path):
    """The training engine runs the smoke multistage LDM on the latent cache, and the sampling engine
    returns decoded 1 x 16 x 16 images: the VAE decoder applied to the sampled scaled latents."""
    from msrepro.checkpoint import load_model
    from msrepro.runconfig import load_config
    from msrepro.generation import generate
    from msrepro.training import train

    ckpt, cache = smoke_vae
    cfg = load_config(overrides=["model.backbone=ldm", "model.preset=smoke", f"dataset.root={cache}",
                                 f"model.params.vae={ckpt}", f"output_dir={tmp_path}", "name=ldm",
                                 "train.steps=6", "train.checkpoint_every=6", "train.log_every=3"])
    result = train(cfg, progress=False)
    assert result.step == 6 and math.isfinite(result.metrics["heldout_loss"])
    model, cfg2 = load_model(result.checkpoint, ema=False)
    assert cfg2.dataset.name == "latents" and model.num_stages == 3
    gen = generate(model, {"sampler": "dpm_solver_pp", "params": {"steps": 3}, "batch_size": 4}, (3, 8, 8),
                   [0, 1, 2, 3], "cpu", progress=False)
    batch = next(gen.batches())
    assert batch.images.shape == (4, 1, 16, 16) and torch.isfinite(batch.images).all()
    # the same seeds through the sampler without decoding, decoded by hand with the VAE
    from msrepro.samplers import build_sampler
    from msrepro.generation import StackedRandomGenerator

    rng = StackedRandomGenerator([0, 1, 2, 3])
    noise = rng.randn([4, 3, 8, 8])
    with torch.no_grad():
        z, _ = build_sampler("dpm_solver_pp", {"steps": 3})(model, noise, model.schedule, generator=rng)
        vae = load_vae(ckpt)
        expected = vae.decode(z / vae.scale_factor).clamp(-1, 1)
    torch.testing.assert_close(batch.images, expected, rtol=1e-4, atol=1e-5)
