"""Helpers of the review tests and ``benchmarks/bench_review.py``: a synthetic tested run, a test client.

A synthetic *tested* run folder for load tests of the review app (no training, no backbone):
:func:`synthetic_run` writes what ``multiflow fit`` + ``multiflow test`` leave in a run folder
that the review pages read (``config.yaml``, ``<class>/model.json``, ``scores.csv``,
``samples.json``, ``maps.npy``, ``metrics.json``, ``<run>/metrics.json``) plus the view images and
masks, with scores drawn so that defective objects tend to score higher. It has no
``model.safetensors``: "try a part" and the predictor are not available on it.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from multiflow._atomic import atomic_path, write_json, write_text
from multiflow.engine.bundle import FeaturesSpec, GraphSpec, MasksSpec, ModelBundle, ThresholdSpec, write_bundle
from multiflow.engine.outputs import write_scores_csv
from multiflow.engine.review_files import write_review_files


class _Record:
    def __init__(self, sample_id: str, defect: str, image_paths: list[str], mask_paths: list[str | None]) -> None:
        self.sample_id, self.defect = sample_id, defect
        self.image_paths, self.mask_paths = tuple(image_paths), tuple(mask_paths)


class _Samples:
    def __init__(self, samples: list[_Record]) -> None:
        self.samples, self.flips = samples, {}


def synthetic_run(run_dir: str | Path, *, category: str = "widget", n_objects: int = 1000, n_views: int = 5,
                  image_size: int = 256, grid: int = 16, defect_rate: float = 0.4, seed: int = 0) -> Path:
    """Write a tested run with ``n_objects`` objects of ``n_views`` views under ``run_dir``.

    Views are ``C1..C{n_views}``; images are ``image_size``-pixel JPEGs (``n_views`` distinct
    pictures shared by all objects, so writing 1,000 objects stays fast); maps are ``(grid, grid)``.
    """
    from multiflow.metrics.curves import auroc

    rng = np.random.default_rng(seed)
    run = Path(run_dir)
    folder = run / category
    img_dir = run / "_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    views = [f"C{k + 1}" for k in range(n_views)]
    yy, xx = np.mgrid[:image_size, :image_size] / image_size
    image_paths, mask_path = [], img_dir / "mask.png"
    for k in range(n_views):
        rgb = np.stack([np.sin(6 * xx + k), np.cos(5 * yy - k), np.sin(4 * (xx + yy) + 2 * k)], -1)
        p = img_dir / f"view{k}.jpg"
        with atomic_path(p) as tmp:
            Image.fromarray(((rgb + 1) * 127.5).astype(np.uint8)).save(tmp, quality=85)
        image_paths.append(str(p))
    with atomic_path(mask_path) as tmp:
        Image.fromarray((((xx - 0.5) ** 2 + (yy - 0.4) ** 2 < 0.02) * 255).astype(np.uint8)).save(tmp)
    codes = ["AK", "BX", "CH", "HS", "PS", "QS", "ZW"]
    labels = (rng.random(n_objects) < defect_rate).astype(np.int64)
    defects = [codes[int(rng.integers(len(codes)))] if lab else "OK" for lab in labels]
    view_labels = np.zeros((n_objects, n_views), dtype=np.int64)
    maps = rng.normal(0.0, 1.0, (n_objects, n_views, grid, grid)).astype(np.float32)
    for i in np.flatnonzero(labels):
        hit = rng.choice(n_views, size=int(rng.integers(1, n_views + 1)), replace=False)
        view_labels[i, hit] = 1
        r, c = rng.integers(0, grid - 3, size=2)
        maps[i, hit, r:r + 3, c:c + 3] += rng.uniform(1.0, 5.0)
    view_scores = maps.reshape(n_objects, n_views, -1).max(-1)
    scores = view_scores.max(1)
    threshold = float(np.quantile(scores[labels == 0], 0.95)) if (labels == 0).any() else float(scores.mean())
    records = [_Record(f"S{i:05d}", defects[i], image_paths,
                       [str(mask_path) if view_labels[i, k] else None for k in range(n_views)])
               for i in range(n_objects)]
    folder.mkdir(parents=True, exist_ok=True)
    write_text(run / "config.yaml", f"name: {run.name}\n")
    bundle = ModelBundle(
        category=category, view_names=list(views),
        graph=GraphSpec(view_names=list(views), edges=[]),
        features=FeaturesSpec(backbone="synthetic", input_size=grid, grid=[grid, grid]),
        masks=MasksSpec(provider="none"),
        threshold=ThresholdSpec(value=threshold, source="synthetic run (no trained flow)"),
    )
    write_bundle(folder, bundle)
    write_review_files(folder, _Samples(records), maps, views)
    write_scores_csv(folder / "scores.csv", [r.sample_id for r in records], defects, views, view_scores,
                     view_labels, scores, scores > threshold)
    both = 0 < labels.sum() < n_objects
    m = {"s_auroc": auroc(scores, labels) if both else None, "threshold": threshold}
    write_json(folder / "metrics.json", m)
    write_json(run / "metrics.json", {"per_class": {category: m}})
    return run


HOST, PORT = "127.0.0.1", 8765


def client(run: str | Path, **kw):
    """A ``TestClient`` of the review app on ``run`` as the browser at ``http://127.0.0.1:8765`` sees it
    (the Host the app allows); ``client.token``: the session token read from the overview page
    (empty if the overview is an error page),
    ``client.api_headers``: the headers the page's script sends with a JSON post."""
    from fastapi.testclient import TestClient

    from multiflow.review.app import ReviewSettings, create_app

    settings = kw.pop("settings", None) or ReviewSettings()
    c = TestClient(create_app(run, settings=settings, host=HOST, port=PORT), base_url=f"http://{HOST}:{PORT}", **kw)
    home = c.get("/")
    c.token = token_of(home.text) if home.status_code == 200 else ""  # error pages carry no token
    c.api_headers = {"X-Review-Token": c.token, "Origin": f"http://{HOST}:{PORT}"}
    return c


def token_of(page: str) -> str:
    """The session token embedded in a review page."""
    m = re.search(r'<meta name="review-token" content="([^"]+)">', page)
    assert m, "the page carries no review token"
    return m.group(1)


class LiveServer:
    """An app served by uvicorn from a thread on a free port of 127.0.0.1; ``make_app(host, port)``
    builds the app once the port is known (the review app derives its allowed Host headers from it)."""

    def __init__(self, make_app) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        app = make_app("127.0.0.1", self.port)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the review server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
