"""benchmarks/decision_trust.py on a tiny trained run: the thresholds it evaluates are the ones ``fit``
stores, and its rates are those of the test objects' scores that ``multiflow test`` writes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmarks import decision_trust as dt
from multiflow import api

CLASS = "toy_brick"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from multiflow.synth import generate_dataset

    root = tmp_path_factory.mktemp("dt")
    generate_dataset(root / "data", classes=[CLASS], n_train=14, n_test_good=4, n_test_defect=4, size=64, seed=1,
                     progress=False)
    common = [f"data.root={root / 'data'}", f"data.categories=[{CLASS}]", "data.resolution=64",
              "features.input_size=64", f"features.cache_dir={root / 'cache'}", "model.n_blocks=1",
              "model.kernel_sizes=[3]", "model.hidden=8", "train.epochs=1", "eval.pictures=false",
              f"out={root / 'runs'}", "threshold.false_reject=0.05"]
    api.fit(overrides=[*common, "name=paper"], progress=False)
    api.evaluate(root / "runs" / "paper", progress=False)
    api.fit(overrides=[*common, "name=dropout", "train.view_dropout=0.3"], progress=False)
    api.fit(overrides=[*common, "name=crossfit", "threshold.cross_fit=2"], progress=False)
    return root / "runs"


def test_rates_are_those_of_the_stored_threshold_and_test_scores(runs):
    from multiflow.engine.bundle import read_bundle

    assert dt.main(["--runs", str(runs), "--dropout-run", "dropout", "--classes", CLASS, "--no-benchmarks-md"]) == 0
    res = json.loads((runs / "decision_trust" / f"{CLASS}.json").read_text())
    bundle = read_bundle(runs / "paper" / CLASS)
    paper = res["paper"]
    assert paper["n_calibration"] == bundle.training.calibration_samples
    # the 5 % row re-fits exactly what fit stored (same calibration objects, same scoring)
    assert paper["targets"]["0.05"]["threshold"] == pytest.approx(bundle.threshold.value, rel=1e-6)
    with open(runs / "paper" / CLASS / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    score = np.array([float(r["sample_score"]) for r in rows])
    bad = np.array([r["label"] == "1" for r in rows])
    thr = paper["targets"]["0.05"]["threshold"]
    assert paper["targets"]["0.05"]["false_reject"] == pytest.approx(np.mean(score[~bad] > thr), abs=1e-4)
    assert paper["targets"]["0.05"]["miss"] == pytest.approx(np.mean(score[bad] <= thr), abs=1e-4)
    assert set(res["dropout"]["by_views"]) == {"1", "2", "3", "4"}
    # stored results are reused: a second call reads the file
    assert dt.main(["--runs", str(runs), "--classes", CLASS, "--no-benchmarks-md"]) == 0


def test_a_cross_fitted_model_is_evaluated_on_its_out_of_fold_scores_and_completes_the_stored_result(runs):
    """--crossfit-run adds the cross-fitted model to a stored class result without recomputing the
    paper model; its 5 % row re-fits exactly the threshold fit stored (from the out-of-fold maps,
    not from the model's own scores of objects it trained on)."""
    from multiflow.engine.bundle import read_bundle

    assert dt.main(["--runs", str(runs), "--classes", CLASS, "--no-benchmarks-md"]) == 0
    before = json.loads((runs / "decision_trust" / f"{CLASS}.json").read_text())
    assert "crossfit" not in before
    assert dt.main(["--runs", str(runs), "--crossfit-run", "crossfit", "--classes", CLASS, "--no-benchmarks-md"]) == 0
    res = json.loads((runs / "decision_trust" / f"{CLASS}.json").read_text())
    assert res["paper"] == before["paper"]
    bundle = read_bundle(runs / "crossfit" / CLASS)
    cf = res["crossfit"]
    assert bundle.training.cross_fit == 2 and cf["n_calibration"] == bundle.training.calibration_samples == 14
    assert "out-of-fold" in cf["calibration"]
    assert cf["targets"]["0.05"]["threshold"] == pytest.approx(bundle.threshold.value, rel=1e-6)
    md = dt.report([res], "cmd", "cpu")
    assert "cross-fitted threshold" in md and md.count("| toy_brick |") >= 6
