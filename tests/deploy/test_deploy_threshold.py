"""A threshold set on the bundle (the review app's call) reaches predict, serve and export."""

from __future__ import annotations

from deploy_helpers import make_bundle

from multiflow.engine.bundle import set_threshold


def test_predict_and_export_read_the_new_threshold(tmp_path):
    from multiflow.deploy.onnx_export import load_inference_graph
    from multiflow.engine.predict import Predictor

    folder = make_bundle(tmp_path / "tiny", threshold=1.0)
    set_threshold(folder, 3.5, who="review-app", reason="calibrated on the line")
    assert Predictor(folder).threshold == 3.5
    graph, meta = load_inference_graph(folder)
    assert float(graph.threshold) == 3.5 and meta["threshold"] == 3.5
    assert Predictor(folder, threshold=2.0).threshold == 2.0  # an explicit override still wins


def test_health_lists_the_threshold_warnings(tmp_path):
    """serve /health shows what the bundle's threshold object says about itself: here, fitted on 12
    objects for a 1 % target (230 needed) with one suspected outlier named."""
    import numpy as np
    import pytest

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from multiflow.deploy.serve import create_app
    from multiflow.engine.bundle import read_bundle, write_bundle
    from multiflow.engine.predict import Predictor
    from multiflow.scoring import fit_threshold

    folder = make_bundle(tmp_path / "tiny", threshold=1.0)
    b = read_bundle(folder)
    fit = fit_threshold(np.append(np.linspace(1.0, 1.2, 11), 15.0), [f"o{i}" for i in range(12)])
    b.threshold.value, b.threshold.fit = fit.value, fit
    write_bundle(folder, b)
    with TestClient(create_app(Predictor(folder, frozen_check=False))) as client:
        health = client.get("/health").json()
    assert health["threshold"] == pytest.approx(fit.value)
    (w,) = health["threshold_warnings"]
    assert "needs 230" in w and "o11 (score 15)" in w
