"""The cross-view defects ML (mixed lot) and LB (one-sided label): every view on its own shows a normal
object of the line (of some lot / of some variant), only the combination of views is impossible; the
masks mark the inconsistent region in the views that see it; both are opt-in."""

from __future__ import annotations

import json

import numpy as np
import pytest

from multiflow.errors import ConfigError
from multiflow.synth import FAMILIES, generate_dataset, render_sample
from multiflow.synth.defects import sample_defect
from multiflow.synth.families import label_of
from multiflow.synth.geometry import camera_rig
from multiflow.synth.render import render_view
from multiflow.synth.scene import sample_scene
from multiflow.synth.variation import apply_lot, lot_variation

SIZE = 48


def render_all(scene):
    return [render_view(scene, cam, noise_seed=100 + k) for k, cam in enumerate(camera_rig(n_views=5, size=SIZE))]


def mean_colour(view, silhouette) -> np.ndarray:
    return view.image[silhouette].reshape(-1, 3).astype(np.float64).mean(axis=0)


def assert_inside(value: np.ndarray, a: np.ndarray, b: np.ndarray, tol: float = 0.5) -> None:
    lo, hi = np.minimum(a, b) - tol, np.maximum(a, b) + tol
    assert ((value >= lo) & (value <= hi)).all(), (value, a, b)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_lot_views_show_objects_of_two_normal_lots(family, seed):
    lots = [lot_variation(np.random.default_rng([seed, i]), i) for i in range(4)]
    lot_a = lots[seed]
    defective = sample_scene(family, np.random.default_rng(seed))
    apply_lot(defective, lot_a)
    d = sample_defect(defective, "ML", np.random.default_rng(seed), lots=lots)
    lot_b = lots[d.lot]
    assert d.lot != seed and d.gloss == pytest.approx(lot_b.gloss / lot_a.gloss)
    assert np.abs(np.log(lot_b.gain / lot_a.gain)).max() >= 0.06 or abs(np.log(d.gloss)) >= 0.2
    scenes = []
    for lot in (lot_a, lot_b):  # the same object made in lot A and in lot B: two normal objects
        s = sample_scene(family, np.random.default_rng(seed))
        apply_lot(s, lot)
        scenes.append(s)
    normal_a, normal_b, ml = (render_all(s) for s in (*scenes, defective))
    seen = 0
    for va, vb, vm in zip(normal_a, normal_b, ml):
        img, a, b = (v.image.astype(int) for v in (vm, va, vb))
        # outside the mask the view is the lot-A object, pixel for pixel; inside it the lot-B object
        assert (img[~vm.mask] == a[~vm.mask]).all()
        assert np.abs(img[vm.mask] - b[vm.mask]).max(initial=0) <= 2
        # the view's colour statistics lie between those of the two normal objects
        assert_inside(mean_colour(vm, vm.silhouette), mean_colour(va, va.silhouette), mean_colour(vb, vb.silhouette))
        if vm.mask.sum() > 10:
            seen += 1
            assert (a[vm.mask] != b[vm.mask]).any()  # the lots differ where the mask is
    assert 1 <= seen < 5  # some views see the other lot's faces, others do not
    assert not ml[0].mask.sum() > 0.1 * max(v.mask.sum() for v in ml)  # the top camera hardly sees side faces


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_sided_label_views_each_show_a_normal_variant(family):
    plain, labelled, lb = (sample_scene(family, np.random.default_rng(5)) for _ in range(3))
    labelled.label = label_of(family, labelled.parts, labelled.params)
    lb.label = label_of(family, lb.parts, lb.params)
    d = sample_defect(lb, "LB", np.random.default_rng(2))
    assert lb.label.sides in ((1,), (-1,)) and labelled.label.sides == (1, -1)
    assert np.allclose(d.normal, lb.label.axis * lb.label.sides[0])
    vp, vl, vd = render_all(plain), render_all(labelled), render_all(lb)
    sides_seen = set()
    for p, lab, v in zip(vp, vl, vd):
        img, a, b = (x.image.astype(int) for x in (v, p, lab))
        if not v.mask.any():  # no label spot visible: the view is the normal object itself
            assert (img == a).all() and (img == b).all()
            continue
        # a view is either the unlabelled or the labelled variant's, pixel for pixel (a view that sees
        # both label faces, at a grazing angle, is neither)
        as_plain, as_labelled = (img == a).all(), (img == b).all()
        assert as_plain or as_labelled or v.mask.sum() <= 0.15 * max(x.mask.sum() for x in vd)
        if as_plain or as_labelled:
            sides_seen.add(bool(as_labelled))
            assert_inside(mean_colour(v, v.silhouette), mean_colour(p, p.silhouette), mean_colour(lab, lab.silhouette))
        # the mask covers the label spot in this view, where the two variants differ
        differ = (a != b).any(axis=-1)
        assert differ[v.mask].mean() > 0.6 and (~differ | v.mask).all()
    assert sides_seen == {False, True}  # one view sees a label, another sees its face without one


def test_new_codes_are_opt_in_and_refuse_what_they_need(tmp_path):
    with pytest.raises(ValueError, match="ML .*lots >= 2"):
        render_sample("toy_brick", defect="ML", size=24)
    with pytest.raises(ValueError, match="LB .*labels=True"):
        render_sample("toy_brick", defect="LB", size=24)
    kw = dict(classes=["brick"], n_train=1, n_test_good=0, n_test_defect=1, size=24, n_views=3, progress=False)
    with pytest.raises(ConfigError, match="ML .*mixed lot.*lots"):
        generate_dataset(tmp_path / "a", defects=["ML"], **kw)
    # without LB in the codes no object carries a label; with it, about half of the normal ones do
    plain = [render_sample("toy_brick", size=24, sample_id=i, split="train") for i in range(1, 9)]
    labelled = [render_sample("toy_brick", size=24, sample_id=i, split="train", labels=True) for i in range(1, 9)]
    assert all("label" not in s.meta["instance"] for s in plain)
    n_lab = sum("label" in s.meta["instance"] for s in labelled)
    assert 1 <= n_lab <= 7
    for p, lab in zip(plain, labelled):  # an unlabelled object of a labelled line is the same object
        assert ("label" in lab.meta["instance"]) or (p.images == lab.images).all()


def test_generated_data_set_with_the_new_codes(tmp_path):
    out = tmp_path / "ds"
    generate_dataset(out, classes=["plug"], n_train=4, n_test_good=0, n_test_defect=2, size=32, n_views=5,
                     defects=["ML", "LB"], variation="realistic", progress=False)
    meta = json.loads((out / "synth_meta" / "plastic_plug.json").read_text())
    assert meta["defect_codes"]["ML"] == "mixed_lot" and meta["defect_codes"]["LB"] == "one_sided_label"
    recs = {r["anomaly_class"]: r for r in meta["samples"] if r["split"] == "test"}
    ml, lb = recs["ML"], recs["LB"]
    assert ml["defect"]["lot"] != ml["instance"]["lot"]["lot"] and ml["defect"]["views"]
    assert len(lb["instance"]["label"]["sides"]) == 1 and lb["defect"]["views"]
    for r in (ml, lb):  # masks only in the views that see the defect
        for e in r["entries"]:
            view = e["image_path"].split("_")[-2]
            assert (e["mask_path"] is not None) == (view in r["defect"]["views"]), e
