"""From the flow's latents to anomaly maps: per-pixel NLL, the masked training loss, the one
foreground rule, the background fill and the blanking of absent views.

Pure torch, traceable by the ONNX exporter (no data-dependent Python branches).

* per-pixel NLL (paper Eq. 7, up to the constant ``0.5 log 2 pi``), ``(B, V, H, W)``::

      nll = (0.5 * sum_c z_c^2 - logdet) / C

* masked loss = foreground-averaged NLL ``sum(m * nll) / max(sum(m), 1)``;
* foreground (:func:`foreground`): ``mask > 0.5`` for float masks, ``True`` for bool masks; the
  one rule every score uses (map fill, image scores, metrics);
* background fill: background pixels take the minimum foreground value of the same sample and
  view, so they can neither tie with nor exceed a foreground pixel; a view without foreground
  keeps its raw map;
* missing views (issue 14): a ``present (B, V)`` bool mask (``None`` = all present) leaves absent
  views out of the loss (:func:`present_mask`) and blanks their maps to NaN (:func:`blank_absent`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["blank_absent", "fill_background", "foreground", "masked_loss", "masked_nll_sums", "pixel_nll",
           "present_mask"]


def foreground(mask: Tensor) -> Tensor:
    """The foreground of a mask as bool, same shape: ``mask > 0.5`` (bool masks: where True).

    Grid masks are 0/1 floats (bilinearly resized masks may hold fractions: a pixel counts when
    more than half of it is foreground).
    """
    if mask.dtype == torch.bool:
        return mask
    return mask.to(torch.float32 if not mask.is_floating_point() else mask.dtype) > 0.5


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
    if mask is None:
        return nll.sum(), torch.tensor(float(nll.numel()), dtype=nll.dtype, device=nll.device)
    if mask.dtype == torch.bool:
        fg = mask.expand_as(nll)
        zero = torch.zeros((), dtype=nll.dtype, device=nll.device)
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

    ``mask`` ``(B, V, H, W)`` (or broadcastable), foreground by :func:`foreground`. A view without
    foreground pixels keeps its raw map. ``mask=None`` returns ``nll``.
    """
    if mask is None:
        return nll
    fg = foreground(mask.to(nll.dtype)).expand_as(nll)
    inf = torch.full_like(nll, float("inf"))
    fg_min = torch.where(fg, nll, inf).amin(dim=(2, 3), keepdim=True)
    has_fg = fg.to(nll.dtype).amax(dim=(2, 3), keepdim=True) > 0
    fill = torch.where(has_fg, fg_min, nll)
    return torch.where(fg, nll, fill)
