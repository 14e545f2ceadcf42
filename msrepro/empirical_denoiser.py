"""The optimal denoiser of a finite training set (paper Prop. 1, Eq. 4): the closed-form denoiser of the empirical
data distribution (the clusterer built on it is :mod:`msrepro.clustering.optimal_denoiser`).

For training points {y_i} and x_t ~ N(s y, s^2 sigma^2 I), in the scaled variable x = x_t / s = y + sigma eps:

    E[y | x] = sum_i w_i y_i / sum_i w_i,   log w_i = -||x - y_i||^2 / (2 sigma^2)
             = (x . y_i - ||y_i||^2 / 2) / sigma^2 + const(x),

and eps*(x) = (x - E[y | x]) / sigma. The constant ||x||^2 term is dropped (it cancels in the normalisation),
which also removes the worst float32 cancellation. Computed with two GEMMs per dataset chunk (into a preallocated
buffer) and a streaming (online) log-sum-exp, so memory is O(B chunk + B n) whatever N is. The default chunk is the
largest whose [B, chunk] logits fit a 64 MB workspace (``auto_chunk``): the whole of CIFAR-10 (N = 50 000) for
B <= 335 queries, so each GEMM is one large BLAS call of the reference matmul's own shape and the element-wise
passes are few (each is a thread synchronisation point); bench/optimal_denoiser.py sweeps the chunk.
"""

from __future__ import annotations

import math

import torch


def squared_norms(data: torch.Tensor) -> torch.Tensor:
    """||y_i||^2 per row, as a reduction (no [N, n] temporary: the data may be most of the memory)."""
    return torch.linalg.vector_norm(data, dim=1).square()


LOG_CUTOFF = 80.0  # weights below e^-80 of the running maximum are dropped: N e^-80 < 1e-29 of the total


def cut_exp_(a: torch.Tensor) -> torch.Tensor:
    """In place: exp(a) - e^-T for a >= -T, else 0 (T = LOG_CUTOFF, a <= 0: log-weights against the maximum).

    exp of an argument whose result underflows takes 25-100x longer on CPU (the vectorised exp's slow path), and
    subnormal weights slow the next GEMM down; clamping first and subtracting the floor makes every dropped
    weight an exact 0 and moves each kept one by at most e^-T (relative to the largest weight, 1).
    """
    return a.clamp_min_(-LOG_CUTOFF).exp_().sub_(math.exp(-LOG_CUTOFF))


WORKSPACE_BYTES = 64 * 2**20  # the default [B, chunk] logits buffer


def auto_chunk(batch: int, n_data: int, itemsize: int = 4) -> int:
    """Dataset rows per chunk: as many as fit ``WORKSPACE_BYTES`` of [batch, chunk] logits (>= 1024, <= N)."""
    return max(1, min(n_data, max(1024, WORKSPACE_BYTES // (itemsize * max(batch, 1)))))


def chunk_rows(chunk_size: int | None, batch: int, n_data: int, itemsize: int) -> int:
    """``chunk_size`` capped at N, or :func:`auto_chunk` when None."""
    return auto_chunk(batch, n_data, itemsize) if chunk_size is None else max(1, min(chunk_size, n_data))


def posterior_mean(x: torch.Tensor, data: torch.Tensor, sigma: torch.Tensor | float, *,
                   chunk_size: int | None = None,
                   data_sq_norms: torch.Tensor | None = None, workspace: torch.Tensor | None = None) -> torch.Tensor:
    """E[y | x] for queries x [B, n] against data [N, n] at noise levels sigma ([B] or scalar) — Eq. 4.

    Per dataset chunk: the logits (x . y_i - ||y_i||^2 / 2) / sigma^2 = (x / sigma^2) . y_i + (-1 / (2 sigma^2))
    ||y_i||^2 as one rank-1 product written into a preallocated [B, chunk] buffer plus one GEMM accumulating into
    it (no allocation, so no page faults, per chunk), an in-place shift and exp against the running per-query
    maximum (online log-sum-exp across chunks; weights below e^-80 of it dropped, see ``cut_exp_``), one GEMM
    accumulating w @ y: 4 B N n flops in all.
    ``data_sq_norms`` (||y_i||^2, [N]) may be passed precomputed, and ``workspace`` (>= B * chunk elements of x's
    dtype and device) reused across calls; OptimalDenoiser does both.
    """
    b, n_data = x.shape[0], data.shape[0]
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(b)
    inv_var = (1.0 / sigma**2).unsqueeze(1)  # [B, 1]
    x_scaled = x * inv_var  # [B, n]: folds 1 / sigma^2 into the GEMM (no pass over the [B, chunk] logits)
    neg_half_inv_var = -0.5 * inv_var  # [B, 1]
    if data_sq_norms is None:
        data_sq_norms = squared_norms(data)
    sq_norms = data_sq_norms.reshape(1, -1)  # O(N), negligible beside the O(B N n) GEMMs
    chunk = chunk_rows(chunk_size, b, n_data, x.element_size())
    if workspace is None or workspace.numel() < b * chunk:
        workspace = torch.empty(b * chunk, dtype=x.dtype, device=x.device)
    run_max = torch.full((b, 1), -torch.inf, dtype=x.dtype, device=x.device)
    run_sum = torch.zeros((b, 1), dtype=x.dtype, device=x.device)
    acc = torch.zeros_like(x)
    new_max = torch.empty_like(run_max)
    for start in range(0, n_data, chunk):
        y = data[start:start + chunk]
        logits = workspace[:b * y.shape[0]].view(b, y.shape[0])
        torch.mul(neg_half_inv_var, sq_norms[:, start:start + chunk], out=logits)  # -||y_i||^2 / (2 sigma^2)
        logits.addmm_(x_scaled, y.T)  # [B, chunk]
        torch.maximum(run_max, logits.amax(1, keepdim=True), out=new_max)
        rescale = cut_exp_(run_max.sub_(new_max))  # 0 on the first chunk (run_max -inf); run_max is reset below
        w = cut_exp_(logits.sub_(new_max))
        run_sum.mul_(rescale).add_(w.sum(1, keepdim=True))
        acc.mul_(rescale).addmm_(w, y)
        run_max.copy_(new_max)
    return acc.div_(run_sum)


class OptimalDenoiser:
    """D*(x; sigma) = E[y | x] of a finite training set: a denoiser every sampler accepts.

    ``data`` has any sample shape ([N, C, H, W] or [N, n]); queries must share it. ``dtype`` float32 by default,
    float64 available; computation happens on ``data``'s device.
    """

    def __init__(self, data: torch.Tensor, *, dtype: torch.dtype = torch.float32, chunk_size: int | None = None,
                 device: torch.device | str | None = None) -> None:
        self.sample_shape = tuple(data.shape[1:])
        self.data = data.reshape(data.shape[0], -1).to(device=device or data.device, dtype=dtype).contiguous()
        self.sq_norms = squared_norms(self.data)
        self.dtype, self.chunk_size = dtype, chunk_size
        self._workspace: torch.Tensor | None = None  # the [B, chunk] logits buffer, kept across calls

    @property
    def num_points(self) -> int:
        return self.data.shape[0]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The posterior mean E[y | x] (an x_0 estimate), same shape and dtype as x."""
        flat = x.reshape(x.shape[0], -1).to(self.data.device, self.dtype)
        sig = torch.as_tensor(sigma, device=self.data.device, dtype=self.dtype)
        need = flat.shape[0] * chunk_rows(self.chunk_size, flat.shape[0], self.num_points, self.data.element_size())
        if self._workspace is None or self._workspace.numel() < need:
            self._workspace = torch.empty(need, dtype=self.dtype, device=self.data.device)
        out = posterior_mean(flat, self.data, sig, chunk_size=self.chunk_size, data_sq_norms=self.sq_norms,
                             workspace=self._workspace)
        return out.reshape(x.shape).to(x.device, x.dtype)

    def eps(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """eps*(x) = (x - E[y | x]) / sigma, the optimal noise prediction of Eq. 4."""
        sig = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (x - self(x, sigma)) / sig
