"""The sample score, written once: from a view's anomaly map to the object's decision.

Every consumer calls this package: the flow (:meth:`multiflow.flow.MultiFlow.forward` and
``anomaly_map``), training and its data-parallel loss, evaluation and the metrics, prediction, the
service, the PatchCore baseline, the benchmarks and the exported ONNX graph. A bottom-level
package: it imports torch, numpy, scipy and nothing of multiflow but the error types.

* :mod:`.maps`: per-pixel NLL (paper Eq. 7), masked loss, the one foreground rule
  (:func:`foreground`: ``mask > 0.5``), background fill, absent views;
* :mod:`.spec`: the settings, their defaults and validation (:class:`ImageScoreSpec`,
  :class:`ScoringSpec`, :data:`VIEW_AGGREGATIONS`, test-time overrides);
* :mod:`.image_score`: a view's map -> its image score (``max``, ``topk_mean``, ``quantile``,
  ``smoothed_max``; :class:`ScorePostprocess`, traced into the ONNX graph);
* :mod:`.sample`: view scores -> sample score (over the present views) -> decision
  (:func:`score_maps` for a batch, :func:`score_arrays` for whole arrays);
* :mod:`.threshold`: the decision threshold for a stated false-reject rate (:func:`fit_threshold`).
"""

from multiflow.scoring.image_score import ScorePostprocess, image_score
from multiflow.scoring.maps import (
    blank_absent,
    fill_background,
    foreground,
    masked_loss,
    masked_nll_sums,
    pixel_nll,
    present_mask,
)
from multiflow.scoring.sample import (
    aggregate_scores,
    aggregate_views,
    decide,
    image_scores_from_maps,
    score_arrays,
    score_maps,
    view_scores,
)
from multiflow.scoring.spec import (
    DEFAULT_IMAGE_SCORE,
    IMAGE_SCORES,
    REMOVED_CALIBRATIONS,
    TEST_OVERRIDES,
    VIEW_AGGREGATIONS,
    ImageScoreSpec,
    ScoringSpec,
    check_aggregation,
    check_calibration,
    check_overrides,
)
from multiflow.scoring.threshold import ThresholdFit, check_target, fit_threshold, needed_objects

__all__ = [
    "DEFAULT_IMAGE_SCORE", "IMAGE_SCORES", "REMOVED_CALIBRATIONS", "TEST_OVERRIDES", "VIEW_AGGREGATIONS",
    "ImageScoreSpec", "ScorePostprocess", "ScoringSpec", "ThresholdFit", "aggregate_scores", "aggregate_views",
    "blank_absent", "check_aggregation", "check_calibration", "check_overrides", "check_target", "decide",
    "fill_background", "fit_threshold", "foreground", "image_score", "image_scores_from_maps", "masked_loss",
    "masked_nll_sums", "needed_objects", "pixel_nll", "present_mask", "score_arrays", "score_maps", "view_scores",
]
