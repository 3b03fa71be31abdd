"""The unified multi-class model end to end on tiny synthetic data: fit -> bundle v4 -> test -> predict.

One module-scoped run (2 classes, 2 epochs, a small flow, latent conditioning); the checks are about
plumbing and consistency, not detection quality (benchmarks/unified.py measures that).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from multiflow import api
from multiflow.engine.bundle import BUNDLE_FORMAT, load_bundle, read_bundle
from multiflow.errors import DataError

CLASSES = ["toy_brick", "bottle_cap"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from multiflow.synth import generate_dataset

    root = tmp_path_factory.mktemp("unified")
    data = root / "data"
    generate_dataset(data, classes=CLASSES + ["lock_nut"], n_train=10, n_test_good=2, n_test_defect=2, size=96,
                     seed=3, progress=False)
    overrides = [
        f"data.root={data}", f"data.categories=[{','.join(CLASSES)}]", "data.resolution=96",
        "features.input_size=96", f"features.cache_dir={root / 'cache'}", "model.hidden=8", "model.n_blocks=2",
        "model.kernel_sizes=[3,3]", "train.epochs=2", "train.batch_size=4", "train.lr=0.001",
        f"out={root / 'results'}", "name=u", "eval.pictures=false", "train.device=cpu", "model.unified=true",
        "model.class_conditioning=latent", "threshold.calibration_fraction=0.2",
    ]
    run_dir = api.fit(overrides=overrides, progress=False)
    results = api.evaluate(run_dir, progress=False)
    return run_dir, results, data, overrides


def test_one_bundle_with_the_classes_and_per_class_specs(run):
    run_dir, _, _, _ = run
    folder = run_dir / "unified"
    assert not (run_dir / CLASSES[0] / "model.json").exists()  # no per-class models
    data = json.loads((folder / "model.json").read_text())
    assert data["format"] == BUNDLE_FORMAT == "multiflow-model/4"
    assert data["classes"] == CLASSES and data["class_conditioning"] == "latent"
    flow, bundle = load_bundle(folder)
    assert flow.classes == CLASSES and flow.conditioning == "latent"
    for c in CLASSES:
        spec = bundle.per_class[c]
        assert spec.threshold.fit.n == spec.calibration_samples == 2
        assert spec.train_samples == 8 and spec.unknown is not None
        assert spec.camera_faults == f"camera_faults.{c}.json" and (folder / spec.camera_faults).is_file()
        assert (folder / spec.threshold.calibration_maps).is_file()
        assert spec.threshold.calibration_maps == f"calibration_maps.{c}.npz"
    # per-class thresholds: each class's own, fitted on its own calibration maps
    assert bundle.per_class[CLASSES[0]].threshold.value != bundle.per_class[CLASSES[1]].threshold.value
    from multiflow.engine.threshold import fit_for_scoring, load_calibration_maps

    for c in CLASSES:
        maps, masks, ids = load_calibration_maps(folder / f"calibration_maps.{c}.npz")
        fit, _ = fit_for_scoring(maps, masks, ids, bundle.scoring, bundle.per_class[c].threshold.fit,
                                 image_size=96)
        assert fit.value == pytest.approx(bundle.per_class[c].threshold.value)
    assert bundle.for_class(CLASSES[1]).threshold == bundle.per_class[CLASSES[1]].threshold
    assert all(h["train_loss"] != 0.0 for h in bundle.training.history)  # foreground pixels were trained on
    # per-class camera statistics: each class's own normal images
    a, b = ((folder / f"camera_faults.{c}.json").read_text() for c in CLASSES)
    assert a != b


def test_test_reports_per_class_metrics_and_the_mean(run):
    run_dir, results, _, _ = run
    assert sorted(results["per_class"]) == sorted(CLASSES)
    for c in CLASSES:
        m = json.loads((run_dir / c / "metrics.json").read_text())
        assert m["class"] == c and m["threshold"] == read_bundle(run_dir / "unified").per_class[c].threshold.value
        assert 0.0 <= m["class_identification_accuracy"] <= 1.0
        assert m["flagged_unknown_rate_normal"] is not None
        assert (run_dir / c / "scores.csv").is_file()
    assert "mean" in (run_dir / "metrics.md").read_text().lower()


def test_predict_given_class_matches_test_and_identified_class_is_reported(run, tmp_path):
    run_dir, _, data, _ = run
    c = CLASSES[1]
    rows = {r["sample_id"]: r for r in csv.DictReader(open(run_dir / c / "scores.csv"))}
    preds = api.predict(run_dir / "unified", data_root=data, data_format="realiad", split="test",
                        category=c, class_name=c, out_dir=tmp_path / "given", progress=False)
    assert len(preds) == len(rows)
    for p in preds:
        assert p["class"] == c and p["class_source"] == "given" and p["class_margin"] is None
        assert p["sample_score"] == pytest.approx(float(rows[p["sample_id"]]["sample_score"]), rel=1e-4, abs=1e-4)
        if p["decision"] != "UNKNOWN CLASS":
            assert p["decision"] == rows[p["sample_id"]]["decision"]
    ident = api.predict(run_dir / "unified", data_root=data, data_format="realiad", split="test", category=c,
                        out_dir=tmp_path / "ident", progress=False)
    for p in ident:
        assert p["class_source"] == "identified" and p["class"] in CLASSES and p["class_margin"] >= 0
    summary = json.loads((tmp_path / "ident" / "summary.json").read_text())
    assert summary["scored"] == len(ident)


def test_unknown_class_is_never_ok(run, tmp_path):
    """An object of a class not trained on (lock_nut) comes out UNKNOWN CLASS, not OK, when its NLL under
    the class exceeds the cut-off; the cut-off check is exact."""
    from multiflow.engine.unified_predict import UnifiedPredictor

    run_dir, _, data, _ = run
    preds = api.predict(run_dir / "unified", data_root=data, data_format="realiad", split="test",
                        category="lock_nut", out_dir=tmp_path, progress=False)
    for p in preds:
        flagged = p["class_score"] > p["unknown_class_cutoff"]
        assert (p["decision"] == "UNKNOWN CLASS") == flagged
    # a cut-off below every score flags everything (the decision rule, independent of training quality)
    pred = UnifiedPredictor(run_dir / "unified", device="cpu")
    for c in CLASSES:
        pred.unified_bundle.per_class[c].unknown.value = -1e9
    from multiflow.data.realiad import RealIADDataset  # noqa: F401  (the data set class the API opens)
    from multiflow.config import DataConfig
    from multiflow.engine.factories import open_dataset
    from multiflow.engine.predict import predict_dataset

    ds = open_dataset(DataConfig(root=str(data), format="realiad", views=pred.view_names, resolution="96"),
                      "lock_nut", "test", pred.input_size, load_masks=False)
    rows = predict_dataset(pred, ds, tmp_path / "all", progress=False)
    assert rows and all(r["decision"] == "UNKNOWN CLASS" for r in rows)
    assert json.loads((tmp_path / "all" / "summary.json").read_text())["decisions"]["UNKNOWN CLASS"] == len(rows)


def test_unknown_class_name_is_a_clear_error(run, tmp_path):
    run_dir, _, data, _ = run
    with pytest.raises(DataError, match="not one of this model's classes"):
        api.predict(run_dir / "unified", data_root=data, data_format="realiad", split="test",
                    category="lock_nut", class_name="lock_nut", out_dir=tmp_path, progress=False)


def test_resume_continues_the_unified_run(run):
    """A finished unified run resumed with more epochs continues from its state."""
    run_dir, _, _, overrides = run
    ov = [o for o in overrides if not o.startswith("train.epochs")] + ["train.epochs=3"]
    api.fit(overrides=ov, progress=False, resume=True)
    hist = read_bundle(run_dir / "unified").training.history
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    # the test of the original 2-epoch run is reproduced by the resumed history's first two epochs
    assert np.isfinite([h["train_loss"] for h in hist]).all()


def test_review_store_and_threshold_of_a_unified_class(run, tmp_path):
    import shutil

    from multiflow.engine.bundle import set_threshold
    from multiflow.errors import CheckpointError
    from multiflow.review.store import RunStore, apply_threshold

    src, _, _, _ = run
    run_dir = tmp_path / "copy"
    shutil.copytree(src, run_dir, ignore=shutil.ignore_patterns("train_state"))
    store = RunStore(run_dir)
    assert store.class_names() == sorted(CLASSES)
    before = read_bundle(run_dir / "unified")
    d = store.get(CLASSES[1])
    assert d.complete and d.model_dir == run_dir / "unified"
    assert d.threshold == before.per_class[CLASSES[1]].threshold.value
    with pytest.raises(CheckpointError, match="name the class"):
        set_threshold(run_dir / "unified", 1.0, who="t", reason="r")
    apply_threshold(run_dir / "unified", 123.0, who="qa", reason="test", class_name=CLASSES[1])
    after = read_bundle(run_dir / "unified")
    assert after.per_class[CLASSES[1]].threshold.value == 123.0
    assert after.per_class[CLASSES[1]].threshold.audit[-1].who == "qa"
    assert after.per_class[CLASSES[0]].threshold == before.per_class[CLASSES[0]].threshold
    assert store.get(CLASSES[1]).threshold == 123.0


def test_view_dropout_unified_model_scores_incomplete_objects(run, tmp_path):
    import torch

    from multiflow.config import DataConfig
    from multiflow.engine.factories import open_dataset
    from multiflow.engine.unified_predict import UnifiedPredictor

    _, _, data, overrides = run
    ov = [o for o in overrides if not o.startswith(("name=", "out=", "train.epochs"))] + [
        "name=ud", f"out={tmp_path}", "train.epochs=1", "train.view_dropout=0.3"]
    run_dir = api.fit(overrides=ov, progress=False)
    bundle = read_bundle(run_dir / "unified")
    assert bundle.supports_missing_views
    for c in CLASSES:
        assert set(bundle.per_class[c].threshold.by_views) == {"1", "2", "3", "4"}
    pred = UnifiedPredictor(run_dir / "unified", class_name=CLASSES[0], device="cpu", frozen_check=False)
    ds = open_dataset(DataConfig(root=str(data), format="realiad", resolution="96"), CLASSES[0], "test", 96,
                      load_masks=False)
    s = ds[0]
    views = list(s.view_names)
    full = pred.predict(torch.as_tensor(s.images).float(), views, "a")
    part = pred.predict(torch.as_tensor(s.images[1:]).float(), views[1:], "b")
    assert part.missing_views == [views[0]] and np.isnan(part.view_scores[0]) and not np.isnan(full.view_scores[0])
    assert part.threshold == bundle.per_class[CLASSES[0]].threshold.by_views["4"].value
    assert part.as_dict()["class"] == CLASSES[0] and part.decision in ("OK", "NG", "UNKNOWN CLASS")
