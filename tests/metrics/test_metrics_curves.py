"""Exact AUROC / AP / F1-max against scikit-learn (independent oracle), ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from multiflow.errors import DataError
from multiflow.metrics import auroc, average_precision, f1_max, f1_max_threshold
from multiflow.metrics.curves import partial_area


def _tied_data(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Scores on at most 7 levels (many ties, across both classes), labels correlated with them."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + 0.8 * y, 0).clip(-3, 3) / 3
    return s, y


@pytest.mark.parametrize("seed", range(6))
def test_auroc_and_ap_match_sklearn_with_ties(seed: int) -> None:
    s, y = _tied_data(seed)
    assert len(np.unique(s)) < 10  # the data really is tied
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_auroc_and_ap_match_sklearn_continuous(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    y = rng.integers(0, 2, 500)
    s = rng.normal(size=500) + 0.5 * y
    assert auroc(torch.from_numpy(s), torch.from_numpy(y)) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_auroc_is_mann_whitney_with_half_credit_for_ties() -> None:
    # pos {0.5, 0.9}, neg {0.5, 0.1}: pairs (0.5 vs 0.5) tie = 0.5, the other three are wins -> 3.5 / 4
    assert auroc([0.5, 0.9, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
    assert auroc([1.0, 1.0, 1.0, 1.0], [1, 0, 1, 0]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(4))
def test_f1_max_matches_brute_force_over_sklearn_pr_curve(seed: int) -> None:
    s, y = _tied_data(seed)
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0)
    assert f1_max(s, y) == pytest.approx(f1.max(), abs=1e-12)
    best, t = f1_max_threshold(s, y)
    pred = s >= t
    tp = np.sum(pred & (y == 1))
    assert best == pytest.approx(2 * tp / (pred.sum() + y.sum()), abs=1e-12)


def test_perfect_and_inverted_scores() -> None:
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert auroc(s, y) == 1.0 and average_precision(s, y) == 1.0 and f1_max(s, y) == 1.0
    assert auroc(-s, y) == 0.0


@pytest.mark.parametrize(
    "scores, labels, match",
    [
        ([0.1, float("nan")], [0, 1], "NaN"),
        ([0.1, 0.2], [1, 1], "one class"),
        ([0.1, 0.2], [0, 0], "one class"),
        ([0.1, 0.2, 0.3], [0, 1], "shape"),
        ([0.1, 0.2], [0, 2], "0/1"),
        ([], [], "empty"),
    ],
)
def test_degenerate_input_raises_data_error(scores, labels, match) -> None:
    with pytest.raises(DataError, match=match):
        auroc(np.asarray(scores, dtype=float), np.asarray(labels))


def test_partial_area_interpolates_at_the_limit() -> None:
    x = np.array([0.0, 0.2, 0.4, 1.0])
    y = np.array([0.0, 1.0, 0.0, 0.0])
    # up to 0.3: triangle 0..0.2 (area 0.1) + trapezoid 0.2..0.3 from 1.0 down to 0.5 (area 0.075)
    assert partial_area(x, y, 0.3) == pytest.approx(0.175)
    assert partial_area(x, y, 0.2) == pytest.approx(0.1)
    assert partial_area(x, y, 1.0) == pytest.approx(0.2)
