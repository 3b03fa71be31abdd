"""``multiflow review``: a local web application to inspect a tested run.

* :mod:`multiflow.review.store`: reading a run folder (scores, maps, samples), selecting objects,
  applying a threshold to a class model, safe paths under the run folder.
* :mod:`multiflow.review.labels`: operator labels in SQLite, CSV export, reading labels back.
* :mod:`multiflow.review.reevaluate`: S-AUROC and decision counts with corrected labels.
* :mod:`multiflow.review.images`: thumbnails, full-size views, anomaly overlays, mask outlines.
* :mod:`multiflow.review.app`: the FastAPI application (server-rendered pages + ``static/``).
"""
