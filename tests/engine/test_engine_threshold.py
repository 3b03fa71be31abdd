"""engine/threshold.py: the calibration objects are kept apart from training and epoch selection,
and the per-number-of-views thresholds score them with views removed through the flow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from multiflow.config import TrainConfig
from multiflow.engine.threshold import (
    MAX_SUBSETS,
    RowSubset,
    fit_by_views,
    load_calibration_maps,
    refit_threshold,
    save_calibration_maps,
    split_calibration,
    view_subsets,
)
from multiflow.engine.train import train_flow
from multiflow.errors import CheckpointError, ConfigError
from multiflow.flow import MultiFlow, ViewGraph
from multiflow.scoring import ScoringSpec, fit_threshold, score_maps


def _model(views: int = 3, seed: int = 3) -> MultiFlow:
    flow = MultiFlow(4, ViewGraph.real_iad(views - 1), n_blocks=2, hidden=8, kernel_sizes=(3, 3), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return flow.eval()


def _data(n: int = 12, views: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, views, 4, 4, 4)).astype(np.float32),
            (rng.random((n, views, 4, 4)) > 0.3).astype(np.float32))


def test_calibration_objects_are_held_out_before_training():
    """The split is deterministic, disjoint, at least 2 objects, and names what is missing; with
    train.val_fraction = 0 the calibration objects are still not training objects (no fallback)."""
    rest, cal = split_calibration(26, 0.1, seed=0)
    assert len(cal) == 3 and len(rest) == 23 and not set(rest) & set(cal)
    assert sorted([*rest, *cal]) == list(range(26))
    again = split_calibration(26, 0.1, seed=0)
    assert np.array_equal(again[1], cal) and not np.array_equal(split_calibration(26, 0.1, seed=1)[1], cal)
    assert len(split_calibration(6, 0.1, seed=0)[1]) == 2  # never fewer than 2
    with pytest.raises(ConfigError, match="3 normal training objects.*holds out 2.*needs 2"):
        split_calibration(3, 0.1, seed=0, min_rest=2)


def test_training_on_the_remaining_objects_is_training_on_their_copy(tmp_path):
    """RowSubset hands the remaining objects to train_flow without copying: the same run as on the
    materialised array (so the calibration objects never reach training or selection)."""
    feats, masks = _data()
    rest, _ = split_calibration(len(feats), 0.25, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=3, lr=1e-3, seed=5, val_fraction=0.0, device="cpu")
    a, b = _model(), _model()
    ra = train_flow(a, RowSubset(feats, rest), RowSubset(masks, rest), cfg, tmp_path / "a", progress=False)
    rb = train_flow(b, feats[rest], masks[rest], cfg, tmp_path / "b", progress=False)
    assert ra.history == rb.history and len(ra.train_index) == len(rest)
    sub = RowSubset(feats, rest)
    assert sub.shape == (len(rest), 3, 4, 4, 4) and np.array_equal(sub[np.array([0, 2])], feats[rest[[0, 2]]])
    assert np.array_equal(np.asarray(sub), feats[rest])


def test_view_subsets_enumerate_or_sample():
    assert view_subsets(5, 4) == [(0, 1, 2, 3), (0, 1, 2, 4), (0, 1, 3, 4), (0, 2, 3, 4), (1, 2, 3, 4)]
    assert len(view_subsets(5, 2)) == 10
    big = view_subsets(12, 6, seed=3)
    assert len(big) == MAX_SUBSETS < math.comb(12, 6) and big == view_subsets(12, 6, seed=3)
    assert all(len(s) == 6 and len(set(s)) == 6 for s in big)


def test_per_view_count_thresholds_use_the_worst_subset_scored_through_the_flow():
    """The k-views threshold is fitted on each calibration object's worst score over its k-view
    subsets, each scored by the flow with the other views absent (present argument)."""
    feats, masks = _data(n=8, views=3)
    model = _model()
    ids = [f"c{i}" for i in range(8)]
    scoring = ScoringSpec()
    target = type("Target", (), {"false_reject": 0.01, "confidence": 0.9})()
    fits = fit_by_views(model, feats, masks, ids, scoring, target, image_size=16, batch_size=3, seed=0)
    assert sorted(fits) == ["1", "2"]
    x, m = torch.from_numpy(feats), torch.from_numpy(masks)
    for k in (1, 2):
        worst = np.full(8, -np.inf)
        for subset in view_subsets(3, k):
            p = torch.zeros(8, 3, dtype=torch.bool)
            p[:, list(subset)] = True
            with torch.no_grad():
                nll = model(x, present=p).nll
            _, _, s = score_maps(nll, m, "max", None, present=p)
            worst = np.maximum(worst, s.numpy())
        want = fit_threshold(worst, ids)
        assert fits[str(k)].value == pytest.approx(want.value, rel=1e-5)
        assert fits[str(k)].n == 8 and f"from {k} of 3 views" in fits[str(k)].warning


def test_view_subsets_scored_once_for_every_target(monkeypatch):
    """decision_trust fits two targets: every view subset goes through the flow once (scores_by_views),
    and the fits from those scores equal fit_by_views' for each target."""
    import multiflow.engine.maps as maps_mod
    from multiflow.engine.threshold import fit_from_view_scores, scores_by_views

    feats, masks = _data(n=8, views=3)
    model = _model()
    ids = [f"c{i}" for i in range(8)]
    calls = []
    real = maps_mod.compute_maps
    monkeypatch.setattr(maps_mod, "compute_maps", lambda *a, **k: calls.append(1) or real(*a, **k))
    worst = scores_by_views(model, feats, masks, ScoringSpec(), image_size=16, batch_size=3, seed=0)
    assert len(calls) == len(view_subsets(3, 1)) + len(view_subsets(3, 2))
    for fr in (0.01, 0.05):
        target = type("Target", (), {"false_reject": fr, "confidence": 0.9})()
        once = fit_from_view_scores(worst, ids, target)
        direct = fit_by_views(model, feats, masks, ids, ScoringSpec(), target, image_size=16, batch_size=3, seed=0)
        assert sorted(once) == sorted(direct) == ["1", "2"]
        assert all(once[k].value == pytest.approx(direct[k].value, rel=1e-6) for k in once)


def test_calibration_maps_round_trip_and_missing_file_is_named(tmp_path):
    rng = np.random.default_rng(1)
    maps, masks = rng.normal(size=(4, 3, 2, 2)).astype(np.float32), (rng.random((4, 3, 2, 2)) > 0.5)
    save_calibration_maps(tmp_path / "c.npz", maps, masks, ["a", "b", "c", "d"])
    m2, k2, ids = load_calibration_maps(tmp_path / "c.npz")
    assert np.array_equal(m2, maps) and np.array_equal(k2, masks.astype(np.float32)) and ids == ["a", "b", "c", "d"]
    with pytest.raises(CheckpointError, match="missing"):
        load_calibration_maps(tmp_path / "nope.npz")


def test_refit_needs_stored_maps_and_a_stated_target():
    from multiflow.engine.bundle import ThresholdSpec

    bundle = type("B", (), {"threshold": ThresholdSpec(value=1.0, quantile=0.99)})()
    assert refit_threshold(".", bundle, ScoringSpec(aggregation="mean")) is None
