"""End to end: a model trained with view dropout scores incomplete objects; camera faults -> CHECK CAMERA."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch

from multiflow import api
from multiflow.engine.predict import Predictor
from multiflow.synth.camera_faults import apply_camera_fault

CLASS = "bottle_cap"
SIZE = 64


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from multiflow.synth import generate_dataset

    root = tmp_path_factory.mktemp("mv")
    data = root / "data"
    generate_dataset(data, classes=[CLASS], n_train=12, n_test_good=2, n_test_defect=1, size=SIZE, seed=5,
                     progress=False)
    overrides = [
        f"data.root={data}", f"data.categories=[{CLASS}]", f"data.resolution={SIZE}", f"features.input_size={SIZE}",
        f"features.cache_dir={root / 'cache'}", "model.hidden=8", "model.n_blocks=2", "model.kernel_sizes=[3,3]",
        "train.epochs=1", "train.batch_size=4", "train.lr=0.001", "train.view_dropout=0.3", f"out={root / 'results'}",
        "name=r", f"faults.size={SIZE}",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_dir = api.fit(overrides=overrides, progress=False)
    from multiflow.data.realiad import RealIADDataset

    test = RealIADDataset(data, CLASS, split="test", image_size=SIZE, load_masks=False)
    return run_dir / CLASS, [test[i].images for i in range(len(test))]


def test_model_records_support_and_fault_statistics(run):
    folder, _ = run
    meta = json.loads((folder / "model.json").read_text())
    assert meta["format"] == "multiflow-model/2"
    assert meta["supports_missing_views"] is True and meta["view_dropout"] == 0.3
    assert meta["camera_faults"] == "camera_faults.json" and (folder / "camera_faults.json").is_file()


def test_incomplete_object_is_scored_on_the_views_present(run):
    folder, objs = run
    pred = Predictor(folder)
    full = pred.predict(objs[0], sample_id="a")
    sub = pred.predict(objs[1][[0, 1, 3]], ["C1", "C2", "C4"], sample_id="b").as_dict()
    assert sub["missing_views"] == ["C3", "C5"]
    assert sub["view_scores"]["C3"] is None and sub["view_scores"]["C5"] is None
    assert sub["sample_score"] == pytest.approx(max(sub["view_scores"][v] for v in ("C1", "C2", "C4")))
    assert sub["decision"] in ("OK", "NG") and sub["camera_faults"] == []
    assert full.as_dict()["missing_views"] == []
    # the views present are scored from their own features only: same scores whatever the others showed
    junk = objs[1].clone()
    junk[[2, 4]] = torch.rand(2, 3, SIZE, SIZE)
    pred2 = Predictor(folder)
    again = pred2.predict(junk[[0, 1, 3]], ["C1", "C2", "C4"], sample_id="b").as_dict()
    assert again["view_scores"] == sub["view_scores"]


def test_camera_fault_gives_check_camera_and_the_product_decision(run):
    folder, objs = run
    pred = Predictor(folder)
    faulty = apply_camera_fault(objs[0], 2, "overexposure", rng=np.random.default_rng(0))
    out = pred.predict(faulty, sample_id="x").as_dict()
    assert out["decision"] == "CHECK CAMERA"
    assert [f["view"] for f in out["camera_faults"]] == ["C3"] and out["camera_faults"][0]["fault"] == "overexposure"
    assert out["view_scores"]["C3"] is None and out["product_decision"] in ("OK", "NG")
    frozen = pred.predict(faulty, sample_id="y").as_dict()  # the very same frames again
    assert {f["fault"] for f in frozen["camera_faults"]} >= {"frozen"}


def test_service_accepts_incomplete_objects(run):
    from fastapi.testclient import TestClient
    from PIL import Image

    from multiflow.deploy.serve import create_app

    folder, objs = run
    files = []
    for k, v in enumerate(["C1", "C2", "C5"]):
        arr = (objs[1][[0, 1, 4][k]].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        files.append((v, (f"{v}.png", buf.getvalue(), "image/png")))
    with TestClient(create_app(Predictor(folder))) as client:
        r = client.post("/predict", files=files, data={"sample_id": "p"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["missing_views"] == ["C3", "C4"] and body["decision"] in ("OK", "NG", "CHECK CAMERA")
    assert body["view_scores"]["C3"] is None


def test_fault_check_sees_the_images_of_the_preprocessing_path(run, monkeypatch):
    import multiflow.faults as faults

    folder, objs = run
    pred = Predictor(folder)
    seen = []
    real = faults.detect_faults

    def spy(model, images, *args, **kwargs):
        seen.append(images.clone())
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(faults, "detect_faults", spy)
    big = torch.nn.functional.interpolate(objs[0], size=(2 * SIZE, 2 * SIZE), mode="nearest")
    pred.predict(big, sample_id="big")
    torch.testing.assert_close(seen[0], pred.preprocessor.resize(big), rtol=0, atol=0)
    assert seen[0].shape[-2:] == (SIZE, SIZE)


def test_a_retried_request_is_not_a_frozen_camera(run):
    folder, objs = run
    pred = Predictor(folder)
    first = pred.predict(objs[0], sample_id="retry-a")
    again = pred.predict(objs[0], sample_id="retry-a")  # the client sends the same part again
    assert not [f for f in again.camera_faults if f["fault"] == "frozen"]
    assert again.decision == first.decision and again.sample_score == pytest.approx(first.sample_score)
    # the same images as a different object: every camera repeats its frame
    other = pred.predict(objs[0], sample_id="retry-b").as_dict()
    assert other["decision"] == "CHECK CAMERA"
    frozen = [f for f in other["camera_faults"] if f["fault"] == "frozen"]
    assert {f["view"] for f in frozen} == set(pred.view_names) and all(f["check"] == "frozen" for f in frozen)
