"""The end-to-end pipeline: data -> cached features and masks -> flow -> scores, metrics, pictures.

One model per class (category). A run folder looks like::

    results/<run>/
        config.yaml                      the full configuration of the run (data location, training)
        <category>/model.safetensors     the flow (weights + its constructor config)
        <category>/model.json            the model bundle (:mod:`multiflow.engine.bundle`)
        <category>/camera_faults.json    per-camera normal statistics for the camera-fault check (named by the bundle)
        <category>/calibration_maps.npz  maps of the held-out calibration objects, or the out-of-fold maps of every
                                         normal object with threshold.cross_fit (threshold refits; named by the bundle)
        <category>/train_state/          resumable training state
        <category>/crossfit/             finished cross-fit folds, while fit runs (threshold.cross_fit)
        <category>/metrics.json          evaluation of the test split (after ``multiflow test``)
        <category>/scores.csv            per-sample and per-view scores of the test split
        <category>/adeval.pkl            predictions in ADEval's format
        <category>/figures/*.png         Fig. 5 layouts, ROC, histograms, worst FP / FN
        metrics.json / metrics.csv / metrics.md / report.html

With ``model.unified=true`` one flow is trained for every class (:mod:`multiflow.engine.unified`):
the model is ``<run>/unified/`` (one bundle with per-class thresholds and camera statistics) and
``test`` writes each class's outputs to ``<run>/<class>/`` as above.

This module only orchestrates: objects are built by :mod:`multiflow.engine.factories`, splits
prepared by :mod:`multiflow.engine.preprocess`, scores computed by :mod:`multiflow.scoring`,
results written by :mod:`multiflow.engine.outputs`. Evaluation reads the model's bundle, never the
run configuration's model, feature or mask settings; explicitly named test-time overrides (e.g.
``{"aggregation": "mean"}``) are applied on top and recorded in ``metrics.json``.

The device is resolved once per run (:func:`multiflow.engine.factories.run_device`: ``train.device``,
or the rank's GPU under ``torchrun``) and handed to feature extraction, training and scoring;
``train.precision=bf16`` (or ``auto`` on hardware with native bf16) runs the training steps' st-networks
under bf16 autocast there (coupling math and NLL in fp32); the maps the threshold is fitted on and the
test maps are computed in fp32 (:data:`SCORING_PRECISION`), as ``predict``, ``serve`` and the ONNX graph
score, so a model's threshold holds wherever it is scored.

Under ``torchrun`` (see :mod:`multiflow.engine.distributed`) the ranks share feature and mask
extraction, training is data parallel, anomaly maps are computed on shards and all-gathered, and
only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from multiflow._atomic import write_json
from multiflow.config import RunConfig, dump_config
from multiflow.engine.bundle import (
    BUNDLE_FILE,
    CAMERA_FAULTS_FILE,
    FeaturesSpec,
    GraphSpec,
    MasksSpec,
    ModelBundle,
    ThresholdSpec,
    TrainingRecord,
    check_backbone,
    check_features_config,
    json_default,
    load_bundle,
    save_bundle,
)
from multiflow.engine.factories import (
    build_extractor,
    build_flow,
    list_categories,
    resolve_camera_rig,
    resolve_input_size,
    run_device,
)
from multiflow.engine.preprocess import prepare_split
from multiflow.engine.unified import UNIFIED_DIR
from multiflow.errors import CheckpointError, ConfigError, DataError
from multiflow.scoring import ScoringSpec, check_overrides

#: the precision of every map scored after training (calibration, test): the ONNX graph's
SCORING_PRECISION = "fp32"

if TYPE_CHECKING:
    import torch


def _maps(model, features, masks, n_views: int, ctx, *, batch_size: int,
          progress: bool = False, device: torch.device | None = None, precision: str = "fp32") -> np.ndarray:
    """Anomaly maps ``(N, V, h, w)`` computed on ``device`` in ``precision``, in batches of the
    flow's own samples (``model.to_flow_samples``: objects, or images for the single-view flow)."""
    from multiflow.engine.distributed import compute_maps_sharded

    kw = dict(batch_size=batch_size, progress=progress, device=device, precision=precision)
    feats, masks = model.to_flow_samples(features, masks)
    return model.from_flow_samples(compute_maps_sharded(model, feats, masks, ctx, **kw), n_views)


# ------------------------------------------------------------------------------------ fitting
def fit_category(cfg: RunConfig, category: str, run_dir: Path, *, resume: bool = False,
                 progress: bool = True, device: torch.device | None = None) -> ModelBundle:
    """Train the flow of one class and fit its threshold on scores of normal objects it did not train on.

    ``threshold.cross_fit=0``: ``threshold.calibration_fraction`` of the normal training objects are
    held out before training (:mod:`multiflow.engine.threshold`) and the flow trains (and selects its
    epoch) on the rest. ``cross_fit=K``: the flow trains on all of them and ``K`` fold flows give
    every object an out-of-fold score (:mod:`multiflow.engine.calibration`). The threshold is fitted
    for ``threshold.false_reject`` at ``threshold.confidence``, per number of present views too for a
    model trained with view dropout; its warnings are issued and stored. The flow's swap check is
    fitted on the same objects' swap gains.

    Features, masks, training and scoring run on ``device`` (default: :func:`run_device`)."""
    import warnings

    from multiflow.engine.calibration import (
        CalibrationEvidence,
        cross_fit_evidence,
        flow_rows,
        remove_cross_fit,
        score_objects,
    )
    from multiflow.engine.distributed import barrier, current_context
    from multiflow.engine.threshold import (
        CALIBRATION_FILE,
        RowSubset,
        fit_for_scoring,
        fit_from_view_scores,
        save_calibration_maps,
        split_calibration,
    )
    from multiflow.engine.train import train_flow

    ctx = current_context()
    progress = progress and ctx.is_main
    device, precision = run_device(cfg.train, device)
    t0 = time.perf_counter()
    out = run_dir / category
    cfg = dataclasses.replace(cfg, features=resolve_input_size(cfg.features, cfg.data, category))
    extractor = build_extractor(cfg.features)
    train = prepare_split(cfg, category, "train", extractor, progress=progress, device=device)
    t_feat = time.perf_counter() - t0
    n_views = len(train.view_names)
    n_objects = len(train.sample_ids)
    cross_fit = int(cfg.threshold.cross_fit)
    if cross_fit:  # every object trains the flow; the folds score them (engine/calibration.py)
        rest, cal = np.arange(n_objects), np.arange(0)
    else:  # the threshold's calibration objects, held out before training (engine/threshold.py)
        rest, cal = split_calibration(n_objects, cfg.threshold.calibration_fraction, cfg.train.seed,
                                      min_rest=2 if cfg.train.val_fraction > 0 else 1)
    rig = resolve_camera_rig(cfg.model, cfg.data, category, list(train.view_names))

    def build():
        return build_flow(cfg.model, extractor.channels, train.view_names, cfg.train.seed, camera_rig=rig)

    model = build()
    # what the flow takes as one sample (objects, or images for the single-view flow)
    flow_feats, flow_masks = model.to_flow_samples(train.features, train.masks)
    per = int(flow_feats.shape[0]) // max(n_objects, 1)  # flow samples per object

    def train_on(net, objects, train_cfg, state_dir, resume_fold, until=None):
        rows = flow_rows(objects, per)
        f, m = RowSubset(flow_feats, rows), None if flow_masks is None else RowSubset(flow_masks, rows)
        return train_flow(net, f, m, train_cfg, state_dir, resume=resume_fold, progress=progress, device=device,
                          until_epoch=until)

    result = train_on(model, rest, cfg.train, out / "train_state", resume)
    scoring = ScoringSpec(aggregation=cfg.eval.aggregation, image_score=cfg.eval.image_score_spec())
    image_size = int(extractor.input_size)
    supports_missing = bool(cfg.train.view_dropout > 0)
    want_gains = bool(cfg.faults.enabled and cfg.faults.flow_swap and not cfg.model.single_view and n_views >= 2)

    def maps_fn(net, features, masks):  # fp32, as predict, serve and the ONNX graph score (multiflow.device)
        return _maps(net, features, masks, n_views, ctx, batch_size=cfg.eval.batch_size, device=device,
                     precision=SCORING_PRECISION)

    if cross_fit:
        evidence = cross_fit_evidence(
            cfg, build=build, train_fold=lambda net, objs, tcfg, sdir, res: train_on(
                net, objs, tcfg, sdir, res, until=int(result.best_epoch)),
            features=train.features, masks=train.masks, sample_ids=list(train.sample_ids),
            until_epoch=int(result.best_epoch), out=out, scoring=scoring, image_size=image_size, maps_fn=maps_fn,
            view_scores=supports_missing, swap_gains=want_gains, device=device, resume=resume, progress=progress,
            is_main=ctx.is_main, sync=lambda: barrier(ctx))
    else:
        cal_masks = None if train.masks is None else train.masks[cal]
        maps, worst, gains = score_objects(
            model, train.features[cal], cal_masks, scoring=scoring, image_size=image_size, maps_fn=maps_fn,
            view_scores=supports_missing, swap_gains=want_gains, batch_size=cfg.eval.batch_size,
            device=device, seed=cfg.train.seed, progress=progress)
        evidence = CalibrationEvidence(
            maps=maps, masks=cal_masks, sample_ids=[train.sample_ids[i] for i in cal], view_scores=worst,
            swap_gains=gains, source=f"{len(cal)} held-out calibration objects (threshold.calibration_fraction; not "
                                     "trained on, not used to select the epoch)")
    what = "out-of-fold scored objects" if cross_fit else "held-out calibration objects"
    # cross-fitted, every normal object is already scored: only more of them help
    remedy = "add normal training objects" if cross_fit else ""
    fit, cal_scores = fit_for_scoring(evidence.maps, evidence.masks, evidence.sample_ids, scoring, cfg.threshold,
                                      image_size=image_size, what=what, remedy=remedy)
    by_views = fit_from_view_scores(evidence.view_scores, evidence.sample_ids, cfg.threshold, what=what,
                                    remedy=remedy) if supports_missing else {}
    threshold = ThresholdSpec(value=fit.value, fit=fit, by_views=by_views, calibration_maps=CALIBRATION_FILE,
                              source=evidence.source)
    if ctx.is_main:
        for w in threshold.warnings:
            warnings.warn(f"{category}: threshold: {w}", stacklevel=2)
        if progress:
            print(f"{category}: threshold {fit.value:.6g} ({fit.method}, {fit.n} {what}, false-reject "
                  f"target {fit.false_reject:g} at {fit.confidence:.0%} confidence)", flush=True)
    graph = model.graph.to_dict()
    desc = extractor.describe()
    bundle = ModelBundle(
        category=category,
        view_names=list(train.view_names),
        graph=GraphSpec(view_names=list(graph["names"] or train.view_names), edges=graph["edges"]),
        features=FeaturesSpec(
            backbone=cfg.features.backbone, input_size=int(cfg.features.input_size), weights=cfg.features.weights,
            layer=cfg.features.layer, dtype=cfg.features.dtype, weights_digest=extractor.digest,
            channels=int(extractor.channels), grid=[int(s) for s in extractor.feature_size(extractor.input_size)],
            extractor=desc,
        ),
        masks=MasksSpec(provider=cfg.masks.provider, dilation=int(cfg.masks.dilation), mask_root=cfg.masks.mask_root,
                        margin=float(cfg.masks.margin)),
        threshold=threshold,
        scoring=scoring,
        flips=dict(cfg.data.flips),
        single_view=bool(cfg.model.single_view),
        training=TrainingRecord(
            best_epoch=int(result.best_epoch), best_val_loss=result.best_val_loss, history=list(result.history),
            train_samples=int(len(result.train_index)), val_samples=int(len(result.val_index)),
            calibration_samples=int(len(evidence.sample_ids)), cross_fit=cross_fit,
            val_sample_scores={"n": int(len(cal_scores)), "mean": float(cal_scores.mean()),
                               "max": float(cal_scores.max())},
            seconds={"features_and_masks": t_feat, "total": time.perf_counter() - t0},
            stop_reason=result.stop_reason, device=str(device), precision=precision,
        ),
        supports_missing_views=supports_missing,
        view_dropout=float(cfg.train.view_dropout),
    )
    if ctx.is_main:
        if cfg.faults.enabled and fit_camera_fault_stats(cfg, category, train.dataset, out / CAMERA_FAULTS_FILE,
                                                         progress=progress):
            bundle.camera_faults = CAMERA_FAULTS_FILE
            if want_gains:
                fit_flow_swap_check(cfg, evidence.swap_gains, len(train.view_names), out / CAMERA_FAULTS_FILE,
                                    source=evidence.source)
        save_calibration_maps(out / CALIBRATION_FILE, evidence.maps, evidence.masks, evidence.sample_ids)
        save_bundle(out, model, bundle)
        if cross_fit:
            remove_cross_fit(out)
    barrier(ctx)
    return bundle


def fit_camera_fault_stats(cfg: RunConfig, category: str, ds, path: Path, *, progress: bool = True) -> bool:
    """Fit the camera-fault statistics on the normal training images of ``ds`` and write them to
    ``path``; returns whether it did (False, with a warning, when there are too few objects).

    ``ds`` is the training split as :func:`multiflow.engine.preprocess.prepare_split` opened it, so
    the statistics see the images decoded and resized as the preprocessing path gives them to
    the detector at predict/serve time.
    """
    import warnings

    from tqdm.auto import tqdm

    from multiflow.faults import MIN_OBJECTS, fit_camera_faults

    normal = [i for i in range(len(ds)) if not any(ds.image_labels(i))]
    if len(normal) < MIN_OBJECTS:
        warnings.warn(f"{category}: only {len(normal)} normal training objects; no camera-fault statistics "
                      f"written ({path.name} needs at least {MIN_OBJECTS}), so predict checks no camera",
                      stacklevel=2)
        return False
    it = (ds[i].images for i in tqdm(normal, desc="camera statistics", disable=not progress, leave=False))
    fit_camera_faults(it, list(ds.view_names), size=cfg.faults.size, grid=cfg.faults.grid,
                      false_alarm=cfg.faults.false_alarm).save(path)
    return True


#: fit warns about camera pairs whose swap the flow check is expected to catch less often than this
WEAK_SWAP_DETECTION = 0.5


def fit_flow_swap_check(cfg: RunConfig, gains: np.ndarray | None, n_views: int, path: Path, *,
                        source: str = "") -> bool:
    """Add the flow's swap check (:mod:`multiflow.faults.flow_swap`) to the camera-fault statistics
    at ``path``, fitted on ``gains`` ``(N, P)``: the flow's swap gains of normal objects it did not
    train on (:mod:`multiflow.engine.calibration`), with ``faults.flow_swap_share`` of the
    object-level budget; False (with a warning) when there are fewer than 3 objects or 2 cameras."""
    import warnings

    from multiflow.faults import CameraFaultModel, with_flow_swap

    n = 0 if gains is None else int(gains.shape[0])
    if n < 3 or n_views < 2:
        warnings.warn(f"{path.parent.name}: {n} calibration objects, {n_views} cameras: no flow swap check fitted "
                      "(needs >= 3 objects and >= 2 cameras)", stacklevel=2)
        return False
    fm = with_flow_swap(CameraFaultModel.load(path), gains, cfg.faults.flow_swap_share, source=source)
    fm.save(path)
    weak = [(f"{fm.view_names[a]}-{fm.view_names[b]}", d) for (a, b), d in
            zip(fm.flow_swap["pairs"], fm.flow_swap["expected_detection"]) if d < WEAK_SWAP_DETECTION]
    if weak:
        warnings.warn(f"{path.parent.name}: the flow tells some cameras apart poorly (expected detection of a swap: "
                      + ", ".join(f"{p} {100 * d:.0f} %" for p, d in weak) + "); their images of this product look "
                      "alike, so a swap of these cables may pass unnoticed: check the wiring at installation",
                      stacklevel=2)
    return True


def new_run_dir(cfg: RunConfig) -> Path:
    name = cfg.name or time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.out) / name


def fit_run(cfg: RunConfig, run_dir: Path | None = None, *, resume: bool = False, progress: bool = True) -> Path:
    """Train one model per class; writes the run folder and returns it.

    Under ``torchrun`` every rank must get the same ``run_dir`` (give ``name``: a time-stamped
    default could differ between ranks).
    """
    from multiflow.engine.distributed import barrier, init_distributed

    cfg.validate()
    ctx = init_distributed()
    if ctx.enabled and run_dir is None and not cfg.name:
        raise ConfigError("distributed training needs a run name (--name or name=...) shared by all ranks")
    progress = progress and ctx.is_main
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
    barrier(ctx)
    device, _ = run_device(cfg.train)
    if cfg.model.unified:  # one flow for every class: <run>/unified/ (engine/unified.py)
        from multiflow.engine.unified import fit_unified

        fit_unified(cfg, run_dir, resume=resume, progress=progress, device=device)
        return run_dir
    for category in list_categories(cfg.data):
        if progress:
            print(f"== {category}: training on {device}", flush=True)
        fit_category(cfg, category, run_dir, resume=resume, progress=progress, device=device)
    return run_dir


# ---------------------------------------------------------------------------------- evaluation
def evaluate_category(
    run_dir: Path, category: str, cfg: RunConfig, *, progress: bool = True, pictures: bool | None = None,
    overrides: dict[str, Any] | None = None, device: torch.device | None = None, model_dir: Path | None = None,
) -> dict[str, Any]:
    """Evaluate one class model on its test split; writes metrics, scores, ADEval pkl and figures.

    The model's bundle defines the backbone, masks, flips and scoring; ``cfg`` gives the data
    location and the cache/batch settings. ``overrides`` (e.g. ``{"aggregation": "mean"}``) replace
    the bundle's scoring settings and are recorded as ``metrics["overrides"]``; a configuration whose
    ``eval`` scoring settings differ from the bundle's without an override is an error. For an
    overridden scoring the threshold is refitted from the bundle's stored calibration maps, with its
    target (:func:`multiflow.engine.threshold.refit_threshold`; ``metrics["threshold_refitted_for_overrides"]``);
    a bundle without them reports ``threshold: null`` and no decision metrics. The threshold's
    warnings are issued and stored as ``metrics["threshold_warnings"]``. Features, masks
    and anomaly maps are computed on ``device`` (default: :func:`run_device` of ``cfg.train``), the
    maps in fp32 (:data:`SCORING_PRECISION`) whatever ``train.precision`` was.

    ``model_dir``: the folder of a unified bundle (``<run>/unified``) that holds ``category``; the
    class is scored under its class with its own threshold (:meth:`ModelBundle.for_class`), the
    outputs go to ``<run>/<category>/`` as for a class model, and ``metrics.json`` also reports the
    class identification accuracy and the share of the test objects flagged as an unknown class.
    """
    import warnings

    from multiflow.engine.distributed import current_context
    from multiflow.engine.outputs import category_pictures, write_scores_csv
    from multiflow.engine.review_files import write_review_files
    from multiflow.engine.threshold import refit_threshold
    from multiflow.metrics import StreamingEvaluator, evaluate_exact, write_adeval_pkl
    from multiflow.scoring import score_arrays

    ov = check_overrides(overrides)
    ctx = current_context()
    progress = progress and ctx.is_main
    device, _ = run_device(cfg.train, device)
    out_dir = run_dir / category
    folder = Path(model_dir) if model_dir is not None else out_dir
    model, bundle = load_bundle(folder)
    unified = bundle.for_class(category) if bundle.unified else None
    if unified is not None:
        bundle = unified
    check_features_config(resolve_input_size(cfg.features, cfg.data, category), bundle, folder / BUNDLE_FILE)
    if "aggregation" not in ov and cfg.eval.aggregation != bundle.scoring.aggregation:
        raise ConfigError(
            f"{folder / BUNDLE_FILE}: eval.aggregation={cfg.eval.aggregation} in the configuration differs from the "
            f"model's {bundle.scoring.aggregation!r}; the model's setting is used unless you override it explicitly "
            f"(multiflow test --aggregation {cfg.eval.aggregation}, recorded in metrics.json)"
        )
    if "image_score" not in ov and cfg.eval.image_score_spec() != bundle.scoring.image_score:
        raise ConfigError(
            f"{folder / BUNDLE_FILE}: the configuration's eval.image_score* settings {cfg.eval.image_score_spec()} "
            f"differ from the model's {bundle.scoring.image_score}; the model's are used unless you override them "
            "explicitly (overrides={'image_score': {...}}, recorded in metrics.json)"
        )
    scoring = bundle.scoring.with_overrides(ov)
    extractor = build_extractor(bundle.features.to_config())
    check_backbone(extractor, bundle, folder / BUNDLE_FILE)
    test_cfg = dataclasses.replace(
        cfg,
        features=dataclasses.replace(cfg.features, **dataclasses.asdict(bundle.features.to_config()) | {
            k: getattr(cfg.features, k) for k in ("batch_size", "num_workers", "cache_dir")}),
        masks=bundle.masks.to_config(),
        data=dataclasses.replace(cfg.data, flips=dict(bundle.flips)),
    )
    test = prepare_split(test_cfg, category, "test", extractor, progress=progress, device=device)
    if test.view_names != bundle.view_names:
        raise DataError(f"test views {test.view_names} differ from the model's {bundle.view_names}", folder)
    test_feats = test.features
    if unified is not None:  # every object under its class: the class index as a tag channel
        from multiflow.engine.unified import ClassRows

        test_feats = ClassRows([(test.features, np.arange(len(test.sample_ids)), model.class_index(category))],
                               tag=True)
    maps = _maps(model, test_feats, test.masks, len(test.view_names), ctx,
                 batch_size=cfg.eval.batch_size, progress=progress, device=device, precision=SCORING_PRECISION)
    if not ctx.is_main:
        return {}  # rank 0 computes the metrics from the gathered maps and writes everything
    from multiflow.data.ground_truth import ground_truth_masks

    ds = test.dataset
    defects = [r.defect for r in ds.samples]
    how = scoring.aggregation
    # I-AUROC and the sample score use the view scores of the model's image score
    img_scores, s_scores = score_arrays(maps, test.masks, scoring.postprocess(extractor.input_size), how)
    labels = np.array([ds.image_labels(i) for i in range(len(ds))])
    if cfg.eval.pixel_metrics:
        if cfg.eval.streaming:
            ev = StreamingEvaluator(how=how, expected_views=len(test.view_names))
            for i in range(len(ds)):
                ev.update(maps[i : i + 1], ground_truth_masks(ds, i)[None], sample_ids=[test.sample_ids[i]],
                          defects=[defects[i]], image_scores=img_scores[i : i + 1])
            result = ev.compute()
        else:
            first = ground_truth_masks(ds, 0)  # (V, H, W): its native size is every sample's
            gt = np.zeros((len(ds), len(test.view_names), *first.shape[-2:]), dtype=bool)
            gt[0] = first
            for i in range(1, len(ds)):
                gt[i] = ground_truth_masks(ds, i)
            result = evaluate_exact(maps, gt, image_scores=img_scores, sample_ids=test.sample_ids,
                                    defects=defects, how=how)
    else:
        result = evaluate_exact(maps, None, labels=labels, image_scores=img_scores,
                                sample_ids=test.sample_ids, defects=defects, how=how)
    # the threshold of the scoring used: the model's, or refitted for an overridden scoring from the
    # stored calibration maps (engine/threshold.py); a model without them reports no decisions
    threshold_warnings = list(bundle.threshold.warnings)
    threshold: float | None = float(bundle.threshold.value)
    refit = None
    if scoring != bundle.scoring:
        refit = refit_threshold(folder, bundle, scoring)
        if refit is None:
            threshold = None
            threshold_warnings.append(
                "the model's threshold was fitted for its own scoring, not for the overridden one, and the model "
                "stores no calibration maps to refit it (fitted before threshold.false_reject): no decisions reported"
            )
        else:
            threshold = refit.value
            threshold_warnings += [f"refitted for the overridden scoring: {refit.warning}"] if refit.warning else []
    for w in threshold_warnings:
        warnings.warn(f"{category}: threshold: {w}", stacklevel=2)
    decisions = s_scores > (np.inf if threshold is None else threshold)
    s_labels = labels.max(1)
    metrics = result.as_dict()
    metrics["threshold"] = threshold
    used_fit = refit if refit is not None else (bundle.threshold.fit if threshold is not None else None)
    metrics["threshold_fit"] = None if used_fit is None else used_fit.to_dict()
    metrics["threshold_refitted_for_overrides"] = refit is not None
    metrics["threshold_warnings"] = threshold_warnings
    metrics["aggregation"] = how
    metrics["image_score"] = scoring.image_score.to_dict()
    metrics["overrides"] = ov
    applies = threshold is not None
    metrics["decision_accuracy"] = float((decisions == s_labels.astype(bool)).mean()) if applies else None
    if unified is not None:
        from multiflow.engine.unified import class_metrics

        metrics.update(class_metrics(model, bundle, category, test_feats, test.masks, s_labels,
                                     batch_size=cfg.eval.batch_size, device=device, precision=SCORING_PRECISION))
    metrics["false_positive_rate_at_threshold"] = (
        float(decisions[s_labels == 0].mean()) if applies and (s_labels == 0).any() else None)
    metrics["true_positive_rate_at_threshold"] = (
        float(decisions[s_labels == 1].mean()) if applies and (s_labels == 1).any() else None)
    write_json(out_dir / "metrics.json", metrics, default=json_default)
    write_scores_csv(out_dir / "scores.csv", test.sample_ids, defects, test.view_names, img_scores, labels, s_scores,
                     decisions)
    write_adeval_pkl(
        out_dir / "adeval.pkl",
        image_paths=[p for r in ds.samples for p in r.image_paths],
        anomaly_maps=maps.reshape(-1, *maps.shape[-2:]),
        image_scores=img_scores.reshape(-1),
        mask_paths=[m for r in ds.samples for m in r.mask_paths],
    )
    write_review_files(out_dir, ds, maps, test.view_names)  # maps.npy + samples.json for `multiflow review`
    if cfg.eval.pictures if pictures is None else pictures:
        category_pictures(out_dir, category, ds, maps, img_scores, s_scores, labels,
                          float(bundle.threshold.value) if threshold is None else threshold, test.view_names, how)
    return metrics


def evaluate_run(run_dir: str | Path, cfg: RunConfig | None = None, *, progress: bool = True,
                 pictures: bool | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate every trained class of a run; writes the run's metrics tables and report.html.

    ``overrides``: explicit test-time settings replacing the bundles' (see :func:`evaluate_category`).
    """
    from multiflow.config import load_config
    from multiflow.engine.distributed import barrier, init_distributed
    from multiflow.engine.outputs import write_run_tables
    from multiflow.report import write_html_report

    ov = check_overrides(overrides)
    ctx = init_distributed()
    progress = progress and ctx.is_main
    run_dir = Path(run_dir)
    if cfg is None:
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError("config.yaml not found: not a multiflow run folder", run_dir)
        cfg = load_config(run_dir / "config.yaml")
    cats = [c for c in list_categories(cfg.data) if (run_dir / c / BUNDLE_FILE).is_file()]
    model_dirs: dict[str, Path] = {}
    if (run_dir / UNIFIED_DIR / BUNDLE_FILE).is_file():  # a unified model: every class it knows of the data
        from multiflow.engine.bundle import read_bundle

        known = read_bundle(run_dir / UNIFIED_DIR).classes
        cats = [c for c in list_categories(cfg.data) if c in known]
        model_dirs = {c: run_dir / UNIFIED_DIR for c in cats}
    if not cats:
        raise CheckpointError("no trained class models (…/<class>/model.json) in this run folder", run_dir)
    per_class = {}
    device, _ = run_device(cfg.train)
    for cat in cats:
        if progress:
            print(f"== {cat}: evaluating on {device}", flush=True)
        per_class[cat] = evaluate_category(run_dir, cat, cfg, progress=progress, pictures=pictures, overrides=ov,
                                           device=device, model_dir=model_dirs.get(cat))
    barrier(ctx)
    if not ctx.is_main:
        return {"per_class": {}, "table": "", "per_defect": "", "rows": []}
    md, per_defect, rows = write_run_tables(run_dir, per_class)
    sections = []
    for cat in cats:
        figs = sorted((run_dir / cat / "figures").glob("*.png"))
        sections.append((cat, [str(p.relative_to(run_dir)) for p in figs]))
    write_html_report(
        run_dir / "report.html", title=f"multiflow run {run_dir.name}", metrics_markdown=md,
        sections=sections, extra_markdown=per_defect,
    )
    return {"per_class": per_class, "table": md, "per_defect": per_defect, "rows": rows}
