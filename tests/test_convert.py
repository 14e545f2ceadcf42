"""Importing official checkpoints (issue 14): score_sde, EDM, latent-diffusion and the authors' multistage forks.

Files are written by the tests (random weights, official key names and containers: ``official_layouts.py``),
imported back, and must compute the original function. The key names themselves are checked against names and
shapes written out from the official code, and against independent transcriptions of the official constructors.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from msrepro.checkpoint import load_checkpoint, load_model
from msrepro.cli import main
from msrepro.config import ConfigError
from msrepro.runconfig import load_config
from msrepro.convert import ConversionError, RefusedGlobal, get_format, import_checkpoint
from msrepro.convert.kl_vae import vae_keymap
from msrepro.models import build_denoiser
from msrepro.backbones.ldm.autoencoder_config import load_vae_config
from msrepro.backbones.ldm.autoencoder_training import build_vae, load_vae
from official_layouts import Persistent, module_state, write_edm_pickle, write_ldm_ckpt, write_score_sde

#: the EDM smoke network at 16 px (attention at 8 px), the geometry the official-key names below are written for
EDM16 = ["dataset.resolution=16", "model.params.attn_resolutions=[8]"]
#: format -> (backbone, variant, config items for the smoke model, items the import needs)
SMOKE = {
    "score_sde": ("dpm_solver", "unified", [], ["dataset.name=digits", "dataset.resolution=16",
                                                 "model.params.resample_filter=[1,3,3,1]",
                                                 "model.params.norm_groups=16"]),
    "multistage_sde": ("dpm_solver", "multistage", [], ["dataset.name=digits", "dataset.resolution=16",
                                                         "model.params.resample_filter=[1,3,3,1]",
                                                         "stages.boundaries=[0.4420,0.6308]"]),
    "edm": ("edm", "unified", EDM16, ["dataset.name=digits", "model.params.norm_groups=16", *EDM16]),
    "multistage_edm": ("edm", "multistage", EDM16, ["dataset.name=digits", *EDM16]),
    "ldm": ("ldm", "unified", [], ["dataset.name=latents", "dataset.resolution=8", "model.params.num_head_channels=8",
                                   "model.params.norm_groups=8", "vae.dataset.name=digits", "vae.scale_factor=0.5",
                                   "vae.model.norm_groups=4"]),
    "multistage_ldm": ("ldm", "multistage", ["model.params.ldm_decoder_attention=first_only"],
                       ["dataset.name=latents", "dataset.resolution=8", "model.params.num_head_channels=8",
                        "model.params.norm_groups=8", "stages.boundaries=[442,631]", "vae.dataset.name=digits",
                        "vae.scale_factor=0.5", "vae.model.norm_groups=4"]),
}
STAGE_INTERVAL = [[[0, 2.5103]], [[2.5103, 7.6577]], [[7.6577, float("inf")]]]  # the fork's MultistageUNet default


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight moved away from its (often near-zero) initialisation, so every weight matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def smoke_model(fmt: str):
    backbone, variant, extra, _ = SMOKE[fmt]
    cfg = load_config([], [f"model.backbone={backbone}", "model.preset=smoke", f"model.variant={variant}", *extra])
    torch.manual_seed(0)
    return cfg, perturbed(build_denoiser(cfg))


def write_official(fmt: str, tmp_path: Path, ema_offset: float = 0.0):
    """(config, original denoiser, official file, import items, original first stage or None) for ``fmt``'s smoke
    model."""
    cfg, model = smoke_model(fmt)
    vae = None
    official = get_format(fmt).keymap(cfg, model, {}).to_official(model)
    items = ["model.preset=smoke", *SMOKE[fmt][3]]
    if fmt.endswith("sde"):
        buffers = ("sigmas",) if fmt == "multistage_sde" else ()
        if buffers:
            official["sigmas"] = torch.exp(torch.linspace(4, -4, 1000))
        path = write_score_sde(official, tmp_path / f"{fmt}.pth", buffers, ema_offset)
    elif fmt.endswith("edm"):
        path = write_edm_pickle(official, tmp_path / f"{fmt}.pkl", 16, 1,
                                STAGE_INTERVAL if fmt == "multistage_edm" else None)
    else:
        vae = perturbed(build_vae(load_vae_config([], ["preset=smoke"])), seed=1)
        ema = {k: v + ema_offset for k, v in official.items()}
        path = write_ldm_ckpt(official, tmp_path / f"{fmt}.ckpt", dict(cfg.schedule),
                              first_stage=vae_keymap(vae, {}).to_official(vae), ema=ema)
    return cfg, model, path, items, vae


SIGMAS = torch.tensor([0.05, 0.3, 1.0, 3.0, 10.0, 40.0])  # noise levels in every stage of every backbone


def outputs(model: torch.nn.Module, channels: int, res: int) -> torch.Tensor:
    """The denoiser on fixed inputs (float32: the networks' embeddings are float32 by design)."""
    x = torch.randn(len(SIGMAS), channels, res, res, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x, SIGMAS)


@pytest.mark.parametrize("fmt", list(SMOKE))
def test_round_trip_computes_the_original_function(fmt, tmp_path):
    cfg, model, path, items, _ = write_official(fmt, tmp_path)
    out = tmp_path / "imported.pt"
    import_checkpoint(fmt, path, out, items)
    imported, icfg = load_model(out)
    original = model.state_dict()
    assert set(imported.state_dict()) == set(original)
    for key, value in imported.state_dict().items():
        assert torch.equal(value, original[key]), key
    channels, res = (3, 8) if fmt.endswith("ldm") else (1, 16)
    if cfg.model.variant == "multistage":  # the inputs reach every decoder
        assert set(imported.stage_of(SIGMAS).tolist()) == {0, 1, 2}
    torch.testing.assert_close(outputs(imported, channels, res), outputs(model, channels, res), rtol=1e-6, atol=1e-6)
    assert icfg.model.variant == cfg.model.variant and icfg.model.backbone == cfg.model.backbone


@pytest.mark.parametrize("fmt", ["ldm", "multistage_ldm"])
def test_ldm_first_stage_becomes_an_msrepro_vae(fmt, tmp_path):
    _, _, path, items, first_stage = write_official(fmt, tmp_path)
    result = import_checkpoint(fmt, path, tmp_path / "ldm.pt", items)
    vae_path = Path(result.config.model.params.vae)
    assert vae_path == (tmp_path / "ldm-vae.pt").resolve() and result.extra_files == [vae_path]
    vae = load_vae(vae_path)
    z = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z), first_stage.decode(z), rtol=0, atol=1e-6)
    assert float(vae.scale_factor) == 0.5
    denoiser, _ = load_model(tmp_path / "ldm.pt")
    assert denoiser.decode(z * 0.5).shape == (3, 1, 16, 16)  # decodes through the imported first stage


@pytest.mark.parametrize("fmt", ["score_sde", "ldm"])
def test_ema_weights_are_the_default_and_raw_selectable(fmt, tmp_path):
    _, model, path, items, _ = write_official(fmt, tmp_path, ema_offset=0.25)
    import_checkpoint(fmt, path, tmp_path / "ema.pt", items)
    import_checkpoint(fmt, path, tmp_path / "raw.pt", items, weights="raw")
    ema, raw = load_checkpoint(tmp_path / "ema.pt")["model"], load_checkpoint(tmp_path / "raw.pt")["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(raw[key], value) and torch.equal(ema[key], value + 0.25), key


def test_edm_snapshot_holds_only_the_ema_network(tmp_path):
    _, _, path, items, _ = write_official("edm", tmp_path)
    with pytest.raises(ConversionError, match="no raw weights in the file; it has: ema"):
        import_checkpoint("edm", path, tmp_path / "x.pt", items, weights="raw")


def test_inferred_config(tmp_path):
    """Widths, blocks, attention levels, pyramid, decoder widths and more come from the shapes and names."""
    got = {}
    for fmt in SMOKE:
        _, _, path, items, _ = write_official(fmt, tmp_path)
        got[fmt] = import_checkpoint(fmt, path, tmp_path / f"{fmt}.pt", items).config
    sde, msde = got["score_sde"], got["multistage_sde"]
    assert (sde.model.encoder_channels, list(sde.model.params.channel_mult), sde.model.params.num_blocks) == \
        (16, [1, 2], 1)
    assert list(sde.model.params.attn_resolutions) == [8] and sde.model.params.progressive_input == "residual"
    assert list(msde.model.decoder_channels) == [24, 16, 8] and msde.model.params.norm_groups == 16
    edm, medm = got["edm"], got["multistage_edm"]
    assert edm.dataset.resolution == 16 and list(edm.model.params.resample_filter) == [1, 1]  # names, buffers
    assert edm.model.params.augment_dim == 9 and edm.model.params.middle == "decoder"
    assert list(medm.stages.boundaries) == [2.5103, 7.6577]  # from the fork's stage_interval in the pickle
    ldm, mldm = got["ldm"], got["multistage_ldm"]
    assert list(ldm.model.params.attention_ds) == [2] and ldm.model.params.ldm_decoder_attention == "all"
    assert mldm.model.params.ldm_decoder_attention == "first_only"  # decoders 2 and 3 have no attention keys
    assert (ldm.schedule.num_steps, ldm.schedule.beta_start, ldm.schedule.beta_end) == (1000, 0.0015, 0.0195)


# -- the official names and shapes, written out from the official code --------------------------------------------
def official_shapes(fmt: str, items: list[str]) -> dict[str, tuple[int, ...]]:
    """The official {key: shape} msrepro's key map expects for a full-size config (built on the meta device)."""
    cfg = load_config([], items)
    with torch.device("meta"):
        model = build_denoiser(cfg)
    return {k: tuple(v.shape) for k, v in get_format(fmt).keymap(cfg, model, {}).to_official(model).items()}


LITERAL = {
    # score_sde configs/vp/cifar10_ddpmpp_deep_continuous (nf 128, ch_mult 1,2,2,2, 8 blocks, attn 16, no pyramid)
    ("score_sde", ("model.preset=full", "model.variant=unified", "model.params.progressive_input=none")): {
        "all_modules.0.weight": (512, 128), "all_modules.1.weight": (512, 512), "all_modules.2.weight": (128, 3, 3, 3),
        "all_modules.3.GroupNorm_0.weight": (128,), "all_modules.3.Dense_0.weight": (128, 512),
        "all_modules.11.Conv_2.weight": (128, 128, 1, 1),            # level 0's downsampling ResnetBlockBigGANpp
        "all_modules.12.Conv_0.weight": (256, 128, 3, 3), "all_modules.13.NIN_0.W": (256, 256),
        "all_modules.13.NIN_3.b": (256,), "all_modules.47.NIN_2.W": (256, 256),  # middle AttnBlockpp
        "all_modules.49.Conv_0.weight": (256, 512, 3, 3), "all_modules.78.NIN_1.W": (256, 256),
        "all_modules.89.weight": (128,), "all_modules.90.weight": (3, 128, 3, 3)},
    # the fork's configs/vp/cifar10_ncsnpp_multistage_deep_continuous_v2 (en 128, de 192/128/16, residual pyramid)
    ("multistage_sde", ("model.preset=full",)): {
        "en_modules.12.Conv2d_0.weight": (128, 3, 3, 3), "en_modules.14.NIN_0.W": (256, 256),
        "en_modules.51.Conv_1.weight": (256, 256, 3, 3), "de_modules.0.0.Conv_0.weight": (384, 512, 3, 3),
        "de_modules.1.29.NIN_0.W": (256, 256), "de_modules.2.0.Conv_0.weight": (32, 512, 3, 3),
        "de_modules.2.41.weight": (3, 16, 3, 3)},
    # EDM train.py --arch=ddpmpp on CIFAR-10: SongUNet(model_channels 128, channel_mult 2,2,2, augment_dim 9)
    ("edm", ("model.backbone=edm", "model.preset=full", "model.variant=unified")): {
        "model.map_augment.weight": (128, 9), "model.map_layer0.weight": (512, 128),
        "model.enc.32x32_conv.weight": (128, 3, 3, 3), "model.enc.32x32_block0.skip.weight": (256, 128, 1, 1),
        "model.enc.16x16_down.conv0.resample_filter": (1, 1, 2, 2),
        "model.enc.16x16_block0.qkv.weight": (768, 256, 1, 1),
        "model.dec.8x8_in0.proj.weight": (256, 256, 1, 1), "model.dec.8x8_block0.conv0.weight": (256, 512, 3, 3),
        "model.dec.16x16_up.skip.resample_filter": (1, 1, 2, 2), "model.dec.16x16_block4.norm2.weight": (256,),
        "model.dec.32x32_aux_norm.weight": (256,), "model.dec.32x32_aux_conv.weight": (3, 256, 3, 3)},
    ("multistage_edm", ("model.backbone=edm", "model.preset=full")): {
        "model.decs.0.8x8_block0.conv0.weight": (384, 512, 3, 3), "model.decs.2.32x32_aux_conv.weight": (3, 32, 3, 3)},
    # latent-diffusion configs/latent-diffusion/celebahq-ldm-vq-4 (model_channels 224, 1,2,3,4, attention ds 8,4,2)
    ("ldm", ("model.backbone=ldm", "model.preset=full", "model.variant=unified")): {
        "model.diffusion_model.time_embed.0.weight": (896, 224),
        "model.diffusion_model.input_blocks.0.0.weight": (224, 3, 3, 3),
        "model.diffusion_model.input_blocks.3.0.op.weight": (224, 224, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (448, 224, 1, 1),
        "model.diffusion_model.input_blocks.4.1.qkv.weight": (1344, 448, 1),
        "model.diffusion_model.middle_block.1.proj_out.weight": (896, 896, 1),
        "model.diffusion_model.output_blocks.0.0.in_layers.2.weight": (896, 1792, 3, 3),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (896, 896, 3, 3),
        "model.diffusion_model.out.2.weight": (3, 224, 3, 3)},
    ("multistage_ldm", ("model.backbone=ldm", "model.preset=full", "model.params.ldm_decoder_attention=first_only")): {
        "model.diffusion_model.de_modules.0.0.0.in_layers.2.weight": (1024, 1792, 3, 3),
        "model.diffusion_model.de_modules.0.2.1.qkv.weight": (3072, 1024, 1),
        "model.diffusion_model.outs.2.2.weight": (3, 128, 3, 3)},
}


@pytest.mark.parametrize("fmt,items", list(LITERAL), ids=[f for f, _ in LITERAL])
def test_official_key_names_and_shapes(fmt, items):
    shapes = official_shapes(fmt, list(items))
    for key, expected in LITERAL[(fmt, items)].items():
        assert shapes.get(key) == expected, key
    if fmt == "multistage_ldm":  # parity mode: decoders 2 and 3 have no attention at all
        assert not any(".qkv." in k for k in shapes if ".de_modules.1." in k or ".de_modules.2." in k)
    n = sum(torch.Size(s).numel() for k, s in shapes.items() if "resample_filter" not in k)
    expected_params = {"edm": 55_733_891, "multistage_edm": 128_793_385, "ldm": 274_056_163,
                       "multistage_ldm": 493_841_449}  # SPEC 4: 55.73 / 128.79 / 274.06 / 493.8 M
    assert fmt not in expected_params or n == expected_params[fmt]


def test_kl_first_stage_key_names_and_shapes():
    """latent-diffusion kl-f4 (ch 128, ch_mult 1,2,4, 2 blocks, z 3): taming Encoder/Decoder names."""
    with torch.device("meta"):
        vae = build_vae(load_vae_config([], ["preset=full"]))
    shapes = {k: tuple(v.shape) for k, v in vae_keymap(vae, {}).to_official(vae).items()}
    assert shapes["encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert shapes["encoder.down.1.block.0.nin_shortcut.weight"] == (256, 128, 1, 1)
    assert shapes["encoder.down.0.downsample.conv.weight"] == (128, 128, 3, 3)
    assert shapes["encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert shapes["encoder.conv_out.weight"] == (6, 512, 3, 3) and shapes["quant_conv.weight"] == (6, 6, 1, 1)
    assert shapes["decoder.up.2.block.0.conv1.weight"] == (512, 512, 3, 3)
    assert shapes["decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert shapes["decoder.up.1.upsample.conv.weight"] == (256, 256, 3, 3)
    assert shapes["decoder.conv_out.weight"] == (3, 128, 3, 3) and "decoder.up.0.upsample.conv.weight" not in shapes


def ncsnpp_shapes(nf: int, mult: list[int], blocks: int, attn: list[int], res: int, c: int,
                  pyramid: bool) -> dict[str, tuple[int, ...]]:
    """{key: shape} of score_sde's NCSNpp (biggan, positional, conditional, progressive 'none'), transcribed
    independently from the construction loop in score_sde's models/ncsnpp.py."""
    shapes: dict[str, tuple[int, ...]] = {}
    index = iter(range(10_000))

    def layer(shape_w, shape_b, sub=""):
        p = f"all_modules.{next(index)}{sub}"
        shapes[f"{p}.weight"], shapes[f"{p}.bias"] = shape_w, shape_b

    def resblock(i, o, updown=False):
        p = f"all_modules.{next(index)}"
        layers = (("GroupNorm_0", [(i,), (i,)]), ("Conv_0", [(o, i, 3, 3), (o,)]), ("Dense_0", [(o, 4 * nf), (o,)]),
                  ("GroupNorm_1", [(o,), (o,)]), ("Conv_1", [(o, o, 3, 3), (o,)]))
        for name, shp in layers + (("Conv_2", [(o, i, 1, 1), (o,)]),) * (i != o or updown):
            shapes[f"{p}.{name}.weight"], shapes[f"{p}.{name}.bias"] = shp

    def attnblock(ch):
        p = f"all_modules.{next(index)}"
        shapes[f"{p}.GroupNorm_0.weight"] = shapes[f"{p}.GroupNorm_0.bias"] = (ch,)
        for i in range(4):
            shapes[f"{p}.NIN_{i}.W"], shapes[f"{p}.NIN_{i}.b"] = (ch, ch), (ch,)

    layer((4 * nf, nf), (4 * nf,)); layer((4 * nf, 4 * nf), (4 * nf,)); layer((nf, c, 3, 3), (nf,))  # noqa: E702
    hs, ch, pyr = [nf], nf, c
    for level, m in enumerate(mult):
        for _ in range(blocks):
            resblock(ch, nf * m)
            ch = nf * m
            if res >> level in attn:
                attnblock(ch)
            hs.append(ch)
        if level != len(mult) - 1:
            resblock(ch, ch, updown=True)
            if pyramid:
                layer((ch, pyr, 3, 3), (ch,), ".Conv2d_0")
                pyr = ch
            hs.append(ch)
    resblock(ch, ch); attnblock(ch); resblock(ch, ch)  # noqa: E702
    for level, m in reversed(list(enumerate(mult))):
        for _ in range(blocks + 1):
            resblock(ch + hs.pop(), nf * m)
            ch = nf * m
        if res >> level in attn:
            attnblock(ch)
        if level != 0:
            resblock(ch, ch, updown=True)
    layer((ch,), (ch,)); layer((c, ch, 3, 3), (c,))  # noqa: E702
    return shapes


@pytest.mark.parametrize("pyramid", [False, True])
def test_score_sde_layout_matches_the_ncsnpp_constructor(pyramid):
    items = ["model.preset=full", "model.variant=unified",
             f"model.params.progressive_input={'residual' if pyramid else 'none'}"]
    assert official_shapes("score_sde", items) == ncsnpp_shapes(128, [1, 2, 2, 2], 8, [16], 32, 3, pyramid)


def songunet_shapes(nf: int, mult: list[int], blocks: int, attn: list[int], res: int, c: int, aug: int):
    """{key: shape} of EDM's SongUNet (ddpmpp: standard encoder/decoder) inside EDMPrecond, transcribed from the
    constructor in EDM's training/networks.py (resample_filter buffers included)."""
    shapes = {"model.map_augment.weight": (nf, aug), "model.map_layer0.weight": (4 * nf, nf),
              "model.map_layer0.bias": (4 * nf,), "model.map_layer1.weight": (4 * nf, 4 * nf),
              "model.map_layer1.bias": (4 * nf,)}

    def block(p, i, o, up=False, down=False, attention=False):
        shapes.update({f"{p}.norm0.weight": (i,), f"{p}.norm0.bias": (i,), f"{p}.conv0.weight": (o, i, 3, 3),
                       f"{p}.conv0.bias": (o,), f"{p}.affine.weight": (o, 4 * nf), f"{p}.affine.bias": (o,),
                       f"{p}.norm1.weight": (o,), f"{p}.norm1.bias": (o,), f"{p}.conv1.weight": (o, o, 3, 3),
                       f"{p}.conv1.bias": (o,)})
        if up or down:
            shapes[f"{p}.conv0.resample_filter"] = shapes[f"{p}.skip.resample_filter"] = (1, 1, 2, 2)
        if o != i or up or down:
            shapes[f"{p}.skip.weight"], shapes[f"{p}.skip.bias"] = (o, i, 1, 1), (o,)
        if attention:
            shapes.update({f"{p}.norm2.weight": (o,), f"{p}.norm2.bias": (o,), f"{p}.qkv.weight": (3 * o, o, 1, 1),
                           f"{p}.qkv.bias": (3 * o,), f"{p}.proj.weight": (o, o, 1, 1), f"{p}.proj.bias": (o,)})
        return o

    skips, cout = [], c
    for level, m in enumerate(mult):
        r = res >> level
        if level == 0:
            shapes[f"model.enc.{r}x{r}_conv.weight"], shapes[f"model.enc.{r}x{r}_conv.bias"] = (nf, c, 3, 3), (nf,)
            cout = nf
        else:
            cout = block(f"model.enc.{r}x{r}_down", cout, cout, down=True)
        skips.append(cout)
        for idx in range(blocks):
            cout = block(f"model.enc.{r}x{r}_block{idx}", cout, nf * m, attention=r in attn)
            skips.append(cout)
    for level, m in reversed(list(enumerate(mult))):
        r = res >> level
        if level == len(mult) - 1:
            block(f"model.dec.{r}x{r}_in0", cout, cout, attention=True)
            block(f"model.dec.{r}x{r}_in1", cout, cout)
        else:
            block(f"model.dec.{r}x{r}_up", cout, cout, up=True)
        for idx in range(blocks + 1):
            cout = block(f"model.dec.{r}x{r}_block{idx}", cout + skips.pop(), nf * m,
                         attention=idx == blocks and r in attn)
    shapes[f"model.dec.{res}x{res}_aux_norm.weight"] = shapes[f"model.dec.{res}x{res}_aux_norm.bias"] = (cout,)
    shapes[f"model.dec.{res}x{res}_aux_conv.weight"], shapes[f"model.dec.{res}x{res}_aux_conv.bias"] = \
        (c, cout, 3, 3), (c,)
    return shapes


def test_edm_layout_matches_the_songunet_constructor():
    items = ["model.backbone=edm", "model.preset=full", "model.variant=unified"]
    assert official_shapes("edm", items) == songunet_shapes(128, [2, 2, 2], 4, [16], 32, 3, 9)


# -- what the file cannot tell, and files that do not fit ----------------------------------------------------------
def test_missing_items_are_asked_for_by_name(tmp_path, capsys):
    _, _, path, _, _ = write_official("score_sde", tmp_path)
    rc = main(["import", "score_sde", str(path), "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "x.pt").exists()
    for key in ("dataset.name=", "dataset.resolution=", "model.params.resample_filter="):
        assert key in err
    _, _, path, items, _ = write_official("multistage_sde", tmp_path)
    with pytest.raises(ConversionError, match=r"stages\.boundaries=\.\.\."):
        import_checkpoint("multistage_sde", path, tmp_path / "y.pt", [i for i in items if "boundaries" not in i])


def test_an_item_contradicting_the_file_is_an_error(tmp_path):
    _, _, path, items, _ = write_official("score_sde", tmp_path)
    with pytest.raises(ConversionError, match=r"model\.params\.num_blocks: the file says 1"):
        import_checkpoint("score_sde", path, tmp_path / "x.pt", [*items, "model.params.num_blocks=2"])
    with pytest.raises(ConversionError, match="dataset.name=cifar10: 3 channels, but the network's input conv takes 1"):
        import_checkpoint("score_sde", path, tmp_path / "x.pt", [*items, "dataset.name=cifar10"])


def _rewrite(path: Path, edit) -> Path:
    state = torch.load(path, weights_only=True)
    edit(state["model"])
    state["ema"]["shadow_params"] = list(state["model"].values())
    torch.save(state, path)
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.update({"module.all_modules.999.weight": torch.zeros(2)}),
     "1 keys of the file that the inferred architecture has no place for: all_modules.999.weight"),
    (lambda sd: sd.pop("module.all_modules.6.Conv_1.bias"),
     "keys the inferred architecture needs that the file lacks: all_modules.6.Conv_1.bias"),
    (lambda sd: sd.update({"module.all_modules.6.Conv_1.weight": torch.zeros(32, 32, 1, 1)}),
     r"shape mismatch: all_modules.6.Conv_1.weight \[\(32, 32, 1, 1\)\] -> net.encoders.0.blocks.1.0.conv1.weight "
     r"needs \(32, 32, 3, 3\)"),
    (lambda sd: sd.update({"module.all_modules.7.NIN_2.W": torch.zeros(32, 8)}), r"all_modules.7.NIN_2.W .*\(32, 8\)"),
])
def test_leftover_missing_and_misshapen_keys_are_named(tmp_path, edit, message):
    _, _, path, items, _ = write_official("score_sde", tmp_path)
    with pytest.raises(ConversionError, match=message):
        import_checkpoint("score_sde", _rewrite(path, edit), tmp_path / "x.pt", items)


def test_resampling_filters_are_compared_not_copied(tmp_path):
    cfg, model = smoke_model("edm")
    official = get_format("edm").keymap(cfg, model, {}).to_official(model)
    official["model.dec.16x16_up.skip.resample_filter"] = torch.full((1, 1, 2, 2), 0.3)
    path = write_edm_pickle(official, tmp_path / "net.pkl", 16, 1)
    with pytest.raises(ConversionError, match="16x16_up.skip.resample_filter .* differs from the buffer msrepro"):
        import_checkpoint("edm", path, tmp_path / "x.pt", ["model.preset=smoke", *SMOKE["edm"][3]])


def test_edm_state_dict_saved_by_edms_own_code_is_accepted(tmp_path):
    """The way out the pickle error names: net.state_dict() saved with torch.save, read with weights_only=True."""
    cfg, model = smoke_model("edm")
    torch.save(get_format("edm").keymap(cfg, model, {}).to_official(model), tmp_path / "net.pt")
    result = import_checkpoint("edm", tmp_path / "net.pt", tmp_path / "x.pt",
                               ["model.preset=smoke", "dataset.name=digits", "model.params.norm_groups=16"])
    assert result.notes and "one set of weights" in result.notes[0]
    torch.testing.assert_close(outputs(load_model(tmp_path / "x.pt")[0], 1, 16), outputs(model, 1, 16), rtol=1e-6,
                               atol=1e-6)


# -- no pickled code runs ----------------------------------------------------------------------------------------
class RunsACommand:
    """Unpickling this would run ``touch MARKER`` (os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Evaluates:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _malicious(kind: str, marker: Path, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.pkl"
    if kind == "top_level":
        with path.open("wb") as f:
            pickle.dump({"ema": RunsACommand(marker)}, f)
    elif kind == "inside_the_network":  # a valid EDM snapshot, with the callable hidden in the network's state
        cfg, model = smoke_model("edm")
        official = get_format("edm").keymap(cfg, model, {}).to_official(model)
        write_edm_pickle(official, path, 16, 1, extra_state={"_init_kwargs": {"hook": Evaluates(marker)}})
    else:  # a persistent object whose state carries the callable
        with path.open("wb") as f:
            pickle.dump(Persistent("EDMPrecond", module_state({}, {}, {"model": Evaluates(marker)})), f)
    return path


@pytest.mark.parametrize("kind", ["top_level", "inside_the_network", "persistent_state"])
def test_a_pickle_carrying_a_callable_is_refused_and_nothing_runs(tmp_path, capsys, kind):
    marker = tmp_path / "it-ran"
    path = _malicious(kind, marker, tmp_path)
    with pytest.raises(RefusedGlobal, match=r"global '(posix|os)\.system'|global 'builtins\.exec'"):
        import_checkpoint("edm", path, tmp_path / "x.pt", ["dataset.name=digits"])
    rc = main(["import", "edm", str(path), "--out", str(tmp_path / "x.pt"), "dataset.name=digits"])
    err = capsys.readouterr().err
    assert rc == 2 and "Nothing was executed" in err and "EDM's own code" in err and "is not allowed" in err
    assert not marker.exists() and not (tmp_path / "x.pt").exists()


# -- end to end, and the warm start ----------------------------------------------------------------------------------
@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MSREPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.mark.slow
def test_cli_import_then_evaluate_and_cluster_gradient(tmp_path, capsys, private_cache):
    _, _, path, items, _ = write_official("score_sde", tmp_path)
    ckpt = tmp_path / "imported.pt"
    assert main(["import", "score_sde", str(path), "--out", str(ckpt), *items]) == 0
    assert "variant unified, encoder 16" in capsys.readouterr().out
    assert main(["evaluate", str(ckpt), "--num", "16", "--no-progress", "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["num_samples"] == 16 and result["step"] == 123 and result["metrics"]["fd_digits"] > 0
    out = tmp_path / "cluster"
    assert main(["cluster", "gradient", "--checkpoint", str(ckpt), "--dataset", "digits", "batch_size=4", "grid=12",
                 "--out", str(out)]) == 0
    cuts = json.loads((out / "result.json").read_text())["boundaries"]
    assert len(cuts) == 2 and 0 < cuts[0] < cuts[1] < 1


def test_warm_start_from_an_imported_unified_model(tmp_path):
    from msrepro.training.builders import build_model

    _, unified, path, items, _ = write_official("score_sde", tmp_path)
    source = tmp_path / "unified.pt"
    import_checkpoint("score_sde", path, source, items)
    base = ["model.preset=smoke", "model.variant=multistage", "model.params.resample_filter=[1,3,3,1]",
            f"output_dir={tmp_path / 'runs'}", f"train.init_from={source}"]
    warm = build_model(load_config([], [*base, "train.init_mode=all"]), torch.device("cpu")).net
    cold = build_model(load_config([], [*base[:-1], "name=cold"]), torch.device("cpu")).net
    assert torch.equal(torch.nn.utils.parameters_to_vector(warm.encoders[0].parameters()),
                       torch.nn.utils.parameters_to_vector(unified.net.encoders[0].parameters()))
    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    assert same(warm.decoders[1], unified.net.decoders[0])             # decoder widths 24/16/8; 16 fits the source
    assert same(warm.decoders[0], cold.decoders[0]) and same(warm.decoders[2], cold.decoders[2])
    enc_only = build_model(load_config([], [*base, "train.init_mode=encoder"]), torch.device("cpu")).net
    assert same(enc_only.encoders[0], warm.encoders[0]) and same(enc_only.decoders[1], cold.decoders[1])


def test_warm_start_checks_the_source(tmp_path):
    from msrepro.training.builders import build_model

    _, _, path, items, _ = write_official("score_sde", tmp_path)
    import_checkpoint("score_sde", path, tmp_path / "unified.pt", items)
    with pytest.raises(ConfigError, match="train.init_mode: 'decoders' is not valid; allowed: encoder, all"):
        load_config([], ["model.preset=smoke", "train.init_mode=decoders"])
    cfg = load_config([], ["model.preset=tiny", f"train.init_from={tmp_path / 'unified.pt'}",
                           f"output_dir={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError, match="train.init_from: .* does not fit encoder 0 of this run: "):
        build_model(cfg, torch.device("cpu"))
    cfg = load_config([], ["model.preset=smoke", f"train.init_from={tmp_path / 'nope.pt'}"])
    with pytest.raises(ConfigError, match="train.init_from: checkpoint not found"):
        build_model(cfg, torch.device("cpu"))


def test_the_cli_offers_exactly_the_supported_formats():
    from msrepro.cli import import_cmd
    from msrepro.convert import formats

    assert list(import_cmd.FORMATS) == list(formats())


def test_a_broken_pickle_is_a_clear_error(tmp_path):
    _, _, path, items, _ = write_official("edm", tmp_path)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(pickle.UnpicklingError, match="cut.pkl: not a readable pickle"):
        import_checkpoint("edm", cut, tmp_path / "x.pt", items)
