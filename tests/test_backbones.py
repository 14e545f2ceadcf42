"""Every registered backbone x variant x routing (small presets): shapes, gradient flow to the shared encoder and
only the decoders used, determinism under a seed, state-dict round trip with weights_only=True, finite outputs.
Plus the built-in plugins' registration, conventions and presets (SPEC 4)."""

import io
import math

import pytest
import torch

from msrepro.config import VARIANTS, ConfigError
from msrepro.runconfig import load_config
from msrepro.losses import denoising_loss
from msrepro.models import build_denoiser, data_shape, get_backbone
from msrepro.precond import ROUTINGS, EDMPrecond, EpsPrecond
from msrepro.registry import BACKBONES
from msrepro.boundaries import validate_stages


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models gain nothing from threads, and OpenMP spin-waits crawl on a shared, loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_preset(backbone: str) -> str:
    presets = get_backbone(backbone).presets
    return "smoke" if "smoke" in presets else "tiny"


def make_config(backbone: str, variant: str, routing: str = "per_sample", preset: str | None = None, extra=()):
    overrides = [f"model.backbone={backbone}", f"model.preset={preset or small_preset(backbone)}",
                 f"model.variant={variant}", f"model.routing={routing}", *extra]
    return load_config(overrides=overrides, validate=False)


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_denoiser(cfg)


def mixed_batch(denoiser, cfg, per_stage=2):
    """Samples of every stage but stage 1 (so one decoder stays unused when K = 3), in interleaved order."""
    channels, res = data_shape(cfg)
    k = denoiser.num_stages
    used = [s for s in range(k) if k == 1 or s != 1]
    sigmas = []
    for s in used:
        lo, hi = (denoiser.boundaries.sigma_intervals()[s] if denoiser.boundaries is not None
                  else (denoiser.sigma_min, denoiser.sigma_max))
        sigmas.append(math.sqrt(lo * hi) if lo > 0 else hi / 2)
    sigma = torch.tensor([sigmas[i % len(used)] for i in range(per_stage * len(used))])
    g = torch.Generator().manual_seed(123)
    x0 = torch.rand(len(sigma), channels, res, res, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    return x0, sigma, noise, used


def installed_backbones() -> list[str]:
    """The registered backbones that come from installed packages (entry points): the built-ins and any plugin,
    not the test-only ones other test modules register at import (the matrix must not depend on file order)."""
    from importlib.metadata import entry_points

    modules = tuple(ep.value.split(":")[0] for ep in entry_points(group="msrepro.backbones"))
    return [e.name for e in BACKBONES.entries() if getattr(e.obj, "__module__", "").startswith(modules)]


CASES = [(b, v, r) for b in installed_backbones() for v in VARIANTS for r in ROUTINGS]


@pytest.mark.parametrize("backbone,variant,routing", CASES)
def test_every_backbone_variant_and_routing(backbone, variant, routing):
    cfg = make_config(backbone, variant, routing)
    validate_stages(cfg)
    get_backbone(backbone).validate(cfg)
    model = build(cfg).train()
    x0, sigma, noise, used = mixed_batch(model, cfg)
    stages = model.resolve_stages(sigma)
    served = sorted(set(stages.tolist()))
    assert served == (used if routing == "per_sample" else [used[0]])

    # forward / backward shapes, finite values
    loss = denoising_loss(model, x0, sigma, noise)
    assert loss.shape == (len(sigma),) and torch.isfinite(loss).all()
    loss.mean().backward()
    net = model.net
    for k, dec in enumerate(net.decoders):
        grads = [p.grad for p in dec.parameters()]
        if k in served:
            assert all(g is not None and torch.isfinite(g).all() for g in grads), f"decoder {k} missed gradients"
        else:
            assert all(g is None for g in grads), f"unused decoder {k} received gradients"
    encoders = range(net.num_stages) if not net.shared_encoder else [0]
    for k in encoders:
        got = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.encoders[k].parameters()]
        if net.shared_encoder or k in served:
            assert sum(got) >= 0.9 * len(got), f"encoder {k}: gradients reach only {sum(got)}/{len(got)} tensors"
        else:
            assert not any(got), f"unused encoder {k} received gradients"

    # determinism under a seed (dropout on), including the build
    twin = build(cfg).train()
    xs = x0 + sigma[:, None, None, None] * noise
    torch.manual_seed(7)
    a = model(xs, sigma)
    torch.manual_seed(7)
    b = twin(xs, sigma)
    assert torch.equal(a, b) and torch.isfinite(a).all() and a.shape == x0.shape

    # state-dict round trip, loaded with weights_only=True into a model with other weights
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    twin.eval()
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.01 * torch.randn_like(p))
        before = twin(xs, sigma)
        twin.load_state_dict(torch.load(buf, weights_only=True))
        assert torch.equal(twin(xs, sigma), model.eval()(xs, sigma))
        assert not torch.equal(before, twin(xs, sigma))


def test_the_builtin_list_is_pyprojects_entry_points():
    import tomllib
    from pathlib import Path

    from msrepro._builtins import BUILTIN_BACKBONES

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["msrepro.backbones"] == BUILTIN_BACKBONES
    assert set(BUILTIN_BACKBONES) == {"dpm_solver", "edm", "ldm"}


@pytest.mark.parametrize("name", ["dpm_solver", "edm", "ldm"])
def test_builtin_backbones_register_through_entry_points(name):
    """Every built-in entry point is installed, loads without error and registers its backbone as built-in."""
    import importlib
    from importlib.metadata import entry_points

    from msrepro.registry import plugin_failures

    eps = {ep.name: ep for ep in entry_points(group="msrepro.backbones")}
    assert name in eps and eps[name].value == f"msrepro.backbones.{name}"
    assert importlib.import_module(eps[name].value) is eps[name].load()
    assert not [f for f in plugin_failures() if f.group == "msrepro.backbones" and f.name == name]
    assert name in BACKBONES.list() and BACKBONES.entry(name).origin == "builtin"


def test_dpm_solver_time_input_is_score_sde_continuous_label():
    """score_sde VP continuous: the network sees labels = 999 t, and x_t = s(t) x (EpsPrecond c_in)."""
    from msrepro.models import resolve_boundaries, resolve_schedule

    cfg = make_config("dpm_solver", "multistage")
    schedule = resolve_schedule(cfg)
    adapter = get_backbone("dpm_solver")
    model = adapter.make_precond(torch.nn.Identity(), schedule, resolve_boundaries(cfg, schedule), "per_sample",
                                 cfg.model.params)
    t = torch.tensor([1e-5, 0.25, 0.4420, 0.9, 1.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = model.get_scalings(schedule.sigma(t))
    torch.testing.assert_close(c_noise.double(), 999 * t, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c_in.double(), schedule.s(t), rtol=1e-6, atol=0)
    assert adapter.time_input(torch.tensor(0.5)) == pytest.approx(499.5)
    assert adapter.precond_class is EpsPrecond and get_backbone("edm").precond_class is EDMPrecond
    assert adapter.default_density(schedule) == "vp_uniform"
    assert get_backbone("edm").default_density(resolve_schedule(make_config("edm", "multistage"))) == "lognormal"
    assert model.stage_of(schedule.sigma(torch.tensor([0.4419, 0.4420, 0.6308, 1.0]))).tolist() == [0, 1, 2, 2]


def test_full_presets_carry_the_paper_settings():
    dpm = load_config(overrides=["model.backbone=dpm_solver", "model.preset=full"], validate=False)
    edm = load_config(overrides=["model.backbone=edm", "model.preset=full"], validate=False)
    for cfg in (dpm, edm):
        assert cfg.model.encoder_channels == 128 and list(cfg.model.decoder_channels) == [192, 128, 16]
        assert cfg.dataset.name == "cifar10" and cfg.dataset.resolution == 32 and cfg.train.batch_size == 128
        assert cfg.model.params.norm_groups == 16
    assert list(dpm.stages.boundaries) == [0.4420, 0.6308] and dpm.stages.boundaries_schedule == "vp_linear"
    assert list(edm.stages.boundaries) == [2.5103, 7.6577] and edm.stages.boundaries_schedule == "edm"
    assert (dpm.train.lr, dpm.train.warmup_steps, dpm.train.grad_clip, dpm.train.ema_decay) == (2e-4, 5000, 1.0, 0.9999)
    assert dpm.model.params.dropout == 0.1 and dpm.dataset.hflip and dpm.schedule.eps == 1e-5
    assert dpm.sample.sampler == "dpm_solver" and dict(dpm.sample.params) == {
        "order": 3, "nfe": 20, "spacing": "logsnr", "t_start": None, "t_end": 1e-4}
    assert (edm.train.lr, edm.train.ema_halflife_kimg, edm.train.augment_p) == (1e-3, 500.0, 0.12)
    assert edm.model.params.dropout == 0.13 and edm.model.params.augment_dim == 9
    assert edm.sample.sampler == "heun" and edm.sample.params.steps == 18 and edm.sample.params.rho == 7.0
    assert (edm.schedule.sigma_min, edm.schedule.sigma_max) == (0.002, 80.0)


@pytest.mark.parametrize("backbone", ["dpm_solver", "edm"])
@pytest.mark.parametrize("preset", ["tiny", "smoke"])
def test_small_presets_are_digits_sized(backbone, preset):
    cfg = load_config(overrides=[f"model.backbone={backbone}", f"model.preset={preset}"], validate=False)
    assert (cfg.dataset.name, cfg.dataset.resolution, data_shape(cfg)) == ("digits", 8, (1, 8))  # native 8 px
    assert len(cfg.model.params.channel_mult) == 2 and cfg.model.params.num_blocks == 1
    assert list(cfg.model.params.attn_resolutions) == [4]  # attention at one level
    mult0 = cfg.model.params.channel_mult[0]
    assert min(cfg.model.decoder_channels) * mult0 >= 8  # the narrowest decoder still has 8 channels
    if preset == "tiny":  # the paper's decoder widths: 1.5 / 1 / 0.125 x the encoder
        e = cfg.model.encoder_channels
        assert [d / e for d in cfg.model.decoder_channels] == [1.5, 1.0, 0.125]
    assert cfg.sample.sampler == get_backbone(backbone).default_sampler
    validate_stages(cfg)
    get_backbone(backbone).validate(cfg)


@pytest.mark.parametrize("override,key", [
    ("model.params.attn_resolutions=[7]", "model.params.attn_resolutions"),
    ("model.decoder_channels=[18,32,8]", "model.decoder_channels"),
    ("model.params.middle=bottom", "model.params.middle"),
    ("model.params.resample_filter=[1,2,1]", "model.params.resample_filter"),
    ("dataset.resolution=9", "dataset.resolution"),  # tiny: 2 levels, so the side must be even
    ("schedule.name=edm", "schedule.name"),
])
def test_bad_network_options_fail_early_naming_the_key(override, key):
    cfg = load_config(overrides=["model.backbone=dpm_solver", override], validate=False)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        get_backbone("dpm_solver").validate(cfg)
