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
