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

The check (:func:`fit_flow_swap`, applied by :func:`multiflow.faults.detect.check_cameras`) rests
on one exact property: exchanging the two views of a swapped object gives back the correctly wired
object, so **a swap on pair p turns the object's gain into its negative**, ``gain_p -> -gain_p``.
The clean gains of held-out normal objects therefore describe both hypotheses: on the calibration
objects (the flow did not train on them) pair ``p``'s gain is modelled as ``N(m_p, s_p^2)``
(``m_p < 0``: the flow prefers the true wiring), a swapped object's as ``N(-m_p, s_p^2)``; the
separation ``d_p = -2 m_p / s_p`` says how well the flow tells the two cameras apart (opposite side
cameras of a near-symmetric object see nearly the same image, and ``d_p`` is small there).

The flow's share ``a`` of the object-level budget is allocated over the pairs so that the expected
swap detection, averaged over the pairs, is largest: pair ``p`` is flagged when
``gain_p > c_p >= 0`` (the swapped wiring more likely than the given one, by a margin), with

    false alarm  ``a_p = T_{n-2}((c_p - m_p) / (s_p sqrt(1 + 1/n)))`` (upper tail; Student's t
                 predictive of a new object's gain from ``n`` objects),
    detection    ``D_p = Phi((-c_p - m_p) / s_p)``,

``c_p`` maximising ``D_p - lambda a_p`` and ``lambda`` set so that ``sum_p a_p = a`` (a pair the
flow cannot separate, ``d_p <= 0``, gets no budget and is never flagged). A uniform split (``a /
P`` per pair) wastes the budget on the top camera's pairs, which the flow separates by 6-12
standard deviations, while the side pairs need it. The model records ``D_p`` per pair
(``expected_detection``) so a user sees, before any swap happens, which pairs the check can catch.
The object-level budget ``a`` (``faults.false_alarm``) is split: the image checks get
``a (1 - share)``, the flow ``a share`` (``faults.flow_swap_share``), so by the union bound a good
object raises a fault from either with probability ``<= a``.

Measured (``benchmarks/swap_evidence.py``, issue-20 data, N = 200, 100 splits of the clean normal
test objects into 40 calibration objects and the rest, budget 0.005; toy_brick / terminal_block):
the earlier rule (a tail model of the largest standardised gain, equal budget per pair) detected
59.1 / 56.7 % of swaps at 0.32 / 0.25 % false alarms, this one 85.1 / 93.8 % at 0.00 / 0.08 %.
Adding the image pair score to the evidence (a two-dimensional discriminant) raised detection to
87.7 / 98.0 % but its heavier tails broke the budget (1.08 % false alarms on terminal_block), so it
is not used.

Gains are computed on the whole maps (no foreground mask): masks looked up by file or camera slot
would not travel with a swapped image.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from multiflow.errors import DataError
from multiflow.faults.fit import CameraFaultModel, calibrate, check_false_alarm


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


#: the gains of a pair must vary at least this much (NLL units summed over views)
GAIN_FLOOR = 1e-3
#: the cut-offs are searched on this grid of standardised values ``(c - m) / s``
_GRID = np.linspace(0.0, 40.0, 8001)


def _pair_rates(m: np.ndarray, s: np.ndarray, n: int, cut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(false alarm, detection)`` per pair at the cut-offs ``cut`` (module docstring)."""
    from scipy.stats import norm, t as student

    k = math.sqrt(1.0 + 1.0 / n)
    fa = student.sf((cut - m) / (s * k), max(n - 2, 1))
    det = norm.cdf((-cut - m) / s)
    return fa, det


def allocate_cutoffs(m: np.ndarray, s: np.ndarray, n: int, false_alarm: float) -> np.ndarray:
    """``(P,)`` cut-offs on the gains (module docstring): the allocation of ``false_alarm`` over the
    pairs that maximises the mean expected detection; ``inf`` for a pair the flow cannot separate."""
    m, s = np.asarray(m, dtype=np.float64), np.asarray(s, dtype=np.float64)
    ok = m < 0
    if not ok.any():
        return np.full(len(m), np.inf)
    cuts = np.maximum(m[:, None] + s[:, None] * math.sqrt(1.0 + 1.0 / n) * _GRID[None], 0.0)  # (P, G), >= 0
    fa, det = _pair_rates(m[:, None], s[:, None], n, cuts)
    rows = np.arange(len(m))

    def pick(log_lam: float) -> np.ndarray:
        return np.argmax(det - math.exp(log_lam) * fa, axis=1)

    lo, hi = -20.0, 60.0  # log lambda: larger = stricter
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if fa[rows, pick(mid)][ok].sum() > false_alarm:
            lo = mid
        else:
            hi = mid
    cut = cuts[rows, pick(hi)]
    return np.where(ok, cut, np.inf)


def fit_flow_swap(gains: np.ndarray, false_alarm: float) -> dict:
    """The flow-swap check (module docstring) from the gains ``(N, P)`` of ``N`` held-out normal
    objects (every pair of :func:`all_pairs`): ``{"method", "mean", "std", "cut", "pair_false_alarm",
    "expected_detection", "separation", "false_alarm", "calibration"}`` with ``false_alarm`` the
    flow's share of the object-level budget; ``cut`` is ``None`` (JSON null) for a pair the flow
    cannot separate."""
    g = np.asarray(gains, dtype=np.float64)
    false_alarm = check_false_alarm(false_alarm)
    if g.ndim != 2 or g.shape[0] < 3 or not np.isfinite(g).all():
        raise DataError(f"flow swap gains must be finite (N >= 3, P), got shape {g.shape}")
    n = g.shape[0]
    m, s = g.mean(axis=0), np.maximum(g.std(axis=0, ddof=1), GAIN_FLOOR)
    cut = allocate_cutoffs(m, s, n, false_alarm)
    fa, det = _pair_rates(m, s, n, cut)
    fa, det = np.where(np.isfinite(cut), fa, 0.0), np.where(np.isfinite(cut), det, 0.0)
    return {"method": "gaussian", "mean": m.tolist(), "std": s.tolist(),
            "cut": [float(c) if math.isfinite(c) else None for c in cut],
            "pair_false_alarm": fa.tolist(), "expected_detection": det.tolist(),
            "separation": (-2.0 * m / s).tolist(), "false_alarm": false_alarm,
            "calibration": {"n_objects": n, "false_alarm": false_alarm, "dof": max(n - 2, 1),
                            "method": "gaussian gains, Student-t predictive, budget allocated over pairs for the "
                                      "largest expected detection"}}


def cutoffs(fs: dict) -> np.ndarray:
    """``(P,)`` the stored cut-offs (``inf`` where a pair is never flagged)."""
    return np.asarray([np.inf if c is None else float(c) for c in fs["cut"]], dtype=np.float64)


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
