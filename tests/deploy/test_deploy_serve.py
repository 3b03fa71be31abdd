"""HTTP service: results equal the Predictor's, every bad input is a clear 4xx, bounded memory."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from deploy_helpers import VIEWS

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from multiflow.deploy.serve import ServiceLimits, create_app  # noqa: E402
from multiflow.engine.predict import Predictor  # noqa: E402

SIZE = 80


def _png(seed: int, size: int = SIZE) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _files(seed: int = 0, views=VIEWS) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(v, (f"{v}.png", _png(seed * 10 + i), "image/png")) for i, v in enumerate(views)]


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor(tiny_model)


@pytest.fixture(scope="module")
def client(predictor):
    limits = ServiceLimits(max_request_bytes=200_000, max_image_pixels=120 * 120)
    with TestClient(create_app(predictor, limits=limits)) as c:
        yield c


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["view_names"] == VIEWS and body["input_size"] == 96
    assert body["limits"]["max_images"] == 3


def test_predict_equals_the_predictor_and_maps_decode(client, predictor):
    files = _files(1)
    r = client.post("/predict?maps=png", files=files, data={"sample_id": "part-7"})
    assert r.status_code == 200, r.text
    body = r.json()
    images = torch.stack([
        torch.from_numpy(np.asarray(Image.open(io.BytesIO(f[1][1])).convert("RGB")).copy()).permute(2, 0, 1).float() / 255
        for f in files
    ])
    ref = predictor.predict(images, VIEWS, "part-7")
    assert body["sample_id"] == "part-7" and body["decision"] == ref.decision
    assert body["sample_score"] == pytest.approx(ref.sample_score, rel=1e-6)
    assert list(body["view_scores"]) == VIEWS
    np.testing.assert_allclose([body["view_scores"][v] for v in VIEWS], ref.view_scores, rtol=1e-6)
    assert body["threshold"] == predictor.threshold
    lo, hi = body["map_range"]
    assert hi > lo
    for i, v in enumerate(VIEWS):
        grey = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["maps"][v]))))
        assert grey.shape == (SIZE, SIZE) and grey.dtype == np.uint8
        np.testing.assert_allclose(lo + grey / 255.0 * (hi - lo), ref.maps_full[i], atol=(hi - lo) / 255)
    assert "maps" not in client.post("/predict", files=_files(1)).json()


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("missing", 400, "missing view"),
        ("unknown", 400, "unknown view"),
        ("not_image", 400, "not a readable image"),
        ("too_many_pixels", 413, "pixels"),
        ("too_many_images", 400, "too many images"),
        ("twice", 400, "more than once"),
        ("sizes", 400, "same size"),
        ("body_too_large", 413, "over the limit"),
        ("not_multipart", 415, "multipart"),
        ("bad_query", 422, ""),
        ("extra_field", 400, "unexpected form field"),
    ],
)
def test_bad_requests_get_clear_4xx(client, case, status, words):
    files = _files(2)
    kwargs: dict = {"files": files}
    if case == "missing":
        kwargs["files"] = files[:2]
    elif case == "unknown":
        kwargs["files"] = files[:2] + [("C9", ("x.png", _png(5), "image/png"))]
    elif case == "not_image":
        kwargs["files"] = files[:2] + [("C3", ("c3.png", b"\x89PNG not really", "image/png"))]
    elif case == "too_many_pixels":
        kwargs["files"] = files[:2] + [("C3", ("c3.png", _png(6, 130), "image/png"))]
    elif case == "too_many_images":
        kwargs["files"] = files + [("C1", ("again.png", _png(7), "image/png"))]
    elif case == "twice":
        kwargs["files"] = files[:2] + [("C2", ("again.png", _png(7), "image/png"))]
    elif case == "sizes":
        kwargs["files"] = files[:2] + [("C3", ("c3.png", _png(8, 64), "image/png"))]
    elif case == "body_too_large":
        kwargs["files"] = files[:2] + [("C3", ("c3.png", os.urandom(250_000), "image/png"))]
    elif case == "not_multipart":
        kwargs = {"json": {"C1": "x"}}
    elif case == "extra_field":
        kwargs["data"] = {"colour": "red"}
    url = "/predict?maps=jpg" if case == "bad_query" else "/predict"
    r = client.post(url, **kwargs)
    assert r.status_code == status, r.text
    assert words in str(r.json()["detail"])


def test_bounded_memory_under_load(client):
    payloads = [_files(s) for s in range(4)]
    for i in range(10):  # warm-up: allocator pools, lazy imports
        assert client.post("/predict?maps=png", files=payloads[i % 4]).status_code == 200
    before = _rss_mib()
    bad = 0
    for i in range(60):
        if i % 5 == 4:
            bad += client.post("/predict", files=payloads[0][:2]).status_code == 400
        else:
            assert client.post("/predict?maps=png", files=payloads[i % 4]).status_code == 200
    growth = _rss_mib() - before
    assert bad == 12
    assert growth < 40, f"RSS grew by {growth:.1f} MiB over 60 requests"
    assert client.get("/health").status_code == 200
