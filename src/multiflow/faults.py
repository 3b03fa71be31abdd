"""Camera faults, told apart from product defects: blur, over-/under-exposure, occlusion (dirt on the
lens), frozen frames and swapped cameras.

Every check is a scalar *statistic* of one view's image whose normal range is fitted per camera on
the NORMAL TRAINING images only (:func:`fit_camera_faults`), stored next to the model as
``camera_faults.json`` (:class:`CameraFaultModel`). All statistics are computed on the grey image
``g = 0.299 R + 0.587 G + 0.114 B`` resized to ``size x size`` (bilinear, antialiased):

* ``sharpness``   ``log(var(L * g) + 1e-12)`` with the 3x3 Laplacian ``L``; blur lowers it.
* ``brightness``  ``mean(g)``; over-exposure raises it, under-exposure lowers it.
* ``clip_high`` / ``clip_low``  fraction of pixels with ``g >= 0.98`` / ``g <= 0.02``.
* ``occlusion``   the image is cut into ``grid x grid`` cells; per cell the mean grey level and the
  local sharpness ``log(mean |L * g| + 1e-6)`` are compared with the same camera's per-cell median
  ``m`` and robust scale ``s = max(1.4826 MAD, floor)``, one-sided: ``z = (m - x) / s`` (dirt on a
  lens darkens and smooths a region). The statistic is the ``occlusion_cells``-th largest cell
  score ``max(z_mean, z_sharp)`` (one odd cell is normal variation; dirt covers a region).
* ``swap``        a descriptor ``d`` of the view (the grey image at 16 x 16 and the gradient
  magnitude pooled to 8 x 8, each standardised to zero mean and unit variance, so that product
  colour and global exposure matter little) against each camera's Gaussian
  ``N(mu_c, diag(var_c))``: ``e[v, c] = mean((d_v - mu_c)^2 / var_c)``. The statistic of a view is
  ``log(e_own / min_{c != own} e_c)``: above 0 the image fits another camera better than its own.
  Swapped pairs are tested jointly: ``pair[a, b] = log((e[a, a] + e[b, b]) / (e[a, b] + e[b, a]))``
  (both images at once, so the product's own appearance cancels largely), with its own fitted
  normal range per camera pair.
* ``frozen``      ``mean |f - f_prev|`` between the 32 x 32 grey fingerprint of this view and that of
  the same camera for the previous object (:class:`FrameMemory`); near 0 = the same frame again.

Normal range of a statistic with training values ``x`` (one camera): ``hi = Q99 + margin * (Q99 - Q50)``
and ``lo = Q01 - margin * (Q50 - Q01)`` (``margin`` default 1.0). Flags:

=================  ==============================================================================
``blur``           ``sharpness < lo``
``overexposure``   ``brightness > hi`` or ``clip_high > max(hi, 0.02)``
``underexposure``  ``brightness < lo`` or ``clip_low > max(hi, 0.02)``
``occlusion``      ``occlusion > hi`` (and neither exposure flag: a global change is not local dirt)
``swapped``        ``pair[a, b] > max(0.05, hi_ab)`` for two present views that each fit the
                   other's camera better than their own: both flagged, the pair named, their other
                   flags dropped (those compared an image with the wrong camera); otherwise, for a
                   view without any other flag, ``swap > max(0.05, hi)``: the camera it resembles
                   most is named
``frozen``         ``frozen <= frozen_factor * Q01`` of the distances between consecutive normal
                   training objects of that camera (``frozen_factor`` default 0.25)
=================  ==============================================================================

A flagged view is a camera fault, not a product defect: see :func:`decide` for the decision
``OK`` / ``NG`` / ``CHECK CAMERA``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from multiflow._atomic import write_json
from multiflow.errors import CheckpointError, ConfigError, DataError

#: fewer normal training objects give no meaningful normal range per camera
MIN_OBJECTS = 10
FAULTS_FORMAT = "multiflow-camera-faults/1"
FAULT_KINDS = ("blur", "overexposure", "underexposure", "occlusion", "frozen", "swapped")
SCALAR_STATS = ("sharpness", "brightness", "clip_high", "clip_low", "occlusion", "swap")
DESCRIPTOR_SIDE = 16
EDGE_SIDE = 8
#: clipped fractions below this never flag an exposure fault (a few specular pixels are normal)
CLIP_FLOOR = 0.02
#: swap statistics (log energy ratios) at or below this never flag a swap
SWAP_FLOOR = 0.05
DESCRIPTOR_DIM = DESCRIPTOR_SIDE**2 + EDGE_SIDE**2
FINGERPRINT_SIDE = 32
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


# ------------------------------------------------------------------------------ image statistics
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


@dataclass
class ViewStats:
    """Per-view raw statistics of one object (arrays over the ``V`` views).

    Attributes:
        scalars: ``{name: (V,)}`` for ``sharpness``, ``brightness``, ``clip_high``, ``clip_low``.
        cell_mean, cell_sharp: ``(V, grid, grid)`` local grey mean and local sharpness.
        descriptor: ``(V, 256)`` standardised 16 x 16 grey image (swap check).
        fingerprint: ``(V, 32 * 32)`` grey fingerprint (frozen-frame check).
    """

    scalars: dict[str, np.ndarray]
    cell_mean: np.ndarray
    cell_sharp: np.ndarray
    descriptor: np.ndarray
    fingerprint: np.ndarray


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)


def view_stats(images: torch.Tensor, *, size: int = 256, grid: int = 8) -> ViewStats:
    """The raw statistics (module docstring) of the ``V`` views ``(V, 3, H, W)`` of one object."""
    g = grey(images, size)
    lap = _laplace(g)
    scalars = {
        "sharpness": torch.log(lap.var(dim=(1, 2)) + 1e-12),
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


def normal_range(values: np.ndarray, margin: float) -> tuple[float, float]:
    """``(lo, hi)`` = ``(Q01 - margin (Q50 - Q01), Q99 + margin (Q99 - Q50))`` of ``values``."""
    x = np.asarray(values, dtype=np.float64)
    q01, q50, q99 = np.quantile(x, [0.01, 0.5, 0.99])
    return float(q01 - margin * (q50 - q01)), float(q99 + margin * (q99 - q50))


# ------------------------------------------------------------------------------ fitted model
@dataclass
class CameraFaultModel:
    """Per-camera normal statistics fitted on normal training images (saved as JSON).

    Arrays are indexed by view (camera) first, in ``view_names`` order.
    """

    view_names: list[str]
    size: int
    grid: int
    margin: float
    occlusion_cells: int
    frozen_factor: float
    ranges: dict[str, list[list[float]]]  # stat -> V x [lo, hi]
    cell_center: list  # (V, 2, grid, grid): [mean, sharp] medians
    cell_scale: list  # (V, 2, grid, grid)
    desc_mean: list  # (V, D)
    desc_var: list  # (V, D)
    frozen_threshold: list[float]  # (V,)
    pair_hi: list  # (V, V): upper normal bound of the pair swap statistic
    n_images: int
    notes: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- statistics needing the fit
    def occlusion_score(self, st: ViewStats) -> np.ndarray:
        """``(V,)``: the ``occlusion_cells``-th largest per-cell robust z-score."""
        c = np.asarray(self.cell_center)
        s = np.asarray(self.cell_scale)
        z = np.maximum((c[:, 0] - st.cell_mean) / s[:, 0], (c[:, 1] - st.cell_sharp) / s[:, 1])
        flat = np.sort(z.reshape(z.shape[0], -1), axis=1)
        return flat[:, -min(self.occlusion_cells, flat.shape[1])]

    def camera_energies(self, st: ViewStats) -> np.ndarray:
        """``(V, V)``: ``e[v, c]`` = fit energy of view ``v``'s image to camera ``c`` (lower = better)."""
        mu = np.asarray(self.desc_mean)
        var = np.asarray(self.desc_var)
        d = st.descriptor[:, None, :] - mu[None]
        return np.mean(d * d / var[None], axis=2)

    def swap_score(self, st: ViewStats) -> tuple[np.ndarray, np.ndarray]:
        """``(score (V,), best_other (V,))``: ``log(e_own / min_other e)`` and that other camera."""
        e = self.camera_energies(st)
        v = e.shape[0]
        other = e + np.diag(np.full(v, np.inf))
        best = other.argmin(1)
        own = np.diag(e)
        return np.log(np.maximum(own, 1e-12) / np.maximum(other[np.arange(v), best], 1e-12)), best

    @staticmethod
    def pair_scores(energies: np.ndarray, idx: Sequence[int]) -> np.ndarray:
        """``(V', V')``: ``log((e[a, a] + e[b, b]) / (e[a, b] + e[b, a]))`` for the views ``idx``
        (rows of ``energies``, cameras ``idx``); the diagonal is ``-inf``."""
        idx = list(idx)
        e = energies[:, idx]  # (V', V')
        d = np.diag(e)
        same = d[:, None] + d[None, :]
        cross = e + e.T
        out = np.log(np.maximum(same, 1e-12) / np.maximum(cross, 1e-12))
        np.fill_diagonal(out, -np.inf)
        return out

    def scalars(self, st: ViewStats) -> dict[str, np.ndarray]:
        """Every statistic of :data:`SCALAR_STATS`, ``(V,)`` each."""
        out = dict(st.scalars)
        out["occlusion"] = self.occlusion_score(st)
        out["swap"] = self.swap_score(st)[0]
        return out

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
            raise CheckpointError(f"not camera fault statistics (format {FAULTS_FORMAT} expected)", p)
        data.pop("format")
        names = set(cls.__dataclass_fields__)
        missing = sorted(names - set(data) - {"notes"})
        unknown = sorted(set(data) - names)
        if missing or unknown:
            raise CheckpointError(f"camera fault statistics: missing keys {missing}, unknown keys {unknown}", p)
        model = cls(**data)
        v = len(model.view_names)
        shapes = {
            "cell_center": (v, 2, model.grid, model.grid), "cell_scale": (v, 2, model.grid, model.grid),
            "desc_mean": (v, DESCRIPTOR_DIM), "desc_var": (v, DESCRIPTOR_DIM), "frozen_threshold": (v,),
            "pair_hi": (v, v),
        }
        for key, shape in shapes.items():
            try:
                got = np.asarray(getattr(model, key), dtype=np.float64).shape
            except ValueError:
                got = None
            if got != shape:
                raise CheckpointError(f"camera fault statistics: {key} has shape {got}, expected {shape}", p)
        for stat in SCALAR_STATS:
            if stat not in model.ranges or np.asarray(model.ranges[stat]).shape != (v, 2):
                raise CheckpointError(f"camera fault statistics: ranges[{stat!r}] must be {v} x [lo, hi]", p)
        return model


def fit_camera_faults(
    objects: Iterable[torch.Tensor],
    view_names: Sequence[str],
    *,
    size: int = 256,
    grid: int = 8,
    margin: float = 1.0,
    occlusion_cells: int = 2,
    frozen_factor: float = 0.25,
) -> CameraFaultModel:
    """Fit the normal statistics of every camera from normal training objects.

    Args:
        objects: iterable of ``(V, 3, H, W)`` RGB images in ``[0, 1]``, one object each, in
            acquisition order (consecutive objects give the normal frame-to-frame distances).
        view_names: the ``V`` camera names.
        size, grid, margin, occlusion_cells, frozen_factor: see the module docstring.
    """
    if size < 16 or grid < 1 or size // grid < 3:
        raise ConfigError(f"camera fault check needs size >= 16 and cells of >= 3 pixels (size {size}, grid {grid})")
    if margin < 0 or not 0 < frozen_factor <= 1 or occlusion_cells < 1:
        raise ConfigError("camera faults: margin >= 0, 0 < frozen_factor <= 1 and occlusion_cells >= 1 required")
    v = len(view_names)
    stats: list[ViewStats] = []
    for k, imgs in enumerate(objects):
        if imgs.shape[0] != v:
            raise DataError(f"object {k}: {imgs.shape[0]} views, expected {v} ({list(view_names)})")
        stats.append(view_stats(imgs, size=size, grid=grid))
    n = len(stats)
    if n < MIN_OBJECTS:
        raise DataError(f"need at least {MIN_OBJECTS} normal training objects to fit camera fault statistics "
                        f"(robust 1% / 99% quantiles per camera), got {n}")
    cm = np.stack([s.cell_mean for s in stats])  # (N, V, G, G)
    cs = np.stack([s.cell_sharp for s in stats])
    cells = np.stack([cm, cs], axis=2)  # (N, V, 2, G, G)
    center = np.median(cells, axis=0)
    mad = 1.4826 * np.median(np.abs(cells - center), axis=0)
    # floors: a cell that never changes (flat background) must still tolerate sensor noise
    floor = np.stack([np.full_like(center[:, 0], 0.02), np.full_like(center[:, 1], 0.15)], axis=1)
    scale = np.maximum(mad, floor)
    desc = np.stack([s.descriptor for s in stats])  # (N, V, D)
    mu = desc.mean(0)
    var = desc.var(0)
    var = var + 0.1 * var.mean(axis=1, keepdims=True) + 1e-4  # shrinkage: unseen directions are not free
    fps = np.stack([s.fingerprint for s in stats])  # (N, V, P)
    consecutive = np.abs(np.diff(fps, axis=0)).mean(-1)  # (N - 1, V)
    model = CameraFaultModel(
        view_names=list(view_names), size=int(size), grid=int(grid), margin=float(margin),
        occlusion_cells=int(occlusion_cells), frozen_factor=float(frozen_factor), ranges={},
        cell_center=center.tolist(), cell_scale=scale.tolist(), desc_mean=mu.tolist(), desc_var=var.tolist(),
        frozen_threshold=[float(frozen_factor * np.quantile(consecutive[:, c], 0.01)) for c in range(v)],
        pair_hi=np.zeros((v, v)).tolist(), n_images=int(n * v),
    )
    pairs = np.stack([model.pair_scores(model.camera_energies(s), range(v)) for s in stats])  # (N, V, V)
    model.pair_hi = [[0.0 if a == b else normal_range(pairs[:, a, b], margin)[1] for b in range(v)] for a in range(v)]
    per = [model.scalars(s) for s in stats]
    for stat in SCALAR_STATS:
        vals = np.stack([p[stat] for p in per])  # (N, V)
        model.ranges[stat] = [list(normal_range(vals[:, c], margin)) for c in range(v)]
    model.notes = {"n_objects": n, "min_consecutive_distance": consecutive.min(0).tolist()}
    return model


# ------------------------------------------------------------------------------ detection
@dataclass(frozen=True)
class CameraFault:
    """One flagged view: the camera, the fault kind (:data:`FAULT_KINDS`) and a readable reason."""

    view: str
    fault: str
    reason: str
    other_view: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {"view": self.view, "fault": self.fault, "reason": self.reason}
        if self.other_view is not None:
            d["other_view"] = self.other_view
        return d


class FrameMemory:
    """The previous object's per-view fingerprints, for the frozen-frame check (one per camera)."""

    def __init__(self) -> None:
        self.last: dict[str, np.ndarray] = {}

    def update(self, view_names: Sequence[str], fingerprints: np.ndarray) -> None:
        for k, name in enumerate(view_names):
            self.last[name] = fingerprints[k].copy()


def detect_faults(
    model: CameraFaultModel,
    images: torch.Tensor,
    view_names: Sequence[str] | None = None,
    *,
    memory: FrameMemory | None = None,
) -> list[CameraFault]:
    """Camera faults of one object.

    Args:
        model: fitted statistics.
        images: ``(V', 3, H, W)`` RGB in ``[0, 1]`` for the views ``view_names`` (a subset of the
            model's cameras, in any order; default: all of them in the model's order).
        memory: previous fingerprints for the frozen-frame check; updated with this object's
            (None: no frozen-frame check).

    Returns:
        the flagged faults, in view order; an empty list when every view looks normal.
    """
    names = list(model.view_names if view_names is None else view_names)
    unknown = [n for n in names if n not in model.view_names]
    if unknown:
        raise DataError(f"views {unknown} are not cameras of the fault model {model.view_names}")
    if images.shape[0] != len(names):
        raise DataError(f"{images.shape[0]} images for {len(names)} views {names}")
    idx = [model.view_names.index(n) for n in names]
    st = view_stats(images, size=model.size, grid=model.grid)
    # the statistics that compare with the fitted cameras need the model's camera order
    sub = _subset_model(model, idx)
    sc = sub.scalars(st)
    e = model.camera_energies(st)  # (V', V_all): compare with every camera, not only those present
    rng = {k: np.asarray(v)[idx] for k, v in model.ranges.items()}
    own = e[np.arange(len(idx)), idx]
    others = e.copy()
    others[np.arange(len(idx)), idx] = np.inf
    best = others.argmin(1)
    swap = np.log(np.maximum(own, 1e-12) / np.maximum(others[np.arange(len(idx)), best], 1e-12))
    pair = model.pair_scores(e, idx)
    pair_hi = np.asarray(model.pair_hi)[np.ix_(idx, idx)]
    faults: list[CameraFault] = []
    for k, name in enumerate(names):
        found: list[CameraFault] = []

        def flag(kind: str, reason: str, other: str | None = None) -> None:
            found.append(CameraFault(name, kind, reason, other))

        lo, _ = rng["sharpness"][k]
        if sc["sharpness"][k] < lo:
            flag("blur", f"sharpness {sc['sharpness'][k]:.2f} below the camera's normal minimum {lo:.2f} "
                         "(log variance of the Laplacian)")
        b_lo, b_hi = rng["brightness"][k]
        over = sc["brightness"][k] > b_hi or sc["clip_high"][k] > max(rng["clip_high"][k][1], CLIP_FLOOR)
        under = sc["brightness"][k] < b_lo or sc["clip_low"][k] > max(rng["clip_low"][k][1], CLIP_FLOOR)
        if over:
            flag("overexposure", f"brightness {sc['brightness'][k]:.3f} (normal {b_lo:.3f}..{b_hi:.3f}), "
                                 f"{100 * sc['clip_high'][k]:.1f}% of pixels clipped white")
        if under:
            flag("underexposure", f"brightness {sc['brightness'][k]:.3f} (normal {b_lo:.3f}..{b_hi:.3f}), "
                                  f"{100 * sc['clip_low'][k]:.1f}% of pixels clipped black")
        o_hi = rng["occlusion"][k][1]
        if not (over or under) and sc["occlusion"][k] > o_hi:
            flag("occlusion", f"a region leaves the camera's normal local statistics (score "
                              f"{sc['occlusion'][k]:.1f} > {o_hi:.1f}): dirt on the lens or an obstruction")
        if memory is not None and name in memory.last:
            dist = float(np.abs(st.fingerprint[k] - memory.last[name]).mean())
            thr = model.frozen_threshold[idx[k]]
            if dist <= thr:
                flag("frozen", f"the same frame as the previous object (mean difference {dist:.5f} <= {thr:.5f})")
        faults.extend(found)
    # swapped pairs (each image fits the other's camera better than its own): their other flags are
    # dropped, those compared the image with the wrong camera; a single view that fits another
    # camera better is flagged only when nothing else explains its oddity
    flagged = {f.view for f in faults}
    for k, name in enumerate(names):
        partner = [j for j in range(len(names)) if j != k and pair[k, j] > max(SWAP_FLOOR, pair_hi[k, j])
                   and e[k, idx[j]] < e[k, idx[k]] and e[j, idx[k]] < e[j, idx[j]]]
        s_hi = max(SWAP_FLOOR, rng["swap"][k][1])
        if partner:
            j = max(partner, key=lambda j: pair[k, j] - pair_hi[k, j])
            faults.append(CameraFault(
                name, "swapped", f"cameras {name} and {names[j]} appear swapped: each image fits the other camera "
                f"(pair score {pair[k, j]:.2f} > {max(SWAP_FLOOR, pair_hi[k, j]):.2f})", names[j]))
        elif swap[k] > s_hi and name not in flagged:
            other = model.view_names[int(best[k])]
            faults.append(CameraFault(
                name, "swapped", f"the image fits camera {other}'s normal views better than its own "
                f"(log energy ratio {swap[k]:.2f} > {s_hi:.2f}): cable in the wrong port?", other))
    paired = {f.view for f in faults if f.fault == "swapped" and "appear swapped" in f.reason}
    faults = [f for f in faults if f.fault == "swapped" or f.view not in paired]
    faults.sort(key=lambda f: names.index(f.view))
    if memory is not None:
        memory.update(names, st.fingerprint)
    return faults


def _subset_model(model: CameraFaultModel, idx: list[int]) -> CameraFaultModel:
    """The fitted statistics of the cameras ``idx`` only (for per-view statistics on a subset)."""
    return CameraFaultModel(
        view_names=[model.view_names[i] for i in idx], size=model.size, grid=model.grid, margin=model.margin,
        occlusion_cells=model.occlusion_cells, frozen_factor=model.frozen_factor,
        ranges={k: [v[i] for i in idx] for k, v in model.ranges.items()},
        cell_center=[model.cell_center[i] for i in idx], cell_scale=[model.cell_scale[i] for i in idx],
        desc_mean=[model.desc_mean[i] for i in idx], desc_var=[model.desc_var[i] for i in idx],
        frozen_threshold=[model.frozen_threshold[i] for i in idx],
        pair_hi=[[model.pair_hi[i][j] for j in idx] for i in idx], n_images=model.n_images,
    )


# ------------------------------------------------------------------------------ decision
DECISIONS = ("OK", "NG", "CHECK CAMERA")


def decide(product_score: float | None, threshold: float, faults: Sequence[CameraFault]) -> tuple[str, str | None]:
    """``(decision, product_decision)``.

    ``product_decision`` is ``"NG"`` when ``product_score > threshold``, ``"OK"`` otherwise, and
    None when there is no product score (no view left to score). The decision is
    ``"CHECK CAMERA"`` whenever a camera fault was flagged, else the product decision.
    """
    product = None if product_score is None or not math.isfinite(product_score) else (
        "NG" if product_score > threshold else "OK"
    )
    if faults:
        return "CHECK CAMERA", product
    if product is None:
        raise DataError("no view to score and no camera fault: nothing to decide")
    return product, product
