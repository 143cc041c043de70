"""Multi-process training through torchrun: which rank this is, and collective helpers.

Each rank trains on its share of the B parallel streams; DistributedDataParallel
averages the gradients, so W ranks with B/W streams each take the same step as one
process with B streams. gloo on CPU, nccl on CUDA. Only rank 0 writes files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> DistributedContext:
        """The variables torchrun sets (read by the CLI only)."""
        return cls(
            rank=int(environ.get("RANK", "0")),
            world_size=int(environ.get("WORLD_SIZE", "1")),
            local_rank=int(environ.get("LOCAL_RANK", "0")),
        )


def init_process_group(context: DistributedContext, device: torch.device) -> None:
    """Join the group (torchrun's env:// rendezvous) unless one is already set up."""
    if context.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def all_reduce_sum(values: list[float], context: DistributedContext, device: torch.device) -> list[float]:
    if not context.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool, context: DistributedContext, device: torch.device) -> bool:
    """True when the flag is set on any rank, so that every rank takes the same decision."""
    if not context.enabled:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def gather_rows(tensor: Tensor, context: DistributedContext) -> Tensor:
    """Concatenate every rank's rows along dim 1 (the batch of a hidden state)."""
    if not context.enabled:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(context.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=1)


def gather_bytes(tensor: Tensor, context: DistributedContext) -> list[Tensor]:
    """Every rank's copy of an equal-sized CPU byte tensor (RNG states), in rank order."""
    if not context.enabled:
        return [tensor]
    parts: list[Tensor] = [torch.empty_like(tensor) for _ in range(context.world_size)]
    dist.all_gather_object(parts, tensor)
    return parts


def barrier(context: DistributedContext) -> None:
    """Wait for every rank (rank 0 writes the token files the others then open)."""
    if context.enabled:
        dist.barrier()
