"""Evaluation metrics of the official Real-IAD / ADEval protocol, exact and streaming.

* image score = max of a (foreground) anomaly map and sample score from the view scores come from
  :mod:`multiflow.scoring` (re-exported here: ``aggregate_views``, ``image_scores_from_maps``).
* :mod:`.curves`: exact AUROC / AP / F1-max with ties (scikit-learn definitions).
* :mod:`.pixel`: exact P-AUROC and AUPRO (8-connected regions, FPR limit 0.3) at the GT resolution.
* :mod:`.evaluate`: :class:`EvalResult`, :func:`evaluate_exact`, per-defect and per-class summaries.
* :mod:`.streaming`: :class:`StreamingEvaluator`, bounded memory, guaranteed error bounds.
* :mod:`.adeval_io`: ADEval ``.pkl`` export for checking results with the official tool.
"""

from multiflow.metrics.adeval_io import (
    REAL_IAD_SAMPLE_KEY_PATTERN,
    adeval_command,
    parse_adeval_output,
    read_adeval_pkl,
    write_adeval_pkl,
)
from multiflow.scoring import VIEW_AGGREGATIONS, aggregate_views, image_scores_from_maps
from multiflow.metrics.curves import auroc, average_precision, f1_max, f1_max_threshold
from multiflow.metrics.evaluate import (
    DefectResult,
    EvalResult,
    evaluate_exact,
    mean_over_classes,
    per_defect_auroc,
)
from multiflow.metrics.pixel import aupro, binarize_masks, pixel_ap_f1, pixel_auroc, resize_maps
from multiflow.metrics.streaming import PixelHistogram, StreamingEvaluator

__all__ = [
    "REAL_IAD_SAMPLE_KEY_PATTERN",
    "VIEW_AGGREGATIONS",
    "DefectResult",
    "EvalResult",
    "PixelHistogram",
    "StreamingEvaluator",
    "adeval_command",
    "aggregate_views",
    "aupro",
    "auroc",
    "average_precision",
    "binarize_masks",
    "evaluate_exact",
    "f1_max",
    "f1_max_threshold",
    "image_scores_from_maps",
    "mean_over_classes",
    "parse_adeval_output",
    "per_defect_auroc",
    "pixel_ap_f1",
    "pixel_auroc",
    "read_adeval_pkl",
    "resize_maps",
    "write_adeval_pkl",
]
