"""Export predictions in the format of ADEval's command-line evaluator (PyPI ``adeval`` 1.1.0).

``python -m adeval PRED.pkl`` reads a pickle of ``dict[str, tuple[ndarray, float, str | None]]``:
key = path of the test image, value = ``(anomaly map (h, w) float, image score, mask path or None)``.
The tool opens each image to learn the ground-truth size, reads the mask (``> 127``), resizes the
map bilinearly to that size, groups views into samples with ``--sample_key_pat`` (sample score =
max over views) and prints ``s_auroc, s_aupr, i_auroc, i_aupr, p_auroc, p_aupr, p_aupro``. Paths
are used as written (relative paths relative to where the tool runs; ``--remove_prefix`` /
``--add_prefix`` rewrite them).

ADEval's ``*_aupr`` values are trapezoidal areas under its binned PR curve, not the step-wise
average precision of :func:`multiflow.metrics.average_precision` (scikit-learn's definition); its
AUROC / AUPRO are binned into 1,000 strips (our exact values differ by at most the cross-class
pairs sharing a strip) and it interpolates PRO at the FPR limit slightly differently.

Two ADEval 1.1.0 facts this module accounts for:

* it bins scores with ``float32`` bin edges starting at the minimum score; a ``float64`` minimum that
  is not a ``float32`` number lands in its underflow bin and drops the last ROC segment. Scores are
  therefore written rounded to ``float32`` (maps are written as ``float32``).
* it calls ``np.trapz``, which NumPy 2 removed; run it with a shim, e.g. the command built by
  :func:`adeval_command`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multiflow._atomic import write_bytes
from multiflow.errors import DataError
from multiflow.metrics.curves import as_numpy

#: The official Real-IAD sample-key regex (one capture group: the object id incl. OK / NG_<CODE>).
REAL_IAD_SAMPLE_KEY_PATTERN = r"([a-zA-Z][a-zA-Z0-9_]*_[0-9]{4}_[A-Z][A-Z_]*[A-Z])_C[0-9]_"

AdevalPredictions = dict[str, tuple[np.ndarray, float, "str | None"]]


def _maps_list(anomaly_maps: Any, n: int) -> list[np.ndarray]:
    if isinstance(anomaly_maps, (list, tuple)):
        maps = [as_numpy(m, "anomaly map") for m in anomaly_maps]
    else:
        arr = as_numpy(anomaly_maps, "anomaly maps")
        if arr.ndim != 3:
            raise DataError(f"anomaly maps must be (M, h, w) or a list of (h, w) maps, got {arr.shape}")
        maps = list(arr)
    if len(maps) != n:
        raise DataError(f"{len(maps)} anomaly maps for {n} image paths")
    out = []
    for i, m in enumerate(maps):
        if m.ndim != 2 or m.size == 0:
            raise DataError(f"anomaly map {i} must be a non-empty 2-D array, got shape {m.shape}")
        m = np.ascontiguousarray(m, dtype=np.float32)
        if not np.all(np.isfinite(m)):
            raise DataError(f"anomaly map {i} contains NaN or infinite values")
        out.append(m)
    return out


def write_adeval_pkl(
    path: str | os.PathLike,
    image_paths: Sequence[str],
    anomaly_maps: Any,
    image_scores: Any,
    mask_paths: Sequence[str | None],
) -> Path:
    """Write ADEval's prediction pickle atomically and return its path.

    ``image_paths`` (M,) unique image files (the keys; ADEval opens them for the GT size);
    ``anomaly_maps`` ``(M, h, w)`` array/tensor or a list of ``(h, w)`` maps (any resolution: ADEval
    resizes to the GT size; the model's native map size keeps the file small); ``image_scores``
    ``(M,)``; ``mask_paths`` (M,) mask file or ``None`` for images without a mask.
    """
    n = len(image_paths)
    if n == 0:
        raise DataError("no predictions to write", path)
    if len(set(image_paths)) != n:
        raise DataError("image paths must be unique (they are the keys of the ADEval pickle)", path)
    if len(mask_paths) != n:
        raise DataError(f"{len(mask_paths)} mask paths for {n} image paths", path)
    scores = as_numpy(image_scores, "image scores").astype(np.float64).reshape(-1)
    if scores.size != n:
        raise DataError(f"{scores.size} image scores for {n} image paths", path)
    if not np.all(np.isfinite(scores)):
        raise DataError("image scores contain NaN or infinite values", path)
    maps = _maps_list(anomaly_maps, n)
    preds: AdevalPredictions = {}
    for key, amap, score, mask in zip(image_paths, maps, scores, mask_paths):
        if not isinstance(key, str) or not key:
            raise DataError(f"image path {key!r} must be a non-empty string", path)
        if mask is not None and not isinstance(mask, str):
            raise DataError(f"mask path {mask!r} of {key} must be a string or None", path)
        preds[key] = (amap, float(np.float32(score)), mask)
    return write_bytes(path, pickle.dumps(preds, protocol=4))


def read_adeval_pkl(path: str | os.PathLike) -> AdevalPredictions:
    """Read and validate an ADEval prediction pickle (only open files you trust: it is a pickle)."""
    try:
        with open(path, "rb") as f:
            preds = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
        raise DataError(f"cannot read ADEval predictions: {exc}", path) from exc
    if not isinstance(preds, dict):
        raise DataError(f"expected a dict of predictions, found {type(preds).__name__}", path)
    for key, value in preds.items():
        ok = (
            isinstance(key, str) and isinstance(value, tuple) and len(value) == 3
            and isinstance(value[0], np.ndarray) and value[0].ndim == 2
            and isinstance(value[1], (float, int)) and np.isfinite(value[1])
            and (value[2] is None or isinstance(value[2], str))
        )
        if not ok:
            raise DataError(f"entry {key!r} is not (2-D ndarray, finite float, mask path or None)", path)
    return preds


def adeval_command(
    pkl_path: str | os.PathLike,
    *,
    sample_key_pattern: str | None = REAL_IAD_SAMPLE_KEY_PATTERN,
    expected_views: int | None = None,
    python: str = "python",
) -> list[str]:
    """argv running ADEval's CLI on ``pkl_path`` under NumPy 2 (``np.trapz`` shimmed in-process).

    Prints one CSV line: ``<pkl>,s_auroc,..,s_aupr,..,i_auroc,..,i_aupr,..,p_auroc,..,p_aupr,..,p_aupro,..``.
    """
    args = [str(pkl_path)]
    if sample_key_pattern is not None:
        args += ["--sample_key_pat", sample_key_pattern]
    if expected_views is not None:
        args += ["--expected_views_per_sample", str(expected_views)]
    shim = (
        "import sys, runpy, numpy as np; "
        "np.trapz = getattr(np, 'trapz', None) or np.trapezoid; "
        "sys.argv = ['adeval'] + sys.argv[1:]; "
        "runpy.run_module('adeval', run_name='__main__', alter_sys=True)"
    )
    return [python, "-c", shim, *args]


def parse_adeval_output(text: str) -> dict[str, float]:
    """Metrics from ADEval's CSV output line (the last line containing ``i_auroc``)."""
    lines = [ln for ln in text.strip().splitlines() if ",i_auroc," in ln]
    if not lines:
        raise DataError(f"no ADEval result line in output: {text[-500:]!r}")
    parts = lines[-1].split(",")[1:]
    return {parts[i]: float(parts[i + 1]) for i in range(0, len(parts) - 1, 2)}
