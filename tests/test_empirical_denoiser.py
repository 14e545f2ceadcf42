"""The optimal denoiser (Eq. 4) against closed forms and an independent dense float64 computation."""

import math

import pytest
import torch

from msrepro.empirical_denoiser import OptimalDenoiser, posterior_mean


def dense_reference(x, data, sigma):
    """softmax_i(-||x - y_i||^2 / (2 sigma^2)) @ Y in float64, from the full distance matrix (no tricks)."""
    x, data = x.double(), data.double()
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    d2 = ((x[:, None, :] - data[None, :, :]) ** 2).sum(-1)
    return torch.softmax(-d2 / (2 * sigma**2), dim=1) @ data


def test_one_training_point_is_returned_for_any_sigma():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(1, 3, 4, 4, generator=g)
    od = OptimalDenoiser(y)
    x = torch.randn(5, 3, 4, 4, generator=g) * 10
    for sigma in [1e-3, 0.1, 1.0, 80.0, 1e4]:
        assert torch.allclose(od(x, sigma), y.expand_as(x), atol=1e-6)


def test_two_points_logistic_closed_form():
    g = torch.Generator().manual_seed(1)
    y = torch.randn(2, 16, generator=g, dtype=torch.float64)
    x = torch.randn(64, 16, generator=g, dtype=torch.float64)
    sigma = torch.linspace(0.5, 4.0, 64, dtype=torch.float64)
    # w_1 = sigmoid((||x - y_2||^2 - ||x - y_1||^2) / (2 sigma^2))
    w1 = torch.sigmoid((((x - y[1]) ** 2).sum(1) - ((x - y[0]) ** 2).sum(1)) / (2 * sigma**2))
    want = w1[:, None] * y[0] + (1 - w1[:, None]) * y[1]
    got = OptimalDenoiser(y, dtype=torch.float64)(x, sigma)
    assert torch.allclose(got, want, atol=1e-12)


def test_small_sigma_gives_nearest_point_and_large_sigma_the_mean():
    g = torch.Generator().manual_seed(2)
    data = torch.rand(300, 48, generator=g)
    od = OptimalDenoiser(data, chunk_size=64)
    idx = torch.randint(300, (40,), generator=g)
    x = data[idx] + 0.02 * torch.randn(40, 48, generator=g)
    nearest = torch.cdist(x, data).argmin(1)
    assert torch.allclose(od(x, 1e-3), data[nearest], atol=1e-6)
    assert torch.allclose(od(x * 50, 1e5), data.mean(0).expand(40, -1), atol=1e-4)


def test_matches_dense_reference_float32_and_float64_chunked_and_not():
    g = torch.Generator().manual_seed(3)
    data = torch.rand(257, 30, generator=g)
    x = data[:20] + 0.3 * torch.randn(20, 30, generator=g)
    sigma = torch.linspace(0.05, 2.0, 20)
    want = dense_reference(x, data, sigma)
    f64 = OptimalDenoiser(data, dtype=torch.float64, chunk_size=10_000)(x.double(), sigma.double())
    f32_whole = OptimalDenoiser(data, chunk_size=10_000)(x, sigma)
    f32_chunked = OptimalDenoiser(data, chunk_size=7)(x, sigma)
    assert f64.dtype == torch.float64 and f32_whole.dtype == torch.float32
    assert torch.allclose(f64, want, atol=1e-10)
    assert torch.allclose(f32_whole.double(), want, atol=2e-4)
    assert torch.allclose(f32_chunked, f32_whole, atol=1e-5)
    assert torch.equal(posterior_mean(x.double(), data.double(), sigma.double(), chunk_size=7),
                       OptimalDenoiser(data, dtype=torch.float64, chunk_size=7)(x.double(), sigma.double()))


def test_eps_is_the_noise_for_a_single_point():
    g = torch.Generator().manual_seed(4)
    y = torch.rand(1, 2, 3, 3, generator=g)
    eps = torch.randn(6, 2, 3, 3, generator=g)
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0, 10.0, 50.0])
    x = y + sigma.view(-1, 1, 1, 1) * eps  # the scaled variable x = x0 + sigma eps
    assert torch.allclose(OptimalDenoiser(y).eps(x, sigma), eps, atol=1e-4)


def test_tiny_sigma_stays_finite_in_float32():
    data = torch.rand(100, 3072, generator=torch.Generator().manual_seed(5))
    out = OptimalDenoiser(data, chunk_size=33)(data[:4] + 1e-3, 1e-4)
    assert torch.isfinite(out).all() and torch.allclose(out, data[:4], atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(6)
    data = torch.rand(500, 64, generator=g)
    x = torch.rand(32, 64, generator=g)
    cpu = OptimalDenoiser(data, dtype=torch.float64)(x.double(), 0.3)
    gpu = OptimalDenoiser(data, dtype=torch.float64, device="cuda", chunk_size=100)(x.double(), 0.3)
    assert gpu.device.type == "cpu"  # results come back on the query's device
    assert torch.allclose(gpu, cpu, atol=1e-10)


def test_auto_chunk_bounds_the_workspace_and_matches_explicit_chunks():
    from msrepro.empirical_denoiser import WORKSPACE_BYTES, auto_chunk

    assert auto_chunk(256, 50_000) == 50_000  # CIFAR-10 at B = 256: one chunk, 51 MB of logits
    assert auto_chunk(2048, 50_000) * 2048 * 4 <= WORKSPACE_BYTES
    assert auto_chunk(10**6, 50_000) == 1024 and auto_chunk(4, 100) == 100
    g = torch.Generator().manual_seed(6)
    data = torch.rand(500, 12, generator=g, dtype=torch.float64)
    x = data[:9] + 0.2 * torch.randn(9, 12, generator=g, dtype=torch.float64)
    sigma = torch.linspace(0.01, 3.0, 9, dtype=torch.float64)
    want = dense_reference(x, data, sigma)
    assert torch.allclose(OptimalDenoiser(data, dtype=torch.float64)(x, sigma), want, atol=1e-10)
    assert torch.allclose(OptimalDenoiser(data, dtype=torch.float64, chunk_size=13)(x, sigma), want, atol=1e-10)


def test_weights_beyond_the_cutoff_are_exact_zeros():
    from msrepro.empirical_denoiser import LOG_CUTOFF, cut_exp_

    a = torch.tensor([0.0, -1.0, -LOG_CUTOFF + 1.0, -LOG_CUTOFF - 1e-3, -1e4, -torch.inf])
    w = cut_exp_(a.clone())
    assert w[3:].eq(0).all() and (w[:3] > 0).all()
    assert torch.allclose(w[:3], torch.exp(a[:3]), rtol=0, atol=2 * math.exp(-LOG_CUTOFF))
    assert not ((w > 0) & (w < torch.finfo(w.dtype).tiny)).any()  # no subnormal weights reach the GEMM
