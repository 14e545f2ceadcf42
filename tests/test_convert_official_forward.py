"""The key maps' transforms against the official blocks' arithmetic (issue 14).

A round trip cannot catch a transform that is wrong in both directions (say, EDM's interleaved qkv rows read as
blocked). Here the official tensors a key map writes are fed to the official blocks' forward passes, transcribed
from the official code (score_sde ``AttnBlockpp`` / ``ResnetBlockBigGANpp`` with FIR resampling, EDM ``UNetBlock``,
latent-diffusion ``ResBlock`` / ``AttentionBlock`` with ``QKVAttentionLegacy``), and must give what msrepro's
module computes with its own weights.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from msrepro.runconfig import load_config
from msrepro.convert import get_format
from msrepro.models import build_denoiser


def exported(backbone: str, variant: str, fmt: str, extra=()):
    cfg = load_config([], [f"model.backbone={backbone}", "model.preset=smoke", f"model.variant={variant}", *extra])
    torch.manual_seed(0)
    model = build_denoiser(cfg).double().eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model, get_format(fmt).keymap(cfg, model, {}).to_official(model)


def sub(official: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in official.items() if k.startswith(prefix)}


def rand(*shape, seed=5):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- score_sde ------------------------------------------------------------------------------------------------------
def nin(x, w, b):  # layers.NIN: contract the channel axis with W [in, out]
    return torch.einsum("bchw,co->bohw", x, w) + b[None, :, None, None]


def attnblockpp(x, t, groups):
    c = x.shape[1]
    h = F.group_norm(x, min(c // 4, groups), t["GroupNorm_0.weight"], t["GroupNorm_0.bias"], eps=1e-6)
    q, k, v = (nin(h, t[f"NIN_{i}.W"], t[f"NIN_{i}.b"]) for i in range(3))
    w = torch.einsum("bchw,bcij->bhwij", q, k) * c ** -0.5
    b_, hh, ww = w.shape[:3]
    w = torch.softmax(w.reshape(b_, hh, ww, hh * ww), -1).reshape(b_, hh, ww, hh, ww)
    h = nin(torch.einsum("bhwij,bcij->bchw", w, v), t["NIN_3.W"], t["NIN_3.b"])
    return (x + h) / math.sqrt(2.0)


def upfirdn(x, taps, up, down, pad):
    """StyleGAN2's upfirdn2d for a square separable filter: zero-insert, pad, convolve (flipped), subsample."""
    k = torch.outer(torch.tensor(taps, dtype=x.dtype), torch.tensor(taps, dtype=x.dtype))
    k = k / k.sum() * (up * up)
    b, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(b, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    y = F.conv2d(x.reshape(b * c, 1, *x.shape[2:]), k.flip(0, 1)[None, None])
    return y.reshape(b, c, *y.shape[2:])[:, :, ::down, ::down]


def biggan_block(x, temb, t, groups, taps, up=False, down=False):
    """ResnetBlockBigGANpp.forward (fir=True): resampling by upsample_2d / downsample_2d."""
    p = len(taps) - 2
    resample = (lambda y: upfirdn(y, taps, 2, 1, ((p + 1) // 2 + 1, p // 2))) if up else \
        (lambda y: upfirdn(y, taps, 1, 2, ((p + 1) // 2, p // 2))) if down else (lambda y: y)
    cin, cout = x.shape[1], t["Conv_0.weight"].shape[0]
    h = F.silu(F.group_norm(x, min(cin // 4, groups), t["GroupNorm_0.weight"], t["GroupNorm_0.bias"], eps=1e-6))
    h, x = resample(h), resample(x)
    h = F.conv2d(h, t["Conv_0.weight"], t["Conv_0.bias"], padding=1)
    h = h + F.linear(F.silu(temb), t["Dense_0.weight"], t["Dense_0.bias"])[:, :, None, None]
    h = F.silu(F.group_norm(h, min(cout // 4, groups), t["GroupNorm_1.weight"], t["GroupNorm_1.bias"], eps=1e-6))
    h = F.conv2d(h, t["Conv_1.weight"], t["Conv_1.bias"], padding=1)
    if "Conv_2.weight" in t:
        x = F.conv2d(x, t["Conv_2.weight"], t["Conv_2.bias"])
    return (x + h) / math.sqrt(2.0)


def test_score_sde_attention_and_fir_resampling_blocks():
    model, off = exported("dpm_solver", "unified", "score_sde")
    enc, dec = model.net.encoders[0], model.net.decoders[0]
    # smoke layout: 4 = level 0's downsampling block, 7 = level 1's attention, 14 = the decoder's upsampling block
    x8, x16 = rand(2, 32, 8, 8), rand(2, 16, 16, 16, seed=6)
    torch.testing.assert_close(enc.blocks[1][0].attn(x8), attnblockpp(x8, sub(off, "all_modules.7."), 16))
    temb = rand(2, 64, seed=7)
    emb = F.silu(temb)  # msrepro hands the blocks the activated embedding
    torch.testing.assert_close(enc.down[0](x16, emb), biggan_block(x16, temb, sub(off, "all_modules.4."), 16,
                                                                   [1, 3, 3, 1], down=True))
    torch.testing.assert_close(dec.up[0](x8, emb), biggan_block(x8, temb, sub(off, "all_modules.14."), 16,
                                                                [1, 3, 3, 1], up=True))


# -- EDM ---------------------------------------------------------------------------------------------------------------
def edm_conv(x, t, name, up=False, down=False):
    """EDM Conv2d.forward (not fused): resample with its filter buffer, then the convolution."""
    f = t.get(f"{name}.resample_filter")
    c = x.shape[1]
    if up:
        x = F.conv_transpose2d(x, (f * 4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=(f.shape[-1] - 1) // 2)
    if down:
        x = F.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=(f.shape[-1] - 1) // 2)
    w = t[f"{name}.weight"]
    return F.conv2d(x, w, t[f"{name}.bias"], padding=w.shape[-1] // 2)


def unet_block(x, emb, t, groups, up=False, down=False):
    """EDM UNetBlock.forward (ddpmpp: adaptive_scale False, one head, skip_scale sqrt(1/2), eps 1e-6)."""
    gn = lambda y, n: F.group_norm(y, min(groups, y.shape[1] // 4), t[f"{n}.weight"], t[f"{n}.bias"], eps=1e-6)  # noqa
    orig = x
    x = edm_conv(F.silu(gn(x, "norm0")), t, "conv0", up, down)
    x = F.silu(gn(x + F.linear(emb, t["affine.weight"], t["affine.bias"])[:, :, None, None], "norm1"))
    x = edm_conv(x, t, "conv1")
    x = (x + (edm_conv(orig, t, "skip", up, down) if "skip.weight" in t else orig)) * math.sqrt(0.5)
    if "qkv.weight" in t:
        q, k, v = edm_conv(gn(x, "norm2"), t, "qkv").reshape(x.shape[0], x.shape[1], 3, -1).unbind(2)
        w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])).softmax(dim=2)
        a = torch.einsum("nqk,nck->ncq", w, v)
        x = (edm_conv(a.reshape(*x.shape), t, "proj") + x) * math.sqrt(0.5)
    return x


def test_edm_unet_blocks_with_interleaved_qkv_and_resample_filters():
    model, off = exported("edm", "multistage", "multistage_edm",
                          ("dataset.resolution=16", "model.params.attn_resolutions=[8]"))  # the 16 px geometry
    enc, dec = model.net.encoders[0], model.net.decoders[1]
    emb = rand(2, 64, seed=8)
    x16, x8 = rand(2, 16, 16, 16), rand(2, 32, 8, 8, seed=6)
    torch.testing.assert_close(enc.down[0](x16, emb), unet_block(x16, emb, sub(off, "model.enc.8x8_down."), 16,
                                                                 down=True))
    x8in = rand(2, 16, 8, 8, seed=12)  # level 1's first block: 16 -> 32 channels, skip conv and attention
    torch.testing.assert_close(enc.blocks[1][0](x8in, emb), unet_block(x8in, emb, sub(off, "model.enc.8x8_block0."),
                                                                       16))
    torch.testing.assert_close(dec.middle[0](x8, emb), unet_block(x8, emb, sub(off, "model.decs.1.8x8_in0."), 16))
    torch.testing.assert_close(dec.up[0](x8, emb), unet_block(x8, emb, sub(off, "model.decs.1.16x16_up."), 16,
                                                              up=True))


# -- latent-diffusion --------------------------------------------------------------------------------------------
def ldm_resblock(x, emb, t, groups):
    """openaimodel ResBlock._forward (no up/down, no scale-shift norm)."""
    h = F.conv2d(F.silu(F.group_norm(x, groups, t["in_layers.0.weight"], t["in_layers.0.bias"])),
                 t["in_layers.2.weight"], t["in_layers.2.bias"], padding=1)
    h = h + F.linear(F.silu(emb), t["emb_layers.1.weight"], t["emb_layers.1.bias"])[:, :, None, None]
    h = F.silu(F.group_norm(h, groups, t["out_layers.0.weight"], t["out_layers.0.bias"]))
    h = F.conv2d(h, t["out_layers.3.weight"], t["out_layers.3.bias"], padding=1)
    skip = F.conv2d(x, t["skip_connection.weight"], t["skip_connection.bias"]) if "skip_connection.weight" in t else x
    return skip + h


def ldm_attention(x, t, groups, heads):
    """openaimodel AttentionBlock._forward with QKVAttentionLegacy (heads split before q/k/v)."""
    b, c, *spatial = x.shape
    x = x.reshape(b, c, -1)
    qkv = F.conv1d(F.group_norm(x, groups, t["norm.weight"], t["norm.bias"]), t["qkv.weight"], t["qkv.bias"])
    ch = c // heads
    q, k, v = qkv.reshape(b * heads, ch * 3, -1).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1).to(q.dtype)  # as official
    h = torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, x.shape[-1])
    return (x + F.conv1d(h, t["proj_out.weight"], t["proj_out.bias"])).reshape(b, c, *spatial)


@pytest.mark.parametrize("fmt,variant", [("ldm", "unified"), ("multistage_ldm", "multistage")])
def test_ldm_blocks_with_1d_attention_convs_and_several_heads(fmt, variant):
    model, off = exported("ldm", variant, fmt)
    block = model.net.encoders[0].input_blocks[3]   # smoke: 16 -> 32 channels with a skip conv, then attention
    prefix = "model.diffusion_model.input_blocks.3."
    x, emb = rand(2, 16, 4, 4), rand(2, 64, seed=9)
    torch.testing.assert_close(block[0](x, emb), ldm_resblock(x, emb, sub(off, prefix + "0."), 8))
    y = rand(2, 32, 4, 4, seed=10)
    assert block[1].heads == 4
    torch.testing.assert_close(block[1](y), ldm_attention(y, sub(off, prefix + "1."), 8, heads=4))
    out_blocks = "de_modules.0." if variant == "multistage" else "output_blocks."
    dec = model.net.decoders[0].output_blocks[0]   # innermost decoder block: attention after its ResBlock
    w = dec[1].norm.weight.shape[0]
    z = rand(2, w, 4, 4, seed=11)
    torch.testing.assert_close(dec[1](z), ldm_attention(z, sub(off, f"model.diffusion_model.{out_blocks}0.1."), 8,
                                                        heads=w // 8))
