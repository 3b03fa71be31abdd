"""From anomaly maps to image scores, and from the image scores of a sample's views to a sample score.

* Image score (one view): ``max`` of the anomaly map over its foreground pixels
  (over all pixels when no foreground mask is given, or when a view's foreground is empty).
* Sample score from the ``V`` image scores of one object, a named choice:

  ``"max"``          ``max_v score_v`` -- the official Real-IAD / ADEval protocol (default).
  ``"mean"``         ``(1/V) sum_v score_v``.
  ``"mean_of_max"``  the mean over views of the per-view map maxima, i.e. what the Multi-Flow
                     reference code computes while calling it "max". Since an image score *is* the
                     per-view map maximum, on image scores this is numerically the same as
                     ``"mean"``; the separate name keeps reproductions of the reference code honest.
"""

from __future__ import annotations

from typing import Any

import torch

from multiflow.errors import DataError
from multiflow.scoring import VIEW_AGGREGATIONS, aggregate_scores, check_aggregation

__all__ = ["VIEW_AGGREGATIONS", "aggregate_views", "check_aggregation", "image_scores_from_maps"]


def aggregate_views(image_scores: Any, how: str = "max") -> torch.Tensor:
    """Sample scores ``(N,)`` from image scores ``(N, V)`` (see the module docstring for ``how``)."""
    check_aggregation(how)
    s = image_scores if isinstance(image_scores, torch.Tensor) else torch.as_tensor(image_scores)
    if s.ndim != 2 or s.shape[1] == 0:
        raise DataError(f"image scores must have shape (N, V) with V >= 1, got {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise DataError("image scores contain NaN or infinite values")
    return aggregate_scores(s, how)


def image_scores_from_maps(maps: Any, foreground: Any | None = None) -> torch.Tensor:
    """Image scores ``(...)`` = max over the (foreground) pixels of anomaly maps ``(..., H, W)``.

    ``foreground``: optional bool mask of the same shape as ``maps``; views whose foreground is
    empty fall back to the maximum over all their pixels.
    """
    m = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(maps)
    if m.ndim < 2:
        raise DataError(f"anomaly maps must have shape (..., H, W), got {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise DataError("anomaly maps contain NaN or infinite values")
    flat = m.reshape(*m.shape[:-2], -1)
    full_max = flat.amax(dim=-1)
    if foreground is None:
        return full_max
    fg = foreground if isinstance(foreground, torch.Tensor) else torch.as_tensor(foreground)
    if tuple(fg.shape) != tuple(m.shape):
        raise DataError(f"foreground mask {tuple(fg.shape)} must have the shape of the maps {tuple(m.shape)}")
    fg = fg.to(torch.bool).reshape(flat.shape)
    fg_max = flat.masked_fill(~fg, float("-inf")).amax(dim=-1)
    return torch.where(fg.any(dim=-1), fg_max, full_max)
