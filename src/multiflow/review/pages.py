"""The data of each review page (no HTML: the templates in ``templates/`` draw it).

Every builder takes what it reads (a :class:`~multiflow.review.store.RunStore`, a
:class:`~multiflow.review.store.TestedClass`, the :class:`~multiflow.review.labels.LabelStore`)
and returns the template's context as plain values; unknown classes, objects and pages raise
:class:`~multiflow.review.store.NotFound`.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np

from multiflow.review.labels import LABELS, LabelStore
from multiflow.review.store import FILTERS, NotFound, RunStore, TestedClass

LABEL_TEXT = {"confirmed_defect": "confirmed defect", "false_alarm": "false alarm", "unsure": "unsure"}
METRIC_COLUMNS = [("s_auroc", "S-AUROC"), ("i_auroc", "I-AUROC"), ("p_auroc", "P-AUROC"), ("aupro", "AUPRO"),
                  ("s_ap", "S-AP"), ("i_ap", "I-AP")]


def seg(name: str) -> str:
    return quote(name, safe="")


def complete(store: RunStore, name: str) -> TestedClass:
    """The class ``name``; :class:`NotFound` if it is unknown or not tested yet."""
    data = store.get(name)
    if not data.complete:
        raise NotFound(f"class {name!r} is {data.reason}")
    return data


def object_index(data: TestedClass, i: int) -> int:
    """``i`` if the class has a test object #i, else :class:`NotFound`."""
    if not 0 <= i < len(data.sample_ids):
        raise NotFound(f"class {data.name!r} has no test object #{i} (it has {len(data.sample_ids)})")
    return i


def class_crumbs(run_name: str, name: str) -> list[tuple[str, str]]:
    return [(run_name, "/"), (name, f"/c/{seg(name)}")]


def decision_class(decision: str) -> str:
    """The CSS class of a decision: ``ok``, ``ng``, ``check-camera``."""
    return decision.lower().replace(" ", "-")


def filter_query(kind: str, defect: str, view: str) -> dict[str, str]:
    return {k: v for k, v in (("filter", kind), ("defect", defect), ("view", view)) if v and v != "all"}


# ------------------------------------------------------------------------------------ overview
def overview(store: RunStore, labels: LabelStore) -> dict[str, Any]:
    """Run overview: per class its metrics, threshold, false alarms / misses and labelled objects."""
    names = store.class_names()
    current = labels.current()
    classes, defects = [], []
    for name in names:
        d = store.get(name)
        if not d.complete:
            classes.append({"name": name, "complete": False, "reason": d.reason})
            continue
        m = d.metrics or {}
        c = d.counts()
        classes.append({"name": name, "complete": True, "objects": len(d.sample_ids),
                        "metrics": [m.get(k) for k, _ in METRIC_COLUMNS], "threshold": d.threshold,
                        "false_alarms": c["false_alarms"], "misses": c["misses"], "check_camera": c["check_camera"],
                        "labelled": sum(1 for (cat, _) in current if cat == name)})
        for code, r in sorted((m.get("per_defect") or {}).items()):
            defects.append({"name": name, "code": code, "objects": r.get("num_samples"),
                            "s_auroc": r.get("s_auroc"), "i_auroc": r.get("i_auroc")})
    status = "no-classes" if not names else "no-metrics" if store.run_metrics() is None else ""
    return {"run": store.run_dir.name, "status": status, "columns": [t for _, t in METRIC_COLUMNS],
            "classes": classes, "defects": defects}


# ---------------------------------------------------------------------------------- class page
def class_listing(store: RunStore, labels: LabelStore, name: str, *, kind: str, defect: str, view: str,
                  page: int, page_size: int) -> dict[str, Any]:
    """One page of a class's objects (highest score first) under a filter; an incomplete class
    gives ``{"name", "incomplete": reason}``."""
    d = store.get(name)
    if not d.complete:
        return {"name": name, "incomplete": d.reason}
    if defect and defect not in set(d.defects):
        raise NotFound(f"class {name!r} has no defect code {defect!r}")
    idx = d.select(kind, defect=defect, view=view)
    pages = max(1, -(-len(idx) // page_size))
    if not 1 <= page <= pages:
        raise NotFound(f"page {page} does not exist (1..{pages})")
    shown = idx[(page - 1) * page_size: page * page_size]
    q = filter_query(kind, defect, view)
    qs = ("?" + urlencode(q)) if q else ""
    current = labels.current(name)
    dv = d.deciding_view
    rows = []
    for rank, i in enumerate(shown, start=(page - 1) * page_size + 1):
        i = int(i)
        lab = current.get((name, d.sample_ids[i]))
        decision = str(d.decision[i])
        truth = bool(d.labels[i])
        rows.append({
            "rank": rank, "index": i, "sample_id": d.sample_ids[i], "defect": d.defects[i],
            "kind": "fp" if decision == "NG" and not truth else "fn" if truth and decision == "OK" else "",
            "truth": "anomalous" if truth else "normal", "decision": decision,
            "decision_class": decision_class(decision), "label": LABEL_TEXT[lab["label"]] if lab else "",
            "score": float(d.scores[i]),
            "views": [{"k": k, "name": v, "score": float(d.view_scores[i, k]), "decided": k == dv[i]}
                      for k, v in enumerate(d.view_names)],
        })
    filters = [f for f in FILTERS if f != "camera" or kind == "camera" or d.check_camera.any()]
    return {
        "name": name, "incomplete": "", "threshold": d.threshold, "filters": filters, "filter": kind,
        "defects": sorted(set(d.defects)), "defect": defect, "view_names": list(d.view_names), "view": view,
        "count": len(idx), "total": len(d.sample_ids), "page": page, "pages": pages, "query": qs,
        "prev_query": urlencode(q | {"page": page - 1}), "next_query": urlencode(q | {"page": page + 1}),
        "rows": rows,
    }


# --------------------------------------------------------------------------------- object page
def object_view(store: RunStore, labels: LabelStore, name: str, i: int, *, kind: str, defect: str,
                view: str) -> dict[str, Any]:
    """One object: all views with scores and overlay URLs, its position in the filter, its labels."""
    d = complete(store, name)
    i = object_index(d, i)
    idx = d.select(kind, defect=defect, view=view)
    pos = np.flatnonzero(idx == i)
    q = filter_query(kind, defect, view)
    qs = ("?" + urlencode(q)) if q else ""
    prev_url = next_url = ""
    where = "not in the current filter"
    if len(pos):
        p = int(pos[0])
        where = f"{p + 1} of {len(idx)} in the current filter"
        if p > 0:
            prev_url = f"/c/{seg(name)}/o/{int(idx[p - 1])}{qs}"
        if p + 1 < len(idx):
            next_url = f"/c/{seg(name)}/o/{int(idx[p + 1])}{qs}"
    dv = int(d.deciding_view[i])
    sid = d.sample_ids[i]
    hist = labels.history(name, sid)
    cur = hist[-1] if hist else None
    decision = str(d.decision[i])
    return {
        "name": name, "index": i, "sample_id": sid, "defect": d.defects[i],
        "truth": "anomalous" if d.labels[i] else "normal", "decision": decision,
        "decision_class": decision_class(decision), "score": float(d.scores[i]), "threshold": d.threshold,
        "faults": [f.as_dict() for f in d.camera_faults[i]] if d.camera_faults else [],
        "decided_by": d.view_names[dv], "prev_url": prev_url, "next_url": next_url, "where": where, "query": qs,
        "views": [{"k": k, "name": v, "score": float(d.view_scores[i, k]), "decided": k == dv,
                   "defect": bool(d.view_labels[i, k]), "has_mask": d.samples[i]["mask_paths"][k] is not None}
                  for k, v in enumerate(d.view_names)],
        "history": [dict(h, text=LABEL_TEXT[h["label"]]) for h in reversed(hist)],
        "current": cur["label"] if cur else "", "current_text": LABEL_TEXT[cur["label"]] if cur else "none",
        "labels": [(k, LABEL_TEXT[k]) for k in LABELS],
        "data": {"prev": prev_url, "next": next_url},
    }


# ------------------------------------------------------------------------------ threshold page
def threshold_view(store: RunStore, name: str) -> dict[str, Any]:
    """Score histograms' data, the slider range, the audit trail and the threshold's estimate and warnings.

    The live counts of ``static/review.js`` count the objects the product decision judges: those
    held for a camera check (``CHECK CAMERA``) are left out and counted apart.
    """
    d = complete(store, name)
    judged = ~d.check_camera
    data = {"class": name, "threshold": d.threshold, "normal": d.scores[judged & (d.labels == 0)].tolist(),
            "anomalous": d.scores[judged & (d.labels == 1)].tolist(), "history": d.threshold_history,
            "camera_checks": int(d.check_camera.sum())}
    lo, hi = float(d.scores.min()), float(d.scores.max())
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = min(lo - pad, d.threshold), max(hi + pad, d.threshold)
    info = {k: v for k, v in d.threshold_info.items() if v not in (None, "", [], {})}
    return {"name": name, "threshold": d.threshold, "lo": lo, "hi": hi, "step": (hi - lo) / 1000,
            "history": list(reversed(d.threshold_history)), "info": info, "warnings": d.threshold_warnings,
            "camera_checks": data["camera_checks"], "data": data}


# ------------------------------------------------------------------------------------ try a part
def try_form(d: TestedClass, max_upload_bytes: int) -> dict[str, Any]:
    """The upload form (one file field per view) and the test samples to pick from."""
    return {"name": d.name, "view_names": list(d.view_names), "max_mib": max_upload_bytes // 2**20,
            "picks": [(int(i), d.sample_ids[i], d.defects[i]) for i in d.order[:2000]], "result": None}


def sample_images(d: TestedClass, i: int) -> tuple[Any, str]:
    """``(images (V, 3, H, W), sample_id)`` of test object ``i``, read as the data sets read them."""
    import torch

    from multiflow.data.images import read_image_array
    from multiflow.errors import DataError

    s = d.samples[object_index(d, i)]
    arrs = [read_image_array(p, flip=d.flips.get(v))[0] for p, v in zip(s["image_paths"], d.view_names)]
    if len({a.shape for a in arrs}) > 1:
        raise DataError(f"views of {s['sample_id']!r} have different sizes", s["image_paths"][0])
    return torch.from_numpy(np.stack(arrs)), s["sample_id"]


def try_result(d: TestedClass, pred: Any, images: Any, aggregation: str) -> dict[str, Any]:
    """A :class:`~multiflow.engine.predict.Prediction` of ``images`` ``(V, 3, H, W)`` as the
    result section: decision, camera faults, scores and a JPEG overlay per view."""
    from multiflow.review import images as im

    lo, hi = d.map_range
    scores = np.asarray(pred.view_scores, dtype=np.float64)
    best = int(np.nanargmax(scores)) if np.isfinite(scores).any() else -1  # -1: no view scored
    views = []
    for k, v in enumerate(pred.view_names):
        rgb = (images[k].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        over = (0.55 * rgb + 0.45 * im._colour(pred.maps[k], rgb.shape[:2], lo, hi) + 0.5).astype(np.uint8)
        jpeg = base64.b64encode(im.encode(im.Image.fromarray(over), "JPEG")).decode("ascii")
        views.append({"name": v, "score": float(pred.view_scores[k]), "decided": k == best, "jpeg": jpeg})
    return {"decision": pred.decision, "decision_class": decision_class(pred.decision),
            "faults": list(pred.camera_faults), "score": float(pred.sample_score), "threshold": float(pred.threshold),
            "aggregation": aggregation, "decided_by": pred.view_names[best] if best >= 0 else "no view",
            "views": views}
