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

The check (:func:`fit_flow_swap`, applied by :func:`multiflow.faults.detect.check_cameras`): per
pair ``p`` the gain is standardised by a tail model fitted on held-out normal objects (``q_p`` the
0.9 quantile, ``b_p`` the mean excess above it, as the image checks of
:mod:`multiflow.faults.fit`), ``z_p = (gain_p - q_p) / b_p``; the object statistic is
``S = max_p z_p``. The objects are the calibration objects the flow did not train on (their gains
are what a new good object gives); the standardisation of each fold is fitted on the other folds
(cross-fitting) and the cut-off ``sigma`` is the conformal ``(1 - a_flow)`` quantile of the
``S_i`` (:func:`multiflow.faults.fit.calibrate`, an exponential tail where the objects are too few).
The object-level budget ``a`` (``faults.false_alarm``) is split: the image checks get
``a (1 - share)``, the flow ``a share`` (``faults.flow_swap_share``), so by the union bound a good
object raises a fault from either with probability ``<= a``. A pair is flagged when
``z_p > sigma`` and ``gain_p > 0`` (the swapped assignment is more likely).

Gains are computed on the whole maps (no foreground mask): masks looked up by file or camera slot
would not travel with a swapped image.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from multiflow.errors import DataError
from multiflow.faults.fit import CameraFaultModel, tail_scales, calibrate, check_false_alarm

#: lower bound of a pair's gain scale (NLL units summed over views)
GAIN_FLOOR = 1e-3


def all_pairs(n_views: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(n_views), 2))


@torch.no_grad()
def flow_swap_batch(flow: torch.nn.Module, features: torch.Tensor, mask: torch.Tensor | None = None,
                    pairs: Sequence[tuple[int, int]] | None = None, *,
                    fg: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """``(gains (B, P), nll (B, V, h, w))`` for a batch of objects: the gains (module docstring) of
    ``pairs`` (default: every pair) and the NLL maps of the given assignment (the same forward).

    Args:
        flow: a multi-view flow whose forward returns ``.nll`` ``(B, V, h, w)``.
        features: ``(B, V, C, h, w)``.
        mask: ``(B, V, h, w)`` foreground mask (None: whole maps).
        fg: ``(B, V, h, w)`` foreground handed to the flow (the fusion operators that pool over a
            view's foreground), moving with its view in every assignment; it does not change the
            averaging (that is ``mask``). None: ``mask``'s, else every position.
    """
    if features.ndim != 5:
        raise DataError(f"features must be (B, V, C, h, w), got {tuple(features.shape)}")
    b, v = features.shape[:2]
    pairs = all_pairs(v) if pairs is None else [tuple(p) for p in pairs]
    perms = [list(range(v))]
    for a, c in pairs:
        if not (0 <= a < v and 0 <= c < v and a != c):
            raise DataError(f"pair {(a, c)} is not two different views of 0..{v - 1}")
        p = list(range(v))
        p[a], p[c] = c, a
        perms.append(p)
    k = len(perms)
    batch = torch.stack([features[:, p] for p in perms], dim=1).flatten(0, 1)  # (B * (1 + P), V, C, h, w)
    m = None
    if mask is not None:  # the views' masks move with their features (and are the fusion's foreground)
        m = torch.stack([mask[:, p] for p in perms], dim=1).to(device=batch.device, dtype=torch.float64)
    if fg is None and m is not None:
        fg = m.flatten(0, 1).to(batch.dtype)
    elif fg is not None:
        fg = torch.stack([fg[:, p] for p in perms], dim=1).flatten(0, 1).to(device=batch.device, dtype=batch.dtype)
    nll = (flow(batch) if fg is None else flow(batch, fg=fg)).nll.to(torch.float64).unflatten(0, (b, k))
    if m is None:  # nll: (B, 1 + P, V, h, w)
        per_view = nll.mean(dim=(3, 4))
    else:
        area = m.sum(dim=(3, 4))
        # a view without foreground counts with its whole map
        per_view = torch.where(area > 0, (nll * m).sum(dim=(3, 4)) / area.clamp_min(1.0), nll.mean(dim=(3, 4)))
    total = per_view.sum(2)  # (B, 1 + P)
    gains = (total[:, :1] - total[:, 1:]).cpu().numpy().astype(np.float64)
    return gains, nll[:, 0].to(torch.float32)


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
    m = None if mask is None else (mask if mask.ndim == 4 else mask[None])
    return flow_swap_batch(flow, f, m, pairs)[0][0]


def _standard(gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, b, _, _ = tail_scales(gains, GAIN_FLOOR)
    return q, b


def fit_flow_swap(gains: np.ndarray, false_alarm: float, *, folds: int = 10) -> dict:
    """The flow-swap check (module docstring) from the gains ``(N, P)`` of ``N`` held-out normal
    objects (every pair of :func:`all_pairs`): ``{"q", "b", "threshold", "false_alarm", "calibration"}``
    with ``false_alarm`` the flow's share of the object-level budget."""
    g = np.asarray(gains, dtype=np.float64)
    false_alarm = check_false_alarm(false_alarm)
    if g.ndim != 2 or g.shape[0] < 3 or not np.isfinite(g).all():
        raise DataError(f"flow swap gains must be finite (N >= 3, P), got shape {g.shape}")
    n = g.shape[0]
    n_folds = min(folds, n)
    fold = np.arange(n) % n_folds
    s = np.empty(n)
    for k in range(n_folds):
        held = fold == k
        q, b = _standard(g[~held])
        s[held] = ((g[held] - q) / b).max(axis=1)
    sigma, rec = calibrate(s, false_alarm)
    rec["folds"] = n_folds
    q, b = _standard(g)
    return {"q": q.tolist(), "b": b.tolist(), "threshold": float(sigma), "false_alarm": false_alarm,
            "calibration": rec}


def with_flow_swap(model: CameraFaultModel, gains: np.ndarray, share: float, *, source: str = "") -> CameraFaultModel:
    """A copy of ``model`` with the flow-swap check fitted on ``gains (N, P)`` (held-out normal
    objects, every pair of the model's cameras) and the object-level budget split (module
    docstring): the image checks' threshold is recomputed for ``false_alarm (1 - share)`` from their
    cross-fitted statistics, the flow's cut-off fitted for ``false_alarm share``."""
    import dataclasses

    if not 0.0 < float(share) < 1.0:
        raise DataError(f"faults.flow_swap_share must lie in (0, 1), got {share!r}")
    v = len(model.view_names)
    g = np.asarray(gains, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != len(all_pairs(v)):
        raise DataError(f"flow swap gains {g.shape}: (N, {len(all_pairs(v))}) expected for {v} cameras")
    stat = model.calibration.get("statistic")
    if not stat:
        raise DataError("the camera fault model stores no cross-fitted statistics to split its budget; refit it")
    tau, rec = calibrate(np.asarray(stat, dtype=np.float64), model.false_alarm * (1.0 - share))
    rec["folds"] = model.calibration.get("folds")
    rec["object_false_alarm"] = model.false_alarm
    swap = fit_flow_swap(g, model.false_alarm * share)
    swap |= {"share": float(share), "pairs": [list(p) for p in all_pairs(v)], "n_objects": int(g.shape[0]),
             "source": source}
    return dataclasses.replace(model, threshold=tau, calibration=rec, flow_swap=swap)


def swap_gains_in_batches(flow: torch.nn.Module, features, *, batch: int = 2, device: torch.device | str = "cpu",
                          precision: str = "fp32", progress: bool = False,
                          desc: str = "flow swap gains", fg=None) -> tuple[np.ndarray, np.ndarray]:
    """``(gains (N, P), nll (N, V, h, w) float32)`` of ``N`` objects' features ``(N, V, C, h, w)``
    (array or tensor), ``batch`` objects per forward (each expands to ``1 + P`` flow samples);
    ``fg`` ``(N, V, h, w)``: their foreground masks for the flow (:func:`flow_swap_batch`)."""
    from tqdm.auto import tqdm

    from multiflow.device import autocast

    device = torch.device(device)
    n = int(features.shape[0])
    gains, maps = [], []
    flow.eval()
    for s in tqdm(range(0, n, batch), desc=desc, disable=not progress, leave=False):
        x = torch.as_tensor(np.asarray(features[s:s + batch]), dtype=torch.float32).to(device)
        with autocast(device, precision):
            f = None if fg is None else torch.as_tensor(np.asarray(fg[s:s + batch]), dtype=torch.float32).to(device)
            g, nll = flow_swap_batch(flow, x, fg=f)
        gains.append(g)
        maps.append(nll.cpu().numpy())
    if not gains:
        raise DataError("no objects to compute flow swap gains on")
    return np.concatenate(gains), np.concatenate(maps)
