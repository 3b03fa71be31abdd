"""The scoring math, written once: per-pixel NLL, masked loss, map post-processing, image and
sample scores, decision.

Every consumer calls these torch functions: the flow (:meth:`multiflow.flow.MultiFlow.forward`
and ``anomaly_map``), training and its data-parallel loss (:mod:`multiflow.engine.train`,
:mod:`multiflow.engine.distributed`), evaluation and prediction (:mod:`multiflow.engine.scoring`,
:mod:`multiflow.engine.predict`), the PatchCore baseline and the exported ONNX graph
(:mod:`multiflow.deploy.onnx_export`). Everything here is traceable by the ONNX exporter (no
data-dependent Python branches). A bottom-level module: it imports torch and nothing of multiflow
but the error types and its companion :mod:`multiflow.scoring_post` (the image-score reducers and
the per-view calibration, re-exported here).

* per-pixel NLL (paper Eq. 7, up to the constant ``0.5 log 2 pi``), ``(B, V, H, W)``::

      nll = (0.5 * sum_c z_c^2 - logdet) / C

* masked loss = foreground-averaged NLL ``sum(m * nll) / max(sum(m), 1)``;
* background fill: with a foreground mask, background pixels take the minimum foreground value
  of the same sample and view, so they can neither tie with nor exceed a foreground pixel; a view
  without foreground keeps its raw map;
* image (view) score = max of the view's map (the paper), or a model's post-processing
  (:class:`ScorePostprocess`: ``topk_mean``, ``quantile``, ``smoothed_max`` over the foreground,
  then a per-view calibration fitted on held-out normal samples); sample score = aggregation over views
  (:data:`VIEW_AGGREGATIONS`: ``max`` official; ``mean``; ``mean_of_max``, numerically the mean of
  the view maxima); decision = ``sample score > threshold``.
* missing views (issue 14): a ``present (B, V)`` bool mask (``None`` = all present) leaves absent
  views out of the loss (:func:`present_mask`), blanks their maps to NaN (:func:`blank_absent`) and
  aggregates the sample score over the present views only (:func:`aggregate_scores`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from multiflow.errors import ConfigError
from multiflow.scoring_post import (
    CALIBRATIONS,
    IMAGE_SCORES,
    ImageScoreSpec,
    ScorePostprocess,
    ViewCalibration,
    image_score,
)

__all__ = [
    "CALIBRATIONS", "IMAGE_SCORES", "VIEW_AGGREGATIONS", "ImageScoreSpec", "ScorePostprocess", "ViewCalibration",
    "aggregate_scores", "check_aggregation", "decide", "fill_background", "image_score", "masked_loss",
    "masked_nll_sums", "pixel_nll", "score_maps", "view_scores",
]

#: The registry of view aggregations (config validation, commands and export read it from here).
VIEW_AGGREGATIONS = ("max", "mean", "mean_of_max")


def check_aggregation(how: str) -> str:
    """Return ``how`` if it is one of :data:`VIEW_AGGREGATIONS`, else raise :class:`ConfigError`."""
    if how not in VIEW_AGGREGATIONS:
        raise ConfigError(f"unknown view aggregation {how!r}; choose one of {VIEW_AGGREGATIONS}")
    return how


def pixel_nll(z: Tensor, logdet: Tensor) -> Tensor:
    """Per-pixel NLL (Eq. 7): ``z (B, V, C, H, W)``, ``logdet (B, V, H, W)`` -> ``(B, V, H, W)``."""
    return (0.5 * (z * z).sum(dim=2) - logdet) / z.shape[2]


def masked_nll_sums(nll: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(sum(m * nll), sum(m))`` over foreground pixels: the numerator and denominator of the loss.

    Args:
        nll: ``(B, V, H, W)`` per-pixel NLL.
        mask: ``(B, V, H, W)`` foreground mask (bool, or float weights >= 0; broadcastable), or
            ``None`` (every pixel counts with weight 1).

    Background values (``m == 0``) are never multiplied: they are selected away with
    ``torch.where``, so NaN/inf there changes neither sum nor any gradient (their gradient is
    exactly 0).
    """
    zero = torch.zeros((), dtype=nll.dtype, device=nll.device)
    if mask is None:
        return nll.sum(), torch.tensor(float(nll.numel()), dtype=nll.dtype, device=nll.device)
    if mask.dtype == torch.bool:
        fg = mask.expand_as(nll)
        return torch.where(fg, nll, zero).sum(), fg.sum().to(nll.dtype)
    m = mask.to(nll.dtype)
    fg = m > 0
    num = torch.where(fg, m * torch.where(fg, nll, torch.zeros_like(nll)), torch.zeros_like(nll)).sum()
    den = torch.where(fg, m, torch.zeros_like(m)).sum()
    return num, den


def masked_loss(nll: Tensor, mask: Tensor | None) -> Tensor:
    """Foreground-averaged NLL ``sum(m * nll) / max(sum(m), 1)`` (see :func:`masked_nll_sums`).

    ``mask=None`` is the plain mean over all pixels. A batch without foreground gives exactly 0.
    The *features* must still be finite everywhere: the st-network convs mix neighbouring pixels,
    so a NaN feature in the background would reach foreground pixels through the flow itself.
    """
    if mask is None:
        return nll.mean()
    num, den = masked_nll_sums(nll, mask)
    return num / den.clamp_min(1.0)


def present_mask(mask: Tensor | None, present: Tensor | None, like: Tensor) -> Tensor | None:
    """Foreground mask ``(B, V, H, W)`` with the absent views (``present (B, V)`` False) zeroed.

    ``mask`` None means every pixel counts; ``present`` None means every view is present (the
    mask is returned unchanged). ``like`` is the ``(B, V, H, W)`` NLL map (dtype and device).
    """
    if present is None:
        return mask
    p = present.to(device=like.device, dtype=torch.bool)[:, :, None, None]
    base = torch.ones_like(like) if mask is None else mask.to(device=like.device, dtype=like.dtype)
    return torch.where(p, base, torch.zeros((), dtype=like.dtype, device=like.device)).expand_as(like)


def blank_absent(maps: Tensor, present: Tensor | None) -> Tensor:
    """Maps ``(B, V, H, W)`` with the views absent in ``present (B, V)`` set to NaN (``None``: unchanged)."""
    if present is None:
        return maps
    p = present.to(device=maps.device, dtype=torch.bool)[:, :, None, None]
    return torch.where(p, maps, torch.full((), float("nan"), dtype=maps.dtype, device=maps.device))


def fill_background(nll: Tensor, mask: Tensor | None) -> Tensor:
    """Anomaly maps ``(B, V, H, W)`` with background pixels set to the view's foreground minimum.

    ``mask`` ``(B, V, H, W)`` (or broadcastable): foreground where ``mask > 0.5`` (bool masks:
    where True). A view without foreground pixels keeps its raw map. ``mask=None`` returns ``nll``.
    """
    if mask is None:
        return nll
    fg = (mask.to(nll.dtype) > 0.5).expand_as(nll)
    inf = torch.full_like(nll, float("inf"))
    fg_min = torch.where(fg, nll, inf).amin(dim=(2, 3), keepdim=True)
    has_fg = fg.to(nll.dtype).amax(dim=(2, 3), keepdim=True) > 0
    fill = torch.where(has_fg, fg_min, nll)
    return torch.where(fg, nll, fill)


def view_scores(maps: Tensor, mask: Tensor | None = None, post: ScorePostprocess | None = None) -> Tensor:
    """Image scores: ``(B, V, H, W)`` -> ``(B, V)`` (any leading shape without ``post``).

    Without ``post`` (or with the paper's, :attr:`ScorePostprocess.is_identity`): the max of each
    (background-filled) map. With ``post``: its image score over the foreground (``mask > 0.5``),
    then its per-view calibration.
    """
    if post is None or post.is_identity:
        return maps.flatten(-2).amax(dim=-1)
    fg = None if mask is None else (mask.to(maps.dtype) > 0.5).to(maps.dtype).expand_as(maps)
    return post(maps, fg)[1]


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

    ``post``: the model's image score and calibration (:func:`view_scores`; None = the paper's max).
    With ``present`` (``(B, V)`` bool) the present views' scores are post-processed and calibrated
    per view as usual, the maps and view scores of absent views are NaN, and the sample score
    aggregates over the present views only.
    """
    maps = fill_background(nll, mask)
    vs = view_scores(maps, mask, post)
    if present is not None:
        maps = blank_absent(maps, present)
        vs = blank_absent(vs[:, :, None, None], present)[:, :, 0, 0]
    return maps, vs, aggregate_scores(vs, how, present)
