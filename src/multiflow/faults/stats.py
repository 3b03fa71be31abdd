"""Per-view image statistics of one object for the camera-fault checks (no fitting, no decision).

All statistics are computed on the grey image ``g = 0.299 R + 0.587 G + 0.114 B`` of each view,
resized to ``size x size`` (bilinear, antialiased):

* ``sharpness``   ``log var(L * g) - log var(g)`` with the 3x3 Laplacian ``L``: the share of the
  image's variance at the highest frequencies. Blur lowers it; a global gain (exposure) leaves it
  unchanged, so an exposure fault is not also reported as blur.
* ``brightness``  ``mean(g)``.
* ``clip_high`` / ``clip_low``  fraction of pixels with ``g >= 0.98`` / ``g <= 0.02``.
* ``cell_mean`` / ``cell_sharp``  per cell of a ``grid x grid`` partition: the mean grey level and
  the local texture ``log(mean |L * g| + 1e-6)`` (the occlusion check compares them with the
  camera's normal cells, :mod:`multiflow.faults.fit`).
* ``descriptor``  the grey image at 16 x 16 and the gradient magnitude pooled to 8 x 8, each
  standardised to zero mean and unit variance (swap check: product colour and global exposure
  matter little).
* ``fingerprint`` the grey image at 32 x 32 (frozen-frame check).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from multiflow.errors import DataError

DESCRIPTOR_SIDE = 16
EDGE_SIDE = 8
DESCRIPTOR_DIM = DESCRIPTOR_SIDE**2 + EDGE_SIDE**2
FINGERPRINT_SIDE = 32
#: the per-view scalar statistics of :class:`ViewStats`
IMAGE_SCALARS = ("sharpness", "brightness", "clip_high", "clip_low")
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def grey(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(V, 3, H, W)`` RGB in ``[0, 1]`` -> ``(V, size, size)`` float64 grey (bilinear, antialiased)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"images must be (V, 3, H, W), got {tuple(images.shape)}")
    x = images.to(torch.float64)
    g = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    if tuple(g.shape[-2:]) != (size, size):
        g = F.interpolate(g[:, None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[:, 0]
    return g.clamp(0.0, 1.0)


def _laplace(g: torch.Tensor) -> torch.Tensor:
    """``(V, S, S) -> (V, S-2, S-2)`` valid 3x3 Laplacian."""
    return F.conv2d(g[:, None], _LAPLACE.to(g)[None, None])[:, 0]


def _cells(x: torch.Tensor, grid: int) -> torch.Tensor:
    """``(V, S, S) -> (V, grid, grid, cell_pixels)`` (the image cropped to a multiple of ``grid``)."""
    v, h, w = x.shape
    ch, cw = h // grid, w // grid
    x = x[:, : ch * grid, : cw * grid].reshape(v, grid, ch, grid, cw)
    return x.permute(0, 1, 3, 2, 4).reshape(v, grid, grid, ch * cw)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)


@dataclass
class ViewStats:
    """Raw statistics of the ``V`` views of one object (module docstring).

    Attributes:
        scalars: ``{name: (V,)}`` for :data:`IMAGE_SCALARS`.
        cell_mean, cell_sharp: ``(V, grid, grid)``.
        descriptor: ``(V, DESCRIPTOR_DIM)``.
        fingerprint: ``(V, FINGERPRINT_SIDE ** 2)`` float32.
    """

    scalars: dict[str, np.ndarray]
    cell_mean: np.ndarray
    cell_sharp: np.ndarray
    descriptor: np.ndarray
    fingerprint: np.ndarray


def view_stats(images: torch.Tensor, *, size: int = 256, grid: int = 8) -> ViewStats:
    """The raw statistics (module docstring) of the views ``(V, 3, H, W)`` of one object."""
    g = grey(images, size)
    lap = _laplace(g)
    scalars = {
        "sharpness": torch.log(lap.var(dim=(1, 2)) + 1e-12) - torch.log(g.var(dim=(1, 2)) + 1e-6),
        "brightness": g.mean(dim=(1, 2)),
        "clip_high": (g >= 0.98).to(torch.float64).mean(dim=(1, 2)),
        "clip_low": (g <= 0.02).to(torch.float64).mean(dim=(1, 2)),
    }
    cell_mean = _cells(g, grid).mean(-1)
    cell_sharp = torch.log(_cells(F.pad(lap.abs(), (1, 1, 1, 1), mode="replicate"), grid).mean(-1) + 1e-6)
    small = F.interpolate(g[:, None], size=(DESCRIPTOR_SIDE,) * 2, mode="bilinear", align_corners=False,
                          antialias=True)[:, 0].reshape(g.shape[0], -1)
    gx, gy = g[:, :-1, 1:] - g[:, :-1, :-1], g[:, 1:, :-1] - g[:, :-1, :-1]
    edges = F.adaptive_avg_pool2d(torch.sqrt(gx * gx + gy * gy)[:, None], EDGE_SIDE)[:, 0].reshape(g.shape[0], -1)
    desc = torch.cat([_standardise(small), _standardise(edges)], dim=1)
    fp = F.interpolate(g[:, None], size=(FINGERPRINT_SIDE,) * 2, mode="bilinear", align_corners=False,
                       antialias=True)[:, 0].reshape(g.shape[0], -1)
    return ViewStats(
        scalars={k: v.numpy() for k, v in scalars.items()},
        cell_mean=cell_mean.numpy(),
        cell_sharp=cell_sharp.numpy(),
        descriptor=desc.numpy(),
        fingerprint=fp.to(torch.float32).numpy(),
    )
