"""``multiflow review``: a local web application to inspect a tested run.

* :mod:`multiflow.review.store`: reading a run folder (scores, maps, samples, decisions as
  ``predict`` makes them), selecting objects, applying a threshold to a class model, safe paths
  under the run folder.
* :mod:`multiflow.review.labels`: operator labels in SQLite, CSV export, reading labels back.
* :mod:`multiflow.review.reevaluate`: S-AUROC and decision counts with corrected labels.
* :mod:`multiflow.review.images`: thumbnails, full-size views, anomaly overlays, mask outlines.
* :mod:`multiflow.review.app`: the FastAPI application (:func:`~multiflow.review.app.create_app`,
  settings, per-app state).
* :mod:`multiflow.review.routes`: the routes (authorize, fetch, render; no HTML).
* :mod:`multiflow.review.pages`: the data of each page.
* :mod:`multiflow.review.render` + ``templates/``: the pages' HTML (Jinja2, autoescaped).
* :mod:`multiflow.review.security`: Host, origin and session-token checks, JSON-only API.
"""
