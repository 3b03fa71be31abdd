"""Image scores: how one view's anomaly map becomes one number.

Pure torch functions (traceable by ``torch.onnx.export``). :class:`ScorePostprocess` applies the
model's :class:`multiflow.scoring.spec.ImageScoreSpec` in :func:`multiflow.scoring.sample.score_maps`;
evaluation, :class:`multiflow.engine.predict.Predictor` (and so the service) and the ONNX graph all
score through it, so they compute the same scores. The parameters (and their defaults) are the
spec's; the functions below take them explicitly.

Image score of one view's map ``(h, w)`` over its foreground pixels ``F``
(:func:`multiflow.scoring.maps.foreground`; all pixels when a view has no foreground):

``max``           ``max_{p in F} m_p`` (the paper).
``topk_mean``     mean of the ``k`` highest foreground values, ``k = ceil(frac * |F|)`` for
                  ``0 < k < 1`` or ``k = min(k, |F|)`` for ``k >= 1`` (never below 1).
``quantile``      the ``q``-quantile of the foreground values, linear interpolation between order
                  statistics (``numpy.quantile``'s default).
``smoothed_max``  the map bilinearly upsampled to ``size x size`` pixels (the model's input image
                  size when ``size = 0``), Gaussian smoothing with ``sigma`` pixels (separable,
                  truncated at ``4 sigma`` and at the image border, mirror padding), then the max
                  over the upsampled foreground (mask upsampled bilinearly, ``>= 0.5``), as
                  anomalib's post-processing smooths its maps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from multiflow.errors import ConfigError, DataError
from multiflow.scoring.maps import foreground as foreground_of
from multiflow.scoring.spec import ImageScoreSpec

__all__ = ["ScorePostprocess", "gaussian_kernel", "image_score", "max_score", "quantile", "smooth", "smoothed_max",
           "topk_mean"]

_TRUNCATE = 4.0


def _foreground(maps: Tensor, foreground: Tensor | None) -> Tensor:
    """Bool ``(..., P)`` foreground of flattened maps; views with no foreground use every pixel."""
    flat_shape = (*maps.shape[:-2], maps.shape[-2] * maps.shape[-1])
    if foreground is None:
        return torch.ones(flat_shape, dtype=torch.bool, device=maps.device)
    if tuple(foreground.shape) != tuple(maps.shape):
        raise DataError(f"foreground mask {tuple(foreground.shape)} must have the shape of the maps {tuple(maps.shape)}")
    fg = foreground_of(foreground.to(maps.dtype)).reshape(flat_shape)
    return fg | ~fg.any(dim=-1, keepdim=True)


def _as_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        t = x
    else:
        a = np.asarray(x)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    return t if t.is_floating_point() else t.float()


def topk_mean(maps: Tensor, foreground: Tensor | None, k: float) -> Tensor:
    """Mean of the ``k`` highest foreground values of maps ``(..., h, w)`` -> ``(...)``."""
    fg = _foreground(maps, foreground)
    flat = maps.reshape(fg.shape)
    n = fg.to(maps.dtype).sum(dim=-1, keepdim=True)
    kk = torch.ceil(n * k) if k < 1 else torch.full_like(n, float(k))
    kk = torch.minimum(torch.clamp(kk, min=1.0), n)
    vals = torch.sort(torch.where(fg, flat, torch.full_like(flat, -math.inf)), dim=-1, descending=True)[0]
    rank = torch.arange(flat.shape[-1], device=maps.device, dtype=maps.dtype)
    take = rank < kk
    return torch.where(take, vals, torch.zeros_like(vals)).sum(dim=-1) / kk[..., 0]


def quantile(maps: Tensor, foreground: Tensor | None, q: float) -> Tensor:
    """The ``q``-quantile (linear interpolation) of the foreground values of ``(..., h, w)`` -> ``(...)``."""
    fg = _foreground(maps, foreground)
    flat = maps.reshape(fg.shape)
    n = fg.to(maps.dtype).sum(dim=-1, keepdim=True)
    vals = torch.sort(torch.where(fg, flat, torch.full_like(flat, math.inf)), dim=-1)[0]
    pos = q * (n - 1)
    lo = torch.floor(pos)
    hi = torch.minimum(lo + 1, n - 1)
    frac = pos - lo
    v_lo = torch.gather(vals, -1, lo.long())
    v_hi = torch.gather(vals, -1, hi.long())
    return (v_lo + frac * (v_hi - v_lo))[..., 0]


def gaussian_kernel(sigma: float, radius: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian ``(2 radius + 1,)``."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).to(dtype)


def smooth(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of ``(..., H, W)`` (mirror padding; radius ``ceil(4 sigma)``
    capped at ``min(H, W) - 1``)."""
    h, w = int(maps.shape[-2]), int(maps.shape[-1])
    radius = min(int(math.ceil(_TRUNCATE * sigma)), h - 1, w - 1)
    x = maps.reshape(-1, 1, h, w)
    if radius < 1:
        return maps
    ker = gaussian_kernel(sigma, radius, maps.dtype).to(maps.device)
    x = nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = nn.functional.conv2d(x, ker.reshape(1, 1, 1, -1))
    x = nn.functional.conv2d(x, ker.reshape(1, 1, -1, 1))
    return x.reshape(maps.shape)


def smoothed_max(maps: Tensor, foreground: Tensor | None, sigma: float, size: int) -> Tensor:
    """Max over the foreground of maps ``(..., h, w)`` upsampled to ``size x size`` and smoothed."""
    if size <= 0:
        raise ConfigError("smoothed_max needs the image size (size > 0)")
    lead = maps.shape[:-2]
    x = maps.reshape(-1, 1, maps.shape[-2], maps.shape[-1])
    up = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    up = smooth(up, sigma).reshape(*lead, size, size)
    fg_up = None
    if foreground is not None:
        if tuple(foreground.shape) != tuple(maps.shape):
            raise DataError(
                f"foreground mask {tuple(foreground.shape)} must have the shape of the maps {tuple(maps.shape)}"
            )
        f = foreground_of(foreground.to(maps.dtype)).to(maps.dtype).reshape(x.shape)
        f = nn.functional.interpolate(f, size=(size, size), mode="bilinear", align_corners=False)
        fg_up = (f >= 0.5).reshape(*lead, size, size)
    fg = _foreground(up, fg_up)
    flat = up.reshape(fg.shape)
    return torch.where(fg, flat, torch.full_like(flat, -math.inf)).amax(dim=-1)


def image_score(maps: Any, foreground: Any | None = None, spec: ImageScoreSpec | None = None,
                *, image_size: int = 0) -> Tensor:
    """Image scores ``(...)`` of anomaly maps ``(..., h, w)`` under ``spec`` (default: max).

    ``foreground``: optional mask of the maps' shape (``> 0.5`` = foreground). ``image_size``:
    the size ``smoothed_max`` upsamples to when ``spec.size`` is 0.
    """
    spec = spec or ImageScoreSpec()
    m = _as_tensor(maps)
    if m.ndim < 2:
        raise DataError(f"anomaly maps must have shape (..., h, w), got {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise DataError("anomaly maps contain NaN or infinite values")
    return _dispatch(m, None if foreground is None else _as_tensor(foreground), spec, int(image_size))


def _dispatch(maps: Tensor, foreground: Tensor | None, spec: ImageScoreSpec, image_size: int) -> Tensor:
    if spec.name == "max":
        return max_score(maps, foreground)
    if spec.name == "topk_mean":
        return topk_mean(maps, foreground, spec.k)
    if spec.name == "quantile":
        return quantile(maps, foreground, spec.q)
    return smoothed_max(maps, foreground, spec.sigma, spec.size or image_size)


# ------------------------------------------------------------------------- module for graphs
class ScorePostprocess(nn.Module):
    """Maps ``(B, V, h, w)`` + foreground ``(B, V, h, w)`` -> image scores ``(B, V)``; one module for
    evaluation, :class:`Predictor` and the ONNX graph.

    Args:
        spec: the image score (default: the paper's max).
        image_size: the model's input image size (``smoothed_max`` with ``spec.size = 0``).
    """

    def __init__(self, *, spec: ImageScoreSpec | None = None, image_size: int = 0) -> None:
        super().__init__()
        self.spec = spec or ImageScoreSpec()
        self.image_size = int(image_size)

    @property
    def is_identity(self) -> bool:
        """Whether this is the paper's scoring (max over the map)."""
        return self.spec.name == "max"

    def forward(self, maps: Tensor, foreground: Tensor | None = None) -> Tensor:
        """Image scores ``(B, V)`` of maps ``(B, V, h, w)``."""
        return _dispatch(maps, foreground, self.spec, self.image_size)


def max_score(maps: Tensor, foreground: Tensor | None = None) -> Tensor:
    """Max over the foreground of maps ``(..., h, w)`` -> ``(...)`` (all pixels where a view has none)."""
    f = _foreground(maps, foreground)
    flat = maps.reshape(f.shape)
    return torch.where(f, flat, torch.full_like(flat, -math.inf)).amax(dim=-1)
