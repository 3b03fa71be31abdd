"""Exact threshold-free metrics on flat score arrays: ROC / PR points, AUROC, AP, F1-max.

Every function here sorts every score (no binning), so ties are handled exactly:

* A *tie group* is a set of equal scores. The curves have one vertex per distinct score ``t``
  (predict "anomalous" iff ``score >= t``), so a tie group moves the curve diagonally in one step.
* AUROC is the trapezoidal area under the ROC polyline through ``(0, 0)`` and these vertices, which
  equals the Mann-Whitney statistic ``P(s+ > s-) + 0.5 * P(s+ = s-)`` (scikit-learn's definition).
* AP is the step sum ``sum_k (R_k - R_{k-1}) * P_k`` over the vertices in decreasing-threshold
  order, ``R_0 = 0`` (scikit-learn's ``average_precision_score``; no interpolation).
* F1-max is ``max_k 2 P_k R_k / (P_k + R_k)`` over the vertices.

Positives may carry weights (used by AUPRO, where an anomalous pixel weighs ``1 / |region|``);
negatives always weigh 1.

Bad input (NaN/inf scores, shape mismatch, only one class) raises :class:`multiflow.errors.DataError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from multiflow.errors import DataError


def as_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` (numpy array, torch tensor, sequence) as a numpy array, detached and on the CPU."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def check_scores_labels(
    scores: Any, labels: Any, what: str = "scores"
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten ``scores`` (float, any shape) and ``labels`` (same shape, 0/1 or bool).

    Returns ``(scores float64 (M,), labels bool (M,))``. Raises :class:`DataError` on a shape
    mismatch, an empty input, non-finite scores, labels other than 0/1, or a single class.
    """
    s = as_numpy(scores, what)
    y = as_numpy(labels, "labels")
    if s.shape != y.shape:
        raise DataError(f"{what} have shape {s.shape} but labels have shape {y.shape}")
    if s.size == 0:
        raise DataError(f"no {what} given (empty input)")
    s = s.astype(np.float64, copy=False).reshape(-1)
    if not np.all(np.isfinite(s)):
        bad = int(np.count_nonzero(~np.isfinite(s)))
        raise DataError(f"{bad} of {s.size} {what} are NaN or infinite")
    y = y.reshape(-1)
    if y.dtype != np.bool_:
        if not np.all((y == 0) | (y == 1)):
            raise DataError(f"labels must be 0/1 or bool, got values {np.unique(y)[:5].tolist()}")
        y = y.astype(bool)
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        cls = "anomalous" if n_pos else "normal"
        raise DataError(
            f"{what} of only one class ({y.size} {cls}): AUROC/AP need both normal and "
            f"anomalous examples"
        )
    return s, y


@dataclass(frozen=True)
class CurvePoints:
    """Cumulative counts at every distinct threshold, in decreasing-threshold order.

    ``tp[k]`` (weighted) and ``fp[k]`` count the positives / negatives with ``score >= thresholds[k]``;
    ``total_pos`` / ``total_neg`` are the totals. Arrays have shape ``(K,)``, K = number of distinct
    scores; the last entry has ``tp = total_pos`` and ``fp = total_neg``.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    total_pos: float
    total_neg: float

    @property
    def tpr(self) -> np.ndarray:
        return self.tp / self.total_pos

    @property
    def fpr(self) -> np.ndarray:
        return self.fp / self.total_neg

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """ROC polyline ``(fpr, tpr)`` including the origin, shape ``(K + 1,)`` each."""
        return np.r_[0.0, self.fpr], np.r_[0.0, self.tpr]


def curve_points(scores: np.ndarray, labels: np.ndarray, pos_weights: np.ndarray | None = None) -> CurvePoints:
    """Exact cumulative counts of a scored, labelled set, one vertex per distinct score.

    ``scores`` float (M,), ``labels`` bool (M,), optional ``pos_weights`` (M,) (only read where
    ``labels`` is true). Sorting is ``O(M log M)``; memory ``O(M)``.
    """
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    y = labels[order]
    if pos_weights is None:
        tp = np.cumsum(y, dtype=np.float64)
    else:
        tp = np.cumsum(np.where(y, pos_weights[order], 0.0), dtype=np.float64)
    fp = np.cumsum(~y, dtype=np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tie group
    return CurvePoints(
        thresholds=s[last], tp=tp[last], fp=fp[last], total_pos=float(tp[-1]), total_neg=float(fp[-1])
    )


def _auroc_from_points(p: CurvePoints) -> float:
    fpr, tpr = p.roc()
    return float(np.trapezoid(tpr, fpr))


def _ap_from_points(p: CurvePoints) -> float:
    precision = p.tp / (p.tp + p.fp)
    recall = p.tp / p.total_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _f1_max_from_points(p: CurvePoints) -> tuple[float, float]:
    precision = p.tp / (p.tp + p.fp)
    recall = p.tp / p.total_pos
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)
    k = int(np.argmax(f1))
    return float(f1[k]), float(p.thresholds[k])


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve, exact with ties (= scikit-learn ``roc_auc_score``).

    ``scores`` (any shape, float) and ``labels`` (same shape, 0/1 or bool); higher = more anomalous.
    """
    s, y = check_scores_labels(scores, labels)
    return _auroc_from_points(curve_points(s, y))


def average_precision(scores: Any, labels: Any) -> float:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` (= scikit-learn ``average_precision_score``)."""
    s, y = check_scores_labels(scores, labels)
    return _ap_from_points(curve_points(s, y))


def f1_max(scores: Any, labels: Any) -> float:
    """Best F1 ``2PR / (P + R)`` over all thresholds ``score >= t`` (t ranging over the scores)."""
    s, y = check_scores_labels(scores, labels)
    return _f1_max_from_points(curve_points(s, y))[0]


def f1_max_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """``(best F1, threshold t reaching it)``; predict anomalous iff ``score >= t``."""
    s, y = check_scores_labels(scores, labels)
    return _f1_max_from_points(curve_points(s, y))


def partial_area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under the polyline ``(x, y)`` from ``x[0]`` to ``x_max``.

    ``x`` must be non-decreasing. If ``x_max`` falls strictly inside a segment, ``y`` is linearly
    interpolated there (the MVTec AUPRO convention); if ``x_max >= x[-1]`` the whole area is returned.
    """
    if x_max >= x[-1]:
        return float(np.trapezoid(y, x))
    idx = int(np.searchsorted(x, x_max, side="right"))  # x[idx-1] <= x_max < x[idx]
    xs, ys = x[:idx], y[:idx]
    if xs[-1] < x_max:
        x0, x1, y0, y1 = x[idx - 1], x[idx], y[idx - 1], y[idx]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        xs, ys = np.r_[xs, x_max], np.r_[ys, y_at]
    return float(np.trapezoid(ys, xs))
