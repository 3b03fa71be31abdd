"""Data-parallel training and evaluation with ``torch.distributed`` (launched with ``torchrun``).

``torchrun --nproc_per_node N -m multiflow fit ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``); :func:`init_distributed` reads them and
joins the process group (``nccl`` when CUDA is available, else ``gloo``). Without those variables
everything runs as a single process and nothing here does anything.

Exactness (what makes N processes train the same model as one):

* every rank walks the same global batches (same epoch generator, ``train.batch_size`` samples)
  and takes the contiguous shard :func:`shard_range` of each; the conditioning noise is drawn
  for the whole global batch from the same generator on every rank, then sliced;
* the loss is the global-batch masked mean ``L = sum_b sum_p m * nll / sum_b sum_p m``: rank
  ``r`` computes ``L_r = W * N_r / D`` with its foreground sum ``N_r`` and the all-reduced
  foreground count ``D = sum_r D_r``; DistributedDataParallel averages gradients over the ``W``
  ranks, so the update uses ``(1/W) sum_r grad L_r = grad (sum_r N_r / D) = grad L``;
* validation losses and anomaly maps are computed on shards and merged (sums all-reduced, maps
  all-gathered in sample order); only rank 0 writes checkpoints, models and results;
* features and masks are extracted in shards too, gathered by rank 0, which writes the cache
  (:func:`multiflow.features.cache.build_entry` with a context).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist

from multiflow.errors import ConfigError
from multiflow.ranks import (  # noqa: F401  (re-exported: the engine's users import them from here)
    DistContext,
    all_reduce_sum,
    barrier,
    current_context,
    env_int,
    gather_shards,
    shard_range,
)


def init_distributed(backend: str | None = None) -> DistContext:
    """Join the process group described by the torchrun environment (idempotent).

    Returns a single-process context when ``WORLD_SIZE`` is unset or 1.
    """
    if dist.is_available() and dist.is_initialized():
        return current_context()
    world = env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local = env_int("RANK", 0), env_int("LOCAL_RANK", 0)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local, backend)


def shutdown_distributed(*, wait: bool = True) -> bool:
    """Leave the default process group; returns whether there was one.

    With ``wait`` every rank meets at a barrier first, so none tears down its connections while
    a peer still finishes the last collective. Pass ``wait=False`` on an error path, where a peer
    may never arrive. See :func:`exit_after_distributed` for what to do next.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if wait:
        dist.barrier()
    dist.destroy_process_group()
    return True


def exit_after_distributed(code: int) -> NoReturn:
    """End a process that took part in a process group, skipping C++ static destructors.

    With torch 2.14 on CPU (gloo), about 1 in 25 two-process runs aborted *after* a clean barrier,
    ``destroy_process_group`` and the Python ``atexit`` handlers (``terminate called without an
    active exception``: a C++ thread object of torch.distributed still joinable when static
    objects are destroyed at interpreter exit), so a finished rank reported SIGABRT and the
    launcher a failed job. Every file is written and closed by then; this runs the Python exit
    handlers (multiprocessing's clean-up among them), flushes the standard streams and leaves with
    ``os._exit(code)``, before the static destructors.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


@torch.no_grad()
def compute_maps_sharded(model, features, masks, ctx: DistContext, *, batch_size: int = 16,
                         progress: bool = False, device: torch.device | None = None,
                         precision: str = "fp32") -> np.ndarray:
    """:func:`multiflow.engine.maps.compute_maps` with the samples split over ranks.

    Rank ``r`` scores samples :func:`shard_range` ``(N, r, W)``; the maps ``(N, V, h, w)`` are
    all-gathered in sample order, so every rank holds the same result as a single process.
    ``device`` (single process; under DDP the rank's device) and ``precision`` go to ``compute_maps``.
    """
    from multiflow.engine.maps import compute_maps

    if not ctx.enabled:
        return compute_maps(model, features, masks, batch_size=batch_size, progress=progress, device=device,
                            precision=precision)
    n = int(features.shape[0])
    start, end = shard_range(n, ctx.rank, ctx.world_size)
    if end > start:
        part = compute_maps(model, features[start:end], None if masks is None else masks[start:end],
                            batch_size=batch_size, progress=progress and ctx.is_main, device=ctx.device,
                            precision=precision)
    else:
        h, w = int(features.shape[-2]), int(features.shape[-1])
        part = np.empty((0, int(features.shape[1]), h, w), dtype=np.float32)
    return gather_shards(part, ctx)


class _FlowNLL(torch.nn.Module):
    """The flow's per-pixel NLL of already-noised features, :meth:`MultiFlow.nll_of_noised`
    (``(x (b, V, C, h, w), cond) -> (b, V, h, w)``), as a module DistributedDataParallel can wrap."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, present: torch.Tensor | None = None,
                fg: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.nll_of_noised(x, cond, present, fg)


class ShardedLoss:
    """The global-batch masked training loss, computed on this rank's shard under DDP.

    ``__call__(x, m, generator)`` takes the *global* batch ``x (B, V, C, h, w)`` and masks
    ``m (B, V, h, w)`` (or None: every pixel counts), draws the noise of the whole batch from
    ``generator`` (same draw as a single process), keeps the rows :func:`shard_range` ``(B, r, W)``
    and returns ``(L_r, L)``: the tensor to back-propagate, ``L_r = W * N_r / D``, and the
    global loss value ``L = sum_r N_r / D`` (identical on every rank), where ``N_r`` is the masked
    NLL sum of the shard and ``D`` the all-reduced foreground weight (clamped to >= 1).
    ``present`` (``(B, V)`` bool, view dropout of the global batch) runs the flow on the present
    views and leaves the others out of ``N_r`` and ``D``, as :meth:`MultiFlow.forward` does.
    ``precision="bf16"`` runs the flow under bf16 autocast (:mod:`multiflow.device`). The masks are
    also the flow's foreground ``fg`` (the fusion operators that pool or attend over a view's
    foreground), as in the single-process loss.
    """

    def __init__(self, model: torch.nn.Module, ctx: DistContext, *, precision: str = "fp32") -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.model = model
        self.ctx = ctx
        self.precision = precision
        ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(_FlowNLL(model), device_ids=ids)

    def __call__(self, x: torch.Tensor, m: torch.Tensor | None,
                 generator: torch.Generator | None, present: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        from multiflow.device import autocast, to_device
        from multiflow.scoring import masked_nll_sums, present_mask

        dev = self.ctx.device
        x = to_device(x, dev)
        if present is not None:
            present = to_device(present, dev)
            x = torch.where(present[:, :, None, None, None], x, torch.zeros((), dtype=x.dtype, device=dev))
        xin, cond = self.model.noise(x, generator)
        start, end = shard_range(int(x.shape[0]), self.ctx.rank, self.ctx.world_size)
        c = None if cond is None else cond[start:end]
        fg = None if m is None else to_device(m[start:end], dev)  # the fusion operators' foreground
        with autocast(dev, self.precision):  # st-networks in bf16; coupling math and NLL in fp32
            nll = self.ddp(xin[start:end], c, None if present is None else present[start:end], fg)
        nll = nll.float()
        mm = torch.ones_like(nll) if m is None else to_device(m[start:end], dev).to(nll.dtype)
        if present is not None:
            mm = present_mask(mm, present[start:end], nll)
        num_r, den_r = masked_nll_sums(nll, mm)
        stats = all_reduce_sum(torch.stack([den_r.detach(), num_r.detach()]), self.ctx)
        den = float(stats[0].clamp_min(1.0))
        return num_r * (self.ctx.world_size / den), float(stats[1]) / den
