"""The review web application (FastAPI, server-rendered HTML + ``static/review.js``).

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
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at runtime.
import base64
import html
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np

from multiflow.errors import DataError, MultiflowError
from multiflow.review.labels import LABELS, LabelStore
from multiflow.review.store import FILTERS, ClassData, NotFound, RunStore, apply_threshold, resolve_under

STATIC = Path(__file__).with_name("static")
LABEL_TEXT = {"confirmed_defect": "confirmed defect", "false_alarm": "false alarm", "unsure": "unsure"}


@dataclass(frozen=True)
class ReviewSettings:
    """Limits and page size of the review app; ``device``: where "try a part" scores an upload
    (:func:`multiflow.device.resolve_device`: ``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""

    page_size: int = 100
    max_upload_bytes: int = 64 * 2**20
    max_image_pixels: int = 25_000_000
    device: str = "auto"


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def seg(name: str) -> str:
    """``name`` as one URL path segment (percent-encoded)."""
    return quote(name, safe="")


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, (float, np.floating)) else esc(x)


def pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def layout(title: str, body: str, *, page: str, crumbs: list[tuple[str, str]] = (), data: Any = None) -> str:
    nav = " / ".join(f'<a href="{esc(u)}">{esc(t)}</a>' if u else esc(t) for t, u in crumbs)
    safe = "" if data is None else json.dumps(data).replace("</", "<\\/")
    blob = "" if data is None else f'<script type="application/json" id="page-data">{safe}</script>'
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="stylesheet" href="/static/review.css"></head>'
            f'<body data-page="{page}"><header><a class="brand" href="/">multiflow review</a>'
            f'<nav>{nav}</nav></header><main>{body}</main>{blob}'
            '<script src="/static/review.js"></script></body></html>')


def error_page(status: int, message: str) -> tuple[int, str]:
    title = {404: "Not found", 413: "Too large", 400: "Bad request"}.get(status, "Error")
    return status, layout(f"{status} {title}", f'<h1>{status} {esc(title)}</h1><p class="error">{esc(message)}</p>'
                          '<p><a href="/">Back to the run</a></p>', page="error")


def create_app(run_dir: str | Path, *, settings: ReviewSettings | None = None):
    """The FastAPI application reviewing the run folder ``run_dir``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from multiflow.deploy.serve import RequestError

    settings = settings or ReviewSettings()
    store = RunStore(run_dir)
    run = store.run_dir
    labels = LabelStore(run / "review" / "labels.sqlite")
    cache = run / "review" / "cache"
    predictors: dict[str, tuple[tuple, Any]] = {}
    predict_lock = threading.Lock()
    app = FastAPI(title="multiflow review", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def html_error(status: int, message: str, request: Request):
        if request.url.path.startswith("/api/"):
            return JSONResponse(status_code=status, content={"detail": message})
        code, text = error_page(status, message)
        return HTMLResponse(text, status_code=code)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return html_error(404, str(exc.args[0] if exc.args else exc), request)

    @app.exception_handler(RequestError)
    async def _bad_request(request: Request, exc: RequestError):
        return html_error(exc.status, exc.message, request)

    @app.exception_handler(MultiflowError)
    async def _broken(request: Request, exc: MultiflowError):
        return html_error(400 if request.url.path.startswith("/api/") else 500, str(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        msg = f"no page at {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return html_error(exc.status_code, msg, request)

    def complete(name: str) -> ClassData:
        data = store.get(name)
        if not data.complete:
            raise NotFound(f"class {name!r} is {data.reason}")
        return data

    def obj(data: ClassData, i: int) -> int:
        if not 0 <= i < len(data.sample_ids):
            raise NotFound(f"class {data.name!r} has no test object #{i} (it has {len(data.sample_ids)})")
        return i

    def class_crumbs(name: str) -> list[tuple[str, str]]:
        return [(run.name, "/"), (name, f"/c/{seg(name)}")]

    # ------------------------------------------------------------------------------- overview
    @app.get("/", response_class=HTMLResponse)
    def overview():
        names = store.class_names()
        rm = store.run_metrics()
        rows, defect_rows = [], []
        cols = [("s_auroc", "S-AUROC"), ("i_auroc", "I-AUROC"), ("p_auroc", "P-AUROC"), ("aupro", "AUPRO"),
                ("s_ap", "S-AP"), ("i_ap", "I-AP")]
        current = labels.current()
        for name in names:
            d = store.get(name)
            if not d.complete:
                rows.append(f'<tr class="incomplete"><td>{esc(name)}</td><td colspan="{len(cols) + 4}">'
                            f'incomplete: {esc(d.reason)}</td></tr>')
                continue
            m = d.metrics or {}
            ng = d.decisions
            fp = int(((d.labels == 0) & ng).sum())
            fn = int(((d.labels == 1) & ~ng).sum())
            n_lab = sum(1 for (c, _) in current if c == name)
            rows.append(f'<tr><td><a href="/c/{esc(seg(name))}">{esc(name)}</a></td><td>{len(d.sample_ids)}</td>'
                        + "".join(f"<td>{pct(m.get(k))}</td>" for k, _ in cols)
                        + f'<td>{fmt(d.threshold)}</td><td><a href="/c/{esc(seg(name))}?filter=fp">{fp}</a> / '
                        f'<a href="/c/{esc(seg(name))}?filter=fn">{fn}</a></td><td>{n_lab}</td></tr>')
            for code, r in sorted((m.get("per_defect") or {}).items()):
                defect_rows.append(f'<tr><td>{esc(name)}</td><td><a href="/c/{esc(seg(name))}?defect={esc(code)}">'
                                   f'{esc(code)}</a></td><td>{esc(r.get("num_samples"))}</td>'
                                   f'<td>{pct(r.get("s_auroc"))}</td><td>{pct(r.get("i_auroc"))}</td></tr>')
        status = ("" if rm is not None else
                  '<p class="notice" id="run-incomplete">This run is incomplete: no run metrics yet '
                  '(training or <code>multiflow test</code> has not finished).</p>')
        if not names:
            status = ('<p class="notice" id="run-incomplete">This run is incomplete: no trained class model yet '
                      '(<code>&lt;class&gt;/model.json</code>).</p>')
        body = (f"<h1>Run {esc(run.name)}</h1>{status}"
                '<h2>Classes</h2><table id="classes"><thead><tr><th>class</th><th>objects</th>'
                + "".join(f"<th>{t}</th>" for _, t in cols)
                + "<th>threshold</th><th>false alarms / misses</th><th>labelled</th></tr></thead><tbody>"
                + "".join(rows) + "</tbody></table>"
                + ('<h2>Per defect type</h2><table id="defects"><thead><tr><th>class</th><th>defect</th>'
                   "<th>objects</th><th>S-AUROC</th><th>I-AUROC</th></tr></thead><tbody>"
                   + "".join(defect_rows) + "</tbody></table>" if defect_rows else "")
                + '<p><a href="/labels.csv" download>Export operator labels (CSV)</a></p>')
        return layout(f"run {run.name}", body, page="overview", crumbs=[(run.name, "")])

    # ---------------------------------------------------------------------------- class page
    def filter_query(kind: str, defect: str, view: str) -> dict[str, str]:
        return {k: v for k, v in (("filter", kind), ("defect", defect), ("view", view)) if v and v != "all"}

    @app.get("/c/{name}", response_class=HTMLResponse)
    def class_page(name: str, filter: str = "all", defect: str = "", view: str = "", page: int = 1):
        d = store.get(name)
        if not d.complete:
            body = (f'<h1>{esc(name)}</h1><p class="notice" id="class-incomplete">This class is incomplete: '
                    f"{esc(d.reason)}.</p>")
            return layout(name, body, page="class", crumbs=class_crumbs(name))
        if defect and defect not in set(d.defects):
            raise NotFound(f"class {name!r} has no defect code {defect!r}")
        idx = d.select(filter, defect=defect, view=view)
        size = settings.page_size
        pages = max(1, -(-len(idx) // size))
        if not 1 <= page <= pages:
            raise NotFound(f"page {page} does not exist (1..{pages})")
        shown = idx[(page - 1) * size: page * size]
        q = filter_query(filter, defect, view)
        qs = ("?" + urlencode(q)) if q else ""
        current = labels.current(name)
        ng, dv = d.decisions, d.deciding_view
        rows = []
        for rank, i in enumerate(shown, start=(page - 1) * size + 1):
            i = int(i)
            lab = current.get((name, d.sample_ids[i]))
            kind = ("fp" if ng[i] and not d.labels[i] else "fn" if d.labels[i] and not ng[i] else "")
            thumbs = "".join(
                f'<img loading="lazy" width="96" height="96" alt="{esc(v)}" title="{esc(v)}: {d.view_scores[i, k]:.3f}"'
                f' class="{"decided" if k == dv[i] else ""}" src="/img/{esc(seg(name))}/{i}/{k}/thumb.jpg">'
                for k, v in enumerate(d.view_names))
            rows.append(
                f'<tr class="{kind}" data-index="{i}"><td>{rank}</td><td class="thumbs">{thumbs}</td>'
                f'<td><a class="obj" href="/c/{esc(seg(name))}/o/{i}{esc(qs)}">{esc(d.sample_ids[i])}</a></td>'
                f"<td>{esc(d.defects[i])}</td><td>{'anomalous' if d.labels[i] else 'normal'}</td>"
                f'<td class="decision {"ng" if ng[i] else "ok"}">{"NG" if ng[i] else "OK"}</td>'
                f"<td>{esc(LABEL_TEXT[lab['label']]) if lab else ''}</td><td>{d.scores[i]:.3f}</td>"
                + "".join(f'<td class="{"decided" if k == dv[i] else ""}">{d.view_scores[i, k]:.3f}</td>'
                          for k in range(len(d.view_names))) + "</tr>")
        opts = "".join(f'<option value="{f}"{" selected" if f == filter else ""}>{f}</option>' for f in FILTERS)
        dopts = '<option value="">all defects</option>' + "".join(
            f'<option value="{esc(c)}"{" selected" if c == defect else ""}>{esc(c)}</option>'
            for c in sorted(set(d.defects)))
        vopts = '<option value="">any deciding view</option>' + "".join(
            f'<option value="{esc(v)}"{" selected" if v == view else ""}>{esc(v)}</option>' for v in d.view_names)

        def page_link(p: int, text: str) -> str:
            return f'<a class="page" href="/c/{esc(seg(name))}?{esc(urlencode(q | {"page": p}))}">{text}</a>'

        pager = (f'<span id="pager">page {page} of {pages} '
                 + (page_link(page - 1, "&larr; previous") if page > 1 else "")
                 + (" " + page_link(page + 1, "next &rarr;") if page < pages else "") + "</span>")
        body = (f"<h1>{esc(name)}</h1><p>threshold {d.threshold:.4f} &middot; "
                f'<a href="/c/{esc(seg(name))}/threshold">threshold</a> &middot; <a href="/c/{esc(seg(name))}/try">try a part</a></p>'
                f'<form id="filters" method="get"><label>show <select name="filter">{opts}</select></label> '
                f'<label><select name="defect">{dopts}</select></label> <label><select name="view">{vopts}</select>'
                f'</label> <button type="submit">filter</button></form>'
                f'<p><span id="count">{len(idx)}</span> of {len(d.sample_ids)} objects, highest score first. {pager}</p>'
                '<table id="objects"><thead><tr><th>#</th><th>views</th><th>object</th><th>defect</th><th>truth</th>'
                "<th>decision</th><th>operator</th><th>score</th>"
                + "".join(f"<th>{esc(v)}</th>" for v in d.view_names)
                + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
        return layout(name, body, page="class", crumbs=class_crumbs(name))

    # --------------------------------------------------------------------------- object page
    @app.get("/c/{name}/o/{i}", response_class=HTMLResponse)
    def object_page(name: str, i: int, filter: str = "all", defect: str = "", view: str = ""):
        d = complete(name)
        i = obj(d, i)
        idx = d.select(filter, defect=defect, view=view)
        pos = np.flatnonzero(idx == i)
        q = filter_query(filter, defect, view)
        qs = ("?" + urlencode(q)) if q else ""
        prev_url = next_url = ""
        where = "not in the current filter"
        if len(pos):
            p = int(pos[0])
            where = f"{p + 1} of {len(idx)} in the current filter"
            if p > 0:
                prev_url = f"/c/{seg(name)}/o/{int(idx[p - 1])}{qs}"
            if p + 1 < len(idx):
                next_url = f"/c/{seg(name)}/o/{int(idx[p + 1])}{qs}"
        ng = bool(d.decisions[i])
        dv = int(d.deciding_view[i])
        sid = d.sample_ids[i]
        views = []
        for k, v in enumerate(d.view_names):
            has_mask = d.samples[i]["mask_paths"][k] is not None
            base = f"/img/{esc(seg(name))}/{i}/{k}"
            views.append(
                f'<figure class="view{" decided" if k == dv else ""}" data-view="{esc(v)}">'
                f'<figcaption>{esc(v)}: <b>{d.view_scores[i, k]:.3f}</b>{" (decided)" if k == dv else ""}'
                f'{" &middot; defect" if d.view_labels[i, k] else ""}</figcaption>'
                f'<a href="{base}/view.jpg" target="_blank"><div class="stack"><img class="base" src="{base}/view.jpg" alt="{esc(v)}">'
                f'<img class="heat" src="{base}/heat.png" alt="">'
                + (f'<img class="gt" src="{base}/outline.png" alt="">' if has_mask else "")
                + "</div></a></figure>")
        hist = labels.history(name, sid)
        cur = hist[-1] if hist else None
        hist_html = "".join(f"<li>{esc(h['at'])} {esc(h['who'])}: <b>{esc(LABEL_TEXT[h['label']])}</b> {esc(h['note'])}</li>"
                            for h in reversed(hist))
        buttons = "".join(f'<label><input type="radio" name="label" value="{k}"'
                          f'{" checked" if cur and cur["label"] == k else ""}> {LABEL_TEXT[k]}</label> ' for k in LABELS)
        body = (f'<h1>{esc(sid)}</h1><p class="summary">defect <b>{esc(d.defects[i])}</b> &middot; truth '
                f'<b>{"anomalous" if d.labels[i] else "normal"}</b> &middot; decision '
                f'<b id="decision" class="decision {"ng" if ng else "ok"}">{"NG" if ng else "OK"}</b> &middot; score '
                f"<b>{d.scores[i]:.3f}</b> (threshold {d.threshold:.3f}) &middot; decided by <b id=\"decided-by\">"
                f"{esc(d.view_names[dv])}</b></p>"
                f'<p class="nav"><a id="prev" href="{esc(prev_url)}"{"" if prev_url else " hidden"}>&larr; previous</a> '
                f'<span id="position">{esc(where)}</span> '
                f'<a id="next" href="{esc(next_url)}"{"" if next_url else " hidden"}>next &rarr;</a> '
                f'<a href="/c/{esc(seg(name))}{esc(qs)}">back to the list</a> <span class="hint">keys: &larr; / &rarr; '
                "or j / k</span></p>"
                '<p class="controls"><label>overlay opacity <input id="opacity" type="range" min="0" max="100" value="45">'
                '</label> <label><input id="gt-toggle" type="checkbox" checked> ground-truth outline</label></p>'
                f'<div class="views" style="--n:{len(d.view_names)}">{"".join(views)}</div>'
                f'<h2>Operator label</h2><form id="label-form" data-index="{i}" data-class="{esc(name)}">{buttons}'
                '<br><input name="who" placeholder="your name" required> <input name="note" size="60" placeholder="note">'
                ' <button type="submit">save label</button> <span id="label-status"></span></form>'
                f'<p>current: <b id="current-label">{esc(LABEL_TEXT[cur["label"]]) if cur else "none"}</b></p>'
                f'<ul id="label-history">{hist_html}</ul>')
        crumbs = class_crumbs(name) + [(sid, "")]
        return layout(sid, body, page="object", crumbs=crumbs, data={"prev": prev_url, "next": next_url})

    # ------------------------------------------------------------------------------ pictures
    @app.get("/img/{name}/{i}/{k}/{kind}")
    def picture(name: str, i: int, k: int, kind: str):
        from multiflow.data.ground_truth import native_size
        from multiflow.data.images import read_mask_array
        from multiflow.review import images as im

        d = complete(name)
        i = obj(d, i)
        if not 0 <= k < len(d.view_names):
            raise NotFound(f"class {name!r} has no view #{k}")
        s = d.samples[i]
        flip = d.flips.get(d.view_names[k])
        lo, hi = d.map_range
        folder = cache / name
        if kind == "view.jpg":
            if flip is None and Path(s["image_paths"][k]).suffix.lower() in (".jpg", ".jpeg"):
                return Response(Path(s["image_paths"][k]).read_bytes(), media_type="image/jpeg")
            data = im.cached(folder / f"view_{i}_{k}.jpg",
                             lambda: im.encode(im.Image.fromarray(im.view_rgb(s["image_paths"][k], flip)), "JPEG"))
            return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})
        if kind == "thumb.jpg":
            data = im.cached(folder / f"thumb_{i}_{k}.jpg", lambda: im.thumbnail_jpeg(
                im.small_rgb(s["image_paths"][k], flip), np.asarray(d.maps[i, k], dtype=np.float32), lo, hi))
            return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})
        if kind == "heat.png":
            size = native_size(s["image_paths"][k])
            data = im.cached(folder / f"heat_{i}_{k}.png",
                             lambda: im.heat_png(np.asarray(d.maps[i, k], dtype=np.float32), size, lo, hi))
            return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
        if kind == "outline.png":
            mp = s["mask_paths"][k]
            if mp is None:
                raise NotFound(f"view {d.view_names[k]!r} of {s['sample_id']!r} has no ground-truth mask")
            data = im.cached(folder / f"outline_{i}_{k}.png",
                             lambda: im.outline_png(read_mask_array(mp, flip=flip)[0]))
            return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
        raise NotFound(f"unknown picture {kind!r} (view.jpg, thumb.jpg, heat.png, outline.png)")

    @app.get("/files/{path:path}")
    def run_file(path: str):
        from fastapi.responses import FileResponse

        target = resolve_under(run, path)
        if not target.is_file():
            raise NotFound(f"no file {path!r} in the run folder")
        if target.name.endswith(".sqlite") or target.suffix in (".sqlite-wal", ".sqlite-shm"):
            raise NotFound(f"no file {path!r} in the run folder")
        return FileResponse(target)

    # ----------------------------------------------------------------------------- threshold
    @app.get("/c/{name}/threshold", response_class=HTMLResponse)
    def threshold_page(name: str):
        d = complete(name)
        data = {"class": name, "threshold": d.threshold, "normal": d.scores[d.labels == 0].tolist(),
                "anomalous": d.scores[d.labels == 1].tolist(), "history": d.threshold_history}
        lo, hi = float(d.scores.min()), float(d.scores.max())
        pad = 0.05 * (hi - lo or 1.0)
        lo, hi = min(lo - pad, d.threshold), max(hi + pad, d.threshold)
        step = (hi - lo) / 1000
        hist = "".join(f"<li>{esc(h.get('when'))} {esc(h.get('who'))}: {fmt(h.get('previous'), 4)} &rarr; "
                       f"{fmt(h.get('value'), 4)} ({esc(h.get('reason'))})</li>" for h in reversed(d.threshold_history))
        body = (f"<h1>{esc(name)}: threshold</h1>"
                f'<p>current threshold of the class model: <b id="current">{d.threshold:.4f}</b></p>'
                '<div class="charts"><canvas id="hist" width="640" height="260"></canvas>'
                '<canvas id="roc" width="260" height="260"></canvas></div>'
                f'<p><label>threshold <input id="t-range" type="range" min="{lo}" max="{hi}" step="{step}" '
                f'value="{d.threshold}"></label> <input id="t-value" type="number" step="any" value="{d.threshold:.6f}"></p>'
                '<table id="counts"><tr><th>false alarms</th><th>misses</th><th>true defects found</th>'
                "<th>good passed</th><th>FPR</th><th>TPR</th></tr><tr><td id=\"fp\"></td><td id=\"fn\"></td>"
                '<td id="tp"></td><td id="tn"></td><td id="fpr"></td><td id="tpr"></td></tr></table>'
                '<form id="apply-form"><input name="who" placeholder="your name" required> '
                '<input name="reason" size="50" placeholder="reason"> <button type="submit">Apply to the class model'
                '</button> <span id="apply-status"></span></form>'
                f'<h2>History</h2><ul id="threshold-history">{hist}</ul>')
        return layout(f"{name} threshold", body, page="threshold", crumbs=class_crumbs(name) + [("threshold", "")],
                      data=data)

    @app.post("/api/{name}/threshold")
    async def set_threshold(name: str, request: Request):
        d = complete(name)
        body = await json_body(request)
        try:
            value = float(body.get("value"))
        except (TypeError, ValueError):
            raise RequestError(400, "value must be a number") from None
        who, reason = str(body.get("who") or ""), str(body.get("reason") or "")
        if not who.strip():
            raise RequestError(400, "who must name the person applying the threshold")
        record = apply_threshold(d.folder, value, who=who[:200], reason=reason[:2000])
        return {"class": name, "threshold": value, "record": record}

    @app.post("/api/{name}/label")
    async def set_label(name: str, request: Request):
        d = complete(name)
        body = await json_body(request)
        try:
            i = obj(d, int(body.get("index")))
        except (TypeError, ValueError):
            raise RequestError(400, "index must be the object's row number") from None
        label = str(body.get("label") or "")
        if label not in LABELS:
            raise RequestError(400, f"label must be one of {', '.join(LABELS)}")
        row = labels.add(name, d.sample_ids[i], label, note=str(body.get("note") or "")[:2000],
                         who=str(body.get("who") or ""))
        return {"stored": row, "text": LABEL_TEXT[label]}

    async def json_body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > 64 * 1024:
            raise RequestError(413, "request body over 64 KiB")
        try:
            body = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "the body must be JSON") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        return body

    @app.get("/labels.csv")
    def labels_csv():
        return PlainTextResponse(labels.to_csv(), media_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="{run.name}-labels.csv"'})

    # ----------------------------------------------------------------------------- try a part
    def predictor_for(d: ClassData):
        from multiflow.engine.predict import Predictor

        stamp = tuple((d.folder / f).stat().st_mtime_ns for f in ("model.json", "model.safetensors"))
        with predict_lock:
            hit = predictors.get(d.name)
            if hit is None or hit[0] != stamp:
                # parts are tried in any order here, not in acquisition order: no frozen-frame check
                hit = (stamp, Predictor(d.folder, frozen_check=False, device=settings.device))
                predictors[d.name] = hit
            return hit[1]

    def result_html(d: ClassData, images, title: str) -> str:
        import torch

        from multiflow.review import images as im

        pred_ = predictor_for(d)
        with predict_lock, torch.inference_mode():
            pred = pred_.predict(images, list(d.view_names), title)
        lo, hi = d.map_range
        scores = np.asarray(pred.view_scores, dtype=np.float64)
        best = int(np.nanargmax(scores)) if np.isfinite(scores).any() else -1  # -1: no view scored
        figs = []
        for k, v in enumerate(pred.view_names):
            rgb = (images[k].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            over = (0.55 * rgb + 0.45 * im._colour(pred.maps[k], rgb.shape[:2], lo, hi) + 0.5).astype(np.uint8)
            b64 = base64.b64encode(im.encode(im.Image.fromarray(over), "JPEG")).decode("ascii")
            figs.append(f'<figure class="view{" decided" if k == best else ""}"><figcaption>{esc(v)}: '
                        f'<b>{pred.view_scores[k]:.3f}</b></figcaption><img src="data:image/jpeg;base64,{b64}" '
                        f'alt="{esc(v)}"></figure>')
        faults = "".join(f"<li>{esc(f['view'])}: {esc(f['fault'])} ({esc(f.get('reason', ''))})</li>"
                         for f in pred.camera_faults)
        faults = f'<p>camera faults (not scored as product defects):</p><ul id="try-faults">{faults}</ul>' if faults else ""
        decided = esc(pred.view_names[best]) if best >= 0 else "no view"
        return (f'<h2>Result: <span id="try-decision" class="decision {pred.decision.lower().replace(" ", "-")}">'
                f'{pred.decision}</span></h2>' + faults +
                f'<p>sample score <b id="try-score">{pred.sample_score:.4f}</b> (threshold {pred.threshold:.4f}, '
                f"{esc(pred_.aggregation)} over views; decided by {decided})</p>"
                f'<div class="views" style="--n:{len(pred.view_names)}">{"".join(figs)}</div>')

    def try_form(d: ClassData, result: str = "") -> str:
        inputs = "".join(f'<label>{esc(v)} <input type="file" name="{esc(v)}" accept="image/*" required></label><br>'
                         for v in d.view_names)
        picks = "".join(f'<option value="{i}">{esc(d.sample_ids[i])} ({esc(d.defects[i])})</option>'
                        for i in d.order[:2000])
        return (f"<h1>{esc(d.name)}: try a part</h1>"
                f'<form id="upload" method="post" enctype="multipart/form-data" action="/c/{esc(seg(d.name))}/try">'
                f"<p>one image per camera (at most {settings.max_upload_bytes // 2**20} MiB in all):</p>{inputs}"
                '<button type="submit">score</button></form>'
                f'<form id="pick" method="get"><label>or a test sample <select name="sample">{picks}</select></label>'
                " <button type=\"submit\">score</button></form>" + result)

    @app.get("/c/{name}/try", response_class=HTMLResponse)
    def try_page(name: str, sample: int | None = None):
        import torch

        from multiflow.data.images import read_image_array

        d = complete(name)
        result = ""
        if sample is not None:
            i = obj(d, sample)
            s = d.samples[i]
            arrs = [read_image_array(p, flip=d.flips.get(v))[0] for p, v in zip(s["image_paths"], d.view_names)]
            if len({a.shape for a in arrs}) > 1:
                raise DataError(f"views of {s['sample_id']!r} have different sizes", s["image_paths"][0])
            result = result_html(d, torch.from_numpy(np.stack(arrs)), s["sample_id"])
        return layout(f"{name}: try a part", try_form(d, result), page="try",
                      crumbs=class_crumbs(name) + [("try a part", "")])

    @app.post("/c/{name}/try", response_class=HTMLResponse)
    async def try_upload(name: str, request: Request):
        from fastapi.concurrency import run_in_threadpool

        from multiflow.deploy.serve import collect_views

        d = complete(name)
        length = request.headers.get("content-length")
        if length is None:
            raise RequestError(411, "Content-Length is required")
        if not length.isdigit() or int(length) > settings.max_upload_bytes:
            raise RequestError(413, f"upload of {length} bytes is over the limit of {settings.max_upload_bytes} bytes")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise RequestError(415, "send the images as multipart/form-data, one file field per view")
        n = len(d.view_names)
        try:
            form = await request.form(max_files=n + 1, max_fields=n + 4, max_part_size=settings.max_upload_bytes)
        except StarletteHTTPException as exc:
            raise RequestError(400, f"bad upload: {exc.detail}") from None
        try:
            files: dict[str, list[bytes]] = {}
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files.setdefault(key, []).append(await value.read())
        finally:
            await form.close()
        images, _ = collect_views(files, list(d.view_names), n, settings.max_image_pixels, d.flips)
        result = await run_in_threadpool(result_html, d, images, "upload")
        return layout(f"{name}: try a part", try_form(d, result), page="try",
                      crumbs=class_crumbs(name) + [("try a part", "")])

    return app


def serve_review(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8765,
                 settings: ReviewSettings | None = None, log_level: str = "warning") -> None:
    """Run the review app with uvicorn until interrupted; prints its URL first."""
    import uvicorn

    app = create_app(run_dir, settings=settings)
    shown = f"[{host}]" if ":" in host else host
    print(f"multiflow review: http://{shown}:{port}/  (run {Path(run_dir).resolve()}; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=64, timeout_keep_alive=5)
