"""Data-parallel training from torchrun's or submitit's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...).

Gradients are averaged with one all-reduce of a flat buffer after backward (parameters a rank did not reach count
as zero), so decoders unused on some ranks get exactly the gradient of the global mean loss, not one scaled by the
fraction of ranks that used them (the official bug, SPEC 2). gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _export_submitit_env() -> None:
    """Under a multi-task SLURM job started by submitit, set torchrun's variables from SLURM's."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SUBMITIT_FOLDER" not in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export()


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group the environment describes (no-op for a single process)."""
    _export_submitit_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=world)
        log.info("joined process group: rank %d of %d (%s)", info.rank, world, backend)
    return info


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Replace every gradient by its mean over ranks (one flat all-reduce). A parameter no rank reached keeps
    ``grad = None`` (the optimizer skips it, as in a single process); one reached elsewhere gets zeros added."""
    if not info.enabled:
        return
    reached = torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype, device=params[0].device)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [reached])
    dist.all_reduce(flat)
    offset = 0
    for p, hit in zip(params, flat[-len(params):].tolist()):
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p) / info.world_size if hit > 0 else None
        offset += n


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (ranks agree on preemption and early stopping)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """The mean of each value over ranks (so decisions taken from them, e.g. early stopping, agree)."""
    if not info.enabled:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / info.world_size).tolist()))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
