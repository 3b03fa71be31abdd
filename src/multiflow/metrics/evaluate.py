"""Whole-test-set evaluation: the typed result, the exact evaluator, per-defect and per-class summaries.

Inputs come in one of two layouts (tensors or numpy arrays):

* multi-view, ``anomaly_maps (N, V, h, w)``: row ``n`` is one sample (object) seen by ``V`` views;
  ``masks (N, V, H, W)``, ``labels``/``image_scores``/``foreground`` with leading ``(N, V)``,
  ``sample_ids``/``defects`` one per sample (length ``N``);
* flat, ``anomaly_maps (N, h, w)``: one image per row; ``sample_ids`` (length ``N``) groups the
  images of one object (images without ``sample_ids`` are samples of their own); ``defects`` per image.

Image labels follow the official rule: an image is anomalous iff its ground-truth mask is non-empty
(explicit ``labels`` must agree with the masks; without masks they are required). A sample is
anomalous iff one of its views is; its score aggregates the view scores (:mod:`multiflow.scoring`).

Per-defect results (``EvalResult.per_defect``): for every defect type ``d``, the AUROC of all normal
items (label 0, whatever folder they come from: the views of a defective object that do not show
the defect are normal images) against the anomalous items of type ``d``; at sample level (S) and
image level (I).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from multiflow.errors import DataError
from multiflow.scoring import check_aggregation, image_scores_from_maps
from multiflow.metrics.curves import (
    _ap_from_points,
    _auroc_from_points,
    _f1_max_from_points,
    as_numpy,
    check_scores_labels,
    curve_points,
    partial_area,
)
from multiflow.metrics.pixel import binarize_masks, pro_curve, resize_maps


@dataclass(frozen=True)
class DefectResult:
    """Normal items vs the anomalous items of one defect type."""

    s_auroc: float | None
    i_auroc: float | None
    num_samples: int
    num_images: int


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one class (category). Pixel fields are ``None`` when no masks were given.

    ``p_auroc_tol`` / ``aupro_tol``: a guaranteed bound on ``|value - exact value|`` (0 for the
    exact evaluator; computed from the histograms for the streaming one).
    """

    s_auroc: float
    i_auroc: float
    s_ap: float
    i_ap: float
    s_f1_max: float
    i_f1_max: float
    p_auroc: float | None
    aupro: float | None
    p_ap: float | None
    p_f1_max: float | None
    p_auroc_tol: float | None
    aupro_tol: float | None
    num_samples: int
    num_anomalous_samples: int
    num_images: int
    num_anomalous_images: int
    num_regions: int | None
    aggregation: str
    fpr_limit: float
    method: str
    per_defect: dict[str, DefectResult] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain-python view (JSON-serialisable)."""
        return asdict(self)


HEADLINE_FIELDS = ("s_auroc", "i_auroc", "p_auroc", "aupro", "s_ap", "i_ap", "p_ap", "s_f1_max", "i_f1_max", "p_f1_max")


@dataclass
class ImageRecords:
    """Per-image bookkeeping shared by the exact and streaming evaluators (``O(#images)`` memory)."""

    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)

    def add(self, scores: np.ndarray, labels: np.ndarray, sample_ids: Sequence[str], defects: Sequence[str]) -> None:
        self.scores.append(np.asarray(scores, dtype=np.float64).reshape(-1))
        self.labels.append(np.asarray(labels, dtype=bool).reshape(-1))
        self.sample_ids.extend(sample_ids)
        self.defects.extend(defects)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self.sample_ids:
            raise DataError("no images were evaluated (empty test set)")
        return (
            np.concatenate(self.scores),
            np.concatenate(self.labels),
            np.asarray(self.sample_ids, dtype=object),
            np.asarray(self.defects, dtype=object),
        )


@dataclass
class NormalisedBatch:
    maps: torch.Tensor  # (M, h, w)
    masks: torch.Tensor | None  # (M, H, W) bool
    image_scores: np.ndarray  # (M,)
    labels: np.ndarray  # (M,) bool
    sample_ids: list[str]
    defects: list[str]


def normalise_batch(
    anomaly_maps: Any,
    masks: Any | None,
    *,
    labels: Any | None,
    image_scores: Any | None,
    foreground: Any | None,
    sample_ids: Sequence[str] | None,
    defects: Sequence[str] | None,
    offset: int,
) -> NormalisedBatch:
    """Check one batch in either layout and flatten it to ``M`` images (see the module docstring).

    ``offset``: number of images already seen (makes default sample ids unique and error messages
    point at the right image).
    """
    maps = anomaly_maps if isinstance(anomaly_maps, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(as_numpy(anomaly_maps, "anomaly maps"))
    )
    maps = maps.detach().cpu()
    if maps.ndim not in (3, 4):
        raise DataError(f"anomaly maps must be (N, H, W) or (N, V, H, W), got {tuple(maps.shape)}")
    if not maps.is_floating_point():
        maps = maps.to(torch.float32)
    if not torch.isfinite(maps).all():
        raise DataError("anomaly maps contain NaN or infinite values")
    lead = tuple(maps.shape[:-2])
    n = lead[0]
    views = lead[1] if maps.ndim == 4 else 1

    mk = None
    if masks is not None:
        mk = binarize_masks(masks).cpu()
        if mk.ndim != maps.ndim or tuple(mk.shape[:-2]) != lead:
            raise DataError(f"masks {tuple(mk.shape)} do not match anomaly maps {tuple(maps.shape)} (same leading dims)")
        mk = mk.reshape(-1, *mk.shape[-2:])
    if image_scores is None:
        scores = image_scores_from_maps(maps, foreground)
    else:
        scores = torch.as_tensor(as_numpy(image_scores, "image scores"))
        if tuple(scores.shape) != lead:
            raise DataError(f"image scores {tuple(scores.shape)} must have shape {lead}")
    scores_np = scores.detach().cpu().numpy().astype(np.float64).reshape(-1)
    if not np.all(np.isfinite(scores_np)):
        raise DataError("image scores contain NaN or infinite values")

    derived = None if mk is None else mk.reshape(mk.shape[0], -1).any(dim=1).numpy()
    if labels is not None:
        lab = as_numpy(labels, "labels")
        if tuple(lab.shape) != lead:
            raise DataError(f"labels {tuple(lab.shape)} must have shape {lead}")
        if not np.all((lab == 0) | (lab == 1)):
            raise DataError("labels must be 0/1 or bool")
        lab = lab.astype(bool).reshape(-1)
        if derived is not None and not np.array_equal(lab, derived):
            i = int(np.flatnonzero(lab != derived)[0])
            raise DataError(
                f"label of image {offset + i} is {int(lab[i])} but its mask is "
                f"{'non-empty' if derived[i] else 'empty'} (official rule: anomalous iff the mask is non-empty)"
            )
    elif derived is not None:
        lab = derived
    else:
        raise DataError("give ground-truth masks or image labels")

    if sample_ids is not None and len(sample_ids) != n:
        raise DataError(f"{len(sample_ids)} sample ids for {n} rows of anomaly maps")
    if defects is not None and len(defects) != n:
        raise DataError(f"{len(defects)} defect codes for {n} rows of anomaly maps")
    if maps.ndim == 4:
        sids = [str(s) for s in sample_ids] if sample_ids is not None else [f"#sample@{offset + i * views}" for i in range(n)]
        sids = [s for s in sids for _ in range(views)]
        defs = [str(d) for d in defects for _ in range(views)] if defects is not None else ["anomalous"] * (n * views)
    else:
        sids = [str(s) for s in sample_ids] if sample_ids is not None else [f"#image{offset + i}" for i in range(n)]
        defs = [str(d) for d in defects] if defects is not None else ["anomalous"] * n
    return NormalisedBatch(
        maps=maps.reshape(-1, *maps.shape[-2:]), masks=mk, image_scores=scores_np, labels=lab, sample_ids=sids, defects=defs
    )


def group_samples(
    scores: np.ndarray, labels: np.ndarray, sample_ids: np.ndarray, defects: np.ndarray, how: str,
    expected_views: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample scores, labels and defect codes ``(S,)`` from per-image arrays ``(M,)``.

    Views are grouped by sample id (never by position); the sample label is the max of the view
    labels, the sample score aggregates the view scores with ``how``. All views of a sample must
    carry the same defect code; with ``expected_views`` every sample must have that many views.
    """
    check_aggregation(how)
    _, first, inverse, counts = np.unique(sample_ids, return_index=True, return_inverse=True, return_counts=True)
    if expected_views is not None and np.any(counts != expected_views):
        bad = int(np.flatnonzero(counts != expected_views)[0])
        raise DataError(
            f"sample {sample_ids[first[bad]]!r} has {counts[bad]} views, expected {expected_views}"
        )
    s_defects = defects[first]
    if np.any(defects != s_defects[inverse]):
        i = int(np.flatnonzero(defects != s_defects[inverse])[0])
        raise DataError(
            f"views of sample {sample_ids[i]!r} carry different defect codes "
            f"({defects[i]!r} vs {s_defects[inverse[i]]!r})"
        )
    s_labels = np.zeros(first.size, dtype=bool)
    np.logical_or.at(s_labels, inverse, labels)
    if how == "max":
        s_scores = np.full(first.size, -np.inf)
        np.maximum.at(s_scores, inverse, scores)
    else:  # "mean" and "mean_of_max": the mean over views of the image scores (see multiflow.scoring.spec)
        s_scores = np.bincount(inverse, weights=scores, minlength=first.size) / counts
    return s_scores, s_labels, s_defects


def per_defect_auroc(scores: Any, labels: Any, defects: Sequence[str]) -> dict[str, tuple[float | None, int]]:
    """AUROC of all normal items vs the anomalous items of each defect type.

    ``scores``/``labels`` ``(M,)`` for samples or images, ``defects`` ``(M,)`` codes. Returns
    ``{code: (auroc, number of anomalous items of that type)}`` for every code that has anomalous
    items; the AUROC is ``None`` when there are no normal items at all.
    """
    s = as_numpy(scores, "scores").astype(np.float64).reshape(-1)
    y = as_numpy(labels, "labels").astype(bool).reshape(-1)
    d = np.asarray(list(defects), dtype=object)
    if not (s.size == y.size == d.size):
        raise DataError(f"per-defect AUROC: {s.size} scores, {y.size} labels, {d.size} defect codes")
    out: dict[str, tuple[float | None, int]] = {}
    neg = ~y
    for code in sorted(set(d[y].tolist())):
        pos = y & (d == code)
        if not neg.any():
            out[code] = (None, int(pos.sum()))
            continue
        sel = neg | pos
        ss, yy = check_scores_labels(s[sel], y[sel])
        out[code] = (_auroc_from_points(curve_points(ss, yy)), int(pos.sum()))
    return out


def image_level_metrics(records: ImageRecords, how: str, expected_views: int | None) -> dict[str, Any]:
    """S-/I- AUROC, AP, F1-max, counts and per-defect results from the per-image records."""
    scores, labels, sids, defs = records.arrays()
    s_scores, s_labels, s_defs = group_samples(scores, labels, sids, defs, how, expected_views)
    si, yi = check_scores_labels(scores, labels, "image scores")
    ss, ys = check_scores_labels(s_scores, s_labels, "sample scores")
    pi, ps = curve_points(si, yi), curve_points(ss, ys)
    per_s = per_defect_auroc(s_scores, s_labels, s_defs.tolist())
    per_i = per_defect_auroc(scores, labels, defs.tolist())
    per_defect = {
        code: DefectResult(
            s_auroc=per_s.get(code, (None, 0))[0],
            i_auroc=per_i.get(code, (None, 0))[0],
            num_samples=per_s.get(code, (None, 0))[1],
            num_images=per_i.get(code, (None, 0))[1],
        )
        for code in sorted(set(per_s) | set(per_i))
    }
    return dict(
        s_auroc=_auroc_from_points(ps), i_auroc=_auroc_from_points(pi),
        s_ap=_ap_from_points(ps), i_ap=_ap_from_points(pi),
        s_f1_max=_f1_max_from_points(ps)[0], i_f1_max=_f1_max_from_points(pi)[0],
        num_samples=int(s_scores.size), num_anomalous_samples=int(s_labels.sum()),
        num_images=int(scores.size), num_anomalous_images=int(labels.sum()),
        per_defect=per_defect,
    )


def evaluate_exact(
    anomaly_maps: Any,
    masks: Any | None = None,
    *,
    labels: Any | None = None,
    image_scores: Any | None = None,
    foreground: Any | None = None,
    sample_ids: Sequence[str] | None = None,
    defects: Sequence[str] | None = None,
    how: str = "max",
    fpr_limit: float = 0.3,
    expected_views: int | None = None,
) -> EvalResult:
    """Exact metrics of one class, every score sorted (memory ``O(number of GT pixels)``).

    Shapes in the module docstring. Image scores default to the max over the (foreground) pixels
    of each map at its own resolution; pixel metrics use the maps resized to the mask size.
    """
    check_aggregation(how)
    if not 0 < fpr_limit <= 1:
        raise DataError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    b = normalise_batch(
        anomaly_maps, masks, labels=labels, image_scores=image_scores, foreground=foreground,
        sample_ids=sample_ids, defects=defects, offset=0,
    )
    records = ImageRecords()
    records.add(b.image_scores, b.labels, b.sample_ids, b.defects)
    img = image_level_metrics(records, how, expected_views)
    pix: dict[str, Any] = dict(p_auroc=None, aupro=None, p_ap=None, p_f1_max=None, p_auroc_tol=None, aupro_tol=None, num_regions=None)
    if b.masks is not None:
        s = resize_maps(b.maps, tuple(b.masks.shape[-2:])).numpy().astype(np.float64)
        m = b.masks.numpy()
        y = m.reshape(-1)
        p = curve_points(s.reshape(-1), y)
        fpr, pro, k = pro_curve(s, m)
        pix = dict(
            p_auroc=_auroc_from_points(p), aupro=partial_area(fpr, pro, fpr_limit) / fpr_limit,
            p_ap=_ap_from_points(p), p_f1_max=_f1_max_from_points(p)[0],
            p_auroc_tol=0.0, aupro_tol=0.0, num_regions=k,
        )
    return EvalResult(**img, **pix, aggregation=how, fpr_limit=fpr_limit, method="exact")


def mean_over_classes(results: Mapping[str, EvalResult]) -> dict[str, float | None]:
    """Unweighted mean over classes of every headline metric (the Real-IAD table convention).

    A metric that is ``None`` for any class is ``None`` in the mean. Also returns ``num_classes``.
    """
    if not results:
        raise DataError("mean over classes of an empty set of results")
    out: dict[str, float | None] = {}
    for name in HEADLINE_FIELDS:
        vals = [getattr(r, name) for r in results.values()]
        out[name] = None if any(v is None for v in vals) else float(np.mean(vals))
    out["num_classes"] = float(len(results))
    return out


__all__ = [
    "DefectResult", "EvalResult", "evaluate_exact", "per_defect_auroc", "mean_over_classes",
    "group_samples", "HEADLINE_FIELDS",
]
