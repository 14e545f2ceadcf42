"""DDPM++ layers and encoder/decoder split: checked against the official formulations written out independently
(StyleGAN2 upfirdn2d, score_sde attention and embedding, EDM's positional embedding), and the per-sample routing
checked bitwise against running each sample alone."""

import math
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from msrepro.multidecoder import MultiStageNet
from msrepro.nets.ddpmpp import DDPMppDecoder, DDPMppEncoder, DDPMppParams, skip_channels
from msrepro.nets.layers import Attention, ConvDown, Resample, norm_groups, positional_embedding


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models gain nothing from threads, and OpenMP spin-waits crawl on a shared, loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def upfirdn2d_reference(x, taps, up=1, down=1, pad=(0, 0)):
    """StyleGAN2's upfirdn2d, step by step: zero-insert, pad, convolve with the (flipped) 2-D kernel, decimate."""
    k = torch.tensor(taps, dtype=torch.float64)
    k = torch.outer(k, k)
    k = k / k.sum()
    b, c, h, w = x.shape
    if up > 1:
        z = torch.zeros(b, c, h * up, w * up, dtype=x.dtype)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    kernel = torch.flip(k, [0, 1]).to(x.dtype).expand(c, 1, *k.shape)
    y = F.conv2d(x, kernel, groups=c)
    return y[:, :, ::down, ::down]


@pytest.mark.parametrize("taps", [[1, 1], [1, 3, 3, 1]])
def test_fir_resampling_matches_upfirdn2d(taps):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    n = len(taps)
    p = n - 2  # score_sde upsample_2d / downsample_2d padding for factor 2
    up_ref = upfirdn2d_reference(x, taps, up=2, pad=((p + 1) // 2 + 1, p // 2)) * 4  # gain factor**2
    down_ref = upfirdn2d_reference(x, taps, down=2, pad=((p + 1) // 2, p // 2))
    torch.testing.assert_close(Resample("up", taps).double()(x), up_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(Resample("down", taps).double()(x), down_ref, rtol=0, atol=1e-12)


def test_pyramid_conv_matches_fused_conv_downsample():
    """score_sde conv_downsample_2d: pad (p+1)//2, p//2 with p = L - 2 + 2, FIR, then a stride-2 3x3 conv."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    layer = ConvDown(3, 5, [1, 3, 3, 1]).double()
    blurred = upfirdn2d_reference(x, [1, 3, 3, 1], pad=(2, 2))
    ref = F.conv2d(blurred, layer.conv.weight, layer.conv.bias, stride=2)
    torch.testing.assert_close(layer(x), ref, rtol=0, atol=1e-12)
    assert layer(x).shape == (2, 5, 4, 4)


def test_attention_matches_score_sde_formulation():
    torch.manual_seed(0)
    att = Attention(8, max_groups=32, eps=1e-6, skip_scale=math.sqrt(0.5)).double()
    with torch.no_grad():
        att.proj.weight.normal_()  # zero-initialised: make the attention path visible
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    b, c, hh, ww = x.shape
    h = att.norm(x)
    qkv = att.qkv(h)
    q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
    w = torch.einsum("bchw,bcij->bhwij", q, k) * c ** -0.5  # AttnBlockpp, layerspp.py
    w = F.softmax(w.reshape(b, hh, ww, hh * ww), dim=-1).reshape(b, hh, ww, hh, ww)
    ref = (x + att.proj(torch.einsum("bhwij,bcij->bchw", w, v))) / math.sqrt(2.0)
    torch.testing.assert_close(att(x), ref, rtol=0, atol=1e-12)


def test_positional_embedding_matches_score_sde_and_edm():
    t = torch.tensor([0.0, 0.5, 3.0, 999.0])
    ours = positional_embedding(t, 128)
    half = 64
    # score_sde layers.get_timestep_embedding
    freqs = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000) / (half - 1)))
    arg = t.double()[:, None] * freqs
    torch.testing.assert_close(ours.double(), torch.cat([arg.sin(), arg.cos()], 1), rtol=0, atol=1e-4)
    # EDM PositionalEmbedding(endpoint=True) followed by SongUNet's sin/cos swap
    edm_freqs = (1 / 10000) ** (torch.arange(half, dtype=torch.float64) / (half - 1))
    emb = torch.cat([(t.double()[:, None] * edm_freqs).cos(), (t.double()[:, None] * edm_freqs).sin()], 1)
    emb = emb.reshape(4, 2, -1).flip(1).reshape(4, -1)
    torch.testing.assert_close(ours.double(), emb, rtol=0, atol=1e-4)


def test_group_norm_groups_follow_the_official_rule():
    assert [norm_groups(c, 16) for c in (8, 16, 32, 64, 128, 256, 384)] == [2, 4, 8, 16, 16, 16, 16]
    assert [norm_groups(c, 32) for c in (64, 128, 256)] == [16, 32, 32]
    with pytest.raises(ValueError, match="groups"):
        norm_groups(18, 16)


def tiny_params(**kw):
    base = dict(channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[8])
    return OmegaConf.merge(OmegaConf.structured(DDPMppParams), {**base, **kw})


@pytest.mark.parametrize("options", [{}, dict(resample_filter=[1, 1], progressive_input="none", middle="decoder",
                                              augment_dim=9)])
def test_skip_list_joins_encoder_and_decoders_of_any_width(options):
    p = tiny_params(**options)
    enc = DDPMppEncoder(p, 16, 1, 16)
    feats = enc(torch.randn(2, 1, 16, 16), torch.tensor([1.0, 500.0]))
    assert [s.shape[1] for s in feats.skips] == skip_channels(p, 16)
    assert feats.h.shape == (2, 32, 4, 4) and feats.emb.shape == (2, 64)
    for width in (8, 16, 24):
        out = DDPMppDecoder(p, 16, width, 1, 16)(feats)
        assert out.shape == (2, 1, 16, 16)


def test_middle_block_placement():
    """score_sde/DPM-Solver: bottleneck pair in the shared encoder; EDM: in each decoder, at encoder width."""
    enc = DDPMppEncoder(tiny_params(middle="encoder"), 16, 1, 16)
    dec = DDPMppDecoder(tiny_params(middle="decoder"), 16, 8, 1, 16)
    assert enc.middle is not None and [b.out_ch for b in enc.middle] == [32, 32]
    assert DDPMppDecoder(tiny_params(middle="encoder"), 16, 8, 1, 16).middle is None
    assert [b.out_ch for b in dec.middle] == [32, 32] and dec.middle[0].attn is not None


def rowwise_linear(x, weight, bias=None):
    """Linear layer as a per-row reduction: each row's result depends on that row only, whatever the batch."""
    y = (x.unsqueeze(-2) * weight).sum(-1)
    return y if bias is None else y + bias


def per_sample(conv):
    """A convolution applied to one sample at a time: its result for a sample cannot depend on the batch."""
    def run(x, *args, **kwargs):
        return torch.cat([conv(x[i:i + 1], *args, **kwargs) for i in range(x.shape[0])])
    return run


@contextmanager
def batch_invariant_cpu(monkeypatch):
    """Kernels whose per-sample results do not depend on the batch size: linear layers as row-wise reductions and
    convolutions run sample by sample, on one thread. CPU GEMM and convolution kernels pick their blocking from
    the batch size, so a sample computed in a batch of 7 and alone can differ in the last bits (1e-8 to 1e-6
    here); this removes that source and nothing else, so what remains is the routing itself."""
    monkeypatch.setattr(F, "linear", rowwise_linear)
    for name in ("conv2d", "conv_transpose2d"):
        monkeypatch.setattr(F, name, per_sample(getattr(F, name)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def routed_net(seed=0):
    torch.manual_seed(seed)
    p = tiny_params()
    net = MultiStageNet([DDPMppEncoder(p, 16, 1, 16)], [DDPMppDecoder(p, 16, d, 1, 16) for d in (24, 16, 8)]).eval()
    with torch.no_grad():  # the output convs start near zero: make every decoder's contribution visible
        for prm in net.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    return net


def test_per_sample_routing_equals_each_sample_alone_bitwise(monkeypatch):
    net = routed_net()
    torch.manual_seed(1)
    x, c_noise = torch.randn(7, 1, 16, 16), torch.rand(7) * 999
    stage = torch.tensor([2, 0, 1, 0, 2, 2, 1])
    with torch.no_grad(), batch_invariant_cpu(monkeypatch):
        routed = net(x, c_noise, stage)
        alone = torch.cat([net.forward_stage(x[i:i + 1], c_noise[i:i + 1], int(stage[i])) for i in range(7)])
    assert torch.equal(routed, alone)


def test_per_sample_routing_with_default_kernels_is_within_last_bits():
    net = routed_net()
    torch.manual_seed(1)
    x, c_noise = torch.randn(7, 1, 16, 16), torch.rand(7) * 999
    stage = torch.tensor([2, 0, 1, 0, 2, 2, 1])
    with torch.no_grad():
        routed = net(x, c_noise, stage)
        alone = torch.cat([net.forward_stage(x[i:i + 1], c_noise[i:i + 1], int(stage[i])) for i in range(7)])
        other = torch.cat([net.forward_stage(x[i:i + 1], c_noise[i:i + 1], (int(stage[i]) + 1) % 3)
                           for i in range(7)])
    # CPU GEMM/conv kernels block by batch size, so a sample in a batch and alone agree to the last bits only
    scale = alone.abs().max()
    torch.testing.assert_close(routed, alone, rtol=0, atol=float(1e-5 * scale))
    # and the routing is visible: every sample is far from what any other stage's decoder gives it
    assert (routed - other).abs().flatten(1).amax(1).gt(1e-2 * scale).all()


def test_edm_augmentation_labels_enter_the_embedding():
    p = tiny_params(augment_dim=9)
    enc = DDPMppEncoder(p, 16, 1, 16)
    c_noise = torch.tensor([0.1, -0.3])
    labels = torch.randn(2, 9)
    base = positional_embedding(c_noise, 16)
    expect = F.silu(enc.map_layer1(F.silu(enc.map_layer0(base + labels @ enc.map_augment.weight.T))))
    torch.testing.assert_close(enc.embed(c_noise, labels), expect)
    assert not torch.allclose(enc.embed(c_noise, labels), enc.embed(c_noise))
