"""The optimal denoiser of a finite training set (paper Prop. 1, Eq. 4): the closed-form denoiser of the empirical
data distribution (the clusterer built on it is :mod:`msrepro.clustering.optimal_denoiser`).

For training points {y_i} and x_t ~ N(s y, s^2 sigma^2 I), in the scaled variable x = x_t / s = y + sigma eps:

    E[y | x] = sum_i w_i y_i / sum_i w_i,   log w_i = -||x - y_i||^2 / (2 sigma^2)
             = (x . y_i - ||y_i||^2 / 2) / sigma^2 + const(x),

and eps*(x) = (x - E[y | x]) / sigma. The constant ||x||^2 term is dropped (it cancels in the normalisation),
which also removes the worst float32 cancellation. Computed with two GEMMs per dataset chunk (into preallocated buffers) and a streaming
(online) log-sum-exp, so memory is O(B chunk + B n) whatever N is.
"""

from __future__ import annotations

import torch


def squared_norms(data: torch.Tensor) -> torch.Tensor:
    """||y_i||^2 per row, as a reduction (no [N, n] temporary: the data may be most of the memory)."""
    return torch.linalg.vector_norm(data, dim=1).square()


def posterior_mean(x: torch.Tensor, data: torch.Tensor, sigma: torch.Tensor | float, *, chunk_size: int = 8192,
                   data_sq_norms: torch.Tensor | None = None) -> torch.Tensor:
    """E[y | x] for queries x [B, n] against data [N, n] at noise levels sigma ([B] or scalar) — Eq. 4.

    Per dataset chunk: one GEMM for the logits x . y_i - ||y_i||^2 / 2 written into one preallocated [B, chunk]
    buffer (no allocation, so no page faults, per chunk), an in-place scale, shift and exp against the running
    per-query maximum (online log-sum-exp across chunks), one GEMM accumulating w @ y: 4 B N n flops in all.
    ``data_sq_norms`` (||y_i||^2, [N]) may be passed precomputed (OptimalDenoiser caches it).
    """
    b, n_data = x.shape[0], data.shape[0]
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(b)
    inv_var = (1.0 / sigma**2).unsqueeze(1)  # [B, 1]
    if data_sq_norms is None:
        data_sq_norms = squared_norms(data)
    neg_half_sq = (-0.5 * data_sq_norms).reshape(1, -1)  # O(N), negligible beside the O(B N n) GEMMs
    chunk = max(1, min(chunk_size, n_data))
    buf = torch.empty(b * chunk, dtype=x.dtype, device=x.device)
    run_max = torch.full((b, 1), -torch.inf, dtype=x.dtype, device=x.device)
    run_sum = torch.zeros((b, 1), dtype=x.dtype, device=x.device)
    acc = torch.zeros_like(x)
    new_max = torch.empty_like(run_max)
    for start in range(0, n_data, chunk):
        y = data[start:start + chunk]
        logits = buf[:b * y.shape[0]].view(b, y.shape[0])
        torch.addmm(neg_half_sq[:, start:start + chunk], x, y.T, out=logits).mul_(inv_var)  # [B, chunk]
        torch.maximum(run_max, logits.amax(1, keepdim=True), out=new_max)
        rescale = run_max.sub_(new_max).exp_()  # 0 on the first chunk (exp(-inf)); run_max is reset below
        w = logits.sub_(new_max).exp_()
        run_sum.mul_(rescale).add_(w.sum(1, keepdim=True))
        acc.mul_(rescale).addmm_(w, y)
        run_max.copy_(new_max)
    return acc.div_(run_sum)


class OptimalDenoiser:
    """D*(x; sigma) = E[y | x] of a finite training set: a denoiser every sampler accepts.

    ``data`` has any sample shape ([N, C, H, W] or [N, n]); queries must share it. ``dtype`` float32 by default,
    float64 available; computation happens on ``data``'s device.
    """

    def __init__(self, data: torch.Tensor, *, dtype: torch.dtype = torch.float32, chunk_size: int = 8192,
                 device: torch.device | str | None = None) -> None:
        self.sample_shape = tuple(data.shape[1:])
        self.data = data.reshape(data.shape[0], -1).to(device=device or data.device, dtype=dtype).contiguous()
        self.sq_norms = squared_norms(self.data)
        self.dtype, self.chunk_size = dtype, chunk_size

    @property
    def num_points(self) -> int:
        return self.data.shape[0]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The posterior mean E[y | x] (an x_0 estimate), same shape and dtype as x."""
        flat = x.reshape(x.shape[0], -1).to(self.data.device, self.dtype)
        sig = torch.as_tensor(sigma, device=self.data.device, dtype=self.dtype)
        out = posterior_mean(flat, self.data, sig, chunk_size=self.chunk_size, data_sq_norms=self.sq_norms)
        return out.reshape(x.shape).to(x.device, x.dtype)

    def eps(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """eps*(x) = (x - E[y | x]) / sigma, the optimal noise prediction of Eq. 4."""
        sig = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (x - self(x, sigma)) / sig
