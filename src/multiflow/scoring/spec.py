"""The scoring settings, their defaults and their validation, in one place (no torch).

* :data:`VIEW_AGGREGATIONS` / :func:`check_aggregation`: how a sample score is made from the
  scores of its views (``max`` official; ``mean``; ``mean_of_max``, numerically the mean of the
  view maxima, the name the Multi-Flow reference code's "max" really computes).
* :class:`ImageScoreSpec`: how one view's map becomes an image score (:data:`IMAGE_SCORES`); its
  field defaults are the only defaults of the image-score parameters. ``ImageScoreSpec()`` is the
  paper's max (what a bundle without the field was scored with); :data:`DEFAULT_IMAGE_SCORE` is
  what new fits use (``eval.image_score*`` in :mod:`multiflow.config` take their defaults from it).
* :class:`ScoringSpec`: the bundle's scoring section (aggregation + image score) with its JSON
  form and the explicit test-time overrides (:func:`check_overrides`, :meth:`ScoringSpec.with_overrides`).

Per-view calibration (``zscore``, ``tail``) was removed: both measured worse than no calibration
in BENCHMARKS.md's scoring ablation (``tail`` -1.0 pp S-AUROC and -2.3 pp I-AUROC, ``zscore``
-1.95 pp I-AUROC, beyond the seed noise). The key ``calibration`` is still read from old
configurations, bundles and override requests: ``none`` loads (it is what every model scores
with), a removed mode is refused with :func:`check_calibration`'s error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from multiflow.errors import ConfigError

__all__ = [
    "DEFAULT_IMAGE_SCORE", "IMAGE_SCORES", "REMOVED_CALIBRATIONS", "TEST_OVERRIDES", "VIEW_AGGREGATIONS",
    "ImageScoreSpec", "ScoringSpec", "check_aggregation", "check_calibration", "check_overrides",
]

#: The registry of view aggregations (config validation, commands and export read it from here).
VIEW_AGGREGATIONS = ("max", "mean", "mean_of_max")
#: The registry of image scores (:mod:`multiflow.scoring.image_score`).
IMAGE_SCORES = ("max", "topk_mean", "quantile", "smoothed_max")
#: Per-view calibrations that existed and were removed after their measurement (see the module docstring).
REMOVED_CALIBRATIONS = ("zscore", "tail")
#: Test-time settings that may override a bundle's scoring, each recorded in metrics.json.
TEST_OVERRIDES = ("aggregation", "image_score", "calibration")


def check_aggregation(how: str) -> str:
    """Return ``how`` if it is one of :data:`VIEW_AGGREGATIONS`, else raise :class:`ConfigError`."""
    if how not in VIEW_AGGREGATIONS:
        raise ConfigError(f"unknown view aggregation {how!r}; choose one of {VIEW_AGGREGATIONS}")
    return how


def check_calibration(mode: Any, where: str = "calibration") -> str:
    """``"none"`` (the only per-view calibration there is) or a :class:`ConfigError` naming ``where``:
    a removed mode says why it was removed."""
    if mode == "none":
        return "none"
    if mode in REMOVED_CALIBRATIONS:
        raise ConfigError(
            f"{where}: per-view calibration {mode!r} was removed (it measured worse than none in BENCHMARKS.md's "
            "scoring ablation); refit the model without it (eval.calibration=none)"
        )
    raise ConfigError(f"{where}: unknown calibration {mode!r}; the only one is 'none'")


@dataclass(frozen=True)
class ImageScoreSpec:
    """How a map becomes an image score (:mod:`multiflow.scoring.image_score`).

    Args:
        name: one of :data:`IMAGE_SCORES`.
        k: ``topk_mean``: fraction of foreground pixels (``0 < k < 1``) or a count (``k >= 1``).
        q: ``quantile``: the quantile in ``[0, 1]``.
        sigma: ``smoothed_max``: Gaussian sigma in pixels of the upsampled map.
        size: ``smoothed_max``: side of the upsampled map; 0 = the model's input image size.
    """

    name: str = "max"
    k: float = 0.01
    q: float = 0.99
    sigma: float = 8.0
    size: int = 0

    def __post_init__(self) -> None:
        if self.name not in IMAGE_SCORES:
            raise ConfigError(f"unknown image score {self.name!r}; choose one of {IMAGE_SCORES}")
        if not self.k > 0:
            raise ConfigError(f"image score k must be positive, got {self.k}")
        if not 0.0 <= self.q <= 1.0:
            raise ConfigError(f"image score quantile q must be in [0, 1], got {self.q}")
        if not self.sigma > 0:
            raise ConfigError(f"image score sigma must be positive, got {self.sigma}")
        if self.size < 0:
            raise ConfigError(f"image score size must be >= 0, got {self.size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ImageScoreSpec":
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ConfigError(f"image score spec must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {"name", "k", "q", "sigma", "size"})
        if unknown:
            raise ConfigError(f"image score spec: unknown key(s) {unknown}")
        return cls(**{k: (int(v) if k == "size" else str(v) if k == "name" else float(v)) for k, v in d.items()})


#: The image score of new fits (``eval.image_score*`` defaults): the map upsampled and smoothed
#: with sigma 8 before the max (measured best in BENCHMARKS.md's scoring ablation).
DEFAULT_IMAGE_SCORE = ImageScoreSpec(name="smoothed_max")


@dataclass
class ScoringSpec:
    """From anomaly maps to a sample score: the bundle's ``scoring`` section.

    ``aggregation``: over views; ``image_score``: how a map becomes an image score. The defaults
    (max over the map and over views) are the paper's scores, so bundles written before these
    fields existed load and score as they did.
    """

    aggregation: str = "max"
    image_score: ImageScoreSpec = field(default_factory=ImageScoreSpec)

    def __post_init__(self) -> None:
        check_aggregation(self.aggregation)

    def to_dict(self) -> dict[str, Any]:
        return {"aggregation": self.aggregation, "image_score": self.image_score.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScoringSpec":
        """Parse the JSON form (nested ``image_score`` mapping; missing = defaults). A ``calibration``
        entry written by older versions loads when its mode is ``none`` and is refused otherwise."""
        if not isinstance(data, dict):
            raise ConfigError(f"'scoring' must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)} - {"calibration"})
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown} in 'scoring'")
        cal = data.get("calibration")
        if cal is not None:
            check_calibration(cal.get("mode", "none") if isinstance(cal, dict) else cal, "scoring.calibration")
        return cls(aggregation=str(data.get("aggregation", "max")),
                   image_score=ImageScoreSpec.from_dict(data.get("image_score")))

    def postprocess(self, image_size: int):
        """The torch module computing view scores from maps for a model of ``image_size``
        (:class:`multiflow.scoring.image_score.ScorePostprocess`)."""
        from multiflow.scoring.image_score import ScorePostprocess

        return ScorePostprocess(spec=self.image_score, image_size=int(image_size))

    def with_overrides(self, overrides: dict[str, Any] | None) -> "ScoringSpec":
        """This scoring with explicit test-time overrides (validated by :func:`check_overrides`) applied."""
        ov = check_overrides(overrides)
        out = replace(self)
        if "aggregation" in ov:
            out.aggregation = ov["aggregation"]
        if "image_score" in ov:
            out.image_score = ImageScoreSpec.from_dict(ov["image_score"])
        return out


def check_overrides(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Validated test-time overrides (keys of :data:`TEST_OVERRIDES`), in their JSON form.

    ``aggregation``: a view aggregation name; ``image_score``: an image-score spec (mapping or
    :class:`ImageScoreSpec`; missing keys take their defaults); ``calibration``: only ``"none"``
    (accepted for old callers; every model scores without calibration).
    """
    ov = dict(overrides or {})
    unknown = sorted(set(ov) - set(TEST_OVERRIDES))
    if unknown:
        raise ConfigError(f"unknown test-time override(s) {unknown}; allowed: {list(TEST_OVERRIDES)}")
    if "aggregation" in ov:
        check_aggregation(ov["aggregation"])
    if "image_score" in ov:
        spec = ov["image_score"]
        ov["image_score"] = (spec if isinstance(spec, ImageScoreSpec) else ImageScoreSpec.from_dict(spec)).to_dict()
    if "calibration" in ov:
        mode = ov["calibration"].get("mode") if isinstance(ov["calibration"], dict) else ov["calibration"]
        ov["calibration"] = check_calibration(mode, "test-time calibration override")
    return ov
