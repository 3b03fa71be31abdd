"""The whole pipeline on a tiny synthetic data set: fit -> test -> predict, through the public API.

One module-scoped run (2 epochs, a small flow) keeps this fast; the checks are about plumbing and
consistency between the outputs, not about detection quality (the demo and BENCHMARKS.md are).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from multiflow import api
from multiflow.errors import CheckpointError, DataError

CLASS = "toy_brick"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from multiflow.synth import generate_dataset

    root = tmp_path_factory.mktemp("pipe")
    data = root / "data"
    generate_dataset(data, classes=[CLASS], n_train=6, n_test_good=3, n_test_defect=4, size=96, seed=3,
                     progress=False)
    overrides = [
        f"data.root={data}", f"data.categories=[{CLASS}]", "data.resolution=96", "features.input_size=96",
        f"features.cache_dir={root / 'cache'}", "model.hidden=8", "model.n_blocks=2", "model.kernel_sizes=[3,3]",
        "train.epochs=2", "train.batch_size=2", "train.lr=0.001", f"out={root / 'results'}", "name=r",
        "eval.pictures=true", "train.device=cpu",
    ]
    run_dir = api.fit(overrides=overrides, progress=False)
    results = api.evaluate(run_dir, progress=False)
    return run_dir, results, data, overrides


@pytest.fixture(scope="module")
def scored_run(run):
    """The same data and flow settings with a non-default image score."""
    _, _, data, overrides = run
    ov = [o for o in overrides if not o.startswith(("name=", "eval.pictures", "features.input_size"))] + [
        "name=scored", "eval.pictures=false", "eval.image_score=topk_mean", "eval.image_score_k=0.2",
        "masks.margin=0.05", "features.input_size=0",
    ]
    run_dir = api.fit(overrides=ov, progress=False)
    api.evaluate(run_dir, progress=False)
    return run_dir, data


def test_run_folder_has_everything(run):
    run_dir, results, _, _ = run
    for name in ["config.yaml", "metrics.json", "metrics.csv", "metrics.md", "report.html"]:
        assert (run_dir / name).is_file(), name
    cls = run_dir / CLASS
    for name in ["model.safetensors", "model.json", "metrics.json", "scores.csv", "adeval.pkl",
                 "figures/roc.png", "figures/histogram.png"]:
        assert (cls / name).is_file(), name
    assert list((cls / "figures").glob("worst_false_positive_*.png"))
    html = (run_dir / "report.html").read_text()
    assert "S-AUROC" in html and f"{CLASS}/figures/roc.png" in html
    assert "| mean |" in results["table"]


def test_run_records_its_device_precision_and_writes_less_state(run):
    run_dir = run[0]
    from multiflow.engine.bundle import read_bundle

    training = read_bundle(run_dir / CLASS).training  # the typed record, as every consumer reads it
    from multiflow.device import resolve_precision

    # train.precision=auto, recorded as resolved: bf16 only on a CPU with native bf16 (AVX-512 BF16/AMX)
    assert training.device == "cpu" and training.precision == resolve_precision("auto", torch.device("cpu"))
    assert training.precision in ("fp32", "bf16")
    assert training.stop_reason == "" and len(training.history) == 2
    assert all(r["lr"] > 0 for r in training.history)  # the learning rate of every epoch (issue 24)
    assert json.loads((run_dir / CLASS / "model.json").read_text())["training"]["device"] == "cpu"
    state = run_dir / CLASS / "train_state"
    assert (state / "state.safetensors").is_file() and not list(state.glob("*.tmp*"))


def test_metrics_agree_with_an_independent_oracle_on_the_written_scores(run):
    run_dir, _, _, _ = run
    rows = list(csv.DictReader(open(run_dir / CLASS / "scores.csv")))
    labels = np.array([int(r["label"]) for r in rows])
    scores = np.array([float(r["sample_score"]) for r in rows])
    views = [k[len("score_"):] for k in rows[0] if k.startswith("score_")]
    assert views == ["C1", "C2", "C3", "C4", "C5"]
    view_scores = np.array([[float(r[f"score_{v}"]) for v in views] for r in rows])
    np.testing.assert_allclose(scores, view_scores.max(1), rtol=1e-5)  # official max over views
    m = json.loads((run_dir / CLASS / "metrics.json").read_text())
    assert m["s_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    img_labels = np.array([[int(r[f"label_{v}"]) for v in views] for r in rows])
    assert m["i_auroc"] == pytest.approx(roc_auc_score(img_labels.ravel(), view_scores.ravel()), abs=1e-5)
    decisions = np.array([r["decision"] == "NG" for r in rows])
    np.testing.assert_array_equal(decisions, scores > m["threshold"])


def test_threshold_comes_from_held_out_calibration_objects(run):
    """The threshold is fitted on calibration objects kept apart from training and epoch selection,
    states its target and sample size, warns (bundle and metrics) that 2 objects cannot support a
    1 % false-reject rate without an assumption, and keeps the calibration maps for refits."""
    run_dir, _, _, _ = run
    from multiflow.engine.bundle import read_bundle
    from multiflow.engine.threshold import load_calibration_maps
    from multiflow.scoring import fit_threshold

    b = read_bundle(run_dir / CLASS)
    t = b.training
    assert t.calibration_samples == 2 and t.train_samples + t.val_samples == 4 and t.val_samples >= 1
    assert "calibration objects" in b.threshold.source and "not used to select the epoch" in b.threshold.source
    f = b.threshold.fit
    assert (f.false_reject, f.confidence, f.n, f.needed_n) == (0.01, 0.9, 2, 230)
    assert f.method in ("gaussian_log", "gaussian") and "needs 230" in f.warning
    assert any("needs 230" in w for w in b.threshold.warnings)
    maps, masks, ids = load_calibration_maps(run_dir / CLASS / b.threshold.calibration_maps)
    assert maps.shape[:2] == (2, 5) and len(set(ids)) == 2
    # the calibration objects are normal *training* objects, not test objects
    test_ids = {r["sample_id"] for r in csv.DictReader(open(run_dir / CLASS / "scores.csv"))}
    assert not set(ids) & test_ids
    # the stored threshold is the fit of the stored maps' sample scores (max over views of the max)
    scores = maps.reshape(2, 5, -1).max(-1).max(-1) if b.scoring.image_score.name == "max" else None
    if scores is not None:
        assert fit_threshold(scores, ids).value == pytest.approx(b.threshold.value, rel=1e-5)
    assert b.threshold.value >= t.val_sample_scores["max"] - 1e-6
    m = json.loads((run_dir / CLASS / "metrics.json").read_text())
    assert m["threshold"] == b.threshold.value and any("needs 230" in w for w in m["threshold_warnings"])


def test_predict_matches_the_evaluation_scores(run, tmp_path):
    run_dir, _, data, _ = run
    rows = {r["sample_id"]: r for r in csv.DictReader(open(run_dir / CLASS / "scores.csv"))}
    preds = api.predict(run_dir / CLASS, data_root=data, data_format="realiad", split="test",
                        out_dir=tmp_path, progress=False)
    assert len(preds) == len(rows)
    for p in preds:
        assert p["sample_score"] == pytest.approx(float(rows[p["sample_id"]]["sample_score"]), rel=1e-4, abs=1e-4)
        assert p["decision"] == rows[p["sample_id"]]["decision"]
    first = tmp_path / preds[0]["sample_id"]
    assert (first / "C1.npy").is_file() and (first / "C5.png").is_file() and (first / "result.json").is_file()
    assert (tmp_path / "predictions.csv").is_file()


def test_missing_view_at_inference_is_named(run):
    import torch

    from multiflow.engine.predict import Predictor

    run_dir, _, _, _ = run
    pred = Predictor(run_dir / CLASS)
    with pytest.raises(DataError, match=r"missing view\(s\) \['C3'\].*supports_missing_views is false"):
        pred.predict(torch.rand(4, 3, 96, 96), ["C1", "C2", "C4", "C5"], sample_id="s1")


def test_broken_model_folder_is_a_clear_error(run, tmp_path):
    from multiflow.engine.bundle import load_bundle

    with pytest.raises(CheckpointError, match="model.json not found"):
        load_bundle(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_bundle(tmp_path)


@pytest.mark.slow
def test_scoring_switches_are_fitted_stored_and_honoured_by_test_and_predict(scored_run, tmp_path):
    from multiflow.engine.bundle import read_bundle
    from multiflow.scoring import ImageScoreSpec

    run_dir, data = scored_run
    b = read_bundle(run_dir / CLASS)
    spec = b.scoring.image_score
    assert spec == ImageScoreSpec(name="topk_mean", k=0.2, sigma=8.0)
    assert b.features.input_size == 96 and b.masks.margin == 0.05  # 0 -> the data's size
    # the threshold is fitted on the held-out calibration objects' top-k scores
    vs = b.training.val_sample_scores
    assert vs["n"] == 2 and b.threshold.value >= vs["max"]
    rows = list(csv.DictReader(open(run_dir / CLASS / "scores.csv")))
    views = [k[len("score_"):] for k in rows[0] if k.startswith("score_")]
    view_scores = np.array([[float(r[f"score_{v}"]) for v in views] for r in rows])
    np.testing.assert_allclose([float(r["sample_score"]) for r in rows], view_scores.max(1), rtol=1e-5)
    m = json.loads((run_dir / CLASS / "metrics.json").read_text())
    img_labels = np.array([[int(r[f"label_{v}"]) for v in views] for r in rows])
    assert m["i_auroc"] == pytest.approx(roc_auc_score(img_labels.ravel(), view_scores.ravel()), abs=1e-5)
    by_id = {r["sample_id"]: r for r in rows}
    preds = api.predict(run_dir / CLASS, data_root=data, data_format="realiad", split="test",
                        out_dir=tmp_path, progress=False)
    # test reads float16 cached features, predict fresh float32 ones: agreement to float16 rounding
    # of the features (rel 5e-4)
    for p in preds:
        r = by_id[p["sample_id"]]
        got = np.array([p["view_scores"][v] for v in views])
        want = np.array([float(r[f"score_{v}"]) for v in views])
        np.testing.assert_allclose(got, want, rtol=5e-4, atol=1e-4)
        assert p["decision"] == r["decision"]


@pytest.mark.slow
def test_scoring_overrides_at_test_time_are_checked_recorded_and_refit_the_threshold(scored_run):
    """A removed calibration is refused at test time; the configuration alone is no override; an
    image-score override (recorded in metrics.json) scores with the plain max of the stored maps and
    the threshold is refitted for it from the stored calibration maps, not kept from top-k."""
    from multiflow.engine.bundle import read_bundle
    from multiflow.engine.threshold import load_calibration_maps
    from multiflow.errors import ConfigError
    from multiflow.scoring import ImageScoreSpec, fit_threshold

    run_dir, _ = scored_run
    with pytest.raises(ConfigError, match="'tail' was removed"):
        api.evaluate(run_dir, progress=False, pictures=False, calibration="tail")
    with pytest.raises(ConfigError, match="eval.image_score"):  # the configuration alone is no override
        api.evaluate(run_dir, progress=False, pictures=False, overrides=["eval.image_score=max"])
    api.evaluate(run_dir, progress=False, pictures=False, image_score={"name": "max"}, calibration="none",
                 aggregation="mean")
    m = json.loads((run_dir / CLASS / "metrics.json").read_text())
    assert m["overrides"] == {"image_score": ImageScoreSpec().to_dict(), "calibration": "none", "aggregation": "mean"}
    assert m["image_score"]["name"] == "max" and m["aggregation"] == "mean"
    b = read_bundle(run_dir / CLASS)
    maps, _, ids = load_calibration_maps(run_dir / CLASS / b.threshold.calibration_maps)
    want = fit_threshold(maps.reshape(len(ids), 5, -1).max(-1).mean(-1), ids).value
    assert m["threshold_refitted_for_overrides"] is True
    assert m["threshold"] == pytest.approx(want, rel=1e-5) and m["threshold"] != pytest.approx(b.threshold.value)
    rows = list(csv.DictReader(open(run_dir / CLASS / "scores.csv")))
    maps = np.load(run_dir / CLASS / "maps.npy").astype(np.float64)  # float16 copies of the maps
    np.testing.assert_allclose([float(r["sample_score"]) for r in rows],
                               maps.reshape(len(rows), 5, -1).max(-1).mean(-1), rtol=2e-3)


@pytest.mark.slow
def test_an_override_on_a_model_without_calibration_maps_reports_no_decisions(scored_run, tmp_path):
    """A bundle without stored calibration maps (fitted before format 3) cannot refit its threshold for
    an overridden scoring: metrics.json says so and reports no decision metrics against it."""
    import shutil

    from multiflow.engine.bundle import read_bundle, write_bundle

    run_dir, _ = scored_run
    copy = tmp_path / "old"
    shutil.copytree(run_dir, copy)
    b = read_bundle(copy / CLASS)
    b.threshold.calibration_maps, b.threshold.fit = "", None
    write_bundle(copy / CLASS, b)
    with pytest.warns(UserWarning, match="stores no calibration maps"):
        api.evaluate(copy, progress=False, pictures=False, aggregation="mean")
    m = json.loads((copy / CLASS / "metrics.json").read_text())
    assert m["threshold"] is None and m["threshold_fit"] is None and m["decision_accuracy"] is None
    assert m["false_positive_rate_at_threshold"] is None and m["threshold_refitted_for_overrides"] is False
    assert any("not for the overridden one" in w for w in m["threshold_warnings"])


def test_the_threshold_is_calibrated_on_fp32_maps_whatever_the_training_precision(monkeypatch, tmp_path):
    """A model trained in bf16 (train.precision=auto on bf16 hardware) gets its threshold from fp32
    maps, as predict, serve and the ONNX graph score."""
    import types

    import multiflow.engine.pipeline as pl
    import multiflow.engine.train as train_mod
    from multiflow.config import load_config
    from multiflow.engine.preprocess import PreparedSplit

    class Reached(Exception):
        pass

    seen = {}
    n, c = 10, 4
    monkeypatch.setattr(pl, "run_device", lambda cfg, device=None: (torch.device("cpu"), "bf16"))
    monkeypatch.setattr(pl, "resolve_input_size", lambda features, data, category: features)
    monkeypatch.setattr(pl, "build_extractor", lambda cfg: types.SimpleNamespace(channels=c, input_size=32))
    monkeypatch.setattr(pl, "prepare_split", lambda *a, **k: PreparedSplit(
        None, np.zeros((n, 3, c, 2, 2), dtype=np.float32), None, [f"s{i}" for i in range(n)], ["C1", "C2", "C3"]))
    monkeypatch.setattr(train_mod, "train_flow", lambda *a, **k: types.SimpleNamespace())

    def maps_spy(*args, precision, **kw):
        seen["precision"] = precision
        raise Reached

    monkeypatch.setattr(pl, "_maps", maps_spy)
    cfg = load_config(None, ["train.precision=bf16", "model.graph=custom", "model.n_blocks=1",
                             "model.kernel_sizes=[3]", "data.views=[C1,C2,C3]",
                             "model.edges=[[C1,C2],[C2,C3]]"])
    with pytest.raises(Reached):
        pl.fit_category(cfg, "tiny", tmp_path, progress=False)
    assert seen == {"precision": "fp32"}


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["global_context", "geometry"])
def test_view_fusions_fit_test_and_predict_alike_without_the_data_folder(run, tmp_path, fusion):
    """The fusions of issue 24 through the pipeline: the foreground masks reach the operators the same
    way in training, test and predict (the scores agree), and the geometry fusion's camera rig, found in
    the class folder (``cameras.json``) at fit time, travels in the model: predict runs on a copy of
    the images without it."""
    import shutil

    _, _, data, overrides = run
    ov = [o for o in overrides if not o.startswith(("name=", "eval.pictures"))] + [
        f"name={fusion}", "eval.pictures=false", f"model.fusion={fusion}", "model.heads=2"]
    run_dir = api.fit(overrides=ov, progress=False)
    api.evaluate(run_dir, progress=False)
    if fusion == "geometry":  # the rig of the class folder, in the data's view order, is in the stored flow
        from multiflow.data import load_camera_rig
        from multiflow.engine.bundle import FLOW_FILE
        from multiflow.flow.io import load_flow

        rig = load_flow(run_dir / CLASS / FLOW_FILE).config["camera_rig"]
        src = load_camera_rig(data / "realiad_96" / CLASS / "cameras.json")
        assert [c["name"] for c in rig["views"]] == src.view_names == ["C1", "C2", "C3", "C4", "C5"]
        assert rig["views"][2]["fx"] == src.view("C3").fx
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("cameras.json"))
    assert not list(copy.rglob("cameras.json"))
    rows = {r["sample_id"]: r for r in csv.DictReader(open(run_dir / CLASS / "scores.csv"))}
    preds = api.predict(run_dir / CLASS, data_root=copy, data_format="realiad", split="test",
                        out_dir=tmp_path / "out", progress=False)
    assert len(preds) == len(rows)
    for p in preds:
        assert p["sample_score"] == pytest.approx(float(rows[p["sample_id"]]["sample_score"]), rel=1e-4, abs=1e-4)


def test_cross_fitting_scores_every_object_out_of_fold_and_resumes_fold_by_fold(run, tmp_path, monkeypatch):
    """threshold.cross_fit=3: the flow trains on every normal object; each object's calibration
    maps come from a fold flow that never saw it (recomputed here independently for one fold:
    the same flow trained on the other folds up to the selected epoch), so they differ from the
    flow's own maps of its training objects. A fit killed after the first fold resumes without
    training that fold again, and the folds' files are removed once the bundle is written."""
    import dataclasses

    import multiflow.engine.pipeline as pl
    from multiflow.config import load_config
    from multiflow.engine.bundle import load_bundle, read_bundle
    from multiflow.engine.calibration import CROSSFIT_DIR, cross_fit_folds, flow_rows
    from multiflow.engine.factories import build_extractor, build_flow
    from multiflow.engine.maps import compute_maps
    from multiflow.engine.preprocess import prepare_split
    from multiflow.engine.threshold import RowSubset, load_calibration_maps
    from multiflow.engine.train import train_flow

    _, _, data, overrides = run
    ov = [o for o in overrides if not o.startswith(("name=", "eval.pictures", "out="))] + [
        "eval.pictures=false", "threshold.cross_fit=3", "faults.enabled=false"]
    cfg = load_config(None, ov)
    calls = []
    import multiflow.engine.train as train_mod

    original = train_mod.train_flow

    def killed_after_first_fold(model, f, m, tcfg, state_dir, **kw):
        calls.append(str(state_dir))
        if "fold1" in str(state_dir):
            raise KeyboardInterrupt
        return original(model, f, m, tcfg, state_dir, **kw)

    monkeypatch.setattr(train_mod, "train_flow", killed_after_first_fold)
    with pytest.raises(KeyboardInterrupt):
        pl.fit_category(cfg, CLASS, tmp_path, progress=False)
    assert (tmp_path / CLASS / CROSSFIT_DIR / "fold0.npz").is_file()
    calls.clear()
    monkeypatch.setattr(train_mod, "train_flow", lambda *a, **k: (calls.append(str(a[4])), original(*a, **k))[1])
    pl.fit_category(cfg, CLASS, tmp_path, resume=True, progress=False)
    assert not any("fold0" in c for c in calls) and sum("fold" in c for c in calls) == 2
    assert not (tmp_path / CLASS / CROSSFIT_DIR).exists()

    b = read_bundle(tmp_path / CLASS)
    t = b.training
    assert t.cross_fit == 3 and t.calibration_samples == 6 and t.train_samples + t.val_samples == 6
    assert "out-of-fold" in b.threshold.source and "cross_fit=3" in b.threshold.source
    assert b.threshold.fit.n == 6
    # every object is scored already: the warning asks for more objects, not for a larger split
    w = b.threshold.fit.warning
    assert "out-of-fold scored objects" in w and "add normal training objects" in w and "calibration_fraction" not in w
    maps, masks, ids = load_calibration_maps(tmp_path / CLASS / b.threshold.calibration_maps)
    ex = build_extractor(cfg.features)
    train = prepare_split(cfg, CLASS, "train", ex, progress=False)
    assert ids == list(train.sample_ids)
    # fold 0 again, independently: the same flow trained without fold 0 up to the selected epoch
    fold = cross_fit_folds(6, 3, cfg.train.seed)[0]
    rest = np.setdiff1d(np.arange(6), fold)
    net = build_flow(cfg.model, ex.channels, train.view_names, cfg.train.seed)
    rows = flow_rows(rest, 1)
    fold_cfg = dataclasses.replace(cfg.train, val_fraction=0.0, early_stopping_patience=0, select="last")
    original(net, RowSubset(train.features, rows), RowSubset(train.masks, rows), fold_cfg, tmp_path / "again",
             progress=False, until_epoch=t.best_epoch)
    want = compute_maps(net.eval(), train.features[fold], train.masks[fold], batch_size=4)
    np.testing.assert_allclose(maps[fold], want, rtol=1e-4, atol=1e-5)
    # the flow itself trained on these objects: its maps of them are not the out-of-fold ones
    model, _ = load_bundle(tmp_path / CLASS)
    own = compute_maps(model.eval(), train.features[fold], train.masks[fold], batch_size=4)
    assert not np.allclose(own, maps[fold], rtol=1e-3, atol=1e-3)


def test_cross_fit_folds_partition_the_objects_and_refuse_bad_counts():
    from multiflow.engine.calibration import cross_fit_folds
    from multiflow.errors import ConfigError

    folds = cross_fit_folds(11, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(11))
    assert sorted(len(f) for f in folds) == [3, 4, 4]
    assert all(np.array_equal(a, b) for a, b in zip(folds, cross_fit_folds(11, 3, seed=0)))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, cross_fit_folds(11, 3, seed=1)))
    for k in (1, 12):
        with pytest.raises(ConfigError, match="cross_fit"):
            cross_fit_folds(11, k, seed=0)
