"""Where this process stands in a ``torch.distributed`` job, and the few collectives the layers need.

A bottom-level module: the feature cache (:mod:`multiflow.features.cache`), training and the
engine share samples among ranks through :class:`DistContext` and the helpers here, so none of
them imports the engine. Joining and leaving a process group (``torchrun``) is
:mod:`multiflow.engine.distributed`'s job; without a process group every function here is the
single-process identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from multiflow.device import env_int, resolve_device
from multiflow.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """This rank's device: with the nccl backend ``cuda:<local_rank>``, resolved (and checked
        against the visible GPUs) by :func:`multiflow.device.resolve_device`; else the CPU."""
        if self.backend != "nccl":
            return torch.device("cpu")
        return resolve_device("cuda", local_rank=self.local_rank)


def current_context() -> DistContext:
    """The context of the initialised default process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), env_int("LOCAL_RANK", dist.get_rank()),
                           dist.get_backend())
    return DistContext()


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, end)`` of rank ``rank``'s contiguous share of ``n`` items.

    The first ``n % world_size`` ranks get one item more (``torch.tensor_split`` convention); a
    rank may get nothing when ``n < world_size``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"bad rank {rank} of world size {world_size}")
    base, extra = divmod(int(n), world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of ``values`` over ranks (a new tensor; float64 on the context's device for the reduction)."""
    if not ctx.enabled:
        return values.clone()
    t = values.detach().to(device=ctx.device, dtype=torch.float64).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(values.device)


def gather_shards(shard: np.ndarray, ctx: DistContext) -> np.ndarray:
    """Concatenate every rank's array along axis 0 in rank order (each rank gets the result)."""
    if not ctx.enabled:
        return shard
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, shard)
    return np.concatenate(parts, axis=0)


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` in rank order (each rank gets the list; ``[obj]`` for a single process)."""
    if not ctx.enabled:
        return [obj]
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, obj)
    return parts


def gather_objects_to_main(obj: Any, ctx: DistContext) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0 (``None`` on the others)."""
    if not ctx.enabled:
        return [obj]
    parts: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, parts, dst=0)
    return parts


def broadcast_from_main(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
