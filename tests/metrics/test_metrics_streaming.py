"""StreamingEvaluator vs evaluate_exact: exact image level, pixel level within the reported bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multiflow.errors import CheckpointError, DataError
from multiflow.metrics import PixelHistogram, StreamingEvaluator, evaluate_exact


def _data(seed: int = 0, n: int = 10, v: int = 2, size: int = 32):
    """Smooth synthetic maps (8x8, upsampled to the GT size) with blob defects in half the samples."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, v, 8, 8, generator=g, dtype=torch.float64)
    masks = torch.zeros(n, v, size, size, dtype=torch.bool)
    for i in range(0, n, 2):
        view = (i // 2) % v
        y0, x0 = int(torch.randint(0, size - 10, (1,), generator=g)), int(torch.randint(0, size - 10, (1,), generator=g))
        masks[i, view, y0 : y0 + 6, x0 : x0 + 8] = True
        masks[i, view, (y0 + 8) % size, (x0 + 9) % size] = True  # a second, one-pixel region
        maps[i, view, y0 * 8 // size : (y0 + 6) * 8 // size + 1, x0 * 8 // size : (x0 + 8) * 8 // size + 1] += 0.6
    defects = ["ak" if i % 4 == 0 else ("bx" if i % 2 == 0 else "ok") for i in range(n)]
    return maps, masks, defects


def _stream(maps, masks, defects, batch: int = 3, **kwargs) -> StreamingEvaluator:
    ev = StreamingEvaluator(**kwargs)
    for s in range(0, maps.shape[0], batch):
        ev.update(maps[s : s + batch], masks[s : s + batch], defects=defects[s : s + batch])
    return ev


@pytest.mark.parametrize("bounds", [None, (0.0, 1.6)])
def test_streaming_within_reported_bound_of_exact(bounds) -> None:
    maps, masks, defects = _data()
    exact = evaluate_exact(maps, masks, defects=defects)
    got = _stream(maps, masks, defects, num_bins=2000, bounds=bounds).compute()
    # image and sample level are exact (the scores are kept)
    for f in ("s_auroc", "i_auroc", "s_ap", "i_ap", "s_f1_max", "i_f1_max", "per_defect", "num_regions"):
        assert getattr(got, f) == getattr(exact, f), f
    assert abs(got.p_auroc - exact.p_auroc) <= got.p_auroc_tol + 1e-12
    assert abs(got.aupro - exact.aupro) <= got.aupro_tol + 1e-12
    # with only 2,000 bins the guaranteed bounds stay below 2e-3 (P-AUROC) and 1e-2 (AUPRO)
    assert got.p_auroc_tol < 2e-3 and got.aupro_tol < 1e-2
    assert got.p_f1_max <= exact.p_f1_max + 1e-12  # edge points are a subset of the exact vertices
    assert got.p_ap == pytest.approx(exact.p_ap, abs=1e-2)


def test_bound_is_attained_order_and_shrinks_with_more_bins() -> None:
    maps, masks, defects = _data(1)
    exact = evaluate_exact(maps, masks, defects=defects)
    coarse = _stream(maps, masks, defects, num_bins=20).compute()
    fine = _stream(maps, masks, defects, num_bins=5000).compute()
    assert abs(coarse.aupro - exact.aupro) <= coarse.aupro_tol + 1e-12
    assert abs(coarse.p_auroc - exact.p_auroc) <= coarse.p_auroc_tol + 1e-12
    assert fine.aupro_tol < coarse.aupro_tol / 20 and fine.p_auroc_tol < coarse.p_auroc_tol / 20
    assert abs(fine.aupro - exact.aupro) < 1e-3
    default = _stream(maps, masks, defects).compute()  # 65,536 bins: the stated default tolerance
    assert default.aupro_tol < 5e-4 and default.p_auroc_tol < 2e-4
    assert abs(default.aupro - exact.aupro) <= default.aupro_tol
    assert abs(default.p_ap - exact.p_ap) < 1e-3


def test_values_on_the_bin_grid_are_exact() -> None:
    # Scores that are exact multiples of the (dyadic) bin width: no two distinct values share a bin.
    g = torch.Generator().manual_seed(5)
    maps = torch.randint(0, 64, (6, 16, 16), generator=g).to(torch.float64) / 64
    masks = torch.zeros(6, 16, 16, dtype=torch.bool)
    masks[0, 2:6, 2:6] = masks[3, 9:12, 1:15] = True
    maps[masks] += 0.25
    exact = evaluate_exact(maps, masks)
    ev = StreamingEvaluator(num_bins=128, bounds=(0.0, 2.0))
    ev.update(maps, masks)
    got = ev.compute()
    assert got.p_auroc == pytest.approx(exact.p_auroc, abs=1e-12)
    assert got.aupro == pytest.approx(exact.aupro, abs=1e-12)


def test_adaptive_rebinning_is_exact() -> None:
    rng = np.random.default_rng(0)
    first = rng.random(500) * 0.01  # narrow first batch
    later = rng.normal(size=2000) * 5.0  # forces several doublings, downwards and upwards
    mask_first, mask_later = rng.random(500) < 0.3, rng.random(2000) < 0.3
    h = PixelHistogram(num_bins=64)
    h.add(first.reshape(20, 25), mask_first.reshape(20, 25))
    h.add(later.reshape(40, 50), mask_later.reshape(40, 50))
    assert h.lo <= later.min() and h.lo + 64 * h.width > later.max()
    direct = PixelHistogram(num_bins=64)
    direct.lo, direct.width = h.lo, h.width  # the final grid, filled in one go
    idx = direct.bin_index(np.r_[first, later])
    y = np.r_[mask_first, mask_later]
    np.testing.assert_array_equal(h.neg, np.bincount(idx[~y], minlength=66))
    np.testing.assert_array_equal(h.pos, np.bincount(idx[y], minlength=66))
    # resolution after growth: within 2x (+ 2 bins) of bins fitted to the final min/max
    span = max(later.max(), first.max()) - min(later.min(), first.min())
    assert h.width <= 2 * span / (64 - 2)


def test_values_outside_fixed_bounds_go_to_under_and_overflow_bins() -> None:
    h = PixelHistogram(num_bins=10, bounds=(0.0, 1.0))
    h.add(np.array([[-5.0, 0.05, 0.95, 7.0]]), np.array([[False, False, True, True]]))
    assert h.neg[0] == 1 and h.neg[1] == 1 and h.pos[10] == 1 and h.pos[11] == 1


def test_save_load_resumes_identically(tmp_path) -> None:
    maps, masks, defects = _data(2)
    full = _stream(maps, masks, defects, num_bins=500).compute()
    ev = StreamingEvaluator(num_bins=500)
    ev.update(maps[:4], masks[:4], defects=defects[:4])
    ev.save(tmp_path / "state.npz")
    resumed = StreamingEvaluator.load(tmp_path / "state.npz")
    assert resumed.num_updates == 1
    for s in range(4, maps.shape[0], 3):
        resumed.update(maps[s : s + 3], masks[s : s + 3], defects=defects[s : s + 3])
    got = resumed.compute()
    # same bins are reached in a different batch order, so the pixel values can differ only by rebinning;
    # image level must be identical, pixel values must lie within both bounds of the exact value
    assert got.i_auroc == full.i_auroc and got.s_auroc == full.s_auroc and got.per_defect == full.per_defect
    assert got.p_auroc == pytest.approx(full.p_auroc, abs=full.p_auroc_tol + got.p_auroc_tol)
    (tmp_path / "bad.npz").write_bytes(b"not a state")
    with pytest.raises(CheckpointError, match="bad.npz"):
        StreamingEvaluator.load(tmp_path / "bad.npz")


def test_streaming_errors() -> None:
    maps, masks, defects = _data(3)
    ev = StreamingEvaluator()
    ev.update(maps[:2], masks[:2])
    with pytest.raises(DataError, match="every batch"):
        ev.update(maps[2:4], labels=masks[2:4].flatten(2).any(dim=2))
    only_normal = StreamingEvaluator()
    only_normal.update(maps[1:2], masks[1:2])
    with pytest.raises(DataError, match="one class"):
        only_normal.compute()
    with pytest.raises(DataError, match="bounds"):
        StreamingEvaluator(bounds=(1.0, 1.0))


def test_flat_layout_with_views_split_across_batches() -> None:
    maps, masks, defects = _data(4, n=6, v=3)
    flat_maps, flat_masks = maps.reshape(18, 8, 8), masks.reshape(18, 32, 32)
    sids = [f"obj{i // 3}" for i in range(18)]
    flat_defects = [defects[i // 3] for i in range(18)]
    exact = evaluate_exact(maps, masks, defects=defects, how="mean_of_max")
    ev = StreamingEvaluator(how="mean_of_max", expected_views=3)
    for s in (slice(0, 4), slice(4, 11), slice(11, 18)):  # batch borders cut through samples
        ev.update(flat_maps[s], flat_masks[s], sample_ids=sids[s], defects=flat_defects[s])
    got = ev.compute()
    assert got.s_auroc == pytest.approx(exact.s_auroc, abs=1e-12) and got.num_samples == 6
    assert got.per_defect == exact.per_defect and got.aggregation == "mean_of_max"
    assert abs(got.aupro - exact.aupro) <= got.aupro_tol + 1e-12
