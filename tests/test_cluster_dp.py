"""The contiguous DPs against brute force, and the cost matrices against direct sums."""

import itertools

import numpy as np
import pytest

from msrepro.clustering.dp import (SizeLimits, affinity_cost, block_mean, grid_limits, largest_k, max_mean_similarity,
                                   median_abs_cost, partition, size_limits, split)


def compositions(n, k, lo=1, hi=None):
    """Every split of n points into k contiguous clusters with sizes in [lo, hi], as start tuples."""
    hi = hi or n
    for cuts in itertools.combinations(range(1, n), k - 1):
        starts = (0, *cuts)
        sizes = [b - a for a, b in zip(starts, [*cuts, n])]
        if all(lo <= s <= hi for s in sizes):
            yield starts


def brute_force(cost, k, lo=1, hi=None):
    """(min total cost, the optimum the DP must return: earliest start of the later cluster wins ties)."""
    n = cost.shape[0]
    scored = []
    for starts in compositions(n, k, lo, hi):
        ends = [*starts[1:], n]
        scored.append((sum(cost[a, b - 1] for a, b in zip(starts, ends)), starts))
    best = min(c for c, _ in scored)
    ties = [s for c, s in scored if c <= best + 1e-9 * max(1, abs(best))]
    return best, min(ties, key=lambda s: s[::-1])


@pytest.mark.parametrize("seed", range(6))
def test_partition_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(5, 10)), int(rng.integers(2, 5))
    cost = rng.random((n, n)) * rng.integers(1, 4, size=(n, n))
    for lo, hi in [(1, None), size_limits(n, k)]:
        if k * max(lo, 1) > n or (hi is not None and k * hi < n):
            continue
        want_cost, want_starts = brute_force(cost, k, lo, hi)
        got = partition(cost, k, lo, hi)
        assert got.cost == pytest.approx(want_cost, abs=1e-12)
        assert got.starts == want_starts
        assert sum(got.sizes) == n and all(lo <= s <= (hi or n) for s in got.sizes)


def test_ties_resolve_like_the_official_argmin():
    cost = np.zeros((6, 6))  # every split costs 0: the latest clusters take as many points as allowed
    assert partition(cost, 3).starts == (0, 1, 2)
    assert partition(cost, 3, 2, 2).starts == (0, 2, 4)
    t = (np.arange(1000) + 1) / 1000  # SPEC §3: three equal-cost splits, the official code reports 0.334 / 0.667
    p = partition(median_abs_cost(t), 3, *size_limits(1000, 3))
    assert t[list(p.starts[1:])].tolist() == [0.334, 0.667] and p.sizes == (333, 333, 334)


def test_size_limits_and_infeasible_requests():
    assert size_limits(1000, 3) == (166, 500) and size_limits(100, 3) == (16, 50) and size_limits(21, 3) == (3, 11)
    with pytest.raises(ValueError, match="cannot split"):
        partition(np.zeros((5, 5)), 6)
    with pytest.raises(ValueError, match="cannot split"):
        partition(np.zeros((10, 10)), 2, 1, 4)


@pytest.mark.parametrize("direction", [1, -1])
def test_median_abs_cost_is_the_direct_sum(direction):
    rng = np.random.default_rng(1)
    v = direction * np.cumsum(rng.random(12))
    c = median_abs_cost(v)
    for a in range(12):
        for b in range(a, 12):
            seg = v[a:b + 1]
            assert c[a, b] == pytest.approx(np.abs(seg - seg[len(seg) // 2]).sum(), abs=1e-12)
    with pytest.raises(ValueError, match="monotone"):
        median_abs_cost(np.array([0.0, 2.0, 1.0]))


def test_affinity_cost_and_block_mean_are_direct_sums():
    rng = np.random.default_rng(2)
    s = rng.random((9, 9))
    aff, mean = affinity_cost(s), block_mean(s)
    for a in range(9):
        for b in range(a, 9):
            c = a + (b - a + 1) // 2
            assert aff[a, b] == pytest.approx(-s[c, a:b + 1].sum(), abs=1e-12)
            assert mean[a, b] == pytest.approx(s[a:b + 1, a:b + 1].mean(), abs=1e-12)


@pytest.mark.parametrize("weighting", ["per_point", "per_interval"])
def test_max_mean_similarity_matches_brute_force(weighting):
    rng = np.random.default_rng(3)
    x = rng.random((10, 10))
    s = (x + x.T) / 2
    np.fill_diagonal(s, 1.0)
    for k in (2, 3, 4):
        best, best_starts = -np.inf, None
        for starts in compositions(10, k):
            ends = [*starts[1:], 10]
            blocks = [s[a:b, a:b] for a, b in zip(starts, ends)]
            score = (sum(bl.mean() * len(bl) for bl in blocks) / 10 if weighting == "per_point"
                     else sum(bl.mean() for bl in blocks))
            if score > best + 1e-12:
                best, best_starts = score, starts
        got = max_mean_similarity(s, k, weighting=weighting)
        assert got.cost == pytest.approx(best, abs=1e-12) and got.starts == best_starts


def official_brute_force(cost, k):
    """The official DP's answer by enumeration: first cluster >= floor(n/2k) + 1 points and no upper limit, the
    others in [floor(n/2k), ceil(3n/2k)] (and >= 2, msrepro's guard against a one-point last cluster); earliest
    start of the later cluster on ties, as np.argmin."""
    n = cost.shape[0]
    lo, hi = n // (2 * k), -(-3 * n // (2 * k))
    scored = []
    for starts in compositions(n, k):
        sizes = [b - a for a, b in zip(starts, [*starts[1:], n])]
        if sizes[0] >= lo + 1 and all(max(lo, 2) <= s <= hi for s in sizes[1:]):
            scored.append((sum(cost[a, b - 1] for a, b in zip(starts, [*starts[1:], n])), starts))
    if not scored:
        return None
    best = min(c for c, _ in scored)
    return best, min((s for c, s in scored if c <= best + 1e-9 * max(1, abs(best))), key=lambda s: s[::-1])


@pytest.mark.parametrize("seed", range(8))
def test_official_size_limits_match_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    n, k = int(rng.integers(8, 17)), int(rng.integers(2, 4))
    cost = rng.random((n, n)) * np.maximum(np.arange(n)[None, :] - np.arange(n)[:, None] + 1, 1)
    cost[0, :] *= 0.01  # a cheap long first cluster: where the official limits differ from the symmetric ones
    want = official_brute_force(cost, k)
    limits = grid_limits(n, k, "official")
    assert limits.feasible(n, k) == (want is not None)
    if want is not None:
        got = split(cost, k, limits)
        assert got.starts == want[1] and got.cost == pytest.approx(want[0], abs=1e-12)


def test_grid_limits_and_feasibility():
    assert grid_limits(1000, 3) == SizeLimits(166, 500, 167, None, "official")
    assert grid_limits(1000, 3, "symmetric") == SizeLimits(166, 500, 166, 500, "symmetric")
    assert grid_limits(100, 5).to_dict() == {"mode": "official", "first": [11, None], "others": [10, 30]}
    with pytest.raises(ValueError, match="valid: official, symmetric, none"):
        grid_limits(10, 2, "loose")
    for n in range(2, 14):  # feasible() against enumeration
        for k in range(1, 8):
            for mode in ("official", "symmetric", "none"):
                lim = grid_limits(n, k, mode)
                exists = any(lim.first_min <= s[0] <= (lim.first_max or n)
                             and all(lim.min_size <= x <= (lim.max_size or n) for x in s[1:])
                             for s in ([b - a for a, b in zip(c, [*c[1:], n])] for c in compositions(n, k)))
                assert lim.feasible(n, k) == exists, (n, k, mode)
    assert largest_k(1000, lambda k: grid_limits(1000, k)) == 500
    assert largest_k(21, lambda k: grid_limits(21, k)) == 11
    assert largest_k(21, lambda k: grid_limits(21, k, "symmetric")) == 10
