"""The streamed Gram matrix (clustering.gram) against the exact one, and the gradient clusterer that uses it."""

import numpy as np
import pytest
import torch

from msrepro.clustering import ClusterInputs, build_clusterer
from msrepro.clustering.gram import block_for_budget, cosine_from_gram, evaluations, streamed_gram
from msrepro.config import ConfigError
from msrepro.schedules import VPLinearSchedule
from test_gradient_clusterer import GRID, fit, manual_affinity, run_config  # registers the tiny backbone


def counting(vectors: torch.Tensor):
    calls = []

    def vector(i):
        calls.append(i)
        return vectors[i].clone()

    return vector, calls


@pytest.mark.parametrize("block", [1, 2, 3, 7, 10, 50])
def test_streamed_gram_is_the_exact_gram_for_every_block_size(block):
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(10, 1000, generator=g, dtype=torch.float64)
    vector, calls = counting(vectors)
    gram = streamed_gram(vector, 10, block, dtype=torch.float64)
    assert torch.allclose(gram, vectors @ vectors.T, rtol=1e-12, atol=1e-9)
    assert len(calls) == evaluations(10, block)


def test_evaluation_count_closed_form():
    # block b divides n: n + sum_{i=1}^{n/b} (n - i b) = n + n^2 / (2b) - n / 2
    for n, b in [(100, 1), (100, 4), (100, 10), (100, 25), (12, 3)]:
        assert evaluations(n, b) == n + n * n // (2 * b) - n // 2
    assert evaluations(100, 100) == evaluations(100, 1000) == 100  # one pass when everything fits
    assert block_for_budget(1000, 4, 4000 * 3.5, 100) == 3 and block_for_budget(10**9, 4, 1.0, 5) == 1
    assert block_for_budget(10, 4, 1e9, 8) == 8


def test_float32_storage_cosines_within_1e_3_of_exact():
    """Gradient-like vectors (a shared direction plus noise, norms spread over decades) stored in float32."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(200_000, generator=g, dtype=torch.float64)
    vectors = torch.stack([(0.3 + 0.1 * i) * base + torch.randn(200_000, generator=g, dtype=torch.float64)
                           for i in range(12)]) * torch.logspace(-3, 2, 12, dtype=torch.float64)[:, None]
    exact = vectors / vectors.norm(dim=1, keepdim=True)
    exact = (exact @ exact.T).numpy()
    vector, _ = counting(vectors.float())
    for dtype, tol in [(torch.float32, 1e-6), (torch.bfloat16, 1e-3)]:
        got = cosine_from_gram(streamed_gram(vector, 12, 5, dtype=dtype))
        assert np.abs(got - exact).max() < tol, dtype


def test_gradient_clusterer_streamed_matches_the_exact_matrix_on_a_small_model():
    """Holding one gradient at a time (max_gradient_gb tiny, so block 1) and micro-batches of 5 of the 16 samples:
    the affinity is the manual, all-gradients-held computation's, within 1e-3 (in fact ~1e-6)."""
    from msrepro.models import build_denoiser

    inputs = ClusterInputs(run_config=run_config(), device="cpu", seed=0, progress=False)
    clusterer = build_clusterer("gradient", {"grid": GRID, "batch_size": 16, "max_gradient_gb": 1e-9,
                                             "micro_batch": 5})
    r = clusterer.fit(VPLinearSchedule(), inputs, 3)
    torch.manual_seed(0)
    exact = manual_affinity(build_denoiser(run_config()), inputs.training_batch(16), seed=0)
    aff = np.array(r.diagnostics["matrix"]["values"])
    assert np.abs(aff - exact).max() < 1e-5
    assert r.diagnostics["gram_block"] == [1]
    assert r.diagnostics["gradient_evaluations"] == [evaluations(GRID, 1)] == [GRID + GRID * (GRID - 1) // 2]
    whole, _ = fit()  # the default: everything held, one pass
    assert whole.diagnostics["gram_block"] == [GRID] and whole.diagnostics["gradient_evaluations"] == [GRID]
    assert np.allclose(whole.diagnostics["matrix"]["values"], aff, atol=1e-5)
    assert np.allclose(whole.diagnostics["gradient_norms"], r.diagnostics["gradient_norms"], rtol=1e-5)


def test_gradient_clusterer_rejects_bad_memory_options():
    for params in ({"max_gradient_gb": 0}, {"micro_batch": -1}):
        with pytest.raises(ConfigError, match="max_gradient_gb > 0 and micro_batch >= 0"):
            build_clusterer("gradient", params)
