"""HTTP inference service (FastAPI): one trained class model, one sample per request.

Endpoints
---------
``GET /health``
    ``{"status": "ok", "category", "view_names", "threshold", "input_size", "limits"}``.
``POST /predict`` (``multipart/form-data``, one file field per view name, e.g. ``C1=@top.png``)
    the decision JSON of docs/deployment.md (``{"sample_id", "decision": "OK"|"NG"|"CHECK CAMERA"
    (or "UNKNOWN CLASS": a unified model), "product_decision", "sample_score", "threshold", "view_scores": {view: score or null},
    "missing_views", "camera_faults": [{"view", "fault", "reason", "other_view"?}], "aggregation"}``).
    A model trained with view dropout accepts any non-empty subset of its views (the others are
    listed in ``missing_views``); other models answer 400 naming the missing views. With ``?maps=png`` the JSON also holds
    ``"maps": {view: base64 PNG}`` (views that were scored): 8-bit grey images of the anomaly map (bilinearly upsampled to
    the input image size) with ``grey = 255 * (map - lo) / (hi - lo)`` clipped to ``[0, 255]``, and
    ``"map_range": [lo, hi]`` (the min and max over all views of the sample), so values can be
    recovered to 1/255 of that range. An optional form field ``sample_id`` names the sample; for a unified multi-class model
    (``<run>/unified``) an optional field ``class`` gives the object's class (default: identified).

Validation (every failure is a 4xx JSON ``{"detail": message}``; nothing reaches the model):
411 without ``Content-Length``; 413 for a body over ``max_request_bytes`` or an image over
``max_image_pixels`` (a decompression bomb included: refused from its header, before decoding);
415 for a body that is not multipart; 400 for a missing view, an unknown
field, a view given twice, more than ``max_images`` files, a part that is not an image, views of
different sizes; 422 for a bad query parameter. Input the model refuses while scoring
(:class:`~multiflow.errors.DataError`) is a 400; any other failure a 500 whose ``detail`` names
only the error type (the server log has the rest). No body carries an absolute server path
(:func:`public_message` keeps a file's name, drops its folders). The threshold and the
:class:`ServiceLimits` are checked with :func:`multiflow.numbers.check_number` (finite, in range).

The model is loaded once (:class:`multiflow.engine.predict.Predictor`, everything from the model's
bundle); uploads are decoded like the data sets decode files and go through the same
preprocessing (:mod:`multiflow.engine.preprocess`), so a sample scores here as in ``multiflow
test``. A model trained with mask files (``masks.provider=file``) cannot be served (an upload has
no mask file): :func:`create_app` refuses it. Requests are scored one at a time under a lock
(bounded memory; torch uses all its threads for one sample).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the annotations of the endpoint
# functions defined inside create_app, and string annotations could not be resolved there.
import base64
import io
import logging
import os
import re
import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from multiflow._optional import require

_log = logging.getLogger("multiflow.serve")

DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000


@dataclass(frozen=True)
class ServiceLimits:
    """Request limits. ``max_images`` defaults to the model's number of views."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_images: int | None = None

    def __post_init__(self) -> None:
        from multiflow.numbers import check_number

        check_number(self.max_request_bytes, "max_request_bytes", integer=True, gt=0)
        check_number(self.max_image_pixels, "max_image_pixels", integer=True, gt=0)
        if self.max_images is not None:
            check_number(self.max_images, "max_images", integer=True, gt=0)


#: an absolute POSIX path (``/srv/models/cap/model.json``) or Windows path (``C:\\models\\x``) in a message
_ABSOLUTE_PATH = re.compile(r"""(?<![\w.~:/\\])(?:[A-Za-z]:[\\/]|/)[^\s'"`,;:()\[\]{}<>|*?]*""")


def public_message(message: str) -> str:
    """``message`` without absolute server paths: each is replaced by its last part (the file or
    folder name), so an API error still says which file without showing where the server keeps it."""
    def last_part(m: re.Match) -> str:
        return m.group(0).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or "<path>"

    return _ABSOLUTE_PATH.sub(last_part, message)


class RequestError(Exception):
    """A client error: ``status`` (4xx) and a message for the JSON ``detail``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(data: bytes, *, name: str, max_pixels: int, flip: str | None = None) -> torch.Tensor:
    """Image bytes (PNG, JPEG, ...) -> ``(3, H, W)`` float32 RGB in ``[0, 1]``, decoded exactly as
    the data sets decode files (:func:`multiflow.data.images.read_image_bytes`: same colour
    conversion, then the model's load-time ``flip`` of this view).

    The size is read from the header before any pixel is decoded; an image over ``max_pixels``
    is refused (413) without decompressing it.
    """
    from multiflow.data.images import ImageTooLarge, read_image_bytes
    from multiflow.errors import DataError

    if not data:
        raise RequestError(400, f"view {name!r}: empty file")
    try:
        arr, _ = read_image_bytes(data, name=name, max_pixels=max_pixels, flip=flip)
    except ImageTooLarge as exc:
        raise RequestError(413, f"view {name!r}: {exc.args[0]}") from None
    except DataError as exc:
        raise RequestError(400, f"view {name!r}: not a readable image ({exc.args[0]})") from None
    return torch.from_numpy(arr)


def encode_map_png(values: np.ndarray, lo: float, hi: float) -> str:
    """``(H, W)`` float map -> base64 8-bit grey PNG, ``grey = round(255 * (v - lo) / (hi - lo))``."""
    from PIL import Image

    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    grey = np.clip(np.rint((values - lo) * scale), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def collect_views(files: dict[str, list[bytes]], view_names: list[str], max_images: int,
                  max_pixels: int, flips: dict[str, str] | None = None, *,
                  allow_missing: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Check the uploaded parts against the model's views; returns ``(images (V', 3, H, W), names)``
    in view order. ``allow_missing``: the model supports missing views (any non-empty subset)."""
    n_files = sum(len(v) for v in files.values())
    if n_files > max_images:
        raise RequestError(400, f"too many images: {n_files} (this model takes {len(view_names)}: {view_names})")
    unknown = sorted(k for k in files if k not in view_names)
    if unknown:
        raise RequestError(400, f"unknown view field(s) {unknown}; this model's views are {view_names}")
    twice = sorted(k for k, v in files.items() if len(v) > 1)
    if twice:
        raise RequestError(400, f"view(s) {twice} given more than once")
    missing = [v for v in view_names if v not in files]
    if missing and not allow_missing:
        raise RequestError(400, f"missing view(s) {missing}; this model was trained without view dropout "
                                f"(supports_missing_views false): send one image per view: {view_names}")
    given = [v for v in view_names if v in files]
    if not given:
        raise RequestError(400, f"no view given; send at least one of {view_names}")
    flips = flips or {}
    images = [decode_image(files[v][0], name=v, max_pixels=max_pixels, flip=flips.get(v)) for v in given]
    sizes = {tuple(t.shape[-2:]) for t in images}
    if len(sizes) > 1:
        raise RequestError(400, f"all views must have the same size, got {[tuple(t.shape[-2:]) for t in images]}")
    return torch.stack(images), given


def create_app(predictor: Any, *, limits: ServiceLimits | None = None):
    """The FastAPI application serving ``predictor`` (a loaded :class:`~multiflow.engine.predict.Predictor`)."""
    require("fastapi", purpose="the HTTP service")
    require("python_multipart", purpose="the HTTP service (multipart uploads)")
    from fastapi import FastAPI, Query, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from multiflow.errors import DataError, MultiflowError
    from multiflow.numbers import check_number

    limits = limits or ServiceLimits()
    if predictor.threshold is not None:  # None: a unified model's per-class thresholds (checked in its bundle)
        check_number(predictor.threshold, "threshold")  # a NaN threshold would pass every part
    if getattr(predictor, "preprocessor", None) is not None and predictor.preprocessor.needs_paths:
        from multiflow.errors import ConfigError

        raise ConfigError(
            f"{predictor.model_dir}: this model was trained and calibrated with mask files (masks.provider=file); "
            "an upload carries no mask files, so the service cannot score it as the threshold assumes. "
            "Use `multiflow predict` on a data set with its mask tree, or train with masks.provider=threshold/isnet"
        )
    view_names = list(predictor.view_names)
    flips = dict(getattr(getattr(predictor, "bundle", None), "flips", {}) or {})
    max_images = int(limits.max_images or len(view_names))
    lock = threading.Lock()
    app = FastAPI(title="multiflow inference", version="1")

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": public_message(exc.message)})

    @app.exception_handler(MultiflowError)
    async def _scoring_error(_: Request, exc: MultiflowError) -> JSONResponse:
        # bad input the predictor found (DataError: 400) or a fault of the server's model (500);
        # the log keeps the full message, the client gets it without absolute paths
        status = 400 if isinstance(exc, DataError) else 500
        _log.warning("POST /predict: %s: %s", type(exc).__name__, exc)
        return JSONResponse(status_code=status, content={"detail": public_message(str(exc))})

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        _log.error("internal error while serving a request", exc_info=exc)
        return JSONResponse(status_code=500, content={
            "detail": f"internal error ({type(exc).__name__}); the server log has the details"})

    def _score(images: torch.Tensor, given: list[str], sample_id: str, maps: str | None,
               class_name: str = "") -> dict[str, Any]:
        # a unified multi-class model takes the object's class (form field ``class``; else it identifies it)
        kw = {"class_name": class_name} if class_name else {}
        with lock, torch.inference_mode():
            pred = predictor.predict(images, given, sample_id, **kw)
        out = pred.as_dict() | {"aggregation": predictor.aggregation}
        if maps == "png":
            scored = [i for i in range(len(view_names)) if np.isfinite(pred.maps_full[i]).all()]
            vals = pred.maps_full[scored] if scored else np.zeros(1)
            lo, hi = float(vals.min()), float(vals.max())
            out["map_range"] = [lo, hi]
            out["maps"] = {view_names[i]: encode_map_png(pred.maps_full[i], lo, hi) for i in scored}
        return out

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "category": predictor.bundle.category,
            "view_names": view_names,
            "threshold": predictor.threshold,
            "threshold_warnings": predictor.bundle.threshold.warnings,
            "input_size": predictor.input_size,
            **({"classes": list(predictor.classes)} if hasattr(predictor, "classes") else {}),
            "limits": asdict(limits) | {"max_images": max_images},
        }

    @app.post("/predict")
    async def predict(request: Request, maps: str | None = Query(None, pattern="^png$")) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is None:
            raise RequestError(411, "Content-Length is required")
        if not length.isdigit() or int(length) > limits.max_request_bytes:
            raise RequestError(413, f"request body of {length} bytes is over the limit of {limits.max_request_bytes}")
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise RequestError(415, "send the views as multipart/form-data, one file field per view name")
        try:
            form = await request.form(max_files=max_images + 1, max_fields=max_images + 8,
                                      max_part_size=limits.max_request_bytes)
        except StarletteHTTPException as exc:
            raise RequestError(400, f"bad multipart body: {exc.detail}") from None
        try:
            files: dict[str, list[bytes]] = {}
            sample_id = ""
            class_name = ""
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files.setdefault(key, []).append(await value.read())
                elif key == "sample_id":
                    sample_id = str(value)[:200]
                elif key == "class" and hasattr(predictor, "classes"):  # a unified model's object class
                    class_name = str(value)[:200]
                else:
                    raise RequestError(400, f"unexpected form field {key!r} (views: {view_names}; or sample_id)")
        finally:
            await form.close()
        images, given = collect_views(files, view_names, max_images, limits.max_image_pixels, flips,
                                      allow_missing=bool(getattr(predictor, "supports_missing_views", False)))
        del files
        return await run_in_threadpool(_score, images, given, sample_id, maps, class_name)

    return app


def serve(model_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, threshold: float | None = None,
          limits: ServiceLimits | None = None, log_level: str = "info", device: str = "auto",
          precision: str = "fp32") -> None:
    """Load the model once (on ``device``, in ``precision``) and run the service with uvicorn until interrupted."""
    for module in ("fastapi", "python_multipart"):
        require(module, purpose="multiflow serve")
    uvicorn = require("uvicorn", purpose="multiflow serve")

    from multiflow.engine.unified_predict import open_predictor

    predictor = open_predictor(model_dir, threshold=threshold, device=device, precision=precision)
    uvicorn.run(create_app(predictor, limits=limits), host=host, port=port, log_level=log_level,
                limit_concurrency=64, timeout_keep_alive=5)
