"""Fitting the camera-fault model: per-camera normal references, standardised check scores and one
object-level threshold with a stated false-alarm rate (saved as ``camera_faults.json``).

Checks (one score per view, or per pair of views), all from :mod:`multiflow.faults.stats`:

====================  =============  =========  ===============================================
check                 statistic      direction  fault
====================  =============  =========  ===============================================
``sharpness``         sharpness      low        blur
``brightness_high``   brightness     high       overexposure
``clip_high``         clip_high      high       overexposure
``brightness_low``    brightness     low        underexposure
``clip_low``          clip_low       high       underexposure
``occlusion``         occlusion      high       occlusion
``swap``              swap           high       swapped (the image fits another camera better)
``swap_pair``         pair           high       swapped (two images fit each other's camera)
====================  =============  =========  ===============================================

Statistics that need a reference of the camera (:class:`Reference`):

* ``occlusion``: per cell the one-sided robust z-scores ``(m - x) / s`` of the grey mean (darker)
  and of the local texture (smoother) against the camera's per-cell median ``m`` and scale
  ``s = max(1.4826 MAD, floor)``, each minus the view's median over cells (a global change of
  brightness or sharpness is exposure or blur, not a local blob); a cell counts with
  ``(z_dark + z_smooth) / 2``: dirt on a lens is an opaque blob, darker AND less textured than the
  camera's normal image there. A product defect (scratch, dent, missing or mis-coloured part) adds
  edges or changes colour, so one of the two scores is low or negative and the cell does not give
  this evidence (measured: benchmarks/camera_faults.py, "product defects taken for camera faults").
  The statistic is the ``occlusion_cells``-th largest cell score (dirt covers a region, one odd
  cell is normal variation).
* ``swap``: ``e[v, c] = mean((d_v - mu_c)^2 / var_c)`` (descriptor ``d_v`` against camera ``c``'s
  Gaussian); ``swap = log(e[v, own] / min_{c != own} e[v, c])``.
* ``pair``: ``log((e[a, a] + e[b, b]) / (e[a, b] + e[b, a]))`` for two present views ``a, b``.

**Error control (one budget per object).** Every check statistic ``x`` is turned into a tail
score per camera (per pair): with ``q = Q90`` of its normal values and ``beta`` their mean excess
over ``q`` (floored per statistic), ``z = (x - q) / beta`` (``(q - x) / beta`` with ``q = Q10`` for a
check on the low side). That is an exponential (peaks-over-threshold) model of the tail,
``P(z > s) ~ 0.1 exp(-s)``, so ``z`` is a surprise on one common scale, whether the statistic is
light-tailed (brightness) or heavy-tailed (clipped fractions, occlusion cells): a plain robust
z-score would let the heaviest-tailed check set the threshold for all. The object statistic is the
maximum over all checks and present views, ``T = max_{check, view} z`` (a min-p rule). ``T`` is calibrated *as a whole*: the normal training objects are split
into ``K = min(10, n)`` folds; each fold's statistics are computed with the references (cells,
descriptors) and tail models fitted on the *other* folds (cross-fitting: a cut-off never judges
the images it was fitted on), giving ``n`` honest values ``T_i``. The threshold is their conformal quantile
``tau = T_(k)`` with ``k = ceil((n + 1)(1 - alpha))``, so a new good object (exchangeable with the
training objects) raises ANY camera fault with probability ``<= alpha`` (``faults.false_alarm``),
whatever the number of checks: there is no per-check budget to split, and correlated checks cost
nothing. This needs ``k <= n``, i.e. ``n >= (1 - alpha) / alpha`` objects (:func:`min_objects`: 99
for 1 %). With fewer, ``tau`` extrapolates an exponential tail fitted to the largest ``T_i``
(peaks over threshold) and :func:`fit_camera_faults` warns that the rate is an estimate, not a
guarantee. An object with missing views has fewer checks, so its ``T`` can only be smaller and
the bound holds for it too. A view is flagged for every check with ``z > tau``; the rules of
:func:`multiflow.faults.detect.detect_faults` only remove flags, so they keep the bound.

The frozen-frame check is a near-equality test outside this budget: a view is frozen when its
32 x 32 fingerprint differs from the same camera's previous (different) object by at most
``frozen_factor x`` the 1 % quantile of consecutive training objects' distances.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multiflow._atomic import write_json
from multiflow.errors import CheckpointError, ConfigError, DataError
from multiflow.faults.stats import DESCRIPTOR_DIM, ViewStats, view_stats

#: fewer normal training objects cannot be cross-fitted at all
MIN_OBJECTS = 10
FAULTS_FORMAT = "multiflow-camera-faults/2"
FAULT_KINDS = ("blur", "overexposure", "underexposure", "occlusion", "frozen", "swapped")
#: per-view checks: (check, statistic, direction +1 high / -1 low, fault kind)
VIEW_CHECKS = (
    ("sharpness", "sharpness", -1, "blur"),
    ("brightness_high", "brightness", 1, "overexposure"),
    ("clip_high", "clip_high", 1, "overexposure"),
    ("brightness_low", "brightness", -1, "underexposure"),
    ("clip_low", "clip_low", 1, "underexposure"),
    ("occlusion", "occlusion", 1, "occlusion"),
    ("swap", "swap", 1, "swapped"),
)
PAIR_CHECK = "swap_pair"
#: statistics scored per view (the pair statistic is scored per pair of cameras)
VIEW_STATISTICS = ("sharpness", "brightness", "clip_high", "clip_low", "occlusion", "swap")
#: lower bound of each statistic's tail scale, in the statistic's units (a statistic that never
#: varies on the training images, such as a clipped fraction of 0, must still allow sensor noise)
SCALE_FLOOR = {"sharpness": 0.05, "brightness": 0.005, "clip_high": 0.002, "clip_low": 0.002,
               "occlusion": 0.1, "swap": 0.01, "pair": 0.01}
#: quantiles where the exponential tail models start (module docstring)
TAIL_LOW, TAIL_HIGH = 0.1, 0.9
CELL_FLOOR = (0.02, 0.15)  # per-cell scale floors of the grey mean and the log texture


def min_objects(false_alarm: float) -> int:
    """Fewest normal objects whose conformal ``(1 - false_alarm)`` quantile exists:
    ``ceil((n + 1)(1 - a)) <= n  <=>  n >= (1 - a) / a``."""
    return int(math.ceil((1.0 - false_alarm) / false_alarm - 1e-9))


def check_false_alarm(false_alarm: float) -> float:
    a = float(false_alarm)
    if not (math.isfinite(a) and 0.0 < a < 1.0):
        raise ConfigError(f"faults.false_alarm must be a finite rate in (0, 1), got {false_alarm!r}")
    return a


# ------------------------------------------------------------------------------ references
@dataclass
class Reference:
    """What a camera looks like normally (fitted on some normal objects).

    Attributes:
        cell_center, cell_scale: ``(V, 2, G, G)`` per-cell median and robust scale of
            ``[grey mean, log texture]``.
        desc_mean, desc_var: ``(V, D)`` Gaussian of each camera's descriptor (variance shrunk
            towards its mean: unseen directions are not free).
    """

    cell_center: np.ndarray
    cell_scale: np.ndarray
    desc_mean: np.ndarray
    desc_var: np.ndarray

    @classmethod
    def fit(cls, stats: Sequence[ViewStats]) -> "Reference":
        cells = np.stack([np.stack([s.cell_mean, s.cell_sharp], axis=1) for s in stats])  # (N, V, 2, G, G)
        center = np.median(cells, axis=0)
        mad = 1.4826 * np.median(np.abs(cells - center), axis=0)
        floor = np.asarray(CELL_FLOOR, dtype=np.float64)[None, :, None, None]
        desc = np.stack([s.descriptor for s in stats])  # (N, V, D)
        var = desc.var(0)
        var = var + 0.1 * var.mean(axis=1, keepdims=True) + 1e-4
        return cls(center, np.maximum(mad, floor), desc.mean(0), var)

    def subset(self, idx: Sequence[int]) -> "Reference":
        i = list(idx)
        return Reference(self.cell_center[i], self.cell_scale[i], self.desc_mean, self.desc_var)


def occlusion_score(ref: Reference, st: ViewStats, occlusion_cells: int) -> np.ndarray:
    """``(V',)``: the ``occlusion_cells``-th largest cell score of :func:`occlusion_cell_scores`
    (``ref`` restricted to the views of ``st``)."""
    z = occlusion_cell_scores(ref, st)
    flat = np.sort(z.reshape(z.shape[0], -1), axis=1)
    return flat[:, -min(occlusion_cells, flat.shape[1])]


def occlusion_cell_scores(ref: Reference, st: ViewStats) -> np.ndarray:
    """``(V', G, G)``: each cell's ``(z_dark + z_smooth) / 2`` (module docstring), the view's median
    cell change taken out (``ref`` restricted to the views of ``st``)."""
    c, s = ref.cell_center, ref.cell_scale
    z_dark, z_smooth = (c[:, 0] - st.cell_mean) / s[:, 0], (c[:, 1] - st.cell_sharp) / s[:, 1]
    # local, not global: the view's median cell change (exposure, blur) is taken out
    z_dark = z_dark - np.median(z_dark.reshape(len(z_dark), -1), axis=1)[:, None, None]
    z_smooth = z_smooth - np.median(z_smooth.reshape(len(z_smooth), -1), axis=1)[:, None, None]
    return 0.5 * (z_dark + z_smooth)


def median_texture_loss(ref: Reference, st: ViewStats) -> np.ndarray:
    """``(V',)``: the median over a view's cells of the standardised texture loss
    ``(center - cell_sharp) / scale`` (``ref`` restricted to the views of ``st``): how much the
    typical cell lost texture (a defocused view loses it everywhere, a smudge in a few cells)."""
    z = (ref.cell_center[:, 1] - st.cell_sharp) / ref.cell_scale[:, 1]
    return np.median(z.reshape(len(z), -1), axis=1)


def camera_energies(ref: Reference, st: ViewStats) -> np.ndarray:
    """``(V', V)``: ``e[v, c]``, fit of view ``v``'s image to camera ``c`` (lower = better)."""
    d = st.descriptor[:, None, :] - ref.desc_mean[None]
    return np.mean(d * d / ref.desc_var[None], axis=2)


def pair_scores(energies: np.ndarray, idx: Sequence[int]) -> np.ndarray:
    """``(V', V')``: ``log((e[a, a] + e[b, b]) / (e[a, b] + e[b, a]))`` for the views at the cameras
    ``idx`` (rows of ``energies``); the diagonal is ``-inf``."""
    e = energies[:, list(idx)]
    d = np.diag(e)
    out = np.log(np.maximum(d[:, None] + d[None, :], 1e-12) / np.maximum(e + e.T, 1e-12))
    np.fill_diagonal(out, -np.inf)
    return out


def raw_statistics(ref: Reference, st: ViewStats, idx: Sequence[int], occlusion_cells: int) -> dict[str, np.ndarray]:
    """The check statistics of one object whose views are the cameras ``idx``: ``(V',)`` for
    :data:`VIEW_STATISTICS`, ``energies (V', V)``, ``swap_best (V',)`` (the camera each view fits best
    after its own) and ``pair (V', V')``."""
    idx = list(idx)
    rows = np.arange(len(idx))
    e = camera_energies(ref, st)
    own = e[rows, idx]
    other = e.copy()
    other[rows, idx] = np.inf
    best = other.argmin(1)
    out = dict(st.scalars)
    out["occlusion"] = occlusion_score(ref.subset(idx), st, occlusion_cells)
    out["swap"] = np.log(np.maximum(own, 1e-12) / np.maximum(other[rows, best], 1e-12))
    out["swap_best"] = best
    out["energies"] = e
    out["pair"] = pair_scores(e, idx)
    return out


def _fit_standard(raws: Sequence[dict[str, np.ndarray]]) -> dict[str, list]:
    """The tail models (``standard``) of every statistic from the objects' statistics ``raws``."""
    standard: dict[str, list] = {}
    for stat in VIEW_STATISTICS:
        vals = np.stack([r[stat] for r in raws])  # (N, V)
        standard[stat] = [a.tolist() for a in tail_scales(vals, SCALE_FLOOR[stat])]
    pairs = np.stack([r["pair"] for r in raws])  # (N, V, V), diagonal -inf
    pairs = np.where(np.isfinite(pairs), pairs, 0.0)
    standard["pair"] = [a.tolist() for a in tail_scales(pairs, SCALE_FLOOR["pair"])]
    return standard


def tail_scales(x: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(q_hi, beta_hi, q_lo, beta_lo)`` over axis 0: ``q_hi = Q90``, ``beta_hi`` the mean excess
    of the values above it (``q_lo = Q10`` and the mean shortfall below it), at least ``floor``."""
    q_lo, q_hi = np.quantile(x, [TAIL_LOW, TAIL_HIGH], axis=0)
    up = np.where(x > q_hi, x - q_hi, np.nan)
    down = np.where(x < q_lo, q_lo - x, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column without exceedances: the floor
        b_hi = np.nan_to_num(np.nanmean(up, axis=0), nan=0.0)
        b_lo = np.nan_to_num(np.nanmean(down, axis=0), nan=0.0)
    return q_hi, np.maximum(b_hi, floor), q_lo, np.maximum(b_lo, floor)


# ------------------------------------------------------------------------------ fitted model
@dataclass
class CameraFaultModel:
    """The fitted camera-fault model (module docstring); arrays indexed by camera, in ``view_names`` order.

    ``standard[stat]`` is ``[q_hi, beta_hi, q_lo, beta_lo]`` per camera (``(4, V)``; ``pair``:
    ``(4, V, V)``);
    ``threshold`` is ``tau``; ``calibration`` records how it was obtained (sample size, target,
    method, the cross-fitted ``T_i``).
    """

    view_names: list[str]
    size: int
    grid: int
    occlusion_cells: int
    frozen_factor: float
    false_alarm: float
    cell_center: list
    cell_scale: list
    desc_mean: list
    desc_var: list
    standard: dict[str, list]
    threshold: float
    frozen_threshold: list[float]
    calibration: dict[str, Any]
    n_images: int
    notes: dict[str, Any] = field(default_factory=dict)
    #: the flow-swap check (:func:`multiflow.faults.flow_swap.with_flow_swap`), None without one
    flow_swap: dict[str, Any] | None = None

    @property
    def reference(self) -> Reference:
        return Reference(np.asarray(self.cell_center, dtype=np.float64), np.asarray(self.cell_scale, dtype=np.float64),
                         np.asarray(self.desc_mean, dtype=np.float64), np.asarray(self.desc_var, dtype=np.float64))

    def check_scores(self, raw: dict[str, np.ndarray], idx: Sequence[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Standardised scores: ``({check: (V',)}, pair (V', V'))`` for the views at cameras ``idx``;
        larger = less normal; the pair diagonal is ``-inf``."""
        return standardise(self.standard, raw, idx)

    # ---------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        return {"format": FAULTS_FORMAT, **{k: getattr(self, k) for k in self.__dataclass_fields__}}

    def save(self, path: str | os.PathLike) -> None:
        write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CameraFaultModel":
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise CheckpointError("camera fault statistics not found", p) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read camera fault statistics: {exc}", p) from None
        if not isinstance(data, dict) or data.get("format") != FAULTS_FORMAT:
            got = data.get("format") if isinstance(data, dict) else None
            raise CheckpointError(f"not camera fault statistics of format {FAULTS_FORMAT} (found {got!r}); "
                                  "refit with `multiflow fit`", p)
        data.pop("format")
        names = set(cls.__dataclass_fields__)
        missing = sorted(names - set(data) - {"notes", "flow_swap"})
        unknown = sorted(set(data) - names)
        if missing or unknown:
            raise CheckpointError(f"camera fault statistics: missing keys {missing}, unknown keys {unknown}", p)
        model = cls(**data)
        v, g = len(model.view_names), model.grid
        shapes = {"cell_center": (v, 2, g, g), "cell_scale": (v, 2, g, g), "desc_mean": (v, DESCRIPTOR_DIM),
                  "desc_var": (v, DESCRIPTOR_DIM), "frozen_threshold": (v,)}
        shapes |= {f"standard[{s!r}]": (4, v) for s in VIEW_STATISTICS} | {"standard['pair']": (4, v, v)}
        for key, shape in shapes.items():
            try:
                value = model.standard[key[10:-2]] if key.startswith("standard[") else getattr(model, key)
                got = np.asarray(value, dtype=np.float64).shape
            except (KeyError, ValueError, TypeError):
                got = None
            if got != shape:
                raise CheckpointError(f"camera fault statistics: {key} has shape {got}, expected {shape}", p)
        if not (isinstance(model.threshold, (int, float)) and math.isfinite(model.threshold)):
            raise CheckpointError(f"camera fault statistics: threshold {model.threshold!r} is not a finite number", p)
        try:
            check_false_alarm(model.false_alarm)
        except ConfigError as exc:
            raise CheckpointError(f"camera fault statistics: {exc}", p) from None
        if isinstance(model.flow_swap, dict) and "method" not in model.flow_swap and "q" in model.flow_swap:
            warnings.warn(f"{p}: the flow swap check was fitted by an earlier multiflow (a tail model of the largest "
                          "standardised gain); it is not applied. Refit the model (`multiflow fit`) to get the "
                          "current check back", stacklevel=2)
            model.flow_swap = None
        if model.flow_swap is not None:
            from multiflow.faults.flow_swap import cutoffs  # it imports this module

            fs, n_pairs = model.flow_swap, v * (v - 1) // 2
            ok = isinstance(fs, dict) and fs.get("method") == "gaussian" and all(
                k in fs for k in ("mean", "std", "cut", "pairs", "false_alarm"))
            try:
                std = np.asarray(fs["std"], dtype=np.float64)
                cut = cutoffs(fs)
                ok = ok and np.asarray(fs["mean"], dtype=np.float64).shape == (n_pairs,) and std.shape == (n_pairs,) \
                    and cut.shape == (n_pairs,) and bool(np.all(std > 0)) and bool(np.all(np.isfinite(std))) \
                    and not bool(np.any(np.isnan(cut))) and bool(np.all(cut >= 0)) \
                    and [tuple(q) for q in fs["pairs"]] == list(itertools.combinations(range(v), 2))
            except (TypeError, ValueError, KeyError):
                ok = False
            if not ok:
                raise CheckpointError(f"camera fault statistics: flow_swap must hold method 'gaussian', mean, std "
                                      f"(> 0) and cut (>= 0 or null) for the {n_pairs} camera pairs in order, and "
                                      "false_alarm", p)
        return model


def standardise(standard: dict[str, Any], raw: dict[str, np.ndarray], idx: Sequence[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """See :meth:`CameraFaultModel.check_scores` (``standard`` as stored in the model)."""
    idx = list(idx)
    z: dict[str, np.ndarray] = {}
    for check, stat, sign, _ in VIEW_CHECKS:
        q_hi, b_hi, q_lo, b_lo = (np.asarray(a, dtype=np.float64)[idx] for a in standard[stat])
        x = np.asarray(raw[stat], dtype=np.float64)
        z[check] = (x - q_hi) / b_hi if sign > 0 else (q_lo - x) / b_lo
    q_hi, b_hi, _, _ = (np.asarray(a, dtype=np.float64)[np.ix_(idx, idx)] for a in standard["pair"])
    pair = (raw["pair"] - q_hi) / b_hi
    np.fill_diagonal(pair, -np.inf)
    return z, pair


def object_statistic(z: dict[str, np.ndarray], pair: np.ndarray) -> float:
    """``T = max`` over every check of every view and every pair (module docstring)."""
    return float(max(max(float(np.max(v)) for v in z.values()), float(np.max(pair)) if pair.size > 1 else -np.inf))


def calibrate(t: np.ndarray, false_alarm: float) -> tuple[float, dict[str, Any]]:
    """``(tau, record)``: conformal ``(1 - a)`` quantile of the cross-fitted ``T_i`` where ``n`` allows
    it, else an exponential tail fitted to the largest ``m = max(3, n // 5)`` values:
    ``P(T > u + s) = m / (n + 1) exp(-s / beta)`` with ``u`` the ``(m + 1)``-th largest value and
    ``beta`` the mean excess over ``u``, solved for ``a`` (and never below ``max T_i``)."""
    t = np.sort(np.asarray(t, dtype=np.float64))
    n = len(t)
    k = int(math.ceil((n + 1) * (1.0 - false_alarm) - 1e-9))
    rec: dict[str, Any] = {"n_objects": n, "false_alarm": false_alarm, "min_objects": min_objects(false_alarm)}
    if k <= n:
        tau = float(t[k - 1])
        rec |= {"method": "conformal", "rank": k}
    else:
        m = min(max(3, n // 5), n - 1)
        u = float(t[n - m - 1])
        beta = max(float(np.mean(t[n - m:] - u)), 1e-3)
        tau = max(u + beta * math.log(m / ((n + 1) * false_alarm)), float(t[-1]))
        rec |= {"method": "exponential tail (too few objects for the conformal quantile)", "tail_objects": m,
                "tail_start": u, "tail_mean_excess": beta}
    rec["statistic"] = t.tolist()
    return tau, rec


def fit_camera_faults(
    objects: Iterable[torch.Tensor],
    view_names: Sequence[str],
    *,
    size: int = 256,
    grid: int = 8,
    false_alarm: float = 0.01,
    occlusion_cells: int = 2,
    frozen_factor: float = 0.25,
    folds: int = 10,
) -> CameraFaultModel:
    """Fit the camera-fault model on normal training objects (module docstring).

    Args:
        objects: iterable of ``(V, 3, H, W)`` RGB images in ``[0, 1]``, one object each, in
            acquisition order (consecutive objects give the normal frame-to-frame distances).
        view_names: the ``V`` camera names.
        false_alarm: target probability that a good object raises any camera fault.
        folds: cross-fitting folds (``min(folds, n)`` are used).

    Warns (``UserWarning``) when there are fewer objects than :func:`min_objects` needs.
    """
    if size < 16 or grid < 1 or size // grid < 3:
        raise ConfigError(f"camera fault check needs size >= 16 and cells of >= 3 pixels (size {size}, grid {grid})")
    if not 0 < frozen_factor <= 1 or occlusion_cells < 1 or folds < 2:
        raise ConfigError("camera faults: 0 < frozen_factor <= 1, occlusion_cells >= 1 and folds >= 2 required")
    false_alarm = check_false_alarm(false_alarm)
    v = len(view_names)
    stats: list[ViewStats] = []
    for k, imgs in enumerate(objects):
        if imgs.shape[0] != v:
            raise DataError(f"object {k}: {imgs.shape[0]} views, expected {v} ({list(view_names)})")
        stats.append(view_stats(imgs, size=size, grid=grid))
    n = len(stats)
    if n < MIN_OBJECTS:
        raise DataError(f"need at least {MIN_OBJECTS} normal training objects to fit camera fault statistics "
                        f"(cross-fitted per camera), got {n}")
    need = min_objects(false_alarm)
    if n < need:
        warnings.warn(f"camera faults: {n} normal training objects; a false-alarm rate of {false_alarm:g} per "
                      f"object needs at least {need} for a guaranteed (conformal) threshold, so it is extrapolated "
                      "from the tail and only an estimate", stacklevel=2)
    # cross-fitting: the statistics of fold k use references fitted on the other folds
    n_folds = min(folds, n)
    fold = np.arange(n) % n_folds
    every = list(range(v))
    raws: list[dict[str, np.ndarray]] = [{}] * n
    for k in range(n_folds):
        ref = Reference.fit([s for s, f in zip(stats, fold) if f != k])
        for i in np.flatnonzero(fold == k):
            raws[i] = raw_statistics(ref, stats[i], every, occlusion_cells)
    # the tail models that score fold k are fitted on the other folds' (cross-fitted) statistics too
    t = np.empty(n)
    for k in range(n_folds):
        held = fold == k
        standard = _fit_standard([r for r, h in zip(raws, held) if not h])
        for i in np.flatnonzero(held):
            t[i] = object_statistic(*standardise(standard, raws[i], every))
    standard = _fit_standard(raws)
    tau, record = calibrate(t, false_alarm)
    record["folds"] = n_folds
    fps = np.stack([s.fingerprint for s in stats])  # (N, V, P)
    consecutive = np.abs(np.diff(fps, axis=0)).mean(-1)  # (N - 1, V)
    ref = Reference.fit(stats)
    return CameraFaultModel(
        view_names=list(view_names), size=int(size), grid=int(grid), occlusion_cells=int(occlusion_cells),
        frozen_factor=float(frozen_factor), false_alarm=false_alarm,
        cell_center=ref.cell_center.tolist(), cell_scale=ref.cell_scale.tolist(),
        desc_mean=ref.desc_mean.tolist(), desc_var=ref.desc_var.tolist(), standard=standard, threshold=tau,
        frozen_threshold=[float(frozen_factor * np.quantile(consecutive[:, c], 0.01)) for c in range(v)],
        calibration=record, n_images=int(n * v),
        notes={"min_consecutive_distance": consecutive.min(0).tolist()},
    )
