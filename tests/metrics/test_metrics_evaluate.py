"""evaluate_exact: sample grouping, labels, per-defect results and the mean over classes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from multiflow.errors import DataError
from multiflow.metrics import EvalResult, evaluate_exact, mean_over_classes, per_defect_auroc
from multiflow.metrics.evaluate import group_samples


def _multiview_set(seed: int = 0, n: int = 12, v: int = 3):
    """n samples x v views of 8x8 maps, masks at 16x16; samples 0..5 defective (types 'ak', 'bx')."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, v, 8, 8, generator=g, dtype=torch.float64)
    masks = torch.zeros(n, v, 16, 16, dtype=torch.bool)
    defects = ["ok"] * n
    for i in range(6):
        view = i % v
        r = 2 + i
        masks[i, view, r : r + 4, 3:9] = True
        maps[i, view, r // 2 : r // 2 + 2, 2:4] += 0.3 + 0.1 * i
        defects[i] = "ak" if i % 2 == 0 else "bx"
    return maps, masks, defects


def test_multiview_metrics_against_sklearn() -> None:
    maps, masks, defects = _multiview_set()
    r = evaluate_exact(maps, masks, defects=defects)
    img_scores = maps.amax(dim=(-2, -1))  # (N, V)
    img_labels = masks.flatten(2).any(dim=2)  # (N, V)
    assert r.i_auroc == pytest.approx(roc_auc_score(img_labels.ravel(), img_scores.ravel()), abs=1e-12)
    s_scores, s_labels = img_scores.amax(dim=1), img_labels.any(dim=1)
    assert r.s_auroc == pytest.approx(roc_auc_score(s_labels, s_scores), abs=1e-12)
    assert (r.num_samples, r.num_anomalous_samples, r.num_images, r.num_anomalous_images) == (12, 6, 36, 6)
    assert r.num_regions == 6 and r.method == "exact" and r.p_auroc_tol == 0.0
    # per defect: normal samples vs samples of that type
    for code in ("ak", "bx"):
        sel = np.array([d == code for d in defects]) | ~s_labels.numpy()
        assert r.per_defect[code].s_auroc == pytest.approx(roc_auc_score(s_labels[sel], s_scores[sel]), abs=1e-12)
        assert r.per_defect[code].num_samples == 3
    mean = evaluate_exact(maps, masks, defects=defects, how="mean")
    assert mean.s_auroc == pytest.approx(roc_auc_score(s_labels, img_scores.mean(dim=1)), abs=1e-12)
    assert mean.i_auroc == r.i_auroc


def test_flat_layout_groups_views_by_sample_id_not_by_position() -> None:
    maps, masks, defects = _multiview_set()
    n, v = maps.shape[:2]
    ref = evaluate_exact(maps, masks, defects=defects)
    perm = torch.randperm(n * v, generator=torch.Generator().manual_seed(3))
    flat_maps = maps.reshape(n * v, 8, 8)[perm]
    flat_masks = masks.reshape(n * v, 16, 16)[perm]
    sids = [f"obj{int(p) // v}" for p in perm]
    flat_defects = [defects[int(p) // v] for p in perm]
    r = evaluate_exact(flat_maps, flat_masks, sample_ids=sids, defects=flat_defects, expected_views=v)
    for f in ("s_auroc", "i_auroc", "p_auroc", "aupro", "s_ap", "i_ap", "num_samples", "per_defect"):
        assert getattr(r, f) == getattr(ref, f), f
    with pytest.raises(DataError, match="views, expected 4"):
        evaluate_exact(flat_maps, flat_masks, sample_ids=sids, expected_views=4)


def test_labels_follow_the_masks() -> None:
    maps, masks, _ = _multiview_set()
    labels = masks.flatten(2).any(dim=2).clone()
    evaluate_exact(maps, masks, labels=labels)  # consistent: fine
    labels[7, 0] = True  # claims a defect where the mask is empty
    with pytest.raises(DataError, match="mask is empty"):
        evaluate_exact(maps, masks, labels=labels)
    # without masks, labels are required and pixel metrics are absent
    r = evaluate_exact(maps, labels=masks.flatten(2).any(dim=2))
    assert r.p_auroc is None and r.aupro is None and r.i_auroc > 0
    with pytest.raises(DataError, match="masks or image labels"):
        evaluate_exact(maps)


def test_views_of_one_sample_must_share_the_defect_code() -> None:
    s = np.array([0.1, 0.2, 0.3, 0.4])
    y = np.array([False, True, False, False])
    with pytest.raises(DataError, match="different defect codes"):
        group_samples(s, y, np.array(["a", "a", "b", "b"], dtype=object), np.array(["x", "y", "ok", "ok"], dtype=object), "max")


def test_per_defect_auroc_counts_unlabelled_views_as_normal() -> None:
    scores = [0.1, 0.2, 0.9, 0.3, 0.8, 0.05]
    labels = [0, 0, 1, 0, 1, 0]
    defects = ["ok", "ok", "ak", "ak", "bx", "bx"]  # the 'ak' view scored 0.3 shows no defect: normal
    out = per_defect_auroc(scores, labels, defects)
    assert set(out) == {"ak", "bx"}
    assert out["ak"] == (1.0, 1) and out["bx"] == (1.0, 1)
    out = per_defect_auroc([0.1, 0.2, 0.15, 0.3], [0, 0, 1, 1], ["ok", "ok", "ak", "bx"])
    assert out["ak"][0] == pytest.approx(0.5) and out["bx"][0] == pytest.approx(1.0)


def test_mean_over_classes() -> None:
    maps, masks, defects = _multiview_set(0)
    a = evaluate_exact(maps, masks, defects=defects)
    b = evaluate_exact(*_multiview_set(1)[:2])
    m = mean_over_classes({"a": a, "b": b})
    assert m["i_auroc"] == pytest.approx((a.i_auroc + b.i_auroc) / 2)
    assert m["aupro"] == pytest.approx((a.aupro + b.aupro) / 2) and m["num_classes"] == 2
    c = dataclasses.replace(b, p_auroc=None)
    assert mean_over_classes({"a": a, "c": c})["p_auroc"] is None
    assert isinstance(a, EvalResult) and a.as_dict()["per_defect"]["ak"]["num_samples"] == 3
