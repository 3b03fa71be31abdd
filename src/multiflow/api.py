"""A small Python API for notebooks: :func:`fit`, :func:`evaluate`, :func:`predict`.

>>> from multiflow import api
>>> run = api.fit(overrides=["data.root=data/synth", "train.epochs=8"])   # doctest: +SKIP
>>> results = api.evaluate(run)                                          # doctest: +SKIP
>>> preds = api.predict(run / "cap", data_root="data/new_parts")           # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from multiflow.config import RunConfig, load_config


def fit(
    config: RunConfig | str | os.PathLike | None = None,
    *,
    overrides: list[str] | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train one model per class; returns the run folder (``results/<run>/``)."""
    from multiflow.engine.pipeline import fit_run

    if isinstance(config, RunConfig):
        cfg = config
        if overrides:
            raise ValueError("give overrides with a YAML path or None, not with a RunConfig object")
    else:
        cfg = load_config(config, overrides)
    return fit_run(cfg, Path(run_dir) if run_dir else None, resume=resume, progress=progress)


def evaluate(run_dir: str | os.PathLike, *, progress: bool = True, pictures: bool | None = None,
             overrides: list[str] | None = None, aggregation: str | None = None,
             image_score: dict[str, Any] | None = None, calibration: str | None = None) -> dict[str, Any]:
    """Evaluate every class model of a run on its test split; writes metrics and the HTML report.

    The models' bundles define how they score; ``overrides`` (``section.key=value``) change the
    run configuration's data location and evaluation settings; ``aggregation``, ``image_score``
    (e.g. ``{"name": "quantile", "q": 0.95}``) and ``calibration`` (only ``"none"``, accepted for old
    callers: per-view calibration was removed) are explicit test-time overrides of the bundles'
    scoring, recorded in each ``metrics.json`` (see :func:`multiflow.scoring.check_overrides`); the
    threshold is refitted for an overridden scoring from the stored calibration maps.
    """
    from multiflow.engine.pipeline import evaluate_run

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", overrides) if overrides else None
    given = {"aggregation": aggregation, "image_score": image_score, "calibration": calibration}
    ov = {k: v for k, v in given.items() if v is not None} or None
    return evaluate_run(run_dir, cfg, progress=progress, pictures=pictures, overrides=ov)


def predict(
    model_dir: str | os.PathLike,
    *,
    data_root: str | os.PathLike,
    data_format: str = "folder",
    split: str = "test",
    category: str | None = None,
    resolution: str = "",
    out_dir: str | os.PathLike | None = None,
    threshold: float | None = None,
    progress: bool = True,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 4,
    workers: int = 2,
    masks_backend: str = "torch",
    maps: str = "png",
    class_name: str | None = None,
) -> list[dict[str, Any]]:
    """Score every sample of a data set with a trained class model (``<run>/<class>``).

    A unified multi-class model (``<run>/unified``) scores each object under ``class_name``, or under
    the class it identifies when none is given (:mod:`multiflow.engine.unified_predict`).

    ``resolution``: Real-IAD resolution folder (``realiad_<resolution>``); empty = the only one present.
    ``threshold``: a finite number (else :class:`~multiflow.errors.ConfigError`) overriding the calibrated one.
    Writes per-sample maps (``.npy``), overlays (``.png``), ``result.json``, ``predictions.csv`` and
    ``summary.json`` under ``out_dir`` (default ``<model_dir>/predictions``); returns the per-sample
    results (a list; its ``.skipped`` lists the objects not scored, each ``{"sample_id", "reason"}``).
    Objects with a missing or unreadable view file are scored on the views present when the model
    supports missing views, otherwise skipped; the rest is always scored
    (:func:`multiflow.engine.predict.predict_dataset`).
    ``device`` / ``precision`` / ``masks_backend`` as in :class:`multiflow.engine.predict.Predictor`;
    ``batch_size`` (objects scored together), ``workers`` (decoding threads) and ``maps`` (``"png"``:
    raw maps and overlays, ``"npy"``: raw maps, ``"none"``: ``result.json`` only) as in
    :func:`multiflow.engine.predict.predict_dataset`; the returned list's ``timing`` (and
    ``summary.json``'s) holds objects/s and the seconds per stage.
    """
    import warnings

    from multiflow.config import DataConfig
    from multiflow.engine.factories import open_dataset
    from multiflow.engine.predict import predict_dataset
    from multiflow.engine.unified_predict import open_predictor

    predictor = open_predictor(model_dir, class_name=class_name, threshold=threshold, device=device,
                               precision=precision, masks_backend=masks_backend)
    # incomplete objects are listed by the data set and scored or reported by predict_dataset
    data = DataConfig(root=str(data_root), format=data_format, views=list(predictor.view_names), resolution=resolution,
                      flips=dict(predictor.bundle.flips), skip_incomplete=True)
    if data_format == "manifest":
        data.manifest, data.root = str(data_root), ""
    with warnings.catch_warnings():  # the data set's "skipped N samples" warning: predict reports them itself
        warnings.filterwarnings("ignore", message=".*incomplete/duplicated sample")
        ds = open_dataset(data, category or class_name or predictor.bundle.category, split, predictor.input_size, load_masks=False)
    out = Path(out_dir) if out_dir else Path(model_dir) / "predictions"
    return predict_dataset(predictor, ds, out, progress=progress, batch_size=batch_size, workers=workers,
                           maps=maps)
