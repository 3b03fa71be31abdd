"""The trained-model bundle: one typed, versioned description of a trained class model.

A class folder ``<run>/<class>/`` holds ``model.safetensors`` (the flow: weights and its
constructor config, :mod:`multiflow.flow.io`) and ``model.json`` (this module's
:class:`ModelBundle`, format :data:`BUNDLE_FORMAT`). Everything a consumer needs to score new
images the way the model was trained and calibrated is here: the backbone (name, input size,
weights, layer, feature dtype, weights digest), the foreground masks, the view graph and names,
the load-time flips, the scoring (view aggregation, image score), the decision threshold with the
target it was fitted for, its statistics, per-number-of-views thresholds and its audit trail, whether the flow scores incomplete
objects (``supports_missing_views``, trained with ``view_dropout``) and the camera-fault statistics
(``camera_faults``: the name of the JSON file in the class folder,
:class:`multiflow.faults.CameraFaultModel`; empty = no camera check).
Test, predict, export, serve and the review app read the bundle and nothing else; the run's
``config.yaml`` only says where the data is.

Format history: ``multiflow-model/1`` was a flat dict (``engine/pipeline.py`` before the bundle);
:func:`load_bundle` migrates it on load. ``multiflow-model/2`` had a raw-quantile threshold
(``threshold.quantile``) and a per-view score calibration; it loads (a calibration other than
``none`` is refused: the modes were removed), its threshold without a stated false-reject rate
(:attr:`ThresholdSpec.warnings` says so). ``multiflow-model/3`` adds ``threshold.fit``,
``threshold.by_views`` and ``threshold.calibration_maps``. ``multiflow-model/4`` adds the unified
multi-class model (issue 23): ``classes`` (the class names in the flow's index order; empty for a
one-class model), ``class_conditioning`` and ``per_class`` (per class: its threshold, camera-fault
statistics and unknown-class cut-off, :class:`ClassSpec`); formats 3 and 2 load as one-class models.
A unified bundle's top-level ``threshold`` and ``camera_faults`` are those of ``classes[0]``;
consumers take a class's with :meth:`ModelBundle.for_class`. Loading executes no code from the files.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from multiflow._atomic import write_json
from multiflow.config import FeatureConfig, MaskConfig
from multiflow.errors import CheckpointError, ConfigError
from multiflow.scoring import ScoringSpec, ThresholdFit, check_aggregation

BUNDLE_FORMAT = "multiflow-model/4"
#: formats read with the current parser (fields added since have defaults)
READABLE_FORMATS = (BUNDLE_FORMAT, "multiflow-model/3", "multiflow-model/2")
#: formats migrated on load
LEGACY_FORMATS = ("multiflow-model/1",)
BUNDLE_FILE = "model.json"
FLOW_FILE = "model.safetensors"
CAMERA_FAULTS_FILE = "camera_faults.json"


@dataclass
class GraphSpec:
    """The flow's view graph as :class:`multiflow.flow.ViewGraph` stores it: view names in view
    order and directed edges ``[j, i]`` (view ``j`` sends messages to view ``i``). For a
    single-view model it is the one-view graph of the shared flow."""

    view_names: list[str]
    edges: list[list[int]]


@dataclass
class FeaturesSpec:
    """The frozen backbone and how its features were stored (``dtype``: the cache's rounding).

    ``input_size`` is the resolved size (``features.input_size: 0`` in the configuration = the
    data's image size, resolved per class at fit); ``layer`` the backbone tap(s) as configured
    (``"blocks:3+blocks:5"`` = several stages resampled to one grid and concatenated).
    """

    backbone: str
    input_size: int
    weights: str = ""
    layer: str = ""
    dtype: str = "float16"
    weights_digest: str = ""
    channels: int = 0
    grid: list[int] = field(default_factory=list)
    extractor: dict[str, Any] = field(default_factory=dict)

    def to_config(self) -> FeatureConfig:
        """The :class:`FeatureConfig` that rebuilds this backbone."""
        return FeatureConfig(backbone=self.backbone, input_size=int(self.input_size), weights=self.weights,
                             layer=self.layer, dtype=self.dtype)


@dataclass
class MasksSpec:
    """Foreground masks the model was trained and calibrated with."""

    provider: str = "none"
    dilation: int = 8
    mask_root: str = ""
    #: extra dilation, a fraction of the object's bounding-box diagonal (0 = the paper's masks)
    margin: float = 0.0

    def to_config(self) -> MaskConfig:
        return MaskConfig(provider=self.provider, dilation=int(self.dilation), mask_root=self.mask_root,
                          margin=float(self.margin))


@dataclass
class ThresholdChange:
    """One entry of the threshold's audit trail."""

    value: float
    previous: float | None
    who: str
    when: str
    reason: str


@dataclass
class ThresholdSpec:
    """The decision threshold on the sample score (``score > value`` = NG) and what it was fitted for.

    ``value``: the threshold for an object with every view present. ``fit``: its statistics
    (:class:`multiflow.scoring.ThresholdFit`: target false-reject rate, confidence, method, number of
    calibration objects, ``needed_n``, suspected outliers, warning); None for thresholds of older
    bundles and set by hand. ``by_views``: for models that score incomplete objects, the threshold
    fitted the same way for each number of present views (``{"4": fit, ...}``; the key is the
    count). ``calibration_maps``: the file in the class folder holding the calibration objects'
    maps, from which a test-time scoring override refits the threshold. ``quantile``: the raw
    quantile of format-2 bundles (legacy). ``audit``: every change made by hand.
    """

    value: float
    quantile: float | None = None
    source: str = ""
    audit: list[ThresholdChange] = field(default_factory=list)
    fit: ThresholdFit | None = None
    by_views: dict[str, ThresholdFit] = field(default_factory=dict)
    calibration_maps: str = ""

    def for_views(self, n_present: int, n_views: int) -> float:
        """The threshold for an object scored from ``n_present`` of the model's ``n_views`` views:
        the one fitted for that number of views where there is one, else :attr:`value`."""
        if n_present != n_views and str(int(n_present)) in self.by_views:
            return float(self.by_views[str(int(n_present))].value)
        return float(self.value)

    @property
    def warnings(self) -> list[str]:
        """What a user of this threshold should know (fit, ``test``, ``serve /health``, the review app
        show it): too few calibration objects for the target, suspected outliers, no stated target."""
        out = []
        if self.fit is None:
            if self.audit:
                out.append(f"threshold set by hand ({self.source or 'audit trail'}); no stated false-reject rate")
            else:
                what = f"the {self.quantile} quantile" if self.quantile is not None else "a raw quantile"
                out.append(f"threshold fitted as {what} of held-out normal scores, without a stated false-reject "
                           "rate (a model fitted before threshold.false_reject): refit to state one")
        elif self.fit.warning:
            out.append(self.fit.warning)
        for k, f in sorted(self.by_views.items(), key=lambda kv: int(kv[0])):
            if f.warning:
                out.append(f"{k} views present: {f.warning}")
        return out


@dataclass
class TrainingRecord:
    """How the flow was trained (informative; not needed for scoring).

    ``val_sample_scores``: summary of the sample scores the threshold was fitted on (the held-out
    calibration objects since format 3). ``stop_reason``: empty unless early stopping ended the run (``train.early_stopping_patience``);
    ``device`` and ``precision``: where and how it was trained (``train.device``, ``train.precision``
    as resolved; empty in bundles written before these were recorded).
    """

    best_epoch: int = 0
    best_val_loss: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    train_samples: int = 0
    val_samples: int = 0
    #: held-out objects the threshold was fitted on (threshold.calibration_fraction; 0 in older bundles)
    calibration_samples: int = 0
    #: threshold.cross_fit: folds whose flows gave the objects' out-of-fold scores (0: a held-out split)
    cross_fit: int = 0
    val_sample_scores: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    stop_reason: str = ""
    device: str = ""
    precision: str = ""


@dataclass
class ClassSpec:
    """What a unified bundle stores per class (format 4).

    ``threshold``: the class's decision threshold, fitted on its own held-out calibration objects
    (maps under the class). ``camera_faults``: its camera-fault statistics file in the bundle folder
    (empty: none). ``unknown``: the unknown-class cut-off on the object's mean foreground NLL under
    the class (:meth:`multiflow.flow.unified.UnifiedFlow.object_nll`), fitted the same way on the
    class's calibration objects: an object whose NLL under its (given or identified) class exceeds it
    is reported ``UNKNOWN CLASS``. ``identified``: the share of the class's calibration objects the
    model identified as the class (None: the model cannot identify). ``train_samples`` and
    ``calibration_samples``: the class's objects the flow trained on / the threshold was fitted on.
    """

    threshold: ThresholdSpec
    camera_faults: str = ""
    unknown: ThresholdFit | None = None
    identified: float | None = None
    train_samples: int = 0
    calibration_samples: int = 0
    #: threshold.cross_fit: folds whose flows gave the objects' out-of-fold scores (0: a held-out split)
    cross_fit: int = 0


@dataclass
class ModelBundle:
    """A trained class model's description (``model.json``, format :data:`BUNDLE_FORMAT`)."""

    category: str
    view_names: list[str]
    graph: GraphSpec
    features: FeaturesSpec
    masks: MasksSpec
    threshold: ThresholdSpec
    scoring: ScoringSpec = field(default_factory=ScoringSpec)
    flips: dict[str, str] = field(default_factory=dict)
    single_view: bool = False
    training: TrainingRecord = field(default_factory=TrainingRecord)
    supports_missing_views: bool = False
    view_dropout: float = 0.0
    camera_faults: str = ""
    format: str = BUNDLE_FORMAT
    #: the classes of a unified model, in the flow's index order (empty: a one-class model)
    classes: list[str] = field(default_factory=list)
    class_conditioning: str = ""
    per_class: dict[str, ClassSpec] = field(default_factory=dict)

    @property
    def unified(self) -> bool:
        return bool(self.classes)

    def for_class(self, name: str) -> "ModelBundle":
        """The bundle as one class sees it (its threshold and camera statistics, ``category`` the
        class); for a one-class bundle, itself when ``name`` is its category or empty."""
        if not self.classes:
            if name and name != self.category:
                raise ConfigError(f"this model is trained for class {self.category!r}, not {name!r}")
            return self
        if name not in self.per_class:
            raise ConfigError(f"class {name!r} is not one of the unified model's classes {self.classes}")
        spec = self.per_class[name]
        return replace(self, category=name, threshold=spec.threshold, camera_faults=spec.camera_faults)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``format`` first)."""
        d = asdict(self)
        return {"format": BUNDLE_FORMAT} | {k: v for k, v in d.items() if k != "format"}

    @classmethod
    def from_dict(cls, data: Any, where: str | Path = "") -> "ModelBundle":
        """Parse the JSON form of format 2; :class:`CheckpointError` naming ``where`` on anything malformed."""
        if not isinstance(data, dict):
            raise CheckpointError("a model description must be a JSON object", where)
        try:
            bundle = cls(
                category=str(data["category"]),
                view_names=[str(v) for v in data["view_names"]],
                graph=_build(GraphSpec, data["graph"], where, "graph"),
                features=_build(FeaturesSpec, data["features"], where, "features"),
                masks=_build(MasksSpec, _without_soft(data.get("masks", {})), where, "masks"),
                threshold=_threshold(data["threshold"], where),
                scoring=_scoring(data.get("scoring", {}), where),
                flips={str(k): str(v) for k, v in (data.get("flips") or {}).items()},
                single_view=bool(data.get("single_view", False)),
                training=_build(TrainingRecord, data.get("training", {}), where, "training"),
                supports_missing_views=bool(data.get("supports_missing_views", False)),
                view_dropout=float(data.get("view_dropout", 0.0)),
                camera_faults=str(data.get("camera_faults") or ""),
                classes=[str(c) for c in (data.get("classes") or [])],
                class_conditioning=str(data.get("class_conditioning") or ""),
                per_class={str(k): _class_spec(v, where, str(k)) for k, v in (data.get("per_class") or {}).items()},
            )
        except KeyError as exc:
            raise CheckpointError(f"model description lacks the field {exc.args[0]!r}", where) from None
        except (TypeError, ValueError, AttributeError, ConfigError) as exc:
            raise CheckpointError(f"malformed model description: {exc}", where) from None
        bundle.check(where)
        return bundle

    def check(self, where: str | Path = "") -> None:
        """Consistency of the fields (views, aggregation, threshold); raises :class:`CheckpointError`."""
        if not self.view_names:
            raise CheckpointError("model description has no view names", where)
        if not self.single_view and list(self.graph.view_names) != list(self.view_names):
            raise CheckpointError(
                f"graph views {self.graph.view_names} differ from the model's views {self.view_names}", where
            )
        try:
            check_aggregation(self.scoring.aggregation)
        except Exception as exc:
            raise CheckpointError(str(exc), where) from None
        if not np.isfinite(float(self.threshold.value)):
            raise CheckpointError(f"threshold {self.threshold.value!r} is not a finite number", where)
        bad = [k for k in self.threshold.by_views if not (k.isdigit() and 1 <= int(k) < len(self.view_names))]
        if bad:
            raise CheckpointError(
                f"threshold.by_views: keys {bad} are not numbers of views 1..{len(self.view_names) - 1}", where)
        cal_maps = self.threshold.calibration_maps
        if cal_maps and Path(cal_maps).name != cal_maps:
            raise CheckpointError(f"threshold.calibration_maps must name a file in the class folder, got {cal_maps!r}",
                                  where)
        if not 0.0 <= float(self.view_dropout) < 1.0:
            raise CheckpointError(f"view_dropout {self.view_dropout!r} is not in [0, 1)", where)
        if self.supports_missing_views and self.single_view:
            raise CheckpointError("supports_missing_views is set for a single-view model", where)
        if self.camera_faults and Path(self.camera_faults).name != self.camera_faults:
            raise CheckpointError(
                f"camera_faults must name a file in the class folder, got {self.camera_faults!r}", where
            )
        if self.classes or self.per_class:
            self._check_classes(where)

    def _check_classes(self, where: str | Path) -> None:
        from multiflow.flow.unified import CLASS_CONDITIONINGS

        if len(set(self.classes)) != len(self.classes) or any(
                not c or Path(c).name != c or c.startswith(".") for c in self.classes):
            raise CheckpointError(f"classes must be unique plain names, got {self.classes}", where)
        if sorted(self.per_class) != sorted(self.classes):
            raise CheckpointError(f"per_class holds {sorted(self.per_class)}, the model's classes are "
                                  f"{sorted(self.classes)}", where)
        if self.class_conditioning not in CLASS_CONDITIONINGS:
            raise CheckpointError(f"class_conditioning {self.class_conditioning!r} is not one of "
                                  f"{list(CLASS_CONDITIONINGS)}", where)
        if self.single_view:
            raise CheckpointError("a unified model is a multi-view model (single_view is set)", where)
        for name, spec in self.per_class.items():
            if not np.isfinite(float(spec.threshold.value)):
                raise CheckpointError(f"per_class[{name!r}].threshold {spec.threshold.value!r} is not finite", where)
            for f in (spec.camera_faults, spec.threshold.calibration_maps):
                if f and Path(f).name != f:
                    raise CheckpointError(f"per_class[{name!r}] must name files in the bundle folder, got {f!r}",
                                          where)


def _without_soft(masks: Any) -> Any:
    """Bundles written before ``masks.soft`` was removed (it only weighted the training loss, and
    measured worse than the binary mask: BENCHMARKS.md, scoring_ablation) still load."""
    if isinstance(masks, dict) and "soft" in masks:
        masks = {k: v for k, v in masks.items() if k != "soft"}
    return masks


def _build(cls, data: Any, where: str | Path, what: str):
    if not isinstance(data, dict):
        raise CheckpointError(f"model description: {what!r} must be an object, got {type(data).__name__}", where)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(f"model description: unknown field(s) {unknown} in {what!r}", where)
    return cls(**data)


def _scoring(data: Any, where: str | Path) -> ScoringSpec:
    if not isinstance(data, dict):
        raise CheckpointError(f"model description: 'scoring' must be an object, got {type(data).__name__}", where)
    try:
        return ScoringSpec.from_dict(data)
    except (ConfigError, ValueError, TypeError) as exc:
        raise CheckpointError(f"model description: malformed 'scoring': {exc}", where) from None


def _class_spec(data: Any, where: str | Path, name: str) -> ClassSpec:
    spec = _build(ClassSpec, data, where, f"per_class.{name}")
    spec.threshold = _threshold(spec.threshold, where)
    try:
        spec.unknown = None if spec.unknown is None else ThresholdFit.from_dict(spec.unknown)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"model description: malformed 'per_class.{name}.unknown': {exc}", where) from None
    spec.camera_faults = str(spec.camera_faults or "")
    spec.identified = None if spec.identified is None else float(spec.identified)
    return spec


def _threshold(data: Any, where: str | Path) -> ThresholdSpec:
    spec = _build(ThresholdSpec, data, where, "threshold")
    spec.value = float(spec.value)
    spec.audit = [_build(ThresholdChange, a, where, "threshold.audit") for a in spec.audit]
    try:
        spec.fit = None if spec.fit is None else ThresholdFit.from_dict(spec.fit)
        if not isinstance(spec.by_views, dict):
            raise ConfigError(f"'by_views' must be an object, got {type(spec.by_views).__name__}")
        spec.by_views = {str(k): ThresholdFit.from_dict(v) for k, v in spec.by_views.items()}
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"model description: malformed 'threshold': {exc}", where) from None
    spec.calibration_maps = str(spec.calibration_maps or "")
    return spec


def json_default(o: Any) -> Any:
    """``json.dumps`` default for numpy scalars/arrays and paths."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def migrate_v1(meta: dict[str, Any], flow_config: dict[str, Any] | None, where: str | Path = "") -> ModelBundle:
    """A format-1 ``model.json`` (flat dict) as a :class:`ModelBundle`.

    Format 1 stored no feature dtype (the cache's default, float16, was the only one used by the
    pipeline that wrote it) and the graph only inside the flow file (``flow_config``).
    """
    try:
        f = meta["features"]
        ext = dict(meta.get("extractor") or {})
        graph = (flow_config or {}).get("graph") or {}
        names = [str(v) for v in meta["view_names"]]
        single = bool(meta.get("single_view", False))
        m = meta.get("masks") or {}
        bundle = ModelBundle(
            category=str(meta.get("category", "")),
            view_names=names,
            graph=GraphSpec(view_names=list(graph.get("names") or (["view"] if single else names)),
                            edges=[[int(a), int(b)] for a, b in graph.get("edges", [])]),
            features=FeaturesSpec(
                backbone=str(f["backbone"]), input_size=int(f["input_size"]), weights=f.get("weights") or "",
                layer=f.get("layer") or "", dtype=str(f.get("dtype") or "float16"),
                weights_digest=str(ext.get("weights_digest", "")), channels=int(ext.get("channels", 0)),
                grid=[], extractor=ext,
            ),
            masks=MasksSpec(provider=str(m.get("provider", "none")), dilation=int(m.get("dilation", 8)),
                            mask_root=str(m.get("mask_root", "")), margin=float(m.get("margin", 0.0))),
            threshold=ThresholdSpec(value=float(meta["threshold"]), quantile=meta.get("threshold_quantile"),
                                    source=str(meta.get("threshold_source", ""))),
            # format-1 files of the scoring-switch branch carried image_score/calibration under "scoring"
            scoring=ScoringSpec.from_dict(
                {**(meta.get("scoring") or {}), "aggregation": str(meta.get("aggregation", "max"))}
            ),
            flips=dict(meta.get("flips") or {}),
            single_view=bool(meta.get("single_view", False)),
            training=TrainingRecord(
                best_epoch=int(meta.get("best_epoch", 0)), best_val_loss=meta.get("best_val_loss"),
                history=list(meta.get("history") or []), train_samples=int(meta.get("train_samples", 0)),
                val_samples=int(meta.get("val_samples", 0)),
                val_sample_scores=dict(meta.get("val_sample_scores") or {}), seconds=dict(meta.get("seconds") or {}),
            ),
            supports_missing_views=bool(meta.get("supports_missing_views", False)),
            view_dropout=float(meta.get("view_dropout", 0.0)),
        )
    except KeyError as exc:
        raise CheckpointError(f"format-1 model description lacks the field {exc.args[0]!r}", where) from None
    except (TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"malformed format-1 model description: {exc}", where) from None
    bundle.check(where)
    return bundle


def _flow_config(path: Path) -> dict[str, Any] | None:
    """The constructor config stored in a flow file's metadata (None when unreadable: the flow
    load that follows reports the file's problem)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return json.loads((f.metadata() or {}).get("config", "null"))
    except Exception:  # safetensors raises its own types; load_flow names the problem
        return None


def flow_class(bundle: ModelBundle) -> type:
    """The flow class that rebuilds the bundle's flow file: :class:`multiflow.flow.SingleViewFlow`
    where the bundle records ``single_view``, else :class:`multiflow.flow.MultiFlow` (both store a
    ``MultiFlow`` config and state dict, so the file alone does not tell them apart);
    :class:`multiflow.flow.unified.UnifiedFlow` for a unified bundle (``classes``)."""
    from multiflow.flow import MultiFlow, SingleViewFlow
    from multiflow.flow.unified import UnifiedFlow

    if bundle.classes:
        return UnifiedFlow
    return SingleViewFlow if bundle.single_view else MultiFlow


def graph_differences(flow_graph, spec: GraphSpec) -> list[str]:
    """How the flow's :class:`multiflow.flow.ViewGraph` differs from the bundle's :class:`GraphSpec`
    (view count, view names, directed edges ``j->i``); empty when they are the same graph. A flow
    graph without names is compared by count and edges only."""
    want = list(spec.view_names)
    diffs = []
    if flow_graph.n_views != len(want):
        diffs.append(f"the flow has {flow_graph.n_views} views, model.json's graph {len(want)}: {want}")
    elif flow_graph.names is not None and list(flow_graph.names) != want:
        diffs.append(f"view names: flow {list(flow_graph.names)}, model.json {want}")
    names = list(flow_graph.names) if flow_graph.names is not None else None

    def show(edges: set[tuple[int, int]]) -> str:
        return ", ".join(f"{names[j]}->{names[i]}" if names and max(j, i) < len(names) else f"{j}->{i}"
                         for j, i in sorted(edges))

    have, stored = set(flow_graph.edges), {(int(j), int(i)) for j, i in spec.edges}
    if have - stored:
        diffs.append(f"edges only in the flow: {show(have - stored)}")
    if stored - have:
        diffs.append(f"edges only in model.json: {show(stored - have)}")
    return diffs


def check_graph(flow, bundle: ModelBundle, where: str | Path) -> None:
    """The flow's view graph must be the one the bundle records (:func:`graph_differences`);
    :class:`CheckpointError` naming ``where`` and every difference otherwise."""
    diffs = graph_differences(flow.graph, bundle.graph)
    if diffs:
        raise CheckpointError(
            "the flow's view graph differs from the one model.json records (" + "; ".join(diffs)
            + "): the flow file and the model description do not belong together (copy the whole class "
            "folder, or refit)", where,
        )


def save_bundle(folder: str | Path, flow, bundle: ModelBundle) -> None:
    """Write ``model.safetensors`` (the flow) and ``model.json`` (the bundle), each atomically.
    The flow must be of the class the bundle records (:func:`flow_class`) and have its graph."""
    from multiflow.flow import save_flow

    folder = Path(folder)
    bundle.check(folder / BUNDLE_FILE)
    if type(flow) is not flow_class(bundle):
        raise CheckpointError(
            f"the flow is a {type(flow).__name__}, but the model description (single_view="
            f"{bundle.single_view}) rebuilds a {flow_class(bundle).__name__}", folder / BUNDLE_FILE,
        )
    check_graph(flow, bundle, folder / BUNDLE_FILE)
    check_classes(flow, bundle, folder / BUNDLE_FILE)
    folder.mkdir(parents=True, exist_ok=True)
    save_flow(flow, folder / FLOW_FILE)
    write_bundle(folder, bundle)


def write_bundle(folder: str | Path, bundle: ModelBundle) -> None:
    """Rewrite ``model.json`` alone, atomically (the flow file is untouched)."""
    write_json(Path(folder) / BUNDLE_FILE, bundle.to_dict(), default=json_default)


def read_bundle(folder: str | Path) -> ModelBundle:
    """The :class:`ModelBundle` of a class folder (format 1 migrated); the flow is not loaded."""
    folder = Path(folder)
    path = folder / BUNDLE_FILE
    if not path.is_file():
        raise CheckpointError("model.json not found (is this a trained class folder of a run?)", path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"not valid JSON: {exc}", path) from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt in READABLE_FORMATS:
        return ModelBundle.from_dict(data, path)
    if fmt in LEGACY_FORMATS:
        bundle = migrate_v1(data, _flow_config(folder / FLOW_FILE), path)
        if (folder / CAMERA_FAULTS_FILE).is_file():  # format 1 found the statistics by their file name
            bundle.camera_faults = CAMERA_FAULTS_FILE
        return bundle
    raise CheckpointError(
        f"unsupported model description format {fmt!r} (this multiflow reads {', '.join(READABLE_FORMATS)} and "
        f"migrates {', '.join(LEGACY_FORMATS)}): retrain the class with `multiflow fit`, or use the multiflow "
        "version that wrote it",
        path,
    )


def load_bundle(folder: str | Path):
    """Load a trained class model: returns ``(flow, bundle)`` (flow in eval mode, of the class the
    bundle records, :func:`flow_class`; its view graph checked against the bundle's,
    :func:`check_graph`). Never executes code."""
    from multiflow.flow import load_flow

    folder = Path(folder)
    bundle = read_bundle(folder)
    flow = load_flow(folder / FLOW_FILE, flow_class=flow_class(bundle))
    flow.eval()
    check_graph(flow, bundle, folder / FLOW_FILE)
    check_classes(flow, bundle, folder / FLOW_FILE)
    return flow, bundle


def check_classes(flow, bundle: ModelBundle, where: str | Path) -> None:
    """A unified flow's classes and conditioning must be the ones the bundle records."""
    if not bundle.classes:
        return
    if list(flow.classes) != list(bundle.classes) or flow.conditioning != bundle.class_conditioning:
        raise CheckpointError(
            f"the flow's classes {list(flow.classes)} ({flow.conditioning}) differ from model.json's "
            f"{bundle.classes} ({bundle.class_conditioning}): the flow file and the model description do not "
            "belong together", where)


def load_camera_faults(folder: str | Path, bundle: ModelBundle):
    """The bundle's camera-fault statistics (:class:`multiflow.faults.CameraFaultModel`), or None
    when the bundle names none. Their cameras must be the model's; a named file that is missing or
    malformed raises (:class:`CheckpointError` / :class:`multiflow.errors.DataError`) naming it."""
    from multiflow.faults import CameraFaultModel

    if not bundle.camera_faults:
        return None
    path = Path(folder) / bundle.camera_faults
    if not path.is_file():
        raise CheckpointError(f"model.json names camera-fault statistics {bundle.camera_faults!r}, but the file "
                              "is missing (copy the whole class folder, or refit)", path)
    faults = CameraFaultModel.load(path)
    if list(faults.view_names) != list(bundle.view_names):
        raise CheckpointError(f"cameras {faults.view_names} differ from the model's {bundle.view_names}", path)
    return faults


def set_threshold(folder: str | Path, value: float, *, who: str, reason: str,
                  class_name: str | None = None) -> ModelBundle:
    """Set the decision threshold of a trained class model; appends an audit record and rewrites
    ``model.json`` atomically (predict, export and serve read the new value). Returns the bundle.

    A threshold set by hand applies to every number of present views: the fitted statistics and the
    per-number-of-views thresholds (which described the fitted value) are dropped.

    The read-modify-write holds an exclusive lock (``fcntl.flock``, POSIX) on ``model.json.lock``
    beside it, so concurrent writers (two review pages, two processes) never lose a record.

    A unified bundle needs ``class_name``: that class's threshold is set (the top-level one too when
    it is ``classes[0]``'s); the class's view of the bundle is returned (:meth:`ModelBundle.for_class`)."""
    import fcntl

    folder = Path(folder)
    value = float(value)
    if not np.isfinite(value):
        raise CheckpointError(f"threshold must be a finite number, got {value!r}", folder / BUNDLE_FILE)
    if not who or not reason:
        raise CheckpointError("a threshold change needs who made it and why (who=..., reason=...)", folder / BUNDLE_FILE)
    if not (folder / BUNDLE_FILE).is_file():
        read_bundle(folder)  # the clear "model.json not found" error, before a lock file is made
    with open(folder / (BUNDLE_FILE + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        bundle = read_bundle(folder)
        if bundle.unified and not class_name:
            raise CheckpointError(f"a unified model has one threshold per class {bundle.classes}: name the class",
                                  folder / BUNDLE_FILE)
        spec = bundle.for_class(class_name or "").threshold
        spec.audit.append(ThresholdChange(
            value=value, previous=float(spec.value), who=str(who),
            when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), reason=str(reason),
        ))
        spec.value = value
        spec.source = f"set by {who}"
        # the fitted statistics (and the per-number-of-views thresholds) described the old value
        spec.fit = None
        spec.by_views = {}
        if bundle.unified and class_name == bundle.classes[0]:
            bundle.threshold = spec
        write_bundle(folder, bundle)
    return bundle.for_class(class_name or "")


def check_backbone(extractor, bundle: ModelBundle, where: str | Path) -> None:
    """The backbone rebuilt for inference must be the one the flow was trained on: same weights
    digest, input size, layer and channels; raises :class:`CheckpointError` naming the difference."""
    f = bundle.features
    if not f.weights_digest:
        raise CheckpointError("model.json records no backbone weights digest (features.weights_digest)", where)
    if int(extractor.input_size) != int(f.input_size):
        raise CheckpointError(
            f"the backbone's input size {extractor.input_size} differs from the {f.input_size} the model was "
            f"trained with (features.input_size)", where,
        )
    if f.channels and int(extractor.channels) != int(f.channels):
        raise CheckpointError(
            f"the backbone gives {extractor.channels} channels, the model was trained on {f.channels} "
            f"(features.layer {f.layer!r})", where,
        )
    if extractor.digest != f.weights_digest:
        raise CheckpointError(
            f"the backbone's weights ({extractor.digest[:12]}…) differ from those the model was trained "
            f"with ({f.weights_digest[:12]}…): same backbone, input size and weights file?",
            where,
        )


def check_features_config(cfg: FeatureConfig, bundle: ModelBundle, where: str | Path) -> None:
    """A run configuration's ``features`` section must describe the bundle's backbone (the test
    split's cache is built from it); :class:`CheckpointError` names each differing key."""
    f = bundle.features
    diffs = [
        f"features.{k}: configuration {a!r}, model {b!r}"
        for k, a, b in [
            ("backbone", cfg.backbone, f.backbone), ("input_size", int(cfg.input_size), int(f.input_size)),
            ("weights", cfg.weights or "", f.weights or ""), ("layer", cfg.layer or "", f.layer or ""),
            ("dtype", cfg.dtype, f.dtype),
        ]
        if a != b
    ]
    if diffs:
        raise CheckpointError(
            "the run configuration's features differ from those the model was trained with ("
            + "; ".join(diffs) + "): retrain, or undo the override", where,
        )
