"""Synthetic multi-view inspection data in Real-IAD's on-disk format.

A CPU ray-caster (:mod:`~multiflow.synth.geometry`, :mod:`~multiflow.synth.render`) renders object
families (:mod:`~multiflow.synth.families`) with 3D surface defects (:mod:`~multiflow.synth.defects`),
composed into one instance on the tray (:mod:`~multiflow.synth.scene`), from a fixed rig of ``V`` cameras
(C1 top, C2.. around); :mod:`~multiflow.synth.generator` writes images, masks, silhouettes and the
JSON files, and the camera rig side file ``cameras.json`` (read by
:func:`multiflow.data.load_camera_rig`). Opt-in realism for scale studies: production lots, larger
pose jitter and cross-view defects (``variation="realistic"``, ``defects=[..., "FM", "ML", "LB"]``).
Entry points: :func:`generate_dataset` (files) and :func:`render_sample` (in memory).
"""

from multiflow.synth.generator import (
    DEFAULT_CLASSES,
    DEFAULT_DEFECTS,
    VARIATIONS,
    RenderedSample,
    generate_dataset,
    image_relpath,
    lot_of,
    render_sample,
)
from multiflow.synth.defects import ALL_DEFECT_CODES, CROSS_VIEW_CODES, DEFECT_CODES
from multiflow.synth.families import FAMILIES, FAMILY_ALIASES

__all__ = [
    "ALL_DEFECT_CODES",
    "CROSS_VIEW_CODES",
    "DEFAULT_CLASSES",
    "DEFAULT_DEFECTS",
    "DEFECT_CODES",
    "FAMILIES",
    "FAMILY_ALIASES",
    "RenderedSample",
    "VARIATIONS",
    "generate_dataset",
    "image_relpath",
    "lot_of",
    "render_sample",
]
