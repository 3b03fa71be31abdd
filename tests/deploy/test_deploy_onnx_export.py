"""ONNX export: onnxruntime reproduces PyTorch's maps, scores and decisions; metadata; errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multiflow.deploy.onnx_export import export_onnx, load_inference_graph, onnx_metadata
from multiflow.errors import CheckpointError, DataError

from deploy_helpers import INPUT_SIZE, VIEWS, make_bundle

ort = pytest.importorskip("onnxruntime")


def _inputs(b: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, len(VIEWS), 3, INPUT_SIZE, INPUT_SIZE, generator=g)
    m = (torch.rand(b, len(VIEWS), 3, 3, generator=g) > 0.4).float()
    m[0, 1] = 0.0  # a view without foreground keeps its raw map
    return x, m


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    graph, _ = load_inference_graph(tiny_model)
    x, m = _inputs(4, 1)
    with torch.no_grad():
        scores = graph(x, m)[2]
    threshold = float(scores.median())  # some samples pass, some fail
    path = export_onnx(tiny_model, tmp_path_factory.mktemp("onnx") / "model.onnx", threshold=threshold)
    return path, threshold


def test_onnxruntime_matches_pytorch_with_a_batch_size_not_used_for_tracing(tiny_model, exported):
    path, threshold = exported
    graph, _ = load_inference_graph(tiny_model, threshold=threshold)
    x, m = _inputs(4, 1)  # traced with batch 2
    with torch.no_grad():
        ref = [t.numpy() for t in graph(x, m)]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"images": x.numpy(), "mask": m.numpy()})
    assert [o.name for o in sess.get_outputs()] == ["anomaly_maps", "view_scores", "sample_score", "decision"]
    assert out[0].shape == (4, len(VIEWS), 3, 3)
    scale = float(np.abs(ref[0]).max())
    for r, o in zip(ref[:3], out[:3]):
        np.testing.assert_allclose(o, r, rtol=0, atol=1e-4 * scale)
    assert out[3].dtype == np.bool_
    np.testing.assert_array_equal(out[3], ref[3])
    assert out[3].any() and not out[3].all()
    np.testing.assert_array_equal(out[3], out[2] > threshold)


def test_graph_equals_the_predictor_and_the_flow_mask_rule(tiny_model):
    from multiflow.engine.predict import Predictor

    pred = Predictor(tiny_model, device="cpu")
    graph, meta = load_inference_graph(tiny_model)
    x, m = _inputs(2, 3)
    with torch.no_grad():
        maps, views, sample, decision = graph(x)
        p = pred.predict(x[1], VIEWS, "s1")
        feats = pred.extractor.forward_views(x)
        masked = graph(x, m)[0]
    np.testing.assert_allclose(maps[1].numpy(), p.maps, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(views[1].numpy(), p.view_scores, rtol=1e-5, atol=1e-5)
    assert sample[1].item() == pytest.approx(p.sample_score, rel=1e-5)
    assert bool(decision[1]) == (p.decision == "NG")
    np.testing.assert_allclose(masked.numpy(), pred.flow.anomaly_map(feats, m).numpy(), rtol=1e-5, atol=1e-5)
    # background takes the view's foreground minimum; the empty view keeps its raw map
    fg = m[0, 0] > 0.5
    assert torch.all(masked[0, 0][~fg] == masked[0, 0][fg].min())
    torch.testing.assert_close(masked[0, 1], maps[0, 1])


def test_cli_export_without_mask_and_metadata(tiny_model, tmp_path, capsys):
    from multiflow.cli import main

    path = tmp_path / "sub" / "nomask.onnx"
    assert main(["export", "--model", str(tiny_model), "--out", str(path), "--no-mask"]) == 0
    assert "anomaly_maps (B, 3, 3, 3)" in capsys.readouterr().out
    assert main(["export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "n.onnx")]) == 1
    assert "model.json" in capsys.readouterr().err
    meta = onnx_metadata(path)
    assert meta["view_names"] == VIEWS and meta["input_size"] == INPUT_SIZE and meta["feature_size"] == [3, 3]
    assert meta["with_mask"] is False and meta["threshold"] == 1.0
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"]
    x, _ = _inputs(1, 5)
    graph, _ = load_inference_graph(tiny_model)
    with torch.no_grad():
        ref = graph(x)[0].numpy()
    np.testing.assert_allclose(sess.run(None, {"images": x.numpy()})[0], ref, atol=1e-4 * np.abs(ref).max())
    assert not list(tmp_path.glob("sub/.*tmp"))


def test_errors_name_the_problem(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="model.json"):
        export_onnx(tmp_path, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="bad.onnx"):
        onnx_metadata(bad)
    graph, _ = load_inference_graph(tiny_model)
    with pytest.raises(DataError, match="96x96"):
        graph(torch.rand(1, 3, 3, 64, 64))
    with pytest.raises(DataError, match="mask"):
        graph(torch.rand(1, 3, 3, 96, 96), torch.ones(1, 3, 4, 4))


@pytest.mark.slow
@pytest.mark.parametrize(
    "image_score",
    [{"name": "topk_mean", "k": 0.3}, {"name": "quantile", "q": 0.8}, {"name": "smoothed_max", "sigma": 3.0}],
)
def test_export_parity_with_image_score(tiny_model, tmp_path, image_score):
    """A non-default image score: onnxruntime == PyTorch graph == Predictor, and the graph's view
    scores are the image-score functions of its maps (the same scoring code)."""
    from multiflow.engine.bundle import ScoringSpec
    from multiflow.engine.predict import Predictor
    from multiflow.scoring import ImageScoreSpec, image_score as score_fn

    spec = ImageScoreSpec(**image_score)
    folder = make_bundle(tmp_path / "scored", threshold=0.0, scoring=ScoringSpec(image_score=spec))
    graph, meta = load_inference_graph(folder)
    x, m = _inputs(3, 8)
    with torch.no_grad():
        ref = [t.numpy() for t in graph(x, m)]
    want = score_fn(torch.from_numpy(ref[0]), m, spec, image_size=INPUT_SIZE).numpy()
    np.testing.assert_allclose(ref[1], want, rtol=1e-4, atol=1e-4)
    assert not np.allclose(ref[1], ref[0].reshape(3, len(VIEWS), -1).max(-1), atol=1e-3)  # not the plain max
    threshold = float(np.median(ref[2]))
    path = export_onnx(folder, tmp_path / "scored.onnx", threshold=threshold)
    assert onnx_metadata(path)["scoring"]["image_score"] == spec.to_dict()
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy(), "mask": m.numpy()}
    )
    for r, o in zip(ref[:3], out[:3]):
        np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(r).max())))
    np.testing.assert_array_equal(out[3], out[2] > threshold)
    p = Predictor(folder).predict(x[2], VIEWS, "s2")  # predictor without masks: compare with the unmasked graph
    with torch.no_grad():
        unmasked = graph(x)
    np.testing.assert_allclose(p.view_scores, unmasked[1][2].numpy(), rtol=1e-4, atol=1e-4)
    assert p.sample_score == pytest.approx(float(unmasked[2][2]), rel=1e-4, abs=1e-4)


@pytest.mark.slow
def test_export_parity_with_two_stage_features(tmp_path):
    """features.layer with two stages: the exported graph resamples and concatenates like PyTorch."""
    folder = make_bundle(tmp_path / "multi", threshold=0.0, layer="blocks:3+blocks:5")
    graph, _ = load_inference_graph(folder)
    assert graph.extractor.feature_size(INPUT_SIZE) == (6, 6)  # stage-4 grid (stride 16)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, len(VIEWS), 3, INPUT_SIZE, INPUT_SIZE, generator=g)
    m = (torch.rand(2, len(VIEWS), 6, 6, generator=g) > 0.3).float()
    with torch.no_grad():
        ref = [t.numpy() for t in graph(x, m)]
    path = export_onnx(folder, tmp_path / "multi.onnx", threshold=float(np.median(ref[2])))
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy(), "mask": m.numpy()}
    )
    scale = float(np.abs(ref[0]).max())
    for r, o in zip(ref[:3], out[:3]):
        np.testing.assert_allclose(o, r, rtol=0, atol=1e-4 * scale)


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["global_context", "correspondence", "geometry"])
def test_export_parity_with_the_view_fusions(tmp_path, fusion):
    """The fusions of issue 24 export: onnxruntime == PyTorch graph (with the mask as the fusions'
    foreground, and without), and the Predictor, which loads the flow (camera rig included) from the
    model folder alone, scores as the graph does."""
    from multiflow.engine.predict import Predictor

    folder = make_bundle(tmp_path / fusion, threshold=0.0, fusion=fusion)
    graph, _ = load_inference_graph(folder)
    x, m = _inputs(3, 5)
    with torch.no_grad():
        ref = [t.numpy() for t in graph(x, m)]
        unmasked = [t.numpy() for t in graph(x)]
    fg = m.numpy() > 0.5  # the background fill leaves these; only the fusion's use of the mask changes them
    assert np.allclose(ref[0][fg], unmasked[0][fg], atol=1e-6) == (fusion == "geometry")
    threshold = float(np.median(ref[2]))
    path = export_onnx(folder, tmp_path / f"{fusion}.onnx", threshold=threshold)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"images": x.numpy(), "mask": m.numpy()})
    scale = float(np.abs(ref[0]).max())
    for r, o in zip(ref[:3], out[:3]):
        np.testing.assert_allclose(o, r, rtol=0, atol=1e-4 * scale)
    np.testing.assert_array_equal(out[3], out[2] > threshold)
    p = Predictor(folder, device="cpu").predict(x[1], VIEWS, "s1")  # no masks (provider none)
    np.testing.assert_allclose(p.maps, unmasked[0][1], rtol=1e-5, atol=1e-5)
