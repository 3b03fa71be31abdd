"""Local multi-process runs for the distributed tests: ``fn(ctx, *args)`` in ``world_size`` CPU
processes joined by gloo on 127.0.0.1 (real jobs use ``torchrun``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch

from multiflow.engine.distributed import exit_after_distributed, init_distributed, shutdown_distributed

def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for local multi-process runs and tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    ctx = init_distributed("gloo")
    try:
        fn(ctx, *args)
    except BaseException:
        shutdown_distributed(wait=False)
        raise
    shutdown_distributed()
    exit_after_distributed(0)


def spawn_local(fn: Callable[..., Any], world_size: int, *args: Any) -> None:
    """Run ``fn(ctx, *args)`` in ``world_size`` CPU processes joined by gloo on 127.0.0.1.

    ``fn`` must be importable (a module-level function). For tests and single-machine CPU runs;
    use ``torchrun`` for real jobs.
    """
    import torch.multiprocessing as mp

    mp.spawn(_spawn_entry, args=(fn, world_size, free_port(), args), nprocs=world_size, join=True)
