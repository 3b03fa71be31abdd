"""Typed run configuration: dataclasses, YAML files and ``section.key=value`` overrides.

A run is configured by one :class:`RunConfig` made of sections (data, features, masks, model, train,
eval). Defaults are the paper's (Sec. 4.3) except where stated: the backbone defaults to the
offline EfficientNet-Lite0 at 384 px (the paper: EfficientNet-B5 at 768 px, see
``configs/paper.yaml``).

YAML files hold the same nested structure; unknown keys and wrongly typed values are errors that
name the file and the key. Overrides use dotted keys (``train.epochs=5``) with YAML-parsed values.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from multiflow.errors import ConfigError
from multiflow.numbers import check_number
from multiflow.scoring.spec import DEFAULT_IMAGE_SCORE
from multiflow.scoring.threshold import DEFAULT_CONFIDENCE, DEFAULT_FALSE_REJECT


@dataclass
class DataConfig:
    """Where the data come from.

    ``format``: ``realiad`` (Real-IAD JSON + image folders, also what ``multiflow synth`` writes),
    ``folder`` (``<root>/<split>/<good|defect>/<sample>/<view>.<ext>``) or ``manifest`` (a CSV).
    """

    root: str = ""
    format: str = "realiad"
    categories: list[str] = field(default_factory=list)
    json_variant: str = "realiad_jsons"
    resolution: str = "256"
    views: list[str] = field(default_factory=list)
    flips: dict[str, str] = field(default_factory=dict)
    skip_incomplete: bool = False
    manifest: str = ""


@dataclass
class FeatureConfig:
    """Frozen backbone and its feature cache."""

    backbone: str = "lite0"
    input_size: int = 384  # 0 = the data's image size (the larger side of the first training image)
    weights: str = ""
    # "" = the preset's stage; "blocks:N", "features:I", or several taps "blocks:3+blocks:5[@blocks:5]"
    # resampled to one grid (the finest, or the one after @) and concatenated
    layer: str = ""
    dtype: str = "float16"
    batch_size: int = 8
    num_workers: int = 0
    cache_dir: str = ""


@dataclass
class MaskConfig:
    """Foreground masks (paper Sec. 3.2): ``isnet``, ``threshold``, ``file`` or ``none``."""

    provider: str = "threshold"
    dilation: int = 8
    mask_root: str = ""
    # extra dilation as a fraction of the object's bounding-box diagonal (0 = the paper's masks)
    margin: float = 0.0
    #: how the ``threshold`` provider computes: ``torch`` (batched tensor operations on the run's
    #: device, all views of several objects at once) or ``numpy`` (the NumPy/SciPy reference, view
    #: by view on the CPU); the masks agree within IoU >= 0.99 (multiflow.features.masks_torch)
    backend: str = "torch"


@dataclass
class ModelConfig:
    """The flow (paper Sec. 3.1, 3.3, 3.4; model.md).

    The camera graph (``docs/data-format.md``, "Camera graph"): ``graph`` is a preset of
    ``multiflow.flow.graph.GRAPH_PRESETS`` or ``custom``; ``edges`` are undirected
    ``[view_a, view_b]`` pairs of view names (``custom`` only); ``top_view`` names the top camera
    of ``real_iad``/``top_only``/``ring`` (Real-IAD: ``C1``); ``ring_order`` lists the ring's views
    (names, or positions on the view axis) in ring order.
    """

    graph: str = "real_iad"
    edges: list[list[str]] = field(default_factory=list)
    top_view: str = ""
    ring_order: list[int | str] = field(default_factory=list)
    n_blocks: int = 6
    hidden: int = 64
    kernel_sizes: list[int] = field(default_factory=lambda: [3, 3, 3, 3, 3, 5])
    clamp: float = 1.9
    fusion: str = "conv"
    heads: int = 4
    noise: str = "simplenet"
    noise_std: float = 0.15
    share_side_weights: bool = False
    #: baseline: no cross-view links and one shared single-view flow; the V images of a sample are
    #: V independent samples (features (N, V, C, h, w) -> (N*V, 1, C, h, w)); maps back to (N, V, h, w)
    single_view: bool = False
    #: camera rig of the ``geometry`` fusion: a ``cameras.json`` (docs/data-format.md); "" = the class
    #: folder's ``cameras.json`` (``<data.root>/<class>/`` or ``<data.root>/realiad_<resolution>/<class>/``)
    cameras: str = ""
    #: height ``z0`` of the plane (world ``z``, the support plane is 0) the ``geometry`` fusion maps through
    plane_height: float = 0.0
    #: one flow for every class of ``data.categories`` (one bundle, ``<run>/unified/``; issue 23)
    unified: bool = False
    #: how a unified flow knows the class: ``none`` (plain, cannot identify), ``embedding`` (learned
    #: class embedding to every st-network) or ``latent`` (a Gaussian per class in the latent)
    class_conditioning: str = "latent"
    #: size of the class embedding (``class_conditioning: embedding``)
    class_embed_dim: int = 8
    #: learn a per-class latent log-scale besides the mean (``class_conditioning: latent``)
    latent_scale: bool = True
    #: ``class_conditioning: latent``: the class means start as N(0, std^2) draws (0: all at the origin)
    latent_init_std: float = 0.0


@dataclass
class TrainConfig:
    """Optimisation (paper Sec. 4.3): AdamW, lr 2e-4, betas (0.9, 0.95), wd 1e-5, batch 8 samples."""

    epochs: int = 112
    batch_size: int = 8
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 1e-5
    seed: int = 0
    val_fraction: float = 0.1
    select: str = "best_val"
    #: legacy (before ``threshold.false_reject``): read from old configurations, no longer used
    threshold_quantile: float = 0.99
    #: resume state (model + AdamW + best so far) every this many minutes of wall clock and at the end
    checkpoint_minutes: float = 5.0
    #: also every this many epochs (0 = off; 1 = the old every-epoch policy)
    checkpoint_every: int = 0
    threads: int = 0
    #: probability of dropping each view of each training sample (never all views of a sample);
    #: > 0 trains a model that scores objects with any non-empty subset of cameras
    view_dropout: float = 0.0
    #: stop when the held-out loss has not improved by ``early_stopping_min_delta`` for this many
    #: epochs (0 = off: the paper's fixed schedule)
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    #: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``: features, masks,
    #: training, scoring and prediction all run there (multiflow.device.resolve_device)
    device: str = "auto"
    #: training steps in ``fp32``, ``bf16`` (bf16 autocast st-network convolutions; coupling math,
    #: log-det, NLL in fp32) or ``auto`` (bf16 where the device computes it natively: CUDA with bf16,
    #: a CPU with AVX-512 BF16/AMX; else fp32). Scoring after training (calibration, test, predict,
    #: serve, ONNX) is fp32 whatever this says (multiflow.device)
    precision: str = "auto"
    #: learning rate over the run (multiflow.engine.schedule), set before every optimiser step:
    #: ``constant`` (the paper's; ``train.lr`` throughout) or ``cosine`` (decay from ``train.lr`` to
    #: ``train.lr_min`` over the planned ``train.epochs``); either after a linear warm-up of
    #: ``warmup_epochs`` epochs (fractions allowed; 0 = none)
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    lr_min: float = 0.0
    #: learning rate of the fusion gates ``gamma_i`` (Eq. 4) in an AdamW group of their own without
    #: weight decay, following the same schedule (0 = ``train.lr``, one group: the paper's)
    gamma_lr: float = 0.0


@dataclass
class EvalConfig:
    """Evaluation: aggregation of views, metric computation and pictures."""

    aggregation: str = "max"
    streaming: bool = False
    pictures: bool = True
    batch_size: int = 16
    pixel_metrics: bool = True
    # how a map becomes an image score (multiflow.scoring.spec: the defaults are DEFAULT_IMAGE_SCORE's)
    image_score: str = DEFAULT_IMAGE_SCORE.name  # max | topk_mean | quantile | smoothed_max
    image_score_k: float = DEFAULT_IMAGE_SCORE.k  # topk_mean: fraction of foreground pixels (< 1) or a count
    image_score_q: float = DEFAULT_IMAGE_SCORE.q  # quantile: the quantile of the foreground pixels
    image_score_sigma: float = DEFAULT_IMAGE_SCORE.sigma  # smoothed_max: Gaussian sigma (pixels, upsampled map)
    image_score_size: int = DEFAULT_IMAGE_SCORE.size  # smoothed_max: side of the upsampled map (0 = input size)
    # legacy: per-view calibration was removed (measured worse); only "none" is accepted
    calibration: str = "none"

    def image_score_spec(self):
        """The :class:`multiflow.scoring.ImageScoreSpec` of these settings (validated there)."""
        from multiflow.scoring.spec import ImageScoreSpec

        return ImageScoreSpec(name=self.image_score, k=self.image_score_k, q=self.image_score_q,
                              sigma=self.image_score_sigma, size=self.image_score_size)


@dataclass
class ThresholdConfig:
    """The decision threshold (:mod:`multiflow.scoring.threshold`): the user states the target.

    ``false_reject``: the false-reject rate of new good objects the threshold must not exceed;
    ``confidence``: with this probability (over the draw of the calibration objects);
    ``calibration_fraction``: the share of the normal training objects held out, before training,
    to fit the threshold on (at least 2 objects): they neither train the flow nor select its epoch.
    ``cross_fit``: 0 (the default) holds out ``calibration_fraction``; ``K >= 2`` holds out nothing
    and cross-fits instead: the flow trains on every normal object, then ``K`` fold flows, each
    trained the same way (as many epochs as the flow's selected one) without one fold, score that
    fold, so the threshold sees an out-of-fold score of every normal object (its rare looks too),
    at the cost of ``K`` more trainings on ``(K - 1) / K`` of the objects
    (:mod:`multiflow.engine.threshold`).
    """

    false_reject: float = DEFAULT_FALSE_REJECT
    confidence: float = DEFAULT_CONFIDENCE
    calibration_fraction: float = 0.1
    cross_fit: int = 0
    #: a unified model's unknown-class cut-off: the rate of good objects of a known class it may
    #: flag as an unknown class (0 = the same target as ``false_reject``), at ``confidence``
    unknown_false_reject: float = 0.0


@dataclass
class FaultConfig:
    """Camera-fault statistics fitted on the normal training images (:mod:`multiflow.faults`).

    ``false_alarm``: target probability that a good object raises any camera fault (the object-level
    budget of :mod:`multiflow.faults.fit`; a guaranteed rate needs ``(1 - a) / a`` normal training
    objects, 99 for 1 %).
    ``flow_swap``: also fit the flow's swap check (:mod:`multiflow.faults.flow_swap`) on the held-out
    calibration objects; ``flow_swap_share``: its share of ``false_alarm`` (the image checks get the rest).
    """

    enabled: bool = True
    size: int = 256
    grid: int = 8
    false_alarm: float = 0.01
    flow_swap: bool = True
    flow_swap_share: float = 0.5


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    out: str = "results"
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "RunConfig":
        # the names of masks, fusions, noise schemes and aggregations come from their registries
        from multiflow.features.masks import BACKENDS, MASK_PROVIDERS
        from multiflow.flow.fusion import FUSIONS
        from multiflow.flow.noise import NOISE_SCHEMES
        from multiflow.scoring import VIEW_AGGREGATIONS, check_calibration, check_target

        check_numbers(self)
        _choice("data.format", self.data.format, {"realiad", "folder", "manifest"})
        _choice("masks.provider", self.masks.provider, set(MASK_PROVIDERS))
        _choice("masks.backend", self.masks.backend, set(BACKENDS))
        self._validate_graph()
        _choice("model.fusion", self.model.fusion, set(FUSIONS))
        _choice("model.noise", self.model.noise, set(NOISE_SCHEMES))
        _choice("train.select", self.train.select, {"best_val", "last"})
        _choice("eval.aggregation", self.eval.aggregation, set(VIEW_AGGREGATIONS))
        try:
            self.eval.image_score_spec()
        except ConfigError as exc:
            raise ConfigError(f"eval.image_score*: {exc}") from None
        check_calibration(self.eval.calibration, "eval.calibration")
        check_target(self.threshold.false_reject, self.threshold.confidence, "threshold")
        _choice("features.dtype", self.features.dtype, {"float16", "float32"})
        _choice("train.precision", self.train.precision, {"fp32", "bf16", "auto"})
        _choice("train.lr_schedule", self.train.lr_schedule, {"constant", "cosine"})
        if self.train.lr_min > self.train.lr:
            raise ConfigError(f"train.lr_min ({self.train.lr_min}) must not exceed train.lr ({self.train.lr})")
        if self.train.warmup_epochs > self.train.epochs:
            raise ConfigError(f"train.warmup_epochs ({self.train.warmup_epochs}) is longer than the run "
                              f"(train.epochs={self.train.epochs})")
        dev = self.train.device.strip().lower()
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.train.device!r}")
        if len(self.model.kernel_sizes) != self.model.n_blocks:
            raise ConfigError(
                f"model.kernel_sizes has {len(self.model.kernel_sizes)} entries but "
                f"model.n_blocks is {self.model.n_blocks}"
            )
        if self.train.threshold_quantile != 0.99:
            import warnings

            warnings.warn(f"train.threshold_quantile={self.train.threshold_quantile} is no longer used: the threshold "
                          f"is fitted for threshold.false_reject={self.threshold.false_reject} (a false-reject rate "
                          "of good parts); state that instead", stacklevel=2)
        if self.train.view_dropout > 0 and self.model.single_view:
            raise ConfigError("train.view_dropout needs the multi-view flow (model.single_view=false)")
        if self.model.unified:
            from multiflow.flow.unified import CLASS_CONDITIONINGS

            _choice("model.class_conditioning", self.model.class_conditioning, set(CLASS_CONDITIONINGS))
            if self.model.single_view:
                raise ConfigError("model.unified needs the multi-view flow (model.single_view=false)")
            if self.threshold.cross_fit:
                raise ConfigError("threshold.cross_fit is not available for a unified model (model.unified=true): "
                                  "its per-class thresholds use threshold.calibration_fraction")
        if self.threshold.cross_fit == 1:
            raise ConfigError("threshold.cross_fit must be 0 (a held-out calibration split) or at least 2 folds, "
                              "got 1")
        if len(self.train.betas) != 2:
            raise ConfigError(f"train.betas must have two values, got {self.train.betas}")
        return self

    def _validate_graph(self) -> None:
        """``model.graph``/``edges``/``top_view``/``ring_order``; in full when ``data.views`` is set."""
        from multiflow.flow.graph import GRAPH_CHOICES, build_view_graph

        m = self.model
        _choice("model.graph", m.graph, set(GRAPH_CHOICES))
        for k, pair in enumerate(m.edges):
            if len(pair) != 2:
                raise ConfigError(f"model.edges[{k}]: {pair!r} is not a pair [view_a, view_b]")
        if m.graph != "custom" and m.edges:
            raise ConfigError(
                f"model.edges is only used with model.graph=custom, but model.graph is {m.graph!r}"
            )
        if m.graph == "custom" and m.single_view:
            raise ConfigError("model.single_view has no cross-view links; it cannot use model.graph=custom")
        if m.graph == "custom" and not m.edges:
            raise ConfigError("model.graph=custom needs model.edges: a list of [view_a, view_b] pairs")
        if m.graph == "custom" and m.top_view:
            raise ConfigError("model.top_view is only used by the presets; model.graph=custom takes model.edges alone")
        if m.top_view and self.data.views and m.top_view not in self.data.views:
            raise ConfigError(f"model.top_view {m.top_view!r} is not one of data.views {self.data.views}")
        if self.data.views and not m.single_view:
            try:
                build_view_graph(m.graph, self.data.views, edges=m.edges, top=m.top_view or None,
                                 ring_order=m.ring_order or None)
            except ConfigError as exc:
                raise ConfigError(f"model.graph={m.graph} with data.views={self.data.views}: {exc}") from exc


#: Ranges of the numeric keys (:func:`multiflow.numbers.check_number` bounds); a key of a list
#: (``train.betas``) applies to each item. Every other number only has to be finite.
NUMBER_RANGES: dict[str, dict[str, Any]] = {
    "features.input_size": {"ge": 0},  # 0 = the data's image size
    "features.batch_size": {"gt": 0},
    "features.num_workers": {"ge": 0},
    "masks.dilation": {"ge": 0},
    "masks.margin": {"ge": 0},
    "model.n_blocks": {"gt": 0},
    "model.hidden": {"gt": 0},
    "model.kernel_sizes": {"gt": 0},
    "model.clamp": {"gt": 0},
    "model.heads": {"gt": 0},
    "model.noise_std": {"ge": 0},
    "train.epochs": {"gt": 0},
    "train.batch_size": {"gt": 0},
    "train.lr": {"gt": 0},
    "train.betas": {"ge": 0, "lt": 1},
    "train.weight_decay": {"ge": 0},
    "train.val_fraction": {"ge": 0, "lt": 1},
    "train.threshold_quantile": {"gt": 0, "le": 1},
    "train.checkpoint_minutes": {"ge": 0},
    "train.checkpoint_every": {"ge": 0},
    "train.threads": {"ge": 0},
    "train.view_dropout": {"ge": 0, "lt": 1},
    "train.early_stopping_patience": {"ge": 0},
    "train.early_stopping_min_delta": {"ge": 0},
    "train.warmup_epochs": {"ge": 0},
    "train.lr_min": {"ge": 0},
    "train.gamma_lr": {"ge": 0},
    "eval.batch_size": {"gt": 0},
    "eval.image_score_k": {"gt": 0},
    "eval.image_score_q": {"ge": 0, "le": 1},
    "eval.image_score_sigma": {"gt": 0},
    "eval.image_score_size": {"ge": 0},
    "threshold.calibration_fraction": {"gt": 0, "lt": 1},
    "threshold.cross_fit": {"ge": 0},  # false_reject, confidence: scoring.check_target
    "faults.size": {"gt": 0},
    "faults.grid": {"gt": 0},
    "faults.false_alarm": {"gt": 0, "lt": 1},
    "faults.flow_swap_share": {"gt": 0, "lt": 1},
    "model.class_embed_dim": {"gt": 0},
    "threshold.unknown_false_reject": {"ge": 0, "lt": 1},
    "model.latent_init_std": {"ge": 0},
}


def check_numbers(cfg: Any, where: str = "") -> None:
    """Every number of a configuration (dataclass fields, lists of numbers, nested sections) is
    finite and inside its :data:`NUMBER_RANGES` range; :class:`ConfigError` names the key and value.

    Run by :meth:`RunConfig.validate`, so a configuration built in Python (``api.fit(RunConfig(...))``)
    is checked like a YAML file or a ``--set`` override.
    """
    for f in dataclasses.fields(cfg):
        key = f"{where}.{f.name}" if where else f.name
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_numbers(value, key)
            continue
        bounds = NUMBER_RANGES.get(key, {})
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                check_number(item, key if i is None else f"{key}[{i}]", **bounds)


def _choice(name: str, value: str, allowed: set[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {sorted(allowed)}, got {value!r}")


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Check (and gently coerce int -> float, tuple -> list) a YAML value against a type hint."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {annotation}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(annotation)
        return {_check_type(k, kt, where): _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; nan / inf are refused below
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return check_number(float(value), where)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


#: Keys of earlier versions that no longer mean anything: a run folder's ``config.yaml`` written with
#: them still loads (the key is dropped with a warning); a new configuration should not set them.
REMOVED_KEYS = {
    "faults.margin": "camera-fault cut-offs are now fitted for faults.false_alarm (an object-level rate)",
}


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    removed = [k for k in data if k not in names and f"{where}.{k}" in REMOVED_KEYS]
    if removed:
        import warnings

        for k in removed:
            warnings.warn(f"{where}.{k} is no longer used and is ignored: {REMOVED_KEYS[f'{where}.{k}']}", stacklevel=3)
        data = {k: v for k, v in data.items() if k not in removed}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _from_dict(hint, value, f"{where}.{key}" if where else key)
        else:
            kwargs[key] = _check_type(value, hint, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return _from_dict(RunConfig, data or {}, "").validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _read_yaml(p: Path) -> Any:
    """The parsed YAML of a configuration file; :class:`ConfigError` naming the file and the
    problem when it is missing, not a file, unreadable, not UTF-8 text or not valid YAML."""
    if not p.exists():
        raise ConfigError(f"{p}: configuration file not found")
    if not p.is_file():
        raise ConfigError(f"{p}: configuration path is not a file")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the configuration file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not a UTF-8 text file (byte {exc.start} is 0x{raw[exc.start]:02x}); "
            "a configuration is a YAML text file"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"{p}: a binary file (it holds NUL bytes); a configuration is a YAML text file")
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{p}: not valid YAML: nested too deeply") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML configuration (or the defaults) and apply ``section.key=value`` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path:
        p = Path(path)
        source = str(p)
        data = _read_yaml(p)
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (data:, train:, ...), "
                              f"got {type(data).__name__}")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return config_from_dict(data, source)


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the configuration as YAML (atomically)."""
    from multiflow._atomic import write_text

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
