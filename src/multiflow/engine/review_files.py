"""What ``multiflow test`` keeps per test object for later inspection (``multiflow review``).

Two files beside ``scores.csv`` in ``<run>/<class>/``:

``maps.npy``
    float16 ``(N, V, h, w)``: the per-view anomaly maps (per-pixel NLL at the feature grid) in the
    row order of ``scores.csv``.
``samples.json``
    ``{"format": "multiflow-test-samples/1", "view_names": [...], "flips": {view: mode},
    "samples": [{"sample_id", "defect", "image_paths": [V], "mask_paths": [V, null = none]}]}``;
    the maps are in the orientation of the images after the listed flips.

Both are written atomically (:mod:`multiflow._atomic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from multiflow._atomic import atomic_path, write_json

SAMPLES_FORMAT = "multiflow-test-samples/1"


def write_review_files(folder: Path, dataset: Any, maps: np.ndarray, view_names: list[str]) -> None:
    """Write ``maps.npy`` (float16 ``(N, V, h, w)``) and ``samples.json`` for ``dataset``'s records.

    ``dataset.samples[i]`` must be the record of ``maps[i]`` (the order of ``scores.csv``).
    """
    if maps.ndim != 4 or maps.shape[0] != len(dataset.samples) or maps.shape[1] != len(view_names):
        raise ValueError(f"maps {maps.shape} do not match {len(dataset.samples)} samples x {len(view_names)} views")
    folder = Path(folder)
    with atomic_path(folder / "maps.npy") as tmp:
        np.save(tmp, maps.astype(np.float16))
    flips = dict(getattr(dataset, "flips", None) or {})
    samples = [
        {
            "sample_id": r.sample_id,
            "defect": r.defect,
            "image_paths": [str(p) for p in r.image_paths],
            "mask_paths": [None if m is None else str(m) for m in r.mask_paths],
        }
        for r in dataset.samples
    ]
    write_json(folder / "samples.json", {"format": SAMPLES_FORMAT, "view_names": list(view_names),
                                         "flips": {k: v for k, v in flips.items() if v}, "samples": samples})
