"""One class's cached features and masks, the input of every benchmark that trains flows on them.

:func:`load_cached_class` runs the engine's feature/mask cache (``prepare_split``) for the train and
test split of one class and keeps what a benchmark needs in memory as a :class:`CachedClass`; build
the feature extractor once and pass it for every class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CachedClass:
    """One class's cached features and masks: train ``(N_max, V, C, h, w)``, test ``(T, V, C, h, w)``;
    masks ``(N, V, h, w)`` bool or ``None`` (no foreground masks configured)."""

    train_features: np.ndarray
    train_masks: np.ndarray | None
    test_features: np.ndarray
    test_masks: np.ndarray | None
    labels: np.ndarray  # (T, V) image labels
    defects: list[str]
    sample_ids: list[str]
    view_names: list[str]
    channels: int


def load_cached_class(cfg, cls: str, extractor, *, progress: bool, device=None) -> CachedClass:
    """One class's train and test features and masks (cached by ``prepare_split``), test labels,
    defect types and sample ids: what every benchmark that trains flows on cached features needs."""
    from multiflow.engine.preprocess import prepare_split

    tr = prepare_split(cfg, cls, "train", extractor, progress=progress, device=device)
    te = prepare_split(cfg, cls, "test", extractor, progress=progress, device=device)
    ds = te.dataset
    return CachedClass(
        train_features=np.asarray(tr.features), train_masks=None if tr.masks is None else np.asarray(tr.masks),
        test_features=np.asarray(te.features), test_masks=None if te.masks is None else np.asarray(te.masks),
        labels=np.array([ds.image_labels(i) for i in range(len(ds))]), defects=[r.defect for r in ds.samples],
        sample_ids=list(te.sample_ids), view_names=list(tr.view_names), channels=extractor.channels,
    )
