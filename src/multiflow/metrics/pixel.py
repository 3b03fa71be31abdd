"""Exact pixel-level metrics at the ground-truth resolution: P-AUROC, AUPRO, pixel AP / F1-max.

Official Real-IAD / ADEval protocol, reproduced here without binning:

1. Anomaly maps ``(..., h, w)`` are resized bilinearly (half-pixel centres, no antialiasing: the
   same as OpenCV's ``INTER_LINEAR`` that ADEval uses) to the ground-truth size ``(H, W)``.
2. Masks are binarised: ``uint8`` masks at ``> 127`` (the PNG convention), ``bool`` as given, other
   dtypes must hold values in ``[0, 1]`` and are binarised at ``> 0.5``.
3. P-AUROC: exact AUROC over every pixel of every image (see :mod:`.curves`).
4. AUPRO (Bergmann et al.): split each ground-truth mask into connected regions (8-connectivity);
   at threshold ``t`` the per-region overlap is ``O_k(t) = |{p in R_k : s_p >= t}| / |R_k|``, the
   PRO is the mean over *all* regions of all images ``PRO(t) = (1/K) sum_k O_k(t)``, and the FPR is
   the fraction of normal pixels (of all images) with ``s_p >= t``. AUPRO is the area under
   ``PRO(FPR)`` from 0 to ``fpr_limit`` (default 0.3; PRO linearly interpolated at the limit),
   divided by ``fpr_limit``, so a perfect detector scores 1.

   ``PRO(t)`` is a weighted true-positive rate where anomalous pixel ``p in R_k`` weighs
   ``1 / |R_k|``: ``(1/K) sum_k sum_{p in R_k} [s_p >= t] / |R_k|``. This is how both the exact
   and the streaming evaluator compute it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from multiflow.errors import DataError
from multiflow.metrics.curves import (
    _ap_from_points,
    _auroc_from_points,
    _f1_max_from_points,
    as_numpy,
    curve_points,
    partial_area,
)

EIGHT_CONNECTIVITY = np.ones((3, 3), dtype=bool)


def binarize_masks(masks: Any) -> torch.Tensor:
    """Ground-truth masks ``(..., H, W)`` as a bool tensor (rules in the module docstring)."""
    m = masks if isinstance(masks, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(as_numpy(masks, "masks")))
    if m.dtype == torch.bool:
        return m
    if m.dtype == torch.uint8:
        return m > 127
    mf = m.to(torch.float64)
    if mf.numel() and (not torch.isfinite(mf).all() or mf.min() < 0 or mf.max() > 1):
        raise DataError(
            f"masks of dtype {m.dtype} must hold values in [0, 1] (or be uint8 0..255 / bool); "
            f"got range [{float(mf.min())}, {float(mf.max())}]"
        )
    return mf > 0.5


def resize_maps(maps: Any, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize anomaly maps ``(M, h, w)`` to ``(M, H, W)`` (align_corners=False).

    float64 input stays float64; anything else is computed in float32 (as ADEval does).
    """
    m = maps if isinstance(maps, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(as_numpy(maps, "maps")))
    m = m.detach().cpu()
    if m.dtype != torch.float64:
        m = m.to(torch.float32)
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def region_weights(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel AUPRO weights of one mask ``(H, W)`` bool: ``1/|R_k|`` inside region ``R_k``, else 0.

    Regions are 8-connected components. Returns ``(weights float64 (H, W), number of regions)``.
    """
    labelled, k = ndimage.label(mask, structure=EIGHT_CONNECTIVITY)
    if k == 0:
        return np.zeros(mask.shape, dtype=np.float64), 0
    areas = np.bincount(labelled.reshape(-1), minlength=k + 1).astype(np.float64)
    inv = np.zeros(k + 1, dtype=np.float64)
    inv[1:] = 1.0 / areas[1:]
    return inv[labelled], int(k)


def pixel_scores_and_masks(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Resize maps to the mask size and binarise masks.

    ``maps`` ``(N, h, w)`` or ``(N, V, h, w)``; ``masks`` with the same leading shape and any
    spatial size ``(H, W)``. Returns ``(scores (M, H, W) float, masks (M, H, W) bool)`` as numpy,
    ``M = N`` or ``N * V``.
    """
    mp = maps if isinstance(maps, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(as_numpy(maps, "maps")))
    mk = binarize_masks(masks)
    if mp.ndim not in (3, 4) or mk.ndim != mp.ndim or tuple(mp.shape[:-2]) != tuple(mk.shape[:-2]):
        raise DataError(
            f"anomaly maps {tuple(mp.shape)} and masks {tuple(mk.shape)} must both be (N, H, W) or "
            f"(N, V, H, W) with the same leading dimensions"
        )
    mp = mp.reshape(-1, *mp.shape[-2:])
    mk = mk.reshape(-1, *mk.shape[-2:])
    if not torch.isfinite(mp).all():
        raise DataError("anomaly maps contain NaN or infinite values")
    resized = resize_maps(mp, tuple(mk.shape[-2:]))
    return resized.numpy(), mk.numpy()


def _pixel_points(scores: np.ndarray, masks: np.ndarray):
    y = masks.reshape(-1)
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        raise DataError(
            f"pixel metrics need normal and anomalous pixels; got {n_pos} anomalous of {y.size}"
        )
    return curve_points(scores.reshape(-1).astype(np.float64), y)


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Exact P-AUROC over all pixels at the mask resolution (shapes as :func:`pixel_scores_and_masks`)."""
    s, m = pixel_scores_and_masks(maps, masks)
    return _auroc_from_points(_pixel_points(s, m))


def pixel_ap_f1(maps: Any, masks: Any) -> tuple[float, float]:
    """Exact pixel-level ``(average precision, F1-max)`` at the mask resolution."""
    s, m = pixel_scores_and_masks(maps, masks)
    p = _pixel_points(s, m)
    return _ap_from_points(p), _f1_max_from_points(p)[0]


def pro_curve(scores: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact ``(fpr, pro, number of regions)`` of resized scores ``(M, H, W)`` and bool masks.

    The curve starts at ``(0, 0)`` and has one vertex per distinct score.
    """
    weights = np.empty(masks.shape, dtype=np.float64)
    n_regions = 0
    for i in range(masks.shape[0]):
        weights[i], k = region_weights(masks[i])
        n_regions += k
    y = masks.reshape(-1)
    if n_regions == 0:
        raise DataError("AUPRO needs at least one anomalous region in the masks; none found")
    if np.all(y):
        raise DataError("AUPRO needs normal pixels to measure the FPR; every pixel is anomalous")
    p = curve_points(scores.reshape(-1).astype(np.float64), y, weights.reshape(-1))
    return np.r_[0.0, p.fp / p.total_neg], np.r_[0.0, p.tp / n_regions], n_regions


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Exact AUPRO up to ``fpr_limit``, normalised by ``fpr_limit`` (definition in the module docstring).

    ``maps`` ``(N, h, w)`` / ``(N, V, h, w)``, ``masks`` same leading shape at the GT size.
    """
    if not 0 < fpr_limit <= 1:
        raise DataError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    s, m = pixel_scores_and_masks(maps, masks)
    fpr, pro, _ = pro_curve(s, m)
    return partial_area(fpr, pro, fpr_limit) / fpr_limit
