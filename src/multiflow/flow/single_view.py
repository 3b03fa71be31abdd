"""The single-view flow (a model option, ``model.single_view``; the baseline of the paper): one flow
for all images, each image an independent sample.

Multi-Flow scores a sample of ``V`` views jointly (paper Eq. 4: every st-network sees the
neighbour views). The single-view baseline removes every cross-view link *and* the per-view
weights: the ``V`` images of a sample become ``V`` samples of one flow with a single view, i.e.
features ``(N, V, C, h, w) -> (N * V, 1, C, h, w)``. The anomaly maps are mapped back to
``(N, V, h, w)`` so that the evaluation (S-AUROC = max over views, I-AUROC, P-AUROC, AUPRO) is
exactly the one of the multi-view model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from multiflow.errors import DataError


def to_single_view(features: Any, masks: Any | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(N, V, C, h, w) -> (N*V, 1, C, h, w)`` and masks ``(N, V, h, w) -> (N*V, 1, h, w)``.

    Image ``k`` of the result is view ``k % V`` of sample ``k // V``. For a C-contiguous array
    (or memmap) the result is a view of the same memory, nothing is copied.
    """
    f = np.asarray(features) if not isinstance(features, np.ndarray) else features
    if f.ndim != 5:
        raise DataError(f"features must have shape (N, V, C, h, w), got {tuple(f.shape)}")
    n, v, c, h, w = f.shape
    out = f.reshape(n * v, 1, c, h, w)
    m_out = None
    if masks is not None:
        m = np.asarray(masks) if not isinstance(masks, np.ndarray) else masks
        if tuple(m.shape) != (n, v, h, w):
            raise DataError(f"masks must have shape {(n, v, h, w)}, got {tuple(m.shape)}")
        m_out = m.reshape(n * v, 1, h, w)
    return out, m_out


def from_single_view(maps: np.ndarray, n_views: int) -> np.ndarray:
    """Inverse of :func:`to_single_view` for anomaly maps: ``(N*V, 1, h, w) -> (N, V, h, w)``."""
    maps = np.asarray(maps)
    if maps.ndim != 4 or maps.shape[1] != 1 or maps.shape[0] % n_views:
        raise DataError(f"single-view maps must have shape (N*{n_views}, 1, h, w), got {tuple(maps.shape)}")
    return maps.reshape(maps.shape[0] // n_views, n_views, *maps.shape[2:])


def single_view_indices(image_index: np.ndarray, n_views: int) -> np.ndarray:
    """Sorted sample indices that own the given single-view image indices (``k // V``)."""
    return np.unique(np.asarray(image_index, dtype=np.int64) // n_views)
