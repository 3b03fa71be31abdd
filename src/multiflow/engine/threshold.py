"""Fitting a class model's decision threshold on held-out calibration objects (issue 20).

The statistics are :mod:`multiflow.scoring.threshold`'s; this module keeps the calibration
objects apart and scores them:

* :func:`split_calibration` holds out ``threshold.calibration_fraction`` of the normal training
  objects (at least 2) *before* training. They neither train the flow nor select its epoch or stop
  it early (that is ``train.val_fraction`` of the remaining objects), so their scores are
  exchangeable with those of new good objects, which the order-statistic bound needs. A separate
  split costs training objects, but using the selection objects for the threshold too would bias it
  low: the epoch was chosen because those objects scored low. There is no fallback to training
  objects.
* :class:`RowSubset` hands the remaining objects to training without copying the feature array.
* :func:`calibrate` scores the calibration objects with the model's scoring and fits the threshold
  for every view present; for a model that scores incomplete objects (``supports_missing_views``)
  also one threshold per number ``k`` of present views: each object is scored from every subset of
  ``k`` views (at most :data:`MAX_SUBSETS` of them, drawn with a fixed seed when there are more)
  through the flow's ``present`` argument, and its score for ``k`` is the maximum over those
  subsets. The false-reject bound then holds for each of those subsets (a subset's score never
  exceeds the maximum), so a model scoring 4 of 5 views keeps its false-reject rate.
* :func:`save_calibration_maps` / :func:`refit_threshold`: the calibration objects' maps are kept in
  the class folder (:data:`CALIBRATION_FILE`), so that a test-time scoring override (``test
  --aggregation mean``, an image-score override) refits the threshold for the overridden scoring,
  the same way, instead of comparing with a threshold fitted for another score.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

from multiflow._atomic import atomic_path
from multiflow.errors import CheckpointError, ConfigError
from multiflow.scoring import ScoringSpec, ThresholdFit, fit_threshold, score_arrays

CALIBRATION_FILE = "calibration_maps.npz"
#: most view subsets scored per number of present views
MAX_SUBSETS = 16
_SPLIT_STREAM = 104729  # seeds the calibration split apart from the train/val split


class RowSubset:
    """The rows ``rows`` (sorted) of an array-like ``(N, ...)`` (e.g. a memmap), read on indexing.

    Supports what training and scoring use: ``shape``, ``dtype``, ``len`` and indexing the first
    axis with an int, a slice or an int array (``subset[idx] == base[rows[idx]]``).
    """

    def __init__(self, base: Any, rows: Any) -> None:
        self.base = base
        self.rows = np.asarray(rows, dtype=np.int64)
        if self.rows.ndim != 1 or (self.rows.size and (self.rows.min() < 0 or self.rows.max() >= base.shape[0])):
            raise ConfigError(f"row subset: rows must be indices in [0, {base.shape[0]}), got {self.rows}")
        self.shape = (int(self.rows.size), *tuple(base.shape[1:]))
        self.dtype = base.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> np.ndarray:
        return self.base[self.rows[idx]]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = np.asarray(self.base[self.rows])
        return a if dtype is None else a.astype(dtype)


def split_calibration(n: int, fraction: float, seed: int, *, min_rest: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(rest, calibration)`` sorted object indices: ``max(2, round(n * fraction))`` objects held out
    for the threshold, deterministically from ``seed``; at least ``min_rest`` must remain."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"threshold.calibration_fraction must be in (0, 1), got {fraction}")
    n_cal = max(2, int(round(n * fraction)))
    if n - n_cal < min_rest:
        raise ConfigError(
            f"{n} normal training objects: the threshold holds out {n_cal} (threshold.calibration_fraction="
            f"{fraction}, at least 2) and training needs {min_rest} more (with train.val_fraction > 0: 2); "
            f"add normal training objects"
        )
    perm = np.random.default_rng(seed + _SPLIT_STREAM).permutation(n)
    return np.sort(perm[n_cal:]), np.sort(perm[:n_cal])


def view_subsets(n_views: int, k: int, seed: int = 0) -> list[tuple[int, ...]]:
    """The subsets of ``k`` of ``n_views`` views scored for the ``k``-views threshold: all of them,
    or :data:`MAX_SUBSETS` drawn without replacement (fixed ``seed``) when there are more."""
    total = math.comb(n_views, k)
    if total <= MAX_SUBSETS:
        return list(itertools.combinations(range(n_views), k))
    rng = np.random.default_rng(seed + k)
    out: set[tuple[int, ...]] = set()
    while len(out) < MAX_SUBSETS:
        out.add(tuple(sorted(rng.choice(n_views, size=k, replace=False).tolist())))
    return sorted(out)


def fit_for_scoring(maps: np.ndarray, masks: np.ndarray | None, sample_ids: list[str], scoring: ScoringSpec,
                    target, *, image_size: int, present: np.ndarray | None = None,
                    what: str = "held-out calibration objects", remedy: str = "") -> tuple[ThresholdFit, np.ndarray]:
    """The threshold fit (``target``: ``false_reject``, ``confidence``) for ``scoring`` on calibration
    maps ``(N, V, h, w)``; returns it and the sample scores ``(N,)``."""
    _, scores = score_arrays(maps, masks, scoring.postprocess(image_size), scoring.aggregation, present=present)
    fit = fit_threshold(scores, sample_ids, false_reject=target.false_reject, confidence=target.confidence, what=what,
                        remedy=remedy)
    return fit, scores


def fit_by_views(model, features, masks, sample_ids: list[str], scoring: ScoringSpec, target, *, image_size: int,
                 batch_size: int = 16, device=None, precision: str = "fp32", seed: int = 0) -> dict[str, ThresholdFit]:
    """One threshold per number ``k < V`` of present views (module docstring), ``{str(k): fit}``."""
    worst = scores_by_views(model, features, masks, scoring, image_size=image_size, batch_size=batch_size,
                            device=device, precision=precision, seed=seed)
    return fit_from_view_scores(worst, sample_ids, target)


def scores_by_views(model, features, masks, scoring: ScoringSpec, *, image_size: int, batch_size: int = 16,
                    device=None, precision: str = "fp32", seed: int = 0) -> dict[int, np.ndarray]:
    """``{k: (N,)}``: each calibration object's largest sample score over the view subsets of size
    ``k < V`` that :func:`fit_by_views` scores (score once, fit for any number of targets with
    :func:`fit_from_view_scores`)."""
    from multiflow.engine.maps import compute_maps

    n, v = int(features.shape[0]), int(features.shape[1])
    post = scoring.postprocess(image_size)
    out = {}
    for k in range(1, v):
        worst = np.full(n, -np.inf)
        for subset in view_subsets(v, k, seed):
            present = np.zeros((n, v), dtype=bool)
            present[:, list(subset)] = True
            maps = compute_maps(model, features, masks, batch_size=batch_size, device=device, precision=precision,
                                present=present, desc=f"threshold, {k} views")
            _, s = score_arrays(maps, masks, post, scoring.aggregation, present=present)
            worst = np.maximum(worst, s)
        out[k] = worst
    return out


def fit_from_view_scores(worst: dict[int, np.ndarray], sample_ids: list[str], target, *,
                         what: str = "held-out calibration objects", remedy: str = "") -> dict[str, ThresholdFit]:
    """``{str(k): fit}`` for ``target`` (``false_reject``, ``confidence``) from :func:`scores_by_views`."""
    v = max(worst) + 1
    return {str(k): fit_threshold(s, sample_ids, false_reject=target.false_reject, confidence=target.confidence,
                                  what=f"{what} scored from {k} of {v} views", remedy=remedy)
            for k, s in sorted(worst.items())}


def save_calibration_maps(path: Path, maps: np.ndarray, masks: np.ndarray | None, sample_ids: list[str]) -> None:
    """Write the calibration objects' maps ``(N, V, h, w)``, grid masks and ids (atomically)."""
    arrays: dict[str, Any] = {"maps": np.asarray(maps, dtype=np.float32),
                              "sample_ids": np.asarray(sample_ids, dtype=str)}
    if masks is not None:
        arrays["masks"] = np.asarray(masks, dtype=np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def load_calibration_maps(path: Path) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """``(maps, masks or None, sample_ids)`` written by :func:`save_calibration_maps`."""
    if not path.is_file():
        raise CheckpointError("the calibration objects' maps named by model.json are missing (copy the whole "
                              "class folder, or refit)", path)
    try:
        with np.load(path, allow_pickle=False) as z:
            maps = z["maps"]
            masks = z["masks"] if "masks" in z.files else None
            ids = [str(s) for s in z["sample_ids"]]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot read the calibration maps ({exc})", path) from None
    if maps.ndim != 4 or len(ids) != maps.shape[0] or (masks is not None and masks.shape != maps.shape):
        raise CheckpointError(f"calibration maps {maps.shape}, masks {None if masks is None else masks.shape} and "
                              f"{len(ids)} sample ids do not fit together", path)
    return maps, masks, ids


def refit_threshold(folder: Path, bundle, scoring: ScoringSpec) -> ThresholdFit | None:
    """The threshold refitted for ``scoring`` (a test-time override) from the bundle's stored
    calibration maps, with the bundle's target; None when the bundle stores none (older bundles)
    or its threshold carries no stated target (set by hand)."""
    t = bundle.threshold
    if not t.calibration_maps or t.fit is None:
        return None
    maps, masks, ids = load_calibration_maps(Path(folder) / t.calibration_maps)
    fit, _ = fit_for_scoring(maps, masks, ids, scoring, t.fit, image_size=int(bundle.features.input_size))
    return fit
