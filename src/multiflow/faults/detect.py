"""Camera faults of one object: which checks of :mod:`multiflow.faults.fit` exceed the object-level
threshold ``tau``, turned into faults per camera, and the frozen-frame check with its frame memory.

Rules (each only removes flags, so the object-level false-alarm bound of the fit holds):

* ``occlusion`` is not reported on a view with an exposure fault (a global change is not local dirt);
  where both ``blur`` and ``occlusion`` fire (a blob lowers the view's sharpness, blur lowers the
  texture of the cells with the strongest edges most), the check with the larger score names the fault.
* blur is global: a ``sharpness`` flag whose typical cell kept its texture (the median cell's
  standardised texture loss below :data:`LOCAL_BLUR` times the sharpness score) is a local loss of
  sharpness, named ``occlusion`` (a smudge on the lens), not ``blur``. This renames a flag and
  adds none, so the false-alarm bound holds. Defocus lowers every cell's texture in proportion to
  the view's, so the ratio does not depend on how strong the blur is: on the issue-20 data (N = 200,
  40 synthetic blurs and 40 smudges, ``benchmarks/camera_faults.py``) the 40 blurs gave 0.19-0.74,
  the 12 smudges with a sharpness score above 5 gave -0.01-0.07, and one smudge whose sharpness
  score exceeded its occlusion score was called blur before this rule.
* ``swapped`` (pair): two views whose pair score exceeds ``tau`` AND whose images each fit the
  other's camera better than their own; both are flagged, the partner named, and their other flags
  dropped (those compared an image with the wrong camera).
* ``swapped`` (single view): the image fits another camera better than its own beyond ``tau`` and
  nothing else explains its oddity (no other flag on that view).
* ``frozen`` (outside the budget, see :mod:`multiflow.faults.fit`): the view's fingerprint equals,
  up to the fitted tolerance, that of the same camera for the previous *different* object.
  :class:`FrameMemory` is keyed by object id: a retried request (the same id again) is compared with
  the object before it, never with itself, so a retry is not a frozen camera.

With the flow's evidence (:func:`check_cameras`; ``predict`` and ``serve`` pass it):

* a product defect is not an occlusion (only removes flags). Dirt on the lens is a large soft blob at
  a fixed place in the image, whatever the object, so it reaches over the object's border onto the
  background (the synthetic one, :mod:`multiflow.synth.camera_faults`: radius 14 % of the image side
  anywhere in its central 70 %, on objects that fill about a fifth of the image); a product defect
  lies on the object's surface, and the flow's anomaly map peaks on it. The blob region ``R`` is the
  cells whose occlusion cell score is at least half the view's occlusion statistic; its ring is the
  cells next to ``R`` (outside the image counts as background). An ``occlusion`` flag is dismissed,
  and the view scored as the product, when (1) the foreground share of ``R`` (the mask averaged per
  cell, over the cells of ``R``) and (2) that of its ring are both at least :data:`ON_OBJECT` (the
  region and its surroundings are object: it does not reach the object's border), and (3) the cell
  where the flow's NLL map peaks over the foreground lies in ``R`` (the flow sees the anomaly where
  the image statistics changed). Without a foreground mask or an anomaly map there is no such
  evidence and the flag stays. The dismissed flag and its evidence are kept
  (:attr:`CameraCheck.dismissed`). Measured on the issue-20 data (toy_brick, 200 training objects,
  paper model, 40 synthetic lens smudges, 34 flagged by the image checks): 33 had a region or ring
  share <= 0.64; one lay wholly on the object (shares 1.00 and 0.86), and ``ON_OBJECT = 0.9`` keeps
  it an occlusion. A smudge wholly on the object cannot be told from a stain in one frame.
* ``swapped`` from the flow (its own share of the budget, :mod:`multiflow.faults.flow_swap`): with
  every camera present, a pair whose likelihood gain exceeds its fitted cut-off is flagged on both
  cameras (disjoint pairs, strongest first), unless the image checks already name another fault
  (blur, exposure, occlusion, frozen) on any camera: a degraded image is unlikely under its own
  camera, so it makes exchanging it look likelier, and through the cross-view messages it moves
  the gains of the other pairs too; the image fault is the better explanation (measured on the
  issue-20 data at N = 200: without any such rule the flow called 10 of 40 blurred and 18 of 40
  over-exposed views swapped; with the rule on the faulty camera only, another camera was
  flagged in 3 of 40 blurred, 2 of 40 over- and 2 of 40 under-exposed objects once the flow's
  cut-offs were the Gaussian ones, none before). The image checks' swap flags on the cameras
  the flow names are replaced by the flow's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from multiflow.errors import DataError
from multiflow.faults.fit import (PAIR_CHECK, VIEW_CHECKS, CameraFaultModel, median_texture_loss, object_statistic,
                                  occlusion_cell_scores, raw_statistics)
from multiflow.faults.stats import view_stats

#: least foreground share of the occlusion region for a product defect (module docstring)
ON_OBJECT = 0.9
#: a sharpness flag is local (occlusion, not blur) below this median-cell / view score ratio
LOCAL_BLUR = 0.1
FLOW_SWAP_CHECK = "flow_swap"

_STAT_OF = {check: stat for check, stat, _, _ in VIEW_CHECKS}
_KIND_OF = {check: kind for check, _, _, kind in VIEW_CHECKS}


@dataclass(frozen=True)
class CameraFault:
    """One flagged view: the camera, the fault kind, the check that fired with its standardised
    score (``None`` for ``frozen``), a readable reason and, for a swap, the other camera."""

    view: str
    fault: str
    reason: str
    other_view: str | None = None
    check: str = ""
    score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"view": self.view, "fault": self.fault, "check": self.check, "reason": self.reason}
        if self.score is not None:
            d["score"] = round(float(self.score), 3)
        if self.other_view is not None:
            d["other_view"] = self.other_view
        return d


class FrameMemory:
    """Per-camera fingerprints of the last object and of the object before it, with the last id.

    :meth:`reference` gives what a new object is compared with: the last object's fingerprints, or,
    when the new object carries the last object's id (a retried request), the object's before it.
    :meth:`update` records a new object; a retry leaves the memory as it is.
    """

    def __init__(self) -> None:
        self.last: dict[str, np.ndarray] = {}
        self.before: dict[str, np.ndarray] = {}
        self.last_id: str | None = None

    def is_retry(self, object_id: str | None) -> bool:
        return object_id is not None and object_id != "" and object_id == self.last_id

    def reference(self, object_id: str | None) -> dict[str, np.ndarray]:
        return self.before if self.is_retry(object_id) else self.last

    def update(self, view_names: Sequence[str], fingerprints: np.ndarray, object_id: str | None = None) -> None:
        if self.is_retry(object_id):
            # a retry may bring views the first request lacked: remember those, keep the rest
            for k, name in enumerate(view_names):
                self.last.setdefault(name, fingerprints[k].copy())
            return
        self.before = self.last
        self.last = dict(self.before)  # cameras absent from this object keep their last frame
        for k, name in enumerate(view_names):
            self.last[name] = fingerprints[k].copy()
        self.last_id = object_id or None


@dataclass
class CameraCheck:
    """What :func:`check_cameras` found: the ``faults`` (in view order) and the flags it
    ``dismissed`` as product defects, each ``{"view", "fault", "check", "reason"}``."""

    faults: list[CameraFault]
    dismissed: list[dict[str, Any]]


def detect_faults(
    model: CameraFaultModel,
    images: torch.Tensor,
    view_names: Sequence[str] | None = None,
    *,
    memory: FrameMemory | None = None,
    object_id: str | None = None,
) -> list[CameraFault]:
    """Camera faults of one object from the image statistics alone (:func:`check_cameras` without
    the flow's evidence).

    Args:
        model: the fitted model.
        images: ``(V', 3, H, W)`` RGB in ``[0, 1]`` for the views ``view_names`` (a subset of the
            model's cameras, in any order; default: all of them in the model's order).
        memory: frame memory for the frozen-frame check, updated with this object (None: no check).
        object_id: the object's id (a repeated id is a retry, module docstring); None or ``""``: every
            call is a new object.

    Returns:
        the flagged faults, in view order; an empty list when every view looks normal.
    """
    return check_cameras(model, images, view_names, memory=memory, object_id=object_id).faults


def check_cameras(
    model: CameraFaultModel,
    images: torch.Tensor,
    view_names: Sequence[str] | None = None,
    *,
    memory: FrameMemory | None = None,
    object_id: str | None = None,
    anomaly_maps: torch.Tensor | np.ndarray | None = None,
    masks: torch.Tensor | np.ndarray | None = None,
    swap_gains: np.ndarray | None = None,
) -> CameraCheck:
    """Camera faults of one object with the flow's evidence (module docstring).

    Args:
        model, images, view_names, memory, object_id: as :func:`detect_faults`.
        anomaly_maps: ``(V', h, w)`` the flow's NLL maps of the views (any grid), or None.
        masks: ``(V', h, w)`` foreground masks on the same grid, or None.
        swap_gains: ``(P,)`` :func:`multiflow.faults.flow_swap.flow_swap_gains` of the object with
            every camera in the model's order (every pair), or None; used when the model has a
            flow-swap check and every camera is given.
    """
    names, idx = _cameras(model, images, view_names)
    st = view_stats(images, size=model.size, grid=model.grid)
    raw = raw_statistics(model.reference, st, idx, model.occlusion_cells)
    z, pair = model.check_scores(raw, idx)
    tau = float(model.threshold)
    e = raw["energies"]
    faults: list[CameraFault] = []
    exposure = {"brightness_high", "clip_high", "brightness_low", "clip_low"}
    texture = median_texture_loss(model.reference.subset(idx), st)
    for k, name in enumerate(names):
        fired = [c for c, _, _, _ in VIEW_CHECKS if c != "swap" and z[c][k] > tau]
        if any(c in exposure for c in fired):
            fired = [c for c in fired if c != "occlusion"]
        elif "sharpness" in fired and texture[k] < LOCAL_BLUR * z["sharpness"][k]:  # local: not defocus
            fired.remove("sharpness")
            if "occlusion" not in fired:
                faults.append(CameraFault(
                    name, "occlusion", f"the image lost sharpness (standardised score {z['sharpness'][k]:.1f} > "
                    f"threshold {tau:.1f}) only locally (the typical cell kept its texture: loss "
                    f"{texture[k]:.2f}): a smudge or dirt on the lens, not defocus", check="sharpness",
                    score=float(z["sharpness"][k])))
        elif "occlusion" in fired and "sharpness" in fired:  # a blob lowers the sharpness, blur the cells'
            fired.remove("occlusion" if z["sharpness"][k] > z["occlusion"][k] else "sharpness")  # texture
        seen: set[str] = set()
        for c in sorted(fired, key=lambda c: -z[c][k]):  # the strongest check names the fault kind's reason
            if _KIND_OF[c] in seen:
                continue
            seen.add(_KIND_OF[c])
            faults.append(CameraFault(name, _KIND_OF[c], _reason(c, float(raw[_STAT_OF[c]][k]), float(z[c][k]), tau),
                                      check=c, score=float(z[c][k])))
    if memory is not None:
        ref = memory.reference(object_id)
        for k, name in enumerate(names):
            if name in ref:
                dist = float(np.abs(st.fingerprint[k] - ref[name]).mean())
                thr = float(model.frozen_threshold[idx[k]])
                if dist <= thr:
                    faults.append(CameraFault(name, "frozen", f"the same frame as the previous object (mean "
                                              f"difference {dist:.5f} <= {thr:.5f})", check="frozen"))
    flagged = {f.view for f in faults}
    swaps: list[CameraFault] = []
    paired: set[str] = set()
    for k, name in enumerate(names):
        partner = [j for j in range(len(names)) if j != k and pair[k, j] > tau
                   and e[k, idx[j]] < e[k, idx[k]] and e[j, idx[k]] < e[j, idx[j]]]
        if partner:
            j = max(partner, key=lambda j: pair[k, j])
            paired.add(name)
            swaps.append(CameraFault(
                name, "swapped", f"cameras {name} and {names[j]} appear swapped: each image fits the other camera "
                f"(pair score {pair[k, j]:.1f} > {tau:.1f})", names[j], check=PAIR_CHECK, score=float(pair[k, j])))
        elif z["swap"][k] > tau and name not in flagged:
            other = model.view_names[int(raw["swap_best"][k])]
            swaps.append(CameraFault(
                name, "swapped", f"the image fits camera {other}'s normal views better than its own (score "
                f"{z['swap'][k]:.1f} > {tau:.1f}): cable in the wrong port?", other, check="swap",
                score=float(z["swap"][k])))
    faults = [f for f in faults if f.view not in paired] + swaps
    dismissed: list[dict[str, Any]] = []
    if anomaly_maps is not None and masks is not None:
        cells = occlusion_cell_scores(model.reference.subset(idx), st)
        keep = []
        for f in faults:
            k = names.index(f.view)
            why = None if f.fault != "occlusion" else _product_evidence(
                cells[k], float(raw["occlusion"][k]), _as_array(anomaly_maps[k]), _as_array(masks[k]))
            if why is None:
                keep.append(f)
            else:
                dismissed.append({"view": f.view, "fault": f.fault, "check": f.check,
                                  "reason": f"scored as the product, not a camera fault: {why}"})
        faults = keep
    fs = model.flow_swap
    if fs is not None and swap_gains is not None and sorted(idx) == list(range(len(model.view_names))):
        faults = _flow_swaps(model, faults, np.asarray(swap_gains, dtype=np.float64))
    faults.sort(key=lambda f: names.index(f.view))
    if memory is not None:
        memory.update(names, st.fingerprint, object_id)
    return CameraCheck(faults, dismissed)


def _as_array(x) -> np.ndarray:
    return (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(np.float64)


def _cell_pool(x: np.ndarray, grid: int, how: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
    pool = torch.nn.functional.adaptive_max_pool2d if how == "max" else torch.nn.functional.adaptive_avg_pool2d
    return pool(t, grid)[0, 0].numpy()


def product_region(cells: np.ndarray, statistic: float) -> np.ndarray:
    """``(G, G)`` bool: the occlusion region ``R`` of one view (module docstring): the cells whose
    score is at least half the view's occlusion statistic (the ``occlusion_cells``-th largest)."""
    return cells >= 0.5 * statistic if statistic > 0 else cells >= statistic


def _product_evidence(cells: np.ndarray, statistic: float, nll: np.ndarray, mask: np.ndarray) -> str | None:
    """Why an ``occlusion`` flag of one view is a product defect (module docstring), or None."""
    from scipy.ndimage import binary_dilation

    g = cells.shape[0]
    region = product_region(cells, statistic)
    fg = _cell_pool((mask > 0.5).astype(np.float64), g, "mean")  # (G, G) foreground share per cell
    share = float(fg[region].mean())
    if share < ON_OBJECT:
        return None
    padded = np.pad(region, 1)  # outside the image is background
    ring = binary_dilation(padded) & ~padded
    ring_share = float(np.pad(fg, 1)[ring].mean())
    if ring_share < ON_OBJECT:
        return None
    peak_map = _cell_pool(np.where(np.isfinite(nll), nll, -np.inf), g, "max")
    peak_map = np.where(fg > 0, peak_map, -np.inf)
    py, px = np.unravel_index(int(np.argmax(peak_map)), peak_map.shape)
    if not region[py, px]:
        return None
    return (f"the dark, smooth region lies inside the object (foreground share {share:.2f}, of the cells around "
            f"it {ring_share:.2f}, both >= {ON_OBJECT}) and the flow's anomaly map peaks in it (cell {py},{px}): "
            "a product defect, not dirt on the lens")


def flow_swap_scores(model: CameraFaultModel, gains: np.ndarray) -> np.ndarray:
    """``(P,)`` how far each pair's gain lies above its cut-off, in units of the pair's spread on
    normal objects (:mod:`multiflow.faults.flow_swap`): a pair is flagged where it is positive;
    ``-inf`` for a pair the check never flags."""
    from multiflow.faults.flow_swap import cutoffs

    fs = model.flow_swap
    return (np.asarray(gains, dtype=np.float64) - cutoffs(fs)) / np.asarray(fs["std"], dtype=np.float64)


def _flow_swaps(model: CameraFaultModel, faults: list[CameraFault], gains: np.ndarray) -> list[CameraFault]:
    fs = model.flow_swap
    pairs = [tuple(p) for p in fs["pairs"]]
    if gains.shape != (len(pairs),):
        raise DataError(f"flow swap gains {gains.shape} for {len(pairs)} camera pairs")
    # a camera whose image the checks fault (blur, exposure, occlusion, frozen) is the better
    # explanation of the flow's oddity, and its degraded features reach the other views through the
    # cross-view messages, so the gains of every pair leave the normal objects' distribution the
    # cut-offs were fitted on: no flow swap on such an object
    if any(f.fault != "swapped" for f in faults):
        return faults
    z = flow_swap_scores(model, gains)
    used: set[int] = set()
    found: list[CameraFault] = []
    for p in np.argsort(-z):
        a, b = pairs[p]
        if not z[p] > 0:
            break
        if a in used or b in used:
            continue
        used |= {a, b}
        na, nb = model.view_names[a], model.view_names[b]
        why = (f"the flow finds the object more likely with cameras {na} and {nb} exchanged (likelihood gain "
               f"{gains[p]:.3f} > cut-off {fs['cut'][p]:.3f}; normal objects: {fs['mean'][p]:.3f} +- "
               f"{fs['std'][p]:.3f}): cables in the wrong ports?")
        found += [CameraFault(na, "swapped", why, nb, check=FLOW_SWAP_CHECK, score=float(z[p])),
                  CameraFault(nb, "swapped", why, na, check=FLOW_SWAP_CHECK, score=float(z[p]))]
    if not found:
        return faults
    on = {f.view for f in found}
    return [f for f in faults if f.view not in on] + found


def object_score(model: CameraFaultModel, images: torch.Tensor, view_names: Sequence[str] | None = None) -> float:
    """The object statistic ``T`` (:mod:`multiflow.faults.fit`) of one object: a camera fault is
    flagged by some check exactly when ``T > model.threshold`` (before the rules above)."""
    _, idx = _cameras(model, images, view_names)
    raw = raw_statistics(model.reference, view_stats(images, size=model.size, grid=model.grid), idx,
                         model.occlusion_cells)
    return object_statistic(*model.check_scores(raw, idx))


def _cameras(model: CameraFaultModel, images: torch.Tensor,
             view_names: Sequence[str] | None) -> tuple[list[str], list[int]]:
    """``(names, camera indices)`` of the views given, checked against the model and the images."""
    names = list(model.view_names if view_names is None else view_names)
    unknown = [n for n in names if n not in model.view_names]
    if unknown:
        raise DataError(f"views {unknown} are not cameras of the fault model {model.view_names}")
    if len(set(names)) != len(names):
        raise DataError(f"views {names} name a camera twice")
    if images.ndim != 4 or images.shape[0] != len(names):
        raise DataError(f"images {tuple(images.shape)} for {len(names)} views {names}: (V, 3, H, W) expected")
    return names, [model.view_names.index(n) for n in names]


_WHAT = {
    "sharpness": "sharpness (high-frequency share, log)", "brightness_high": "brightness",
    "brightness_low": "brightness", "clip_high": "fraction of pixels clipped white",
    "clip_low": "fraction of pixels clipped black", "occlusion": "a dark, textureless region (dirt on the lens or "
    "an obstruction); cell score",
}


def _reason(check: str, value: float, z: float, tau: float) -> str:
    side = "below" if check in ("sharpness", "brightness_low") else "above"
    return (f"{_WHAT[check]} {value:.3f} is {side} the camera's normal range (standardised score {z:.1f} > "
            f"threshold {tau:.1f}, check {check})")
