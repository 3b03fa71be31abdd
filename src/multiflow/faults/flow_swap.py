"""Swap evidence from the flow itself: does the object become more likely when two views change places?

The st-networks of the multi-view flow have one set of weights per camera (and its noise and
position statistics are per camera), so the flow's likelihood depends on which camera an image is
assigned to. For the features ``f (V, C, h, w)`` of one object and a pair ``(a, b)`` of views,

    ``gain[a, b] = L(f) - L(f with views a and b exchanged)``,   ``L = sum_v mean_{fg} NLL_v``

(the per-view NLL map averaged over the foreground mask, or over the whole map without one or
where a view has no foreground; the mask travels with its image when views are exchanged). A
positive gain means the swapped assignment is more likely than the given one. Cost: one flow
forward of a batch of ``1 + P`` objects (``P = V (V - 1) / 2`` pairs, 10 for five cameras); the
backbone features are computed once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from multiflow.errors import DataError


def all_pairs(n_views: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(n_views), 2))


@torch.no_grad()
def flow_swap_gains(flow: torch.nn.Module, features: torch.Tensor, mask: torch.Tensor | None = None,
                    pairs: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """``(P,)`` gains (module docstring) of one object for ``pairs`` (default: every pair).

    Args:
        flow: a multi-view flow whose forward returns ``.nll`` ``(B, V, h, w)``.
        features: ``(V, C, h, w)`` or ``(1, V, C, h, w)``.
        mask: ``(V, h, w)`` or ``(1, V, h, w)`` foreground mask (None: whole map).
    """
    f = features if features.ndim == 5 else features[None]
    if f.ndim != 5 or f.shape[0] != 1:
        raise DataError(f"features must be (V, C, h, w) or (1, V, C, h, w), got {tuple(features.shape)}")
    v = f.shape[1]
    pairs = all_pairs(v) if pairs is None else [tuple(p) for p in pairs]
    perms = [list(range(v))]
    for a, b in pairs:
        if not (0 <= a < v and 0 <= b < v and a != b):
            raise DataError(f"pair {(a, b)} is not two different views of 0..{v - 1}")
        p = list(range(v))
        p[a], p[b] = b, a
        perms.append(p)
    batch = torch.cat([f[:, p] for p in perms])  # (1 + P, V, C, h, w)
    m = None
    if mask is not None:  # the views' masks move with their features (and are the fusion's foreground)
        m = (mask if mask.ndim == 4 else mask[None]).to(device=batch.device, dtype=torch.float64)
        m = torch.cat([m[:, p] for p in perms])
    nll = (flow(batch) if m is None else flow(batch, fg=m.to(batch.dtype))).nll.to(torch.float64)  # (1 + P, V, h, w)
    if m is None:
        per_view = nll.mean(dim=(2, 3))
    else:
        area = m.sum(dim=(2, 3))
        # a view without foreground counts with its whole map
        per_view = torch.where(area > 0, (nll * m).sum(dim=(2, 3)) / area.clamp_min(1.0), nll.mean(dim=(2, 3)))
    total = per_view.sum(1)
    return (total[0] - total[1:]).cpu().numpy().astype(np.float64)
