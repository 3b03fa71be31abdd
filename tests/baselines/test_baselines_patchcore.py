"""PatchCore on cached features: k-center greedy coreset, nearest-neighbour maps, masks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from multiflow.baselines.patchcore import PatchCore, anomalib_available, kcenter_greedy
from multiflow.errors import ConfigError, DataError


def _radius(points: torch.Tensor, centres: torch.Tensor) -> float:
    return float(torch.cdist(points, points[centres]).amin(dim=1).max())


def test_kcenter_greedy_is_within_twice_the_optimal_covering_radius():
    gen = torch.Generator().manual_seed(0)
    pts = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    for k in (1, 2, 3):
        idx = kcenter_greedy(pts, k, generator=torch.Generator().manual_seed(1))
        assert len(set(idx.tolist())) == k
        best = min(_radius(pts, torch.tensor(c)) for c in itertools.combinations(range(12), k))
        assert _radius(pts, idx) <= 2 * best + 1e-9


def test_kcenter_greedy_picks_one_point_per_separated_cluster():
    gen = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])
    pts = (centres[:, None] + torch.randn(4, 10, 2, generator=gen)).reshape(-1, 2)
    idx = kcenter_greedy(pts, 4, generator=torch.Generator().manual_seed(3))
    assert sorted((idx // 10).tolist()) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="n_select"):
        kcenter_greedy(pts, 0)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(6, 2, 4, 5, 5)).astype(np.float32)
    masks = np.zeros((6, 2, 5, 5), dtype=bool)
    masks[:, :, 1:4, 1:4] = True
    return feats, masks


def test_memory_bank_is_a_coreset_of_foreground_patches():
    feats, masks = _data()
    pc = PatchCore(coreset_ratio=0.25, sampler="own", seed=0).fit(feats, masks)
    n_fg = int(masks.sum())
    assert pc.memory.shape == (math.ceil(0.25 * n_fg), 4)
    # with the whole bank kept, training patches score exactly zero on the foreground
    full = PatchCore(coreset_ratio=1.0, sampler="own").fit(feats, masks)
    maps = full.anomaly_map(feats, masks)
    assert maps.shape == (6, 2, 5, 5)
    np.testing.assert_allclose(maps, 0.0, atol=1e-5)
    # same seed -> same coreset; another seed -> (almost surely) another one
    again = PatchCore(coreset_ratio=0.25, sampler="own", seed=0).fit(feats, masks)
    assert torch.equal(pc.memory, again.memory)
    other = PatchCore(coreset_ratio=0.25, sampler="own", seed=7).fit(feats, masks)
    assert not torch.equal(pc.memory, other.memory)


def test_an_outlier_patch_gets_the_highest_score_and_background_the_foreground_minimum():
    feats, masks = _data()
    pc = PatchCore(coreset_ratio=0.5, sampler="own").fit(feats, masks)
    test = feats[:2].copy()
    test[1, 0, :, 2, 2] += 25.0  # a far-away patch in the foreground of sample 1, view 0
    maps = pc.anomaly_map(test, masks[:2])
    # the outlier and its 3x3 neighbourhood (locally aware features) dominate that view
    r, c = np.unravel_index(np.argmax(maps[1, 0]), (5, 5))
    assert abs(r - 2) <= 1 and abs(c - 2) <= 1
    assert maps[1, 0, 2, 2] > 3 * maps[0].max()
    assert maps[1, 1].max() < maps[1, 0, 2, 2] / 3  # the other view of the sample is unaffected
    for b, v in itertools.product(range(2), range(2)):
        fg = masks[b, v]
        np.testing.assert_allclose(maps[b, v][~fg], maps[b, v][fg].min())


def test_bad_inputs_are_clear_errors():
    feats, masks = _data()
    with pytest.raises(ConfigError, match="coreset_ratio"):
        PatchCore(coreset_ratio=0.0)
    with pytest.raises(ConfigError, match="before fit"):
        PatchCore().anomaly_map(feats)
    with pytest.raises(DataError, match="masks must be"):
        PatchCore(sampler="own").fit(feats, masks[:, :, :4])
    with pytest.raises(DataError, match="no foreground"):
        PatchCore(sampler="own").fit(feats, np.zeros_like(masks))
    pc = PatchCore(sampler="own").fit(feats, masks)
    with pytest.raises(DataError, match="features must be"):
        pc.anomaly_map(feats[:, :, :3])


@pytest.mark.skipif(not anomalib_available(), reason="anomalib is a benchmark-only dependency "
                    "(benchmarks/paper_experiments.py --install-baselines); not installed here")
def test_anomalib_sampler_returns_rows_of_the_bank_deterministically():
    feats, masks = _data()
    state = np.random.get_state()[1].copy()
    pc = PatchCore(coreset_ratio=0.25, sampler="anomalib", seed=0).fit(feats, masks)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # the global RNG is left as it was
    assert pc.describe()["sampler"].startswith("anomalib.")
    bank = PatchCore(coreset_ratio=1.0, sampler="own").fit(feats, masks).memory
    assert pc.memory.shape == (math.ceil(0.25 * bank.shape[0]), 4)
    d = torch.cdist(pc.memory, bank, compute_mode="donot_use_mm_for_euclid_dist").amin(dim=1)
    assert d.max() < 1e-6  # every coreset vector is a patch of the bank
    again = PatchCore(coreset_ratio=0.25, sampler="anomalib", seed=0).fit(feats, masks)
    assert torch.equal(pc.memory, again.memory)
