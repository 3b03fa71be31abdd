"""Scoring (anomaly maps) runs on the device and in the precision it is given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import multiflow.engine.maps as scoring
from multiflow.device import bf16_supported
from multiflow.engine.distributed import DistContext, compute_maps_sharded
from multiflow.flow import MultiFlow, ViewGraph


def _model() -> MultiFlow:
    model = MultiFlow(4, ViewGraph.real_iad(2), n_blocks=2, hidden=8, kernel_sizes=(3, 3), seed=2)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(7, 3, 4, 5, 5)).astype(np.float32), rng.random((7, 3, 5, 5)) > 0.3


def test_maps_are_computed_on_the_given_device_in_batches(monkeypatch):
    moves: list[tuple[int, torch.device]] = []
    real = scoring.to_device
    monkeypatch.setattr(scoring, "to_device", lambda t, d: moves.append((t.shape[0], d)) or real(t, d))
    model = _model()
    seen: list[torch.device] = []
    model.flow.register_forward_pre_hook(lambda _m, args: seen.append(args[0].device))
    feats, masks = _data()
    cpu = torch.device("cpu")
    maps = compute_maps_sharded(model, feats, masks, DistContext(), batch_size=3, device=cpu)
    assert maps.shape == (7, 3, 5, 5) and maps.dtype == np.float32
    assert [n for n, _ in moves] == [3, 3, 3, 3, 1, 1]  # features + masks, one transfer per batch
    assert all(d == cpu for _, d in moves) and seen == [cpu] * 3


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no bf16 on this CPU")
def test_bf16_maps_are_close_to_fp32():
    feats, masks = _data()
    model = _model()
    ref = scoring.compute_maps(model, feats, masks, batch_size=4)
    low = scoring.compute_maps(model, feats, masks, batch_size=4, precision="bf16")
    assert low.dtype == np.float32
    np.testing.assert_allclose(low, ref, rtol=2e-2, atol=2e-2)
    assert not np.array_equal(low, ref)
