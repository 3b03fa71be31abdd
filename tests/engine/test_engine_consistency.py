"""One trained model, one set of files, five ways to score them: ``multiflow test``, ``multiflow
predict``, the Python API, the HTTP service and ONNX must give the same sample scores.

The synthetic images are 112 px and the backbone's input is 96 px, so every path has to resize;
the features are cached as float16 (the default), so every path has to round them the same way.
Test, predict, API and service run the same torch code on the same pixels and agree to float32
noise; ONNX runs the backbone in onnxruntime, whose float32 arithmetic can move a feature across a
float16 rounding boundary, so it is held to the fp16-cache rounding.
Also here: the test-time overrides, the bundle as the only source of test, file masks at predict.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from multiflow import api
from multiflow.errors import CheckpointError, ConfigError, DataError

pytestmark = pytest.mark.slow  # one tiny fit shared by the module (about a minute on two cores)

CLASS = "toy_brick"
VIEWS = ["C1", "C2", "C3", "C4", "C5"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from multiflow.synth import generate_dataset

    root = tmp_path_factory.mktemp("consistency")
    data = root / "data"
    generate_dataset(data, classes=[CLASS], n_train=6, n_test_good=2, n_test_defect=3, size=112, seed=7,
                     progress=False)
    overrides = [
        f"data.root={data}", f"data.categories=[{CLASS}]", "data.resolution=112", "features.input_size=96",
        f"features.cache_dir={root / 'cache'}", "masks.provider=threshold", "masks.dilation=3",
        "model.hidden=8", "model.n_blocks=2", "model.kernel_sizes=[3,3]", "train.epochs=1",
        "train.batch_size=2", "train.lr=0.001", f"out={root / 'results'}", "name=r", "eval.pictures=false",
    ]
    run_dir = api.fit(overrides=overrides, progress=False)
    api.evaluate(run_dir, progress=False, pictures=False)
    return run_dir, data, root


def _scores_csv(path) -> dict[str, float]:
    return {r["sample_id"]: float(r["sample_score"]) for r in csv.DictReader(open(path))}


def _test_dataset(data, size=None):
    from multiflow.config import DataConfig
    from multiflow.engine.factories import open_dataset

    return open_dataset(DataConfig(root=str(data), resolution="112"), CLASS, "test", size, load_masks=False)


def _five_ways(model_dir, data, tmp_path) -> dict[str, dict[str, float]]:
    """Sample scores of the test split by ``multiflow test`` (the model's scores.csv), ``multiflow
    predict``, the Python API, the HTTP service and ONNX."""
    from multiflow.cli import main

    tested = _scores_csv(model_dir / "scores.csv")
    assert len(tested) == 5

    # multiflow predict (CLI) and the Python API
    assert main(["predict", "--model", str(model_dir), "--data", str(data), "--format", "realiad",
                 "--resolution", "112", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    predicted = _scores_csv(tmp_path / "cli" / "predictions.csv")
    via_api = {p["sample_id"]: p["sample_score"] for p in api.predict(
        model_dir, data_root=data, data_format="realiad", resolution="112", out_dir=tmp_path / "api", progress=False)}

    # the HTTP service, fed the original files' bytes (native 112 px)
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from multiflow.deploy.serve import create_app
    from multiflow.engine.predict import Predictor

    predictor = Predictor(model_dir)
    ds = _test_dataset(data)
    served = {}
    with TestClient(create_app(predictor)) as client:
        for rec in ds.samples:
            files = [(v, (f"{v}.png", open(p, "rb").read(), "image/png")) for v, p in zip(rec.view_names, rec.image_paths)]
            r = client.post("/predict", files=files, data={"sample_id": rec.sample_id})
            assert r.status_code == 200, r.text
            served[rec.sample_id] = r.json()["sample_score"]

    # ONNX: resize and masks outside the graph, by the same preprocessing
    ort = pytest.importorskip("onnxruntime")
    from multiflow.deploy.onnx_export import export_onnx

    path = export_onnx(model_dir, tmp_path / "model.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_scores = {}
    for i, rec in enumerate(ds.samples):
        x = predictor.preprocessor.resize(ds[i].images)
        m = predictor.preprocessor.masks(x)
        out = sess.run(None, {"images": x[None].numpy(), "mask": m.numpy()})
        onnx_scores[rec.sample_id] = float(out[2][0])
    return {"test": tested, "predict": predicted, "api": via_api, "serve": served, "onnx": onnx_scores}


def test_test_predict_api_service_and_onnx_give_the_same_sample_scores(run, tmp_path):
    run_dir, data, _ = run
    got = _five_ways(run_dir / CLASS, data, tmp_path)
    for sid, ref in got["test"].items():
        for name in ("predict", "api", "serve"):
            assert got[name][sid] == pytest.approx(ref, rel=2e-5, abs=2e-5), (name, sid)
        # fp16 storage: a feature can round to a neighbouring float16 (relative step 2^-11)
        assert got["onnx"][sid] == pytest.approx(ref, rel=2e-3), ("onnx", sid)


def test_five_ways_agree_with_an_image_score_and_a_mask_margin(run, tmp_path):
    """The bundle's scoring section (top-k mean) and mask margin are honoured alike by test,
    predict, the API, the service and the ONNX graph."""
    from multiflow.engine.bundle import read_bundle, write_bundle
    from multiflow.scoring import ImageScoreSpec

    run_dir, data, _ = run
    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy)
    rows = list(csv.DictReader(open(run_dir / CLASS / "scores.csv")))
    raw = np.array([[float(r[f"score_{v}"]) for v in VIEWS] for r in rows])
    bundle = read_bundle(copy / CLASS)
    bundle.scoring = dataclasses.replace(bundle.scoring, image_score=ImageScoreSpec(name="topk_mean", k=0.25))
    bundle.masks = dataclasses.replace(bundle.masks, margin=0.05)
    write_bundle(copy / CLASS, bundle)
    cfg_path = copy / "config.yaml"
    text = cfg_path.read_text()
    for a, b in [("image_score: smoothed_max", "image_score: topk_mean"), ("image_score_k: 0.01", "image_score_k: 0.25"),
                 ("margin: 0.0", "margin: 0.05")]:
        assert a in text, a
        text = text.replace(a, b)
    cfg_path.write_text(text)
    api.evaluate(copy, progress=False, pictures=False)
    got = _five_ways(copy / CLASS, data, tmp_path)
    plain = _scores_csv(run_dir / CLASS / "scores.csv")
    assert not np.allclose([got["test"][k] for k in plain], list(plain.values()), atol=1e-3)  # scoring changed
    # the fp16 rounding tolerance of ONNX scales with the scores
    unit = max(1.0, float(np.abs(raw).max()))
    onnx_abs, py_abs = 2e-3 * unit, 2e-5 * unit
    for sid, ref in got["test"].items():
        for name in ("predict", "api", "serve"):
            assert got[name][sid] == pytest.approx(ref, rel=2e-5, abs=py_abs), (name, sid)
        assert got["onnx"][sid] == pytest.approx(ref, abs=onnx_abs), ("onnx", sid)


def test_aggregation_override_is_applied_and_recorded(run, tmp_path):
    from multiflow.cli import main

    run_dir, _, _ = run
    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy)
    assert main(["test", str(copy), "--aggregation", "mean", "--no-pictures", "--quiet"]) == 0
    m = json.loads((copy / CLASS / "metrics.json").read_text())
    assert m["overrides"] == {"aggregation": "mean"} and m["aggregation"] == "mean"
    rows = list(csv.DictReader(open(copy / CLASS / "scores.csv")))
    views = np.array([[float(r[f"score_{v}"]) for v in VIEWS] for r in rows])
    scores = np.array([float(r["sample_score"]) for r in rows])
    np.testing.assert_allclose(scores, views.mean(1), rtol=1e-5)
    assert not np.allclose(scores, views.max(1))
    # without an override: the bundle's aggregation (max), and an empty record
    plain = json.loads((run_dir / CLASS / "metrics.json").read_text())
    assert plain["overrides"] == {} and plain["aggregation"] == "max"
    from multiflow.engine.pipeline import evaluate_run

    with pytest.raises(ConfigError, match="unknown test-time override"):
        evaluate_run(copy, overrides={"graph": "full"})
    # a configuration value is not a silent override: it must be named as one
    with pytest.raises(ConfigError, match="--aggregation mean"):
        api.evaluate(copy, overrides=["eval.aggregation=mean"], progress=False, pictures=False)


def test_a_changed_input_size_at_test_time_is_a_clear_error(run):
    from multiflow.config import FeatureConfig
    from multiflow.engine.bundle import check_backbone, read_bundle
    from multiflow.engine.factories import build_extractor

    run_dir, _, _ = run
    bundle = read_bundle(run_dir / CLASS)
    other = build_extractor(FeatureConfig(backbone="lite0", input_size=64))
    assert other.digest == bundle.features.weights_digest  # same weights: the digest alone cannot tell
    with pytest.raises(CheckpointError, match="input size 64 differs from the 96"):
        check_backbone(other, bundle, run_dir / CLASS / "model.json")
    with pytest.raises(CheckpointError, match="features.input_size: configuration 64, model 96"):
        api.evaluate(run_dir, overrides=["features.input_size=64"], progress=False, pictures=False)


def test_file_masks_are_used_by_predict_and_required(run, tmp_path):
    """A model whose bundle names mask files: test and predict both use them and agree; a sample
    without its files is refused instead of being scored without masks."""
    from multiflow.engine.bundle import read_bundle, write_bundle
    from multiflow.engine.predict import Predictor

    run_dir, data, _ = run
    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy)
    bundle = read_bundle(copy / CLASS)
    bundle.masks = dataclasses.replace(bundle.masks, provider="file", mask_root=str(data / "silhouettes_112"))
    write_bundle(copy / CLASS, bundle)
    cfg_path = copy / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace("provider: threshold", "provider: file"))
    api.evaluate(copy, progress=False, pictures=False)
    tested = _scores_csv(copy / CLASS / "scores.csv")
    preds = api.predict(copy / CLASS, data_root=data, data_format="realiad", resolution="112",
                        out_dir=tmp_path / "p", progress=False)
    for p in preds:
        assert p["sample_score"] == pytest.approx(tested[p["sample_id"]], rel=2e-5, abs=2e-5)
    # the written maps carry the background fill of the file masks (not the raw, unmasked NLL)
    predictor = Predictor(copy / CLASS)
    ds = _test_dataset(data, 96)
    s = ds[0]
    with torch.no_grad():
        unmasked = predictor.flow.anomaly_map(predictor.preprocessor.features(s.images))[0].numpy()
    written = np.stack([np.load(tmp_path / "p" / s.sample_id.replace("/", "_") / f"{v}.npy") for v in VIEWS])
    assert np.abs(written - unmasked).max() > 1e-3
    fg = predictor.preprocessor.masks(s.images, image_paths=list(ds.samples[0].image_paths),
                                      image_root=str(ds.image_root))[0].numpy() > 0.5
    assert 0 < fg.sum() < fg.size
    np.testing.assert_allclose(written[fg], unmasked[fg], rtol=1e-6, atol=1e-6)
    with pytest.raises(DataError, match="masks.provider=file"):
        predictor.predict(torch.rand(5, 3, 96, 96), VIEWS, "loose")
    from multiflow.deploy.serve import create_app

    with pytest.raises(ConfigError, match="mask files"):
        create_app(predictor)


def test_predictor_rounds_features_to_the_stored_dtype(run):
    from multiflow.engine.predict import Predictor

    run_dir, data, _ = run
    predictor = Predictor(run_dir / CLASS)
    assert predictor.bundle.features.dtype == "float16"
    ds = _test_dataset(data, 96)
    s = ds[0]
    pred = predictor.predict(s.images, s.view_names, s.sample_id)
    feats = predictor.extractor.forward_views(s.images[None])
    mask = predictor.preprocessor.masks(s.images)
    with torch.no_grad():
        rounded = predictor.flow.anomaly_map(feats.half().float(), mask)[0].numpy()
        raw = predictor.flow.anomaly_map(feats, mask)[0].numpy()
    np.testing.assert_allclose(pred.maps, rounded, rtol=1e-6, atol=1e-6)
    assert np.abs(raw - rounded).max() > 1e-5  # the rounding is visible: the test can tell
