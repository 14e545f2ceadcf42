"""A streamed Gram matrix of n vectors that do not fit in memory together (the gradient clusterer's, Table 4).

G[i, j] = <g_i, g_j> for vectors produced on demand by a deterministic ``vector(i) -> Tensor [P]`` (for the
gradient clusterer: the loss gradient at grid point i, reseeded per i, so a recomputed g_i is the same vector).
The rows are taken in blocks of ``block`` vectors held at once ([block, P]); each block's own entries come from one
product, and every later vector is computed once per block and dotted with the block, then dropped. Memory is
``block`` x P x itemsize plus one vector, whatever n is; the price is :func:`evaluations` vector computations
instead of n (n when ``block >= n``: one pass, nothing recomputed). Entries are accumulated in float64 over
parameter chunks, so G is exact up to the storage dtype's rounding of the vectors.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

VectorFn = Callable[[int], torch.Tensor]


def evaluations(n: int, block: int) -> int:
    """Vector computations :func:`streamed_gram` makes: n for the blocks plus, per block, every later vector."""
    block = max(1, min(block, n))
    return n + sum(n - min(n, start + block) for start in range(0, n, block))


def block_for_budget(numel: int, itemsize: int, budget_bytes: float, n: int) -> int:
    """The largest block (1..n) of ``numel``-value vectors whose storage fits in ``budget_bytes``."""
    return int(max(1, min(n, budget_bytes // max(1, numel * itemsize))))


def block_products(rows: torch.Tensor, cols: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """rows [a, P] @ cols[b, P]^T in float64, converting ``chunk`` values of P at a time (bounded temporaries)."""
    out = torch.zeros((rows.shape[0], cols.shape[0]), dtype=torch.float64, device=rows.device)
    for s in range(0, rows.shape[1], chunk):
        out += rows[:, s:s + chunk].to(torch.float64) @ cols[:, s:s + chunk].to(torch.float64).T
    return out


def streamed_gram(vector: VectorFn, n: int, block: int, *, dtype: torch.dtype = torch.float32,
                  on_vector: Callable[[int], None] | None = None) -> torch.Tensor:
    """G [n, n] (float64, on the vectors' device) of ``vector(0..n-1)``, holding at most ``block`` of them.

    ``dtype`` is how held vectors are stored (float32, or bfloat16/float16 to halve the block's memory);
    ``on_vector(i)`` is called after each computation (progress bars count :func:`evaluations` of them).
    """
    block = max(1, min(block, n))
    gram: torch.Tensor | None = None
    buf: torch.Tensor | None = None
    for start in range(0, n, block):
        stop = min(n, start + block)
        for r, i in enumerate(range(start, stop)):
            v = vector(i)
            if buf is None:
                buf = torch.empty((block, v.numel()), dtype=dtype, device=v.device)
                gram = torch.zeros((n, n), dtype=torch.float64, device=v.device)
            buf[r] = v.reshape(-1)
            del v
            if on_vector is not None:
                on_vector(i)
        assert buf is not None and gram is not None
        rows = buf[:stop - start]
        gram[start:stop, start:stop] = block_products(rows, rows)
        for j in range(stop, n):
            v = vector(j).reshape(1, -1).to(dtype)
            col = block_products(rows, v)[:, 0]
            gram[start:stop, j] = col
            gram[j, start:stop] = col
            del v
            if on_vector is not None:
                on_vector(j)
    assert gram is not None
    return gram


def cosine_from_gram(gram: torch.Tensor) -> np.ndarray:
    """cos(g_i, g_j) = G_ij / sqrt(G_ii G_jj), as a float64 array (a zero vector's row is 0)."""
    norm = gram.diagonal().sqrt().clamp_min(1e-300)
    return (gram / norm[:, None] / norm[None, :]).cpu().numpy()
