"""Post-processing switches: how an anomaly map becomes an image score, and per-view calibration.

Pure torch functions (traceable by ``torch.onnx.export``). A bottom-level module beside
:mod:`multiflow.scoring`, which re-exports its public names and applies :class:`ScorePostprocess`
in :func:`multiflow.scoring.score_maps`; evaluation, :class:`multiflow.engine.predict.Predictor`
(and so the service) and the ONNX graph all score through it, so they compute the same scores.
The settings and the fitted calibration are stored in the model bundle's scoring section
(:class:`multiflow.engine.bundle.ScoringSpec`).

Image score of one view's map ``(h, w)`` over its foreground pixels ``F`` (mask ``> 0.5``; all
pixels when a view has no foreground), a named choice (:class:`ImageScoreSpec`):

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

Per-view calibration (:class:`ViewCalibration`), fitted on the image scores ``(N, V)`` of
held-out normal training samples and applied to view scores ``(..., V)`` before the sample
aggregation, so that a view whose normal scores spread widest does not dominate the max:

``none``    identity.
``zscore``  ``(s - mu_v) / sigma_v``; ``log sigma_v`` is the per-view log standard deviation
            shrunk toward its mean over views (two pseudo-observations), so one or two held-out
            samples give a usable scale; a floor keeps it positive (one sample: ``sigma_v = 1``).
``tail``    ``-log10`` of the empirical tail probability ``P(S_v >= s) = #{x >= s} / (N + 1)``
            at the distinct normal scores, linear interpolation between them, and beyond the
            largest (below the smallest) normal score an exponential tail with scale ``sigma_v``:
            ``-log10 p`` grows by ``(s - x_max) / (sigma_v ln 10)``. Strictly increasing in ``s``,
            finite everywhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from multiflow.errors import ConfigError, DataError

IMAGE_SCORES = ("max", "topk_mean", "quantile", "smoothed_max")
CALIBRATIONS = ("none", "zscore", "tail")
_TRUNCATE = 4.0


# ------------------------------------------------------------------------------- image scores
@dataclass(frozen=True)
class ImageScoreSpec:
    """How a map becomes an image score (see the module docstring).

    Args:
        name: one of :data:`IMAGE_SCORES`.
        k: ``topk_mean``: fraction of foreground pixels (``0 < k < 1``) or a count (``k >= 1``).
        q: ``quantile``: the quantile in ``[0, 1]``.
        sigma: ``smoothed_max``: Gaussian sigma in pixels of the upsampled map.
        size: ``smoothed_max``: side of the upsampled map; 0 = the model's input image size.
    """

    name: str = "max"
    k: float = 0.01
    q: float = 0.99
    sigma: float = 8.0
    size: int = 0

    def __post_init__(self) -> None:
        if self.name not in IMAGE_SCORES:
            raise ConfigError(f"unknown image score {self.name!r}; choose one of {IMAGE_SCORES}")
        if not self.k > 0:
            raise ConfigError(f"image score k must be positive, got {self.k}")
        if not 0.0 <= self.q <= 1.0:
            raise ConfigError(f"image score quantile q must be in [0, 1], got {self.q}")
        if not self.sigma > 0:
            raise ConfigError(f"image score sigma must be positive, got {self.sigma}")
        if self.size < 0:
            raise ConfigError(f"image score size must be >= 0, got {self.size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ImageScoreSpec":
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ConfigError(f"image score spec must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {"name", "k", "q", "sigma", "size"})
        if unknown:
            raise ConfigError(f"image score spec: unknown key(s) {unknown}")
        return cls(**{k: (int(v) if k == "size" else str(v) if k == "name" else float(v)) for k, v in d.items()})


def _foreground(maps: Tensor, foreground: Tensor | None) -> Tensor:
    """Bool ``(..., P)`` foreground of flattened maps; views with no foreground use every pixel."""
    flat_shape = (*maps.shape[:-2], maps.shape[-2] * maps.shape[-1])
    if foreground is None:
        return torch.ones(flat_shape, dtype=torch.bool, device=maps.device)
    if tuple(foreground.shape) != tuple(maps.shape):
        raise DataError(f"foreground mask {tuple(foreground.shape)} must have the shape of the maps {tuple(maps.shape)}")
    fg = (foreground.to(maps.dtype) > 0.5).reshape(flat_shape)
    return fg | ~fg.any(dim=-1, keepdim=True)


def _as_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        t = x
    else:
        a = np.asarray(x)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    return t if t.is_floating_point() else t.float()


def topk_mean(maps: Tensor, foreground: Tensor | None = None, k: float = 0.01) -> Tensor:
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


def quantile(maps: Tensor, foreground: Tensor | None = None, q: float = 0.99) -> Tensor:
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


def smoothed_max(maps: Tensor, foreground: Tensor | None = None, sigma: float = 4.0, size: int = 0) -> Tensor:
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
        f = (foreground.to(maps.dtype) > 0.5).to(maps.dtype).reshape(x.shape)
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
        return _max_score(maps, foreground)
    if spec.name == "topk_mean":
        return topk_mean(maps, foreground, spec.k)
    if spec.name == "quantile":
        return quantile(maps, foreground, spec.q)
    return smoothed_max(maps, foreground, spec.sigma, spec.size or image_size)


# -------------------------------------------------------------------------------- calibration
@dataclass
class ViewCalibration:
    """Per-view calibration of image scores (see the module docstring).

    ``loc``/``scale``: per-view mean and (shrunk) standard deviation; ``knots``/``levels``:
    per view, the distinct normal scores and ``-log10`` of their tail probability (``tail``).
    """

    mode: str = "none"
    loc: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    knots: list[list[float]] = field(default_factory=list)
    levels: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in CALIBRATIONS:
            raise ConfigError(f"unknown calibration {self.mode!r}; choose one of {CALIBRATIONS}")

    @property
    def n_views(self) -> int:
        return len(self.loc)

    @classmethod
    def fit(cls, scores: Any, mode: str = "none") -> "ViewCalibration":
        """Fit on held-out normal image scores ``(N, V)`` (N >= 1)."""
        if mode not in CALIBRATIONS:
            raise ConfigError(f"unknown calibration {mode!r}; choose one of {CALIBRATIONS}")
        s = np.asarray(scores.numpy() if isinstance(scores, Tensor) else scores, dtype=np.float64)
        if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
            raise DataError(f"calibration needs normal image scores of shape (N >= 1, V >= 1), got {s.shape}")
        if not np.isfinite(s).all():
            raise DataError("calibration scores contain NaN or infinite values")
        n, v = s.shape
        loc = s.mean(axis=0)
        floor = 1e-6 * max(1.0, float(np.abs(s).max()))
        if n >= 2:
            log_sd = np.log(np.maximum(s.std(axis=0, ddof=1), floor))
            # shrink toward the geometric mean over views (two pseudo-observations)
            scale = np.exp(((n - 1) * log_sd + 2.0 * log_sd.mean()) / (n + 1))
        else:
            scale = np.full(v, max(1.0, floor))
        knots, levels = [], []
        if mode == "tail":
            for j in range(v):
                u = np.unique(s[:, j])  # ascending, distinct
                count_ge = n - np.searchsorted(np.sort(s[:, j]), u, side="left")
                knots.append(u.tolist())
                levels.append((-np.log10(count_ge / (n + 1.0))).tolist())
        return cls(mode=mode, loc=loc.tolist(), scale=scale.tolist(), knots=knots, levels=levels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ViewCalibration":
        """Inverse of :meth:`to_dict`; ``None`` -> no calibration."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ConfigError(f"calibration must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {"mode", "loc", "scale", "knots", "levels"})
        if unknown:
            raise ConfigError(f"calibration: unknown key(s) {unknown}")
        cal = cls(
            mode=str(d.get("mode", "none")),
            loc=[float(x) for x in d.get("loc", [])],
            scale=[float(x) for x in d.get("scale", [])],
            knots=[[float(x) for x in row] for row in d.get("knots", [])],
            levels=[[float(x) for x in row] for row in d.get("levels", [])],
        )
        if cal.mode != "none" and (len(cal.scale) != len(cal.loc) or not cal.loc):
            raise ConfigError("calibration: loc and scale must list one value per view")
        if cal.mode == "tail" and (
            len(cal.knots) != cal.n_views or len(cal.levels) != cal.n_views
            or any(len(a) != len(b) or not a for a, b in zip(cal.knots, cal.levels))
        ):
            raise ConfigError("calibration: tail mode needs knots and levels of equal, non-zero length per view")
        return cal

    def tensors(self) -> dict[str, Tensor]:
        """Padded float64 tensors for :func:`calibrate` (``knots``/``levels`` ``(V, M)``)."""
        out = {"loc": torch.tensor(self.loc, dtype=torch.float64), "scale": torch.tensor(self.scale, dtype=torch.float64)}
        if self.mode == "tail":
            m = max(len(k) for k in self.knots)
            kn = torch.tensor([k + [k[-1]] * (m - len(k)) for k in self.knots], dtype=torch.float64)
            lv = torch.tensor([lv + [lv[-1]] * (m - len(lv)) for lv in self.levels], dtype=torch.float64)
            out.update(knots=kn, levels=lv)
        return out

    def apply(self, scores: Any, view_axis: int = -1) -> Tensor:
        """Calibrated scores, same shape; the view axis (``view_axis``) has ``V`` entries.

        Works on view scores ``(N, V)`` and, with ``view_axis=1``, on maps ``(N, V, h, w)``.
        """
        s = _as_tensor(scores)
        if self.mode == "none":
            return s
        if s.shape[view_axis] != self.n_views:
            raise DataError(f"scores have {s.shape[view_axis]} views, the calibration {self.n_views}")
        t = {k: v.to(s.dtype) for k, v in self.tensors().items()}
        moved = s.movedim(view_axis, -1)
        return calibrate(moved, self.mode, **t).movedim(-1, view_axis)


def calibrate(s: Tensor, mode: str, loc: Tensor, scale: Tensor, knots: Tensor | None = None,
              levels: Tensor | None = None) -> Tensor:
    """Calibrate scores ``(..., V)`` with per-view parameters (``loc``, ``scale`` ``(V,)``;
    ``knots``, ``levels`` ``(V, M)`` for ``tail``). Only element-wise ops (ONNX-traceable)."""
    if mode == "none":
        return s
    if mode == "zscore":
        return (s - loc) / scale
    if knots is None or levels is None:
        raise ConfigError("tail calibration needs knots and levels")
    x = s[..., None]  # (..., V, 1)
    width = knots[:, 1:] - knots[:, :-1]
    rise = levels[:, 1:] - levels[:, :-1]
    safe = torch.where(width > 0, width, torch.ones_like(width))
    ramps = torch.clamp((x - knots[:, :-1]) / safe, 0.0, 1.0) * torch.where(width > 0, rise, torch.zeros_like(rise))
    slope = 1.0 / (scale * math.log(10.0))
    above = torch.clamp(s - knots[:, -1], min=0.0) * slope
    below = torch.clamp(knots[:, 0] - s, min=0.0) * slope
    return levels[:, 0] + ramps.sum(dim=-1) + above - below


# ------------------------------------------------------------------------- module for graphs
class ScorePostprocess(nn.Module):
    """Maps ``(B, V, h, w)`` + foreground ``(B, V, h, w)`` -> raw view scores ``(B, V)`` and
    calibrated view scores ``(B, V)``; one module for :class:`Predictor` and the ONNX graph.

    Args:
        spec: the image score. calibration: the fitted per-view calibration.
        image_size: the model's input image size (``smoothed_max`` with ``spec.size = 0``).
    """

    def __init__(self, *, spec: ImageScoreSpec | None = None, calibration: ViewCalibration | None = None,
                 image_size: int = 0) -> None:
        super().__init__()
        self.spec = spec or ImageScoreSpec()
        self.calibration = calibration or ViewCalibration()
        self.image_size = int(image_size)
        self.mode = self.calibration.mode
        for name, t in (self.calibration.tensors().items() if self.mode != "none" else []):
            self.register_buffer(name, t.float(), persistent=False)

    @property
    def is_identity(self) -> bool:
        """Whether this is the paper's scoring (max over the map, no calibration)."""
        return self.spec.name == "max" and self.mode == "none"

    def image_scores(self, maps: Tensor, foreground: Tensor | None = None) -> Tensor:
        """Raw (uncalibrated) image scores ``(B, V)`` of maps ``(B, V, h, w)``."""
        return _dispatch(maps, foreground, self.spec, self.image_size)

    def calibrate(self, scores: Tensor) -> Tensor:
        """Calibrated view scores ``(..., V)`` of raw ones ``(..., V)`` (identity without calibration)."""
        if self.mode == "none":
            return scores
        return calibrate(scores, self.mode, self.loc.to(scores.dtype), self.scale.to(scores.dtype),
                         *(getattr(self, n).to(scores.dtype) if hasattr(self, n) else None for n in ("knots", "levels")))

    def forward(self, maps: Tensor, foreground: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raw = self.image_scores(maps, foreground)
        return raw, self.calibrate(raw)


def _max_score(maps: Tensor, foreground: Tensor | None) -> Tensor:
    f = _foreground(maps, foreground)
    flat = maps.reshape(f.shape)
    return torch.where(f, flat, torch.full_like(flat, -math.inf)).amax(dim=-1)
