"""The review web application (FastAPI, server-rendered Jinja2 pages + ``static/review.js``).

Pages
-----
``/``                              run overview: metrics per class and per defect type
``/c/{class}``                     every test object by sample score; ``?filter=&defect=&view=&page=``
``/c/{class}/o/{i}``               object ``i`` (row of ``scores.csv``): all views, overlay, labels
``/c/{class}/threshold``           score histograms, threshold control with live counts, "Apply"
``/c/{class}/try``                 upload one image per view (or ``?sample=i``) -> decision and maps
``/labels.csv``                    operator labels (full history) as CSV

Pictures (``/img/{class}/{i}/{v}/{view.jpg|heat.png|outline.png|thumb.jpg}``) are made on demand
and cached under ``<run>/review/cache/``; run files (figures) are served from ``/files/...`` only
when the resolved path is inside the run folder. JSON endpoints: ``POST /api/{class}/threshold``
``{value, who, reason}`` and ``POST /api/{class}/label`` ``{index, label, note, who}``.

Layout: :mod:`~multiflow.review.routes` (fetch and authorize), :mod:`~multiflow.review.pages`
(the data of each page), ``templates/`` (the HTML, :mod:`~multiflow.review.render`),
:mod:`~multiflow.review.security` (host, origin and token checks). Every request must name this
server in its ``Host`` header; every state-changing request must come from this server's own
pages (``Origin``/``Referer``) and carry the session token; the JSON endpoints take only
``application/json``. Blocking work (SQLite, files, image decoding, the predictor) runs in the
thread pool, never in the event loop.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multiflow.review.labels import LabelStore
from multiflow.review.render import render
from multiflow.review.security import Guard, allowed_hosts
from multiflow.review.store import RunStore, TestedClass

STATIC = Path(__file__).with_name("static")
# an absolute path of two or more components (its last component is kept)
_ABS_PATH = re.compile(r"(?<![\w.~-])(?:/[^\s'\"/:;,()\[\]<>]+)+/([^\s'\"/:;,()\[\]<>]+)")


@dataclass(frozen=True)
class ReviewSettings:
    """Limits and page size of the review app; ``device``: where "try a part" scores an upload
    (:func:`multiflow.device.resolve_device`: ``auto``, ``cpu``, ``cuda``, ``cuda:N``);
    ``allow_hosts``: further host names the server may be reached under
    (:func:`~multiflow.review.security.allowed_hosts`)."""

    page_size: int = 100
    max_upload_bytes: int = 64 * 2**20
    max_image_pixels: int = 25_000_000
    device: str = "auto"
    allow_hosts: tuple[str, ...] = ()


@dataclass
class Review:
    """What one running review app serves: the run, its labels, the picture cache, the settings,
    the request guard and the "try a part" predictors (one per class, reloaded when the model changes)."""

    store: RunStore
    labels: LabelStore
    settings: ReviewSettings
    guard: Guard
    predictors: dict[str, tuple[tuple, Any]] = field(default_factory=dict)
    predict_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def run(self) -> Path:
        return self.store.run_dir

    @property
    def cache(self) -> Path:
        return self.run / "review" / "cache"

    def html(self, template: str, p: dict[str, Any], *, title: str, page: str, crumbs: list[tuple[str, str]],
             data: Any = None) -> str:
        """A page: ``template`` with its data ``p`` (and ``data`` for the page's script)."""
        extra = {} if data is None else {"data": data}
        return render(template, p=p, title=title, page=page, crumbs=crumbs, token=self.guard.token, **extra)

    def scrub(self, message: str) -> str:
        """``message`` without absolute server paths: paths in the run folder become relative to it,
        any other absolute path is cut to its file name."""
        run = str(self.run)
        message = message.replace(run + os.sep, "").replace(run, self.run.name)
        return _ABS_PATH.sub(lambda m: m.group(1), message)

    def predictor(self, d: TestedClass):
        """The :class:`~multiflow.engine.predict.Predictor` of a class (reloaded when its model files change)."""
        from multiflow.engine.unified_predict import open_predictor

        model_dir = d.model_dir or d.folder
        stamp = tuple((model_dir / f).stat().st_mtime_ns for f in ("model.json", "model.safetensors"))
        with self.predict_lock:
            hit = self.predictors.get(d.name)
            if hit is None or hit[0] != stamp:
                # parts are tried in any order here, not in acquisition order: no frozen-frame check
                hit = (stamp, open_predictor(model_dir, class_name=d.name if model_dir != d.folder else None,
                                             frozen_check=False, device=self.settings.device))
                self.predictors[d.name] = hit
            return hit[1]

    def predict(self, d: TestedClass, images, title: str) -> dict[str, Any]:
        """Score ``images`` ``(V, 3, H, W)`` with the class's predictor: the "try a part" result data."""
        import torch

        from multiflow.review.pages import try_result

        pred_ = self.predictor(d)
        with self.predict_lock, torch.inference_mode():
            pred = pred_.predict(images, list(d.view_names), title)
        return try_result(d, pred, images, pred_.aggregation)


def create_app(run_dir: str | Path, *, settings: ReviewSettings | None = None, host: str = "127.0.0.1",
               port: int = 8765):
    """The FastAPI application reviewing the run folder ``run_dir``, to be served at ``host:port``
    (the ``Host`` headers it accepts are derived from them: :func:`~multiflow.review.security.allowed_hosts`)."""
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    from multiflow.review import routes

    settings = settings or ReviewSettings()
    store = RunStore(run_dir)
    review = Review(store=store, labels=LabelStore(store.run_dir / "review" / "labels.sqlite"), settings=settings,
                    guard=Guard(hosts=allowed_hosts(host, port, settings.allow_hosts)))
    app = FastAPI(title="multiflow review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = review
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(routes.router)
    routes.install(app)
    return app


def serve_review(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8765,
                 settings: ReviewSettings | None = None, log_level: str = "warning") -> None:
    """Run the review app with uvicorn until interrupted; prints its URL first."""
    import uvicorn

    app = create_app(run_dir, settings=settings, host=host, port=port)
    shown = f"[{host}]" if ":" in host else host
    print(f"multiflow review: http://{shown}:{port}/  (run {Path(run_dir).resolve()}; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=64, timeout_keep_alive=5)
