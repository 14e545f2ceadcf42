"""Gradient (task-affinity) clustering, Table 4's third baseline, as the official ``gradient_cluster.py`` does it.

For t_i = (i + 1) / n (n = 100, time fractions): the flattened gradient of the training loss
(:func:`msrepro.losses.denoising_loss`, mean over the batch) with respect to every parameter of the network, on one
real training batch (the official script used a single image: a bug); the pairwise cosine similarity of these
gradients is averaged over several checkpoints; the size-limited DP then minimises -sum affinity[centre, member].

Any registered denoiser network works: the run config builds it (:func:`msrepro.models.build_denoiser`) and each
checkpoint (:func:`msrepro.checkpoint.load_checkpoint`) fills it; with no checkpoints the network is randomly
initialised from the seed. Memory: the n gradients (43 GB for the 107.5 M-parameter DDPM++ at n = 100) are never
held at once: their Gram matrix is streamed (:mod:`msrepro.clustering.gram`), holding as many gradients as fit in
``max_gradient_gb`` and recomputing the others per block (exact: each gradient is reseeded per grid point), and
``micro_batch`` splits the batch's forward/backward (the same mean-loss gradient, accumulated) to bound activations.

The network is the run config's *unified* model (K = 1), as in the paper; a multistage checkpoint or
``model.variant`` override is refused unless ``allow_multistage=true``. DP size limits: ``size_limits=official``
(default; the authors' ``cluster.py``: first cluster at least floor(n / 2k) + 1 points and no upper limit, the others
in [floor(n / 2k), ceil(3n / 2k)]), ``symmetric`` (every cluster in that range) or ``none``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from msrepro.clustering.base import Clusterer, FitCost, SizeLimitedGrid, fraction_grid
from msrepro.clustering.dp import Partition, affinity_cost, split
from msrepro.clustering.gram import (VectorFn, block_for_budget, cosine_from_gram, evaluations,
                                     streamed_gram)
from msrepro.clustering.inputs import ClusterInputs
from msrepro.clustering.result import ClusterResult
from msrepro.config import ConfigError
from msrepro.registry import CLUSTERERS
from msrepro.schedules import NoiseSchedule

STORAGE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class GradientConfig:
    grid: int = 100                   # t_i = (i + 1) / grid (time fractions), official 100
    batch_size: int = 128             # one real training batch (official: batch of the training config)
    ema: bool = False                 # differentiate the EMA weights (official: the raw model weights)
    train_mode: bool = True           # dropout on, as the official script (score_model.train())
    storage_dtype: str = "float32"    # how the grid's gradients are held: float32, bfloat16, float16
    size_limits: str = "official"     # official (first cluster > floor(n/2k), no upper limit), symmetric, none
    allow_multistage: bool = False    # differentiate a non-unified network (default: refused; the paper's is unified)
    max_gradient_gb: float = 4.0      # gradients held at once (streamed Gram; fewer held = more recomputed)
    micro_batch: int = 0              # samples per forward/backward, gradients accumulated (0: the whole batch)


def noise_for(i: int, shape: torch.Size, seed: int) -> torch.Tensor:
    """The noise of grid point i: a fresh N(0, I) draw per timestep (as the official loss), seeded (seed, i)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed * 100_003 + i))


def flat_grad(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """All parameter gradients as one flat vector (zeros for parameters the loss did not reach)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def cosine_matrix(grads: torch.Tensor, chunk: int = 1 << 24) -> np.ndarray:
    """Pairwise cosine similarity of the rows of ``grads`` [T, P], in float64, chunked over P."""
    gram = torch.zeros((grads.shape[0], grads.shape[0]), dtype=torch.float64, device=grads.device)
    for s in range(0, grads.shape[1], chunk):
        g = grads[:, s:s + chunk].to(torch.float64)
        gram += g @ g.T
    norm = gram.diagonal().sqrt().clamp_min(1e-300)
    return (gram / norm[:, None] / norm[None, :]).cpu().numpy()


@CLUSTERERS.register("gradient")
class GradientClusterer(SizeLimitedGrid, Clusterer):
    """Gradient baseline (Table 4): cosine similarity of unified-model loss gradients, size_limits=official|..."""

    name = "gradient"
    Config = GradientConfig
    reads_model = True

    def validate(self) -> None:
        p = self.params
        if p.storage_dtype not in STORAGE:
            raise ConfigError(f"cluster.params.storage_dtype: '{p.storage_dtype}' is not valid; "
                              f"allowed: {', '.join(STORAGE)}")
        if p.grid < 2 or p.batch_size < 1:
            raise ConfigError(f"cluster.params: need grid >= 2 and batch_size >= 1, got {p.grid}, {p.batch_size}")
        if p.max_gradient_gb <= 0 or p.micro_batch < 0:
            raise ConfigError(f"cluster.params: need max_gradient_gb > 0 and micro_batch >= 0, got "
                              f"{p.max_gradient_gb}, {p.micro_batch}")
        self.check_size_limits()

    def models(self, inputs: ClusterInputs):
        """Yield (label, denoiser) for every checkpoint, or one randomly initialised unified network."""
        from msrepro.checkpoint import load_checkpoint
        from msrepro.models import build_denoiser

        cfg, dev = inputs.network_config(allow_multistage=self.params.allow_multistage), inputs.torch_device()
        if not inputs.checkpoints:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(inputs.seed)
                model = build_denoiser(cfg)
            yield "random-init", model.to(dev)
            return
        for path in inputs.checkpoints:
            state = load_checkpoint(path)
            weights = state["ema"] if self.params.ema and state.get("ema") is not None else state["model"]
            model = build_denoiser(cfg)
            model.load_state_dict(weights)
            yield str(path), model.to(dev)

    def gradient_fn(self, model: torch.nn.Module, x0: torch.Tensor, sigmas: torch.Tensor, seed: int) -> VectorFn:
        """i -> the flat loss gradient of ``model`` at noise level sigmas[i] on the batch ``x0`` (deterministic:
        noise and dropout are reseeded per i, so a recomputed gradient is the same vector)."""
        from msrepro.losses import denoising_loss

        params = [q for q in model.parameters() if q.requires_grad]
        model.train(self.params.train_mode)
        b = x0.shape[0]
        step = self.params.micro_batch or b

        def grad(i: int) -> torch.Tensor:
            with torch.random.fork_rng(devices=[x0.device] if x0.device.type == "cuda" else []):
                torch.manual_seed(seed * 100_003 + i)  # dropout masks
                model.zero_grad(set_to_none=True)
                noise = noise_for(i, x0.shape, seed).to(x0.device)
                sigma = sigmas[i].expand(b).to(x0.device)
                for s in range(0, b, step):  # the batch-mean loss, one micro-batch at a time
                    part = slice(s, s + step)
                    loss = denoising_loss(model, x0[part], sigma[part], noise[part]).sum() / b
                    loss.backward()
            out = flat_grad(params)
            model.zero_grad(set_to_none=True)
            return out

        return grad

    def gradients(self, model: torch.nn.Module, x0: torch.Tensor, sigmas: torch.Tensor, seed: int,
                  bar: Any = None) -> torch.Tensor:
        """[T, P] loss gradients of ``model`` at each noise level, on the batch ``x0`` (all held: small models)."""
        grad = self.gradient_fn(model, x0, sigmas, seed)
        rows = []
        for i in range(len(sigmas)):
            rows.append(grad(i).to(STORAGE[self.params.storage_dtype]))
            if bar is not None:
                bar.update(1)
        return torch.stack(rows)

    def block_size(self, model: torch.nn.Module) -> int:
        """Gradients held at once: as many as fit in ``max_gradient_gb`` (all of the grid for small models)."""
        numel = sum(q.numel() for q in model.parameters() if q.requires_grad)
        itemsize = torch.empty((), dtype=STORAGE[self.params.storage_dtype]).element_size()
        return block_for_budget(numel, itemsize, self.params.max_gradient_gb * 2**30, int(self.params.grid))

    def affinity(self, model: torch.nn.Module, x0: torch.Tensor, sigmas: torch.Tensor, seed: int,
                 bar: Any = None) -> tuple[np.ndarray, list[float]]:
        """The cosine-similarity matrix of the gradients (streamed Gram) and the gradient norms."""
        gram = streamed_gram(self.gradient_fn(model, x0, sigmas, seed), len(sigmas), self.block_size(model),
                             dtype=STORAGE[self.params.storage_dtype],
                             on_vector=None if bar is None else (lambda i: bar.update(1)))
        return cosine_from_gram(gram), gram.diagonal().sqrt().tolist()

    def objective(self) -> str:
        return (f"DP minimising -sum gradient affinity to the cluster's upper median on {self.params.grid} grid "
                f"points, size_limits={self.params.size_limits}")

    def split(self, affinity: np.ndarray, k: int) -> Partition:
        """The official DP: k contiguous clusters minimising -sum affinity[centre, member] under the size limits."""
        return split(affinity_cost(affinity), k, self.limits(k))

    def cost_flops(self, cost: FitCost) -> float | None:
        """One forward + backward pass of a batch at each grid point, for each checkpoint averaged over."""
        if cost.train_flops is None:
            return None
        # lower bound: one pass when the grid's gradients fit in max_gradient_gb (the dry run does not know the
        # parameter count); a streamed Gram with block b makes gram.evaluations(grid, b) passes instead
        return self.params.grid * self.params.batch_size * cost.train_flops * max(1, cost.checkpoints)

    def fit(self, schedule: NoiseSchedule, inputs: ClusterInputs, k: int) -> ClusterResult:
        from tqdm import tqdm

        self.check_k(k)
        net = inputs.network_config(allow_multistage=self.params.allow_multistage)  # a wrong network: before work
        p, n = self.params, int(self.params.grid)
        t = fraction_grid(schedule, np.round((np.arange(n) + 1) / n, 12))
        sigmas = schedule.sigma(torch.as_tensor(t, dtype=torch.float64)).to(torch.float32)
        x0 = inputs.training_batch(p.batch_size).to(inputs.torch_device())
        affinities, labels, norms, blocks = [], [], [], []
        with tqdm(desc="loss gradients", unit="grad", disable=not inputs.progress) as bar:
            for label, model in self.models(inputs):
                blocks.append(self.block_size(model))
                bar.total = (bar.total or 0) + evaluations(n, blocks[-1])
                aff, norm = self.affinity(model, x0, sigmas, inputs.seed, bar)
                affinities.append(aff)  # averaged over checkpoints below, as the paper does
                norms.append(norm)
                labels.append(label)
                del model
        affinity = np.mean(affinities, axis=0)
        part = self.split(affinity, k)
        diag = {"curves": {"x": t.tolist(), "xlabel": "t", "ylabel": "gradient cosine similarity",
                           "series": {f"cos(g(t), g({t[0]:.3g}))": affinity[:, 0].tolist(),
                                      f"cos(g(t), g({t[-1]:.3g}))": affinity[:, -1].tolist()}},
                "matrix": {"grid": t.tolist(), "values": affinity.tolist(), "title": "gradient affinity",
                           "label": "cosine similarity, mean over checkpoints"},
                "models": labels, "batch_size": int(x0.shape[0]), "gradient_norms": norms,
                "gram_block": blocks, "gradient_evaluations": [evaluations(n, b) for b in blocks],
                "cluster_sizes": list(part.sizes), "total_cost": part.cost,
                "size_limits": self.limits(k).to_dict(),
                "network": {"backbone": net.model.backbone, "variant": net.model.variant}}
        return self.result(schedule, inputs, k, t[list(part.starts[1:])], diag)
