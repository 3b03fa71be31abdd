"""A unified multi-class bundle in deployment: ONNX export per class (with the unknown-class flag) and
the service's class field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deploy_helpers import INPUT_SIZE, VIEWS, make_unified_bundle

from multiflow.deploy.onnx_export import export_onnx, load_inference_graph, onnx_metadata
from multiflow.errors import ConfigError


@pytest.fixture(scope="module")
def unified(tmp_path_factory):
    return make_unified_bundle(tmp_path_factory.mktemp("u"), thresholds=(1.0, 2.0))


def _x(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, len(VIEWS), 3, INPUT_SIZE, INPUT_SIZE, generator=g), torch.ones(b, len(VIEWS), 3, 3)


def test_export_needs_a_class_and_bakes_it_in(unified, tmp_path):
    with pytest.raises(ConfigError, match="one graph per class"):
        load_inference_graph(unified)
    x, m = _x()
    with torch.no_grad():
        cup = load_inference_graph(unified, class_name="cup")[0](x, m)
        lid, meta = load_inference_graph(unified, class_name="lid")
        lid = lid(x, m)
    assert meta["category"] == "lid" and meta["classes"] == ["cup", "lid"] and meta["threshold"] == 2.0
    assert not torch.allclose(cup[0], lid[0])  # the class changes the maps (latent Gaussian per class)
    # the graph's maps are the flow's under the class, via the predictor's flow
    from multiflow.engine.unified_predict import UnifiedPredictor

    pred = UnifiedPredictor(unified, device="cpu")
    feats = pred.extractor.body((x.reshape(-1, 3, INPUT_SIZE, INPUT_SIZE) - pred.extractor.mean) / pred.extractor.std)
    feats = feats.reshape(3, len(VIEWS), *feats.shape[1:])
    torch.testing.assert_close(lid[0], pred.flow(feats, classes=1).nll, rtol=1e-4, atol=1e-4)


def test_onnx_decision_flags_an_unknown_class(unified, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    x, m = _x()
    # thresholds far above every score: only the unknown-class cut-off can make a decision true
    folder = make_unified_bundle(tmp_path / "cut", thresholds=(1e9, 1e9), cutoffs=(1e9, -1e9))
    for name, expect in (("cup", False), ("lid", True)):
        path = export_onnx(folder, tmp_path / f"{name}.onnx", class_name=name)
        out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"images": x.numpy(), "mask": m.numpy()})
        assert (out[3] == expect).all()
        assert onnx_metadata(path)["category"] == name


def test_service_takes_the_class_or_identifies_it(unified):
    import io

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image

    from multiflow.deploy.serve import create_app
    from multiflow.engine.unified_predict import open_predictor

    def png(seed):
        arr = np.random.default_rng(seed).integers(0, 256, size=(80, 80, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()

    files = [(v, (f"{v}.png", png(i), "image/png")) for i, v in enumerate(VIEWS)]
    predictor = open_predictor(unified, device="cpu")
    with TestClient(create_app(predictor)) as client:
        assert client.get("/health").json()["classes"] == ["cup", "lid"]
        given = client.post("/predict", files=files, data={"class": "lid"}).json()
        assert given["class"] == "lid" and given["class_source"] == "given" and given["threshold"] == 2.0
        ident = client.post("/predict", files=files).json()
        assert ident["class_source"] == "identified" and ident["class"] in ("cup", "lid")
        assert ident["class_margin"] >= 0
        bad = client.post("/predict", files=files, data={"class": "bowl"})
        assert bad.status_code in (400, 422) and "bowl" in bad.text
