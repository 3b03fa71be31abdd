"""From a view's anomaly map to the object's decision: view scores, sample score, decision.

* view (image) score: the model's image score (:class:`multiflow.scoring.image_score.ScorePostprocess`;
  ``max`` = the paper's max of the background-filled map) over the foreground
  (:func:`multiflow.scoring.maps.foreground`);
* sample score: aggregation over views (:data:`multiflow.scoring.spec.VIEW_AGGREGATIONS`:
  ``max`` official; ``mean``; ``mean_of_max``, numerically the mean of the view maxima), over the
  present views only when a ``present (B, V)`` mask is given;
* decision: ``sample score > threshold`` (True = NG).

:func:`score_maps` is the torch path of one batch (predictor, ONNX graph); :func:`score_arrays` runs
the same functions over whole arrays of maps (evaluation, threshold fit, benchmarks);
:func:`image_scores_from_maps` and :func:`aggregate_views` are the validating entry points for
metrics code given plain arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from multiflow.errors import DataError
from multiflow.scoring.image_score import ScorePostprocess, max_score
from multiflow.scoring.maps import blank_absent, fill_background, foreground
from multiflow.scoring.spec import check_aggregation

__all__ = ["aggregate_scores", "aggregate_views", "decide", "image_scores_from_maps", "score_arrays", "score_maps",
           "view_scores"]


def view_scores(maps: Tensor, mask: Tensor | None = None, post: ScorePostprocess | None = None) -> Tensor:
    """Image scores: ``(B, V, H, W)`` -> ``(B, V)`` (any leading shape).

    Without ``post`` (or with the paper's, :attr:`ScorePostprocess.is_identity`): the max of each
    (background-filled) map, which is its foreground max. With ``post``: its image score over the
    foreground.
    """
    if post is None or post.is_identity:
        return max_score(maps)  # the filled background never exceeds the foreground: the foreground max
    fg = None if mask is None else foreground(mask.to(maps.dtype)).expand_as(maps)
    return post(maps, fg)


def aggregate_scores(scores: Tensor, how: str = "max", present: Tensor | None = None) -> Tensor:
    """Sample scores ``(N,)`` from view scores ``(N, V)``: ``max``, or the mean (``mean``, ``mean_of_max``).

    With ``present`` (``(N, V)`` bool, every row non-empty) only the present views count: the max
    over them, or their mean ``sum_v p_v s_v / sum_v p_v``; the scores of absent views (NaN or
    anything else) are never read.
    """
    check_aggregation(how)
    if present is None:
        if how == "max":
            return scores.amax(dim=1)
        return scores.to(torch.float64 if scores.dtype == torch.float64 else torch.float32).mean(dim=1)
    p = present.to(device=scores.device, dtype=torch.bool)
    if how == "max":
        return torch.where(p, scores, torch.full((), float("-inf"), dtype=scores.dtype, device=scores.device)).amax(dim=1)
    s = scores.to(torch.float64 if scores.dtype == torch.float64 else torch.float32)
    total = torch.where(p, s, torch.zeros((), dtype=s.dtype, device=s.device)).sum(dim=1)
    return total / p.sum(dim=1).to(s.dtype)


def decide(sample_score: Tensor, threshold: Tensor | float) -> Tensor:
    """The decision ``sample_score > threshold`` (True = NG, anomalous)."""
    return sample_score > threshold


def score_maps(nll: Tensor, mask: Tensor | None, how: str = "max",
               post: ScorePostprocess | None = None, *,
               present: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Raw NLL ``(B, V, H, W)`` -> ``(maps (B, V, H, W), view scores (B, V), sample scores (B,))``.

    ``post``: the model's image score (:func:`view_scores`; None = the paper's max). With
    ``present`` (``(B, V)`` bool) the maps and view scores of absent views are NaN, and the sample
    score aggregates over the present views only.
    """
    maps = fill_background(nll, mask)
    vs = view_scores(maps, mask, post)
    if present is not None:
        maps = blank_absent(maps, present)
        vs = blank_absent(vs[:, :, None, None], present)[:, :, 0, 0]
    return maps, vs, aggregate_scores(vs, how, present)


@torch.no_grad()
def score_arrays(maps, masks, post: ScorePostprocess | None = None, how: str = "max", *,
                 present=None, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Background-filled maps ``(N, V, h, w)`` (+ grid masks ``(N, V, h, w)`` or None; + ``present``
    ``(N, V)`` bool or None) -> view scores ``(N, V)`` and sample scores ``(N,)``: :func:`view_scores`
    and :func:`aggregate_scores` in batches (absent views: NaN view scores, left out of the sample score)."""
    n = int(maps.shape[0])
    if n == 0:
        raise DataError("no anomaly maps to score")
    out = []
    for a in range(0, n, batch_size):
        m = torch.from_numpy(np.array(maps[a : a + batch_size], dtype=np.float32))
        fg = None if masks is None else torch.from_numpy(np.array(masks[a : a + batch_size])).float()
        if present is not None:  # absent views' maps may be NaN: score a finite stand-in, then blank
            p = torch.as_tensor(np.asarray(present[a : a + batch_size]), dtype=torch.bool)
            m = torch.where(p[:, :, None, None], m, torch.zeros((), dtype=m.dtype))
        out.append(view_scores(m, fg, post).numpy())
    vs = torch.from_numpy(np.concatenate(out))
    p_all = None if present is None else torch.as_tensor(np.asarray(present), dtype=torch.bool)
    if p_all is not None:
        vs = blank_absent(vs[:, :, None, None], p_all)[:, :, 0, 0]
    return vs.numpy(), aggregate_scores(vs, how, p_all).numpy()


def image_scores_from_maps(maps: Any, foreground_mask: Any | None = None) -> Tensor:
    """Image scores ``(...)`` = max over the foreground pixels of anomaly maps ``(..., H, W)``, for
    plain arrays (validated: finite, at least 2-D, a mask of the maps' shape).

    ``foreground_mask``: optional mask of the same shape as ``maps`` (:func:`foreground` rule);
    views whose foreground is empty fall back to the maximum over all their pixels.
    """
    m = maps if isinstance(maps, Tensor) else torch.as_tensor(np.asarray(maps))
    if m.ndim < 2:
        raise DataError(f"anomaly maps must have shape (..., H, W), got {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise DataError("anomaly maps contain NaN or infinite values")
    fg = None
    if foreground_mask is not None:
        fg = foreground_mask if isinstance(foreground_mask, Tensor) else torch.as_tensor(np.asarray(foreground_mask))
    return max_score(m, fg)


def aggregate_views(image_scores: Any, how: str = "max") -> Tensor:
    """Sample scores ``(N,)`` from image scores ``(N, V)`` for plain arrays (validated: 2-D, finite)."""
    check_aggregation(how)
    s = image_scores if isinstance(image_scores, Tensor) else torch.as_tensor(np.asarray(image_scores))
    if s.ndim != 2 or s.shape[1] == 0:
        raise DataError(f"image scores must have shape (N, V) with V >= 1, got {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise DataError("image scores contain NaN or infinite values")
    return aggregate_scores(s, how)
