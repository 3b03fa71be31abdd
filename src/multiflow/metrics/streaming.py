"""Streaming evaluator: bounded memory for Real-IAD-sized test sets, with a guaranteed error bound.

A Real-IAD class has ~3,800 test images; at 1024^2 that is ~4e9 pixel scores, too many to sort.
:class:`StreamingEvaluator` is fed batch by batch and keeps

* the image scores, labels, sample ids and defect codes (``O(#images)``, tiny): S-/I- metrics and
  the per-defect results are therefore *exact*, identical to :func:`.evaluate_exact`;
* three histograms of the pixel scores over the same bins (``O(num_bins)``): normal pixels
  (``neg``), anomalous pixels (``pos``) and anomalous pixels weighted by ``1/|R_k|`` of their
  8-connected ground-truth region (``pro``), plus the region count ``K``. The weighted histogram is
  the sum over regions of each region's own normalised histogram, so the per-region overlaps of
  AUPRO are accumulated without storing one histogram per region
  (``PRO(t) = (1/K) sum_k |{p in R_k: s_p >= t}| / |R_k|``).

Pixel curves are read off the histograms at the bin edges. Every edge point is a vertex of the
exact curve (all scores of a higher bin exceed all scores of a lower one), so inside one bin the
exact curve is a monotone path in the box spanned by the bin's two edge points, while the
streaming value uses the straight chord. Hence the guaranteed bounds reported in the result:

* ``|P-AUROC - exact| <= p_auroc_tol = 0.5 * sum_b pos_b * neg_b / (P * N)``;
* ``|AUPRO - exact| <= aupro_tol = (sum_{b below the limit} 0.5 dFPR_b dPRO_b
  + (limit - FPR_start_c) dPRO_c) / limit`` (c = the bin that crosses the FPR limit).

Stated tolerance: the bounds are computed for every result (``EvalResult.p_auroc_tol`` /
``aupro_tol``) and scale like ``1 / num_bins``. With the default 65,536 bins they were below 2e-4
(P-AUROC) and 5e-4 (AUPRO) on the test data, with actual errors around 1e-5 (tests/metrics); the
Real-IAD-scale numbers are in BENCHMARKS.md (``benchmarks/bench_metrics.py``). For comparison,
ADEval's default of 1,000 bins gives bounds ~65x larger.

Pixel AP and F1-max are read off the same edge points (no guaranteed bound; F1-max is never above
the exact value, since the edge points are a subset of the exact vertices).

Bins. ``bounds=(lo, hi)``: ``num_bins`` equal bins on ``[lo, hi)`` plus an underflow and an
overflow bin (mass outside the bounds widens the bound, it is never lost). ``bounds=None`` (default):
running min-max with exact rebinning: bins are ``[j w, (j + 1) w)`` with ``w`` a power of two,
fitted to the first image; when a value falls outside, ``w`` doubles (pairs of bins merge exactly,
since ``floor(floor(x / w) / 2) = floor(x / 2w)``) until the range fits. The final bin width is at
most ~2x (plus one bin at each end) the width that bins fitted to the final min/max would have.

Resuming: :meth:`StreamingEvaluator.save` writes the whole state atomically and
:meth:`StreamingEvaluator.load` restores it; ``num_updates`` tells the caller how many batches to skip.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multiflow._atomic import atomic_path
from multiflow.errors import CheckpointError, DataError
from multiflow.scoring import check_aggregation
from multiflow.metrics.curves import CurvePoints, _ap_from_points, _auroc_from_points, _f1_max_from_points, partial_area
from multiflow.metrics.evaluate import EvalResult, ImageRecords, image_level_metrics, normalise_batch
from multiflow.metrics.pixel import region_weights, resize_maps

_STATE_VERSION = 1


class PixelHistogram:
    """Histograms ``neg``, ``pos`` (counts) and ``pro`` (``1/|R_k|``-weighted) of pixel scores.

    Arrays have ``num_bins + 2`` entries: underflow, ``num_bins`` regular bins (ascending), overflow.
    See the module docstring for the two binning modes.
    """

    def __init__(self, *, num_bins: int = 65_536, bounds: tuple[float, float] | None = None) -> None:
        if num_bins < 2:
            raise DataError(f"num_bins must be >= 2, got {num_bins}")
        self.num_bins = int(num_bins)
        self.adaptive = bounds is None
        if bounds is not None:
            lo, hi = float(bounds[0]), float(bounds[1])
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise DataError(f"histogram bounds must be finite with lo < hi, got {bounds}")
            self.lo, self.width = lo, (hi - lo) / self.num_bins
        else:
            self.lo, self.width = math.nan, math.nan  # set by the first values
        self.neg = np.zeros(self.num_bins + 2, dtype=np.int64)
        self.pos = np.zeros(self.num_bins + 2, dtype=np.int64)
        self.pro = np.zeros(self.num_bins + 2, dtype=np.float64)
        self.num_regions = 0

    # -- binning -----------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return math.isfinite(self.width)

    def edges(self) -> np.ndarray:
        """Lower edge of every bin ``(num_bins + 2,)`` (``-inf`` for the underflow bin)."""
        return np.r_[-np.inf, self.lo + self.width * np.arange(self.num_bins + 1)]

    def _fit(self, vmin: float, vmax: float) -> None:
        span = vmax - vmin
        if span <= 0:
            span = max(abs(vmin), 1.0) * 2.0**-20
        width = 2.0 ** math.ceil(math.log2(span / self.num_bins))
        while True:
            j0 = math.floor(vmin / width)
            if (j0 + self.num_bins) * width > vmax:
                break
            width *= 2
        self.lo, self.width = j0 * width, width

    def _grow(self, vmin: float, vmax: float) -> None:
        """Double the (dyadic) bin width until ``[vmin, vmax]`` fits; merge the counts exactly."""
        j_old = round(self.lo / self.width)
        vmin, vmax = min(vmin, self.lo), max(vmax, self.lo + self.num_bins * self.width)
        k, width = 0, self.width
        while True:
            k += 1
            width *= 2
            j_new = math.floor(vmin / width)
            if (j_new + self.num_bins) * width > vmax:
                break
        absolute = j_old + np.arange(self.num_bins)
        target = (absolute >> k) - j_new + 1  # +1: slot 0 is the underflow bin
        for name in ("neg", "pos", "pro"):
            old = getattr(self, name)
            new = np.zeros_like(old)
            np.add.at(new, target, old[1:-1])
            setattr(self, name, new)
        self.lo, self.width = j_new * width, width

    def bin_index(self, values: np.ndarray) -> np.ndarray:
        """Bin of every value ``(P,) -> (P,) int64`` (growing the bins first in adaptive mode)."""
        v = values.astype(np.float64, copy=False)
        if self.adaptive:
            vmin, vmax = float(v.min()), float(v.max())
            if not self.initialised:
                self._fit(vmin, vmax)
            elif vmin < self.lo or vmax >= self.lo + self.num_bins * self.width:
                self._grow(vmin, vmax)
            idx = np.floor(v / self.width) - round(self.lo / self.width)
        else:
            idx = np.floor((v - self.lo) * (1.0 / self.width))
        return (np.clip(idx, -1, self.num_bins) + 1).astype(np.int64)

    def add(self, scores: np.ndarray, mask: np.ndarray) -> None:
        """Accumulate one image: ``scores (H, W)`` at GT resolution, ``mask (H, W)`` bool."""
        idx = self.bin_index(scores.reshape(-1))
        y = mask.reshape(-1)
        nb = self.num_bins + 2
        self.neg += np.bincount(idx[~y], minlength=nb)
        if y.any():
            weights, k = region_weights(mask)
            self.pos += np.bincount(idx[y], minlength=nb)
            self.pro += np.bincount(idx[y], weights=weights.reshape(-1)[y], minlength=nb)
            self.num_regions += k

    # -- read-out ----------------------------------------------------------------------------
    def metrics(self, fpr_limit: float) -> dict[str, float | int]:
        """P-AUROC, AUPRO, pixel AP / F1-max and their bounds (module docstring)."""
        n_pos, n_neg = int(self.pos.sum()), int(self.neg.sum())
        if n_pos == 0 or n_neg == 0:
            raise DataError(f"pixel metrics need normal and anomalous pixels; got {n_pos} anomalous, {n_neg} normal")
        # Descending thresholds: the edge point of bin b counts every pixel in bins >= b.
        order = slice(None, None, -1)
        tp = np.cumsum(self.pos[order]).astype(np.float64)
        fp = np.cumsum(self.neg[order]).astype(np.float64)
        keep = (tp + fp) > 0
        points = CurvePoints(
            thresholds=self.edges()[order][keep], tp=tp[keep], fp=fp[keep], total_pos=float(n_pos), total_neg=float(n_neg)
        )
        p_auroc_tol = 0.5 * float(np.sum(self.pos.astype(np.float64) * self.neg)) / (n_pos * n_neg)

        fpr = np.r_[0.0, np.cumsum(self.neg[order]) / n_neg]
        pro = np.r_[0.0, np.cumsum(self.pro[order]) / self.num_regions]
        aupro = partial_area(fpr, pro, fpr_limit) / fpr_limit
        d_fpr, d_pro, start = np.diff(fpr), np.diff(pro), fpr[:-1]
        below = fpr[1:] <= fpr_limit
        crossing = (start < fpr_limit) & ~below
        slack = 0.5 * np.sum(d_fpr[below] * d_pro[below]) + np.sum((fpr_limit - start[crossing]) * d_pro[crossing])
        return dict(
            p_auroc=_auroc_from_points(points), p_ap=_ap_from_points(points), p_f1_max=_f1_max_from_points(points)[0],
            aupro=aupro, p_auroc_tol=p_auroc_tol, aupro_tol=float(slack) / fpr_limit, num_regions=self.num_regions,
        )


class StreamingEvaluator:
    """Accumulate anomaly maps batch by batch; :meth:`compute` returns an :class:`EvalResult`.

    Parameters (keyword only):
        num_bins: regular histogram bins for the pixel scores (memory ``3 * 8 * num_bins`` bytes).
        bounds: ``(lo, hi)`` of the pixel scores, or ``None`` for running min-max with rebinning.
        how: view aggregation for the sample score (``"max"``, ``"mean"``, ``"mean_of_max"``).
        fpr_limit: AUPRO integration limit (0.3 in the official protocol).
        expected_views: if given, :meth:`compute` checks every sample has that many views.

    Peak memory of :meth:`update` is one resized map plus its masks at the GT resolution
    (``~8-9 x H x W`` bytes per image at a time), independent of the test-set size.
    """

    def __init__(
        self,
        *,
        num_bins: int = 65_536,
        bounds: tuple[float, float] | None = None,
        how: str = "max",
        fpr_limit: float = 0.3,
        expected_views: int | None = None,
    ) -> None:
        check_aggregation(how)
        if not 0 < fpr_limit <= 1:
            raise DataError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        self.how = how
        self.fpr_limit = float(fpr_limit)
        self.expected_views = expected_views
        self.histogram = PixelHistogram(num_bins=num_bins, bounds=bounds)
        self.records = ImageRecords()
        self.num_updates = 0
        self.pixel_metrics: bool | None = None  # fixed by the first update (masks given or not)

    def update(
        self,
        anomaly_maps: Any,
        masks: Any | None = None,
        *,
        labels: Any | None = None,
        image_scores: Any | None = None,
        foreground: Any | None = None,
        sample_ids: Sequence[str] | None = None,
        defects: Sequence[str] | None = None,
    ) -> None:
        """Add one batch: ``anomaly_maps (N, h, w)`` or ``(N, V, h, w)``, ``masks`` of the same
        leading shape at the GT size (see :mod:`.evaluate` for the layouts and label rules).

        Either every batch has masks (pixel metrics computed) or none has.
        """
        b = normalise_batch(
            anomaly_maps, masks, labels=labels, image_scores=image_scores, foreground=foreground,
            sample_ids=sample_ids, defects=defects, offset=len(self.records),
        )
        has_masks = b.masks is not None
        if self.pixel_metrics is None:
            self.pixel_metrics = has_masks
        elif self.pixel_metrics != has_masks:
            raise DataError("every batch must come with ground-truth masks, or none (pixel metrics need all of them)")
        if has_masks:
            size = tuple(b.masks.shape[-2:])
            for i in range(b.maps.shape[0]):
                scores = resize_maps(b.maps[i : i + 1], size)[0].numpy()
                self.histogram.add(scores, b.masks[i].numpy())
        self.records.add(b.image_scores, b.labels, b.sample_ids, b.defects)
        self.num_updates += 1

    def compute(self) -> EvalResult:
        """All metrics of what was added so far (image/sample exact, pixel from the histograms)."""
        img = image_level_metrics(self.records, self.how, self.expected_views)
        if self.pixel_metrics:
            pix: dict[str, Any] = self.histogram.metrics(self.fpr_limit)
        else:
            pix = dict(p_auroc=None, aupro=None, p_ap=None, p_f1_max=None, p_auroc_tol=None, aupro_tol=None, num_regions=None)
        return EvalResult(**img, **pix, aggregation=self.how, fpr_limit=self.fpr_limit, method="streaming")

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the full state to ``path`` (``.npz``) atomically (:func:`multiflow._atomic.atomic_path`)."""
        path = Path(path)
        h = self.histogram
        scores, labels = (
            (np.concatenate(self.records.scores), np.concatenate(self.records.labels)) if self.records.scores
            else (np.zeros(0), np.zeros(0, dtype=bool))
        )
        state = dict(
            version=np.int64(_STATE_VERSION), num_bins=np.int64(h.num_bins), adaptive=np.bool_(h.adaptive),
            lo=np.float64(h.lo), width=np.float64(h.width), neg=h.neg, pos=h.pos, pro=h.pro,
            num_regions=np.int64(h.num_regions), how=np.str_(self.how), fpr_limit=np.float64(self.fpr_limit),
            expected_views=np.int64(-1 if self.expected_views is None else self.expected_views),
            num_updates=np.int64(self.num_updates),
            pixel_metrics=np.int64(-1 if self.pixel_metrics is None else int(self.pixel_metrics)),
            scores=scores, labels=labels,
            sample_ids=np.asarray(self.records.sample_ids, dtype=np.str_),
            defects=np.asarray(self.records.defects, dtype=np.str_),
        )
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **state)

    @classmethod
    def load(cls, path: str | os.PathLike) -> StreamingEvaluator:
        """Restore an evaluator written by :meth:`save`; raises :class:`CheckpointError` if unreadable."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                st = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise CheckpointError(f"cannot read streaming-evaluator state: {exc}", path) from exc
        if int(st.get("version", -1)) != _STATE_VERSION:
            raise CheckpointError(f"unsupported streaming-evaluator state version {st.get('version')}", path)
        ev = cls.__new__(cls)
        ev.how = str(st["how"])
        ev.fpr_limit = float(st["fpr_limit"])
        ev.expected_views = None if int(st["expected_views"]) < 0 else int(st["expected_views"])
        ev.num_updates = int(st["num_updates"])
        ev.pixel_metrics = None if int(st["pixel_metrics"]) < 0 else bool(int(st["pixel_metrics"]))
        h = PixelHistogram.__new__(PixelHistogram)
        h.num_bins, h.adaptive = int(st["num_bins"]), bool(st["adaptive"])
        h.lo, h.width = float(st["lo"]), float(st["width"])
        h.neg, h.pos, h.pro = st["neg"].copy(), st["pos"].copy(), st["pro"].copy()
        h.num_regions = int(st["num_regions"])
        ev.histogram = h
        ev.records = ImageRecords()
        if st["scores"].size:
            ev.records.add(st["scores"], st["labels"], st["sample_ids"].tolist(), st["defects"].tolist())
        return ev
