"""From a trained flow to anomaly maps, image scores, sample scores and a decision threshold, for
whole arrays of cached features (evaluation, calibration, baselines).

The formulas live in :mod:`multiflow.scoring` (one place for the NLL, the background fill, the
image and sample scores); this module batches them over ``(N, V, C, h, w)`` arrays:

* anomaly map = per-pixel NLL ``(0.5 * sum_c z_c^2 - logdet) / C`` in eval mode (no noise),
  shape ``(N, V, h, w)``; background pixels (mask 0) are set to the foreground minimum of that
  view's map, so they can neither tie with nor exceed a foreground pixel (model.md, fault 8);
* image score = max over the map of one view (= max over its foreground);
* sample score = aggregation over views (``max`` official; ``mean``; ``mean_of_max``), see
  :data:`multiflow.scoring.VIEW_AGGREGATIONS`.

With a model's image-score post-processing and per-view calibration
(:class:`multiflow.scoring.ScorePostprocess`, stored in the bundle's scoring section), the view
scores are the calibrated image scores instead (:func:`postprocess_scores`; :func:`fit_scoring`
fits the calibration on held-out normal maps).

The decision threshold is a quantile of the sample scores of *held-out normal training samples*
(never the test set).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from multiflow.device import autocast, to_device
from multiflow.errors import ConfigError, DataError
from multiflow.metrics.aggregate import aggregate_views, image_scores_from_maps
from multiflow.scoring import ImageScoreSpec, ScorePostprocess, ViewCalibration, aggregate_scores, view_scores


@torch.no_grad()
def compute_maps(
    model, features, masks=None, *, batch_size: int = 16, progress: bool = False, desc: str = "scoring",
    device: torch.device | None = None, precision: str = "fp32",
) -> np.ndarray:
    """Anomaly maps ``(N, V, h, w)`` float32 for features ``(N, V, C, h, w)`` (array-like).

    The model runs on ``device`` (default: where its parameters are; it is moved there and left
    there), one batch transfer each way; ``precision="bf16"``: bf16 autocast st-networks, NLL in fp32.
    """
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    model.to(device)
    n = int(features.shape[0])
    out = None
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        x = to_device(torch.from_numpy(np.array(features[start : start + batch_size])).float(), device)
        m = None
        if masks is not None:
            m = to_device(torch.from_numpy(np.array(masks[start : start + batch_size])).float(), device)
        with autocast(device, precision):
            maps = model.anomaly_map(x, m).float().cpu().numpy()
        if out is None:
            out = np.empty((n, *maps.shape[1:]), dtype=np.float32)
        out[start : start + len(maps)] = maps
    if out is None:
        raise ConfigError("no samples to score")
    return out


def image_scores(maps: np.ndarray) -> np.ndarray:
    """``(N, V, h, w)`` -> ``(N, V)``: max over pixels (see :func:`multiflow.metrics.image_scores_from_maps`)."""
    return image_scores_from_maps(maps).numpy()


def sample_scores(maps: np.ndarray, how: str = "max") -> np.ndarray:
    """``(N, V, h, w)`` -> ``(N,)`` sample scores (aggregation of the view scores, :mod:`multiflow.scoring`)."""
    return aggregate_views(image_scores_from_maps(maps), how).numpy()


@torch.no_grad()
def postprocess_scores(maps, masks, post: ScorePostprocess, how: str = "max", *,
                       batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background-filled maps ``(N, V, h, w)`` (+ grid masks ``(N, V, h, w)`` or None) ->
    raw image scores ``(N, V)``, calibrated view scores ``(N, V)`` and sample scores ``(N,)``
    (aggregation ``how`` of the calibrated view scores): the computation of
    :func:`multiflow.scoring.view_scores`, batched, keeping the raw scores too."""
    n = int(maps.shape[0])
    if n == 0:
        raise DataError("no anomaly maps to score")
    raw = []
    for a in range(0, n, batch_size):
        m = torch.from_numpy(np.array(maps[a : a + batch_size], dtype=np.float32))
        if post.is_identity:
            raw.append(view_scores(m).numpy())
            continue
        fg = None if masks is None else torch.from_numpy(np.array(masks[a : a + batch_size])).float()
        raw.append(post.image_scores(m, fg).numpy())
    r = np.concatenate(raw)
    cal = post.calibrate(torch.from_numpy(r))
    return r, cal.numpy().astype(r.dtype), aggregate_scores(cal, how).numpy()


def fit_scoring(maps, masks, spec: ImageScoreSpec, calibration: str, *, image_size: int,
                how: str = "max") -> tuple[ViewCalibration, np.ndarray]:
    """Fit the per-view ``calibration`` (``none``/``zscore``/``tail``) of image scores ``spec`` on
    held-out normal maps ``(N, V, h, w)``; returns it and the calibrated held-out sample scores
    ``(N,)`` (the threshold is calibrated on these, after the calibration)."""
    raw, _, _ = postprocess_scores(maps, masks, ScorePostprocess(spec=spec, image_size=image_size), how)
    cal = ViewCalibration.fit(raw, calibration)
    post = ScorePostprocess(spec=spec, calibration=cal, image_size=image_size)
    return cal, aggregate_scores(post.calibrate(torch.from_numpy(raw)), how).numpy()


def calibrate_threshold(normal_scores: np.ndarray, quantile: float) -> float:
    """Threshold = the ``quantile`` of held-out normal sample scores (linear interpolation).

    With quantile 1.0 every held-out normal sample passes.
    """
    s = np.asarray(normal_scores, dtype=np.float64)
    if s.size == 0:
        raise ConfigError("cannot calibrate a threshold without held-out normal samples")
    return float(np.quantile(s, quantile))
