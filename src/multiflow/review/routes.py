"""The review app's routes: each one authorizes, fetches its page's data (:mod:`multiflow.review.pages`)
and renders its template; no HTML here.

Endpoints are plain ``def`` functions, which FastAPI runs in its thread pool: SQLite, run files,
image decoding and the predictor never block the event loop. The only ``async`` code reads a
request body (:func:`json_body`, :func:`upload`), with a size limit, before the work goes to the pool.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at runtime.
import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from multiflow.errors import MultiflowError
from multiflow.review import pages
from multiflow.review.app import Review
from multiflow.review.labels import LABELS
from multiflow.review.pages import LABEL_TEXT, class_crumbs, complete, object_index
from multiflow.review.render import error_page
from multiflow.review.security import TOKEN_FIELD, TOKEN_HEADER, Refused, require_json
from multiflow.review.store import NotFound, apply_threshold, resolve_under

MAX_JSON_BYTES = 64 * 1024
router = APIRouter()


async def review(request: Request) -> Review:
    return request.app.state.review


# -------------------------------------------------------------------------------- errors, guard
def error_response(status: int, message: str, path: str) -> Response:
    """JSON ``{"detail": message}`` under ``/api/``, the HTML error page elsewhere."""
    if path.startswith("/api/"):
        return JSONResponse(status_code=status, content={"detail": message})
    return HTMLResponse(error_page(status, message), status_code=status)


def install(app) -> None:
    """The request guard (host; origin of state-changing requests) and the error handlers of ``app``."""
    from multiflow.deploy.serve import RequestError

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            request.app.state.review.guard.check_request(request.method, request.headers)
        except Refused as exc:
            return error_response(exc.status, exc.message, request.url.path)
        return await call_next(request)

    def handle(status_of, message_of):
        async def handler(request: Request, exc: Exception):
            r: Review = request.app.state.review
            return error_response(status_of(request, exc), r.scrub(message_of(exc)), request.url.path)
        return handler

    api = lambda request: request.url.path.startswith("/api/")  # noqa: E731
    app.add_exception_handler(NotFound, handle(lambda q, e: 404, lambda e: str(e.args[0] if e.args else e)))
    app.add_exception_handler(Refused, handle(lambda q, e: e.status, lambda e: e.message))
    app.add_exception_handler(RequestError, handle(lambda q, e: e.status, lambda e: e.message))
    app.add_exception_handler(MultiflowError, handle(lambda q, e: 400 if api(q) else 500, str))

    async def http_error(request: Request, exc: StarletteHTTPException):
        msg = f"no page at {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, msg, request.url.path)

    app.add_exception_handler(StarletteHTTPException, http_error)


# ------------------------------------------------------------------------------------- pages
@router.get("/", response_class=HTMLResponse)
def overview(r: Review = Depends(review)):
    p = pages.overview(r.store, r.labels)
    return r.html("overview.html", p, title=f"run {p['run']}", page="overview", crumbs=[(p["run"], "")])


@router.get("/c/{name}", response_class=HTMLResponse)
def class_page(name: str, filter: str = "all", defect: str = "", view: str = "", page: int = 1,
               r: Review = Depends(review)):
    p = pages.class_listing(r.store, r.labels, name, kind=filter, defect=defect, view=view, page=page,
                            page_size=r.settings.page_size)
    return r.html("class.html", p, title=name, page="class", crumbs=class_crumbs(r.run.name, name))


@router.get("/c/{name}/o/{i}", response_class=HTMLResponse)
def object_page(name: str, i: int, filter: str = "all", defect: str = "", view: str = "",
                r: Review = Depends(review)):
    p = pages.object_view(r.store, r.labels, name, i, kind=filter, defect=defect, view=view)
    return r.html("object.html", p, title=p["sample_id"], page="object",
                  crumbs=class_crumbs(r.run.name, name) + [(p["sample_id"], "")], data=p["data"])


@router.get("/c/{name}/threshold", response_class=HTMLResponse)
def threshold_page(name: str, r: Review = Depends(review)):
    p = pages.threshold_view(r.store, name)
    return r.html("threshold.html", p, title=f"{name} threshold", page="threshold",
                  crumbs=class_crumbs(r.run.name, name) + [("threshold", "")], data=p["data"])


def try_html(r: Review, d, result: dict[str, Any] | None) -> str:
    p = pages.try_form(d, r.settings.max_upload_bytes) | {"result": result}
    return r.html("try.html", p, title=f"{d.name}: try a part", page="try",
                  crumbs=class_crumbs(r.run.name, d.name) + [("try a part", "")])


@router.get("/c/{name}/try", response_class=HTMLResponse)
def try_page(name: str, sample: int | None = None, r: Review = Depends(review)):
    d = complete(r.store, name)
    result = None
    if sample is not None:
        images, sample_id = pages.sample_images(d, sample)
        result = r.predict(d, images, sample_id)
    return try_html(r, d, result)


async def upload(name: str, request: Request) -> dict[str, Any]:
    """The "try a part" form of a class: its files per field, after the size, type and token checks."""
    from multiflow.deploy.serve import RequestError

    r: Review = request.app.state.review
    d = await run_in_threadpool(complete, r.store, name)
    limit = r.settings.max_upload_bytes
    length = request.headers.get("content-length")
    if length is None:
        raise RequestError(411, "Content-Length is required")
    if not length.isdigit() or int(length) > limit:
        raise RequestError(413, f"upload of {length} bytes is over the limit of {limit} bytes")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError(415, "send the images as multipart/form-data, one file field per view")
    n = len(d.view_names)
    try:
        form = await request.form(max_files=n + 1, max_fields=n + 4, max_part_size=limit)
    except StarletteHTTPException as exc:
        raise RequestError(400, f"bad upload: {exc.detail}") from None
    try:
        token = form.get(TOKEN_FIELD)
        r.guard.check_token(token if isinstance(token, str) else None)
        files: dict[str, list[bytes]] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.setdefault(key, []).append(await value.read())
    finally:
        await form.close()
    return {"class": d, "files": files}


@router.post("/c/{name}/try", response_class=HTMLResponse)
def try_upload(name: str, form: dict = Depends(upload), r: Review = Depends(review)):
    from multiflow.deploy.serve import collect_views

    d = form["class"]
    images, _ = collect_views(form["files"], list(d.view_names), len(d.view_names), r.settings.max_image_pixels,
                              d.flips)
    return try_html(r, d, r.predict(d, images, "upload"))


# ---------------------------------------------------------------------------- pictures, files
@router.get("/img/{name}/{i}/{k}/{kind}")
def picture(name: str, i: int, k: int, kind: str, r: Review = Depends(review)):
    from multiflow.review.images import picture as make

    d = complete(r.store, name)
    data, media = make(d, object_index(d, i), k, kind, r.cache / name)
    return Response(data, media_type=media, headers={"Cache-Control": "max-age=3600"})


@router.get("/files/{path:path}")
def run_file(path: str, r: Review = Depends(review)):
    target = resolve_under(r.run, path)
    if not target.is_file() or target.name.endswith(".sqlite") or target.suffix in (".sqlite-wal", ".sqlite-shm"):
        raise NotFound(f"no file {path!r} in the run folder")
    return FileResponse(target)


@router.get("/labels.csv")
def labels_csv(r: Review = Depends(review)):
    return PlainTextResponse(r.labels.to_csv(), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{r.run.name}-labels.csv"'})


# ------------------------------------------------------------------------------------ JSON API
async def json_body(request: Request) -> dict[str, Any]:
    """The JSON object of a state-changing API request, after the token and content-type checks."""
    from multiflow.deploy.serve import RequestError

    r: Review = request.app.state.review
    r.guard.check_token(request.headers.get(TOKEN_HEADER))
    require_json(request.headers.get("content-type"))
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON_BYTES:
            raise RequestError(413, "request body over 64 KiB")
    try:
        body = json.loads(bytes(raw) or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    return body


@router.post("/api/{name}/threshold")
def set_threshold(name: str, body: dict = Depends(json_body), r: Review = Depends(review)):
    from multiflow.deploy.serve import RequestError

    d = complete(r.store, name)
    try:
        value = float(body.get("value"))
    except (TypeError, ValueError):
        raise RequestError(400, "value must be a number") from None
    who, reason = str(body.get("who") or ""), str(body.get("reason") or "")
    if not who.strip():
        raise RequestError(400, "who must name the person applying the threshold")
    unified = d.model_dir is not None and d.model_dir != d.folder  # a class of the run's unified model
    record = apply_threshold(d.model_dir or d.folder, value, who=who[:200], reason=reason[:2000],
                             class_name=d.name if unified else None)
    return {"class": name, "threshold": value, "record": record}


@router.post("/api/{name}/label")
def set_label(name: str, body: dict = Depends(json_body), r: Review = Depends(review)):
    from multiflow.deploy.serve import RequestError

    d = complete(r.store, name)
    try:
        i = object_index(d, int(body.get("index")))
    except (TypeError, ValueError):
        raise RequestError(400, "index must be the object's row number") from None
    label = str(body.get("label") or "")
    if label not in LABELS:
        raise RequestError(400, f"label must be one of {', '.join(LABELS)}")
    row = r.labels.add(name, d.sample_ids[i], label, note=str(body.get("note") or "")[:2000],
                       who=str(body.get("who") or ""))
    return {"stored": row, "text": LABEL_TEXT[label]}
