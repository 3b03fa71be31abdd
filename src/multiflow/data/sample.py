"""The one sample type that every data source yields, and its collate function.

A *sample* is one physical object seen by ``V`` cameras. Tensors carry a view axis first:

* ``images``: ``(V, 3, H, W)`` float32 in ``[0, 1]`` (RGB, after any load-time transform),
* ``masks``: ``(V, H, W)`` bool ground-truth defect masks, or ``None`` when the source has none,
* ``image_labels``: ``(V,)`` int64, 1 iff that view shows a defect (official Real-IAD rule),
* ``label``: int, the sample label = max over views,
* ``defect``: the defect type code/name (``"good"`` / the normal class name for normal samples),
* ``sample_id``: a unique key for the sample inside its split,
* ``view_names``: the camera names in view order (e.g. ``["C1", ..., "C5"]``),
* ``image_paths`` / ``mask_paths``: the files per view (mask path ``None`` where there is none).

:func:`collate_samples` stacks samples into a :class:`MultiViewBatch` with a leading batch axis:
``images (B, V, 3, H, W)``, ``masks (B, V, H, W)`` (or ``None``), ``image_labels (B, V)``,
``labels (B,)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from multiflow.errors import DataError


@dataclass
class MultiViewSample:
    images: torch.Tensor
    image_labels: torch.Tensor
    label: int
    defect: str
    sample_id: str
    view_names: list[str]
    image_paths: list[str]
    masks: torch.Tensor | None = None
    mask_paths: list[str | None] = field(default_factory=list)
    category: str = ""

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])


@dataclass
class MultiViewBatch:
    images: torch.Tensor
    image_labels: torch.Tensor
    labels: torch.Tensor
    defects: list[str]
    sample_ids: list[str]
    view_names: list[str]
    image_paths: list[list[str]]
    masks: torch.Tensor | None = None
    mask_paths: list[list[str | None]] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def collate_samples(samples: Sequence[MultiViewSample]) -> MultiViewBatch:
    """Stack samples with identical view names and image sizes into a batch ``(B, V, ...)``."""
    if not samples:
        raise DataError("cannot collate an empty list of samples")
    views = list(samples[0].view_names)
    shape = tuple(samples[0].images.shape)
    for s in samples[1:]:
        if list(s.view_names) != views:
            raise DataError(
                f"sample {s.sample_id!r} has views {s.view_names}, expected {views} "
                f"(all samples in a batch must share the camera set)"
            )
        if tuple(s.images.shape) != shape:
            raise DataError(
                f"sample {s.sample_id!r} has image tensor {tuple(s.images.shape)}, expected {shape}",
                s.image_paths[0] if s.image_paths else None,
            )
    has_masks = all(s.masks is not None for s in samples)
    return MultiViewBatch(
        images=torch.stack([s.images for s in samples]),
        image_labels=torch.stack([s.image_labels for s in samples]),
        labels=torch.tensor([int(s.label) for s in samples], dtype=torch.int64),
        defects=[s.defect for s in samples],
        sample_ids=[s.sample_id for s in samples],
        view_names=views,
        image_paths=[list(s.image_paths) for s in samples],
        masks=torch.stack([s.masks for s in samples]) if has_masks else None,
        mask_paths=[list(s.mask_paths) for s in samples],
        categories=[s.category for s in samples],
    )
