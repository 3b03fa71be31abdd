"""Shared helpers for the flow tests: float64, tiny shapes, parameters randomised away from identity."""

from __future__ import annotations

import pytest
import torch


def _randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.4) -> torch.nn.Module:
    """Overwrite every floating parameter with ``U(-scale, scale)``; ``gamma`` with ``±U(0.5, 1.5)``.

    A flow initialised as the identity (gamma = 0) would pass invertibility tests for the wrong
    reason, so every test randomises first.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                sign = torch.where(torch.rand(p.shape, generator=g) < 0.5, -1.0, 1.0)
                p.copy_(sign * (0.5 + torch.rand(p.shape, generator=g)))
            elif name.endswith("norm.weight"):  # keep LayerNorm from killing the following ReLU
                p.copy_(0.7 + 0.6 * torch.rand(p.shape, generator=g, dtype=torch.float64))
            elif name.endswith("norm.bias"):
                p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1) * 0.1)
            else:
                p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1) * scale)
    return module


@pytest.fixture
def randomise():
    return _randomise


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes run fastest single-threaded on the shared machine; restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
