"""Fitting the unified multi-class model (``model.unified=true``, issue 23).

One :class:`multiflow.flow.unified.UnifiedFlow` is trained on the normal training objects of every
class of ``data.categories`` and written as one bundle (format 4) to ``<run>/unified/``::

    results/<run>/unified/
        model.safetensors, model.json               the flow and its bundle (classes, per-class specs)
        camera_faults.<class>.json                  per-class camera-fault statistics
        calibration_maps.<class>.npz                per-class calibration maps (threshold refits)
        train_state/                                resumable training state
    results/<run>/<class>/metrics.json, scores.csv, ...   per-class test outputs (``multiflow test``)

Per class, ``threshold.calibration_fraction`` of its normal training objects are held out before
training (:func:`multiflow.engine.threshold.split_calibration`, the class's own seed stream); the
flow trains on the rest of every class together, each object tagged with its class
(:class:`ClassRows`; the loss is class-balanced, :meth:`UnifiedFlow.set_class_weights`). After
training, each class gets its decision threshold (the same :func:`fit_for_scoring` on its own
calibration objects' maps under the class), its thresholds per number of present views (view
dropout), its unknown-class cut-off (:func:`multiflow.scoring.fit_threshold` on the calibration
objects' mean foreground NLL under the class, for ``threshold.unknown_false_reject``, by default the
threshold's target) and its camera-fault statistics.

Every class must share the backbone input size and the view names (one flow, one graph).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from multiflow.errors import ConfigError, DataError

if TYPE_CHECKING:
    from multiflow.config import RunConfig
    from multiflow.engine.bundle import ModelBundle

#: the folder of a run that holds the unified model
UNIFIED_DIR = "unified"


def camera_faults_file(name: str) -> str:
    return f"camera_faults.{name}.json"


def calibration_file(name: str) -> str:
    return f"calibration_maps.{name}.npz"


class ClassRows:
    """Rows of several array-likes ``(N_k, ...)`` (e.g. each class's feature memmap) as one
    array-like, read on indexing; with ``tag=True`` each row gets its class index as one extra
    channel on axis 2 (:func:`multiflow.flow.unified.tag_classes`), so ``(N, V, C + 1, h, w)``.

    Args:
        parts: ``[(array, rows, label), ...]``: the rows of ``array`` to take, and their class index.
        tag: append the class channel (features) or not (masks).
    """

    def __init__(self, parts: list[tuple[Any, Any, int]], *, tag: bool) -> None:
        if not parts:
            raise ConfigError("no rows to take")
        self.parts = [(a, np.asarray(r, dtype=np.int64), int(k)) for a, r, k in parts]
        self.part = np.concatenate([np.full(len(r), i, dtype=np.int64) for i, (_, r, _) in enumerate(self.parts)])
        self.local = np.concatenate([r for _, r, _ in self.parts])
        self.labels = np.array([self.parts[p][2] for p in self.part], dtype=np.int64)
        first = self.parts[0][0]
        inner = tuple(first.shape[1:])
        for a, _, _ in self.parts:
            if tuple(a.shape[1:]) != inner:
                raise DataError(f"the classes' arrays differ in shape: {tuple(a.shape[1:])} and {inner}")
        self.tag = bool(tag)
        if tag:
            inner = (inner[0], inner[1] + 1, *inner[2:])
        self.shape = (int(self.local.size), *inner)
        self.dtype = np.dtype(first.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> np.ndarray:
        index = np.arange(self.shape[0])[idx]
        scalar = np.ndim(index) == 0
        index = np.atleast_1d(index)
        out = None
        for p, (a, _, k) in enumerate(self.parts):
            sel = np.flatnonzero(self.part[index] == p)
            if not sel.size:
                continue
            rows = self.local[index[sel]]
            order = np.argsort(rows, kind="stable")  # memory-mapped reads are faster in file order
            got = np.empty((len(rows), *a.shape[1:]), dtype=self.dtype)
            got[order] = np.asarray(a[rows[order]])
            if self.tag:
                plane = np.full((len(rows), got.shape[1], 1, *got.shape[3:]), k, dtype=self.dtype)
                got = np.concatenate([got, plane], axis=2)
            if out is None:
                out = np.empty((len(index), *got.shape[1:]), dtype=self.dtype)
            out[sel] = got
        if out is None:
            out = np.empty((0, *self.shape[1:]), dtype=self.dtype)
        return out[0] if scalar else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype)


@torch.no_grad()
def object_scores(model, features, masks=None, *, batch_size: int = 16, device: torch.device | None = None,
                  precision: str = "fp32", all_classes: bool = False) -> np.ndarray:
    """Mean foreground NLL of each object of tagged ``features`` (:class:`ClassRows`) under its class,
    ``(N,)``; with ``all_classes`` under every class, ``(N, K)`` (:meth:`UnifiedFlow.class_nll`)."""
    from multiflow.device import autocast, to_device

    model.eval()
    device = next(model.parameters()).device if device is None else torch.device(device)
    model.to(device)
    out = []
    for start in range(0, int(features.shape[0]), batch_size):
        x = to_device(torch.from_numpy(np.array(features[start : start + batch_size])).float(), device)
        m = None if masks is None else to_device(
            torch.from_numpy(np.array(masks[start : start + batch_size])).float(), device)
        with autocast(device, precision):
            s = model.class_nll(x, m) if all_classes else model.object_nll(x, m)
        out.append(s.float().cpu().numpy())
    return np.concatenate(out)


def fit_unified(cfg: RunConfig, run_dir: Path, *, resume: bool = False, progress: bool = True,
                device: torch.device | None = None) -> ModelBundle:
    """Train the unified flow on every class of the run and write its bundle (module docstring)."""
    from multiflow.engine.bundle import (
        ClassSpec,
        FeaturesSpec,
        GraphSpec,
        MasksSpec,
        ModelBundle,
        ThresholdSpec,
        TrainingRecord,
        save_bundle,
    )
    from multiflow.engine.distributed import barrier, current_context
    from multiflow.engine.factories import build_extractor, build_flow, list_categories, resolve_input_size, run_device
    from multiflow.engine.pipeline import SCORING_PRECISION, _maps, fit_camera_fault_stats
    from multiflow.engine.preprocess import prepare_split
    from multiflow.engine.threshold import fit_by_views, fit_for_scoring, save_calibration_maps, split_calibration
    from multiflow.engine.train import train_flow
    from multiflow.scoring import ScoringSpec, fit_threshold

    ctx = current_context()
    progress = progress and ctx.is_main
    device, precision = run_device(cfg.train, device)
    t0 = time.perf_counter()
    out = Path(run_dir) / UNIFIED_DIR
    classes = list_categories(cfg.data)
    if len(classes) < 2:
        warnings.warn(f"model.unified with one class ({classes}): a unified model of one class is a class model "
                      "with a format-4 bundle", stacklevel=2)
    sizes = {c: resolve_input_size(cfg.features, cfg.data, c) for c in classes}
    if len({f.input_size for f in sizes.values()}) > 1:
        raise ConfigError("model.unified: the classes resolve to different backbone input sizes "
                          f"{ {c: f.input_size for c, f in sizes.items()} }; set features.input_size explicitly")
    cfg = dataclasses.replace(cfg, features=sizes[classes[0]])
    extractor = build_extractor(cfg.features)
    splits = {}
    for c in classes:
        if progress:
            print(f"== {c}: features and masks", flush=True)
        splits[c] = prepare_split(cfg, c, "train", extractor, progress=progress, device=device)
    views = list(splits[classes[0]].view_names)
    for c, s in splits.items():
        if list(s.view_names) != views:
            raise DataError(f"model.unified: class {c!r} has views {list(s.view_names)}, class {classes[0]!r} "
                            f"{views}; one flow needs the same cameras for every class")
    if len({s.masks is None for s in splits.values()}) > 1:
        raise DataError("model.unified: some classes have foreground masks and others not")
    t_feat = time.perf_counter() - t0
    held = {}
    for k, c in enumerate(classes):
        held[c] = split_calibration(len(splits[c].sample_ids), cfg.threshold.calibration_fraction,
                                    cfg.train.seed + k, min_rest=2 if cfg.train.val_fraction > 0 else 1)
    model = build_flow(cfg.model, extractor.channels, views, cfg.train.seed, classes=classes)
    model.set_class_weights([len(held[c][0]) for c in classes])
    feats = ClassRows([(splits[c].features, held[c][0], k) for k, c in enumerate(classes)], tag=True)
    masks = None
    if splits[classes[0]].masks is not None:
        masks = ClassRows([(splits[c].masks, held[c][0], k) for k, c in enumerate(classes)], tag=False)
    if progress:
        print(f"== unified: training one flow on {len(feats)} objects of {len(classes)} classes on {device} "
              f"({cfg.model.class_conditioning} conditioning)", flush=True)
    t_train = time.perf_counter()
    result = train_flow(model, feats, masks, cfg.train, out / "train_state", resume=resume, progress=progress,
                        device=device)
    t_train = time.perf_counter() - t_train
    scoring = ScoringSpec(aggregation=cfg.eval.aggregation, image_score=cfg.eval.image_score_spec())
    image_size = int(extractor.input_size)
    supports_missing = bool(cfg.train.view_dropout > 0)
    per_class: dict[str, ClassSpec] = {}
    cal_store = {}
    for k, c in enumerate(classes):
        split, cal = splits[c], held[c][1]
        cal_feats = ClassRows([(split.features, cal, k)], tag=True)
        cal_masks = None if split.masks is None else np.asarray(split.masks[cal])
        cal_ids = [split.sample_ids[i] for i in cal]
        cal_maps = _maps(model, cal_feats, cal_masks, len(views), ctx, batch_size=cfg.eval.batch_size,
                         device=device, precision=SCORING_PRECISION)
        fit, _ = fit_for_scoring(cal_maps, cal_masks, cal_ids, scoring, cfg.threshold, image_size=image_size,
                                 what=f"held-out calibration objects of class {c}")
        by_views = {}
        if supports_missing:
            by_views = fit_by_views(model, cal_feats, cal_masks, cal_ids, scoring, cfg.threshold,
                                    image_size=image_size, batch_size=cfg.eval.batch_size, device=device,
                                    precision=SCORING_PRECISION, seed=cfg.train.seed)
        own = object_scores(model, cal_feats, cal_masks, batch_size=cfg.eval.batch_size, device=device,
                            precision=SCORING_PRECISION)
        unknown = fit_threshold(own, cal_ids,
                                false_reject=cfg.threshold.unknown_false_reject or cfg.threshold.false_reject,
                                confidence=cfg.threshold.confidence,
                                what=f"held-out calibration objects of class {c} (unknown-class cut-off)")
        identified = None
        if model.can_identify:
            every = object_scores(model, cal_feats, cal_masks, batch_size=cfg.eval.batch_size, device=device,
                                  precision=SCORING_PRECISION, all_classes=True)
            identified = float((every.argmin(1) == k).mean())
        model.to("cpu")
        per_class[c] = ClassSpec(
            threshold=ThresholdSpec(
                value=fit.value, fit=fit, by_views=by_views, calibration_maps=calibration_file(c),
                source=f"{len(cal)} held-out calibration objects of class {c} (threshold.calibration_fraction; "
                       "not trained on, not used to select the epoch), scored under the class"),
            unknown=unknown, identified=identified, train_samples=int(len(held[c][0])),
            calibration_samples=int(len(cal)),
        )
        cal_store[c] = (cal_maps, cal_masks, cal_ids)
        if ctx.is_main:
            for w in per_class[c].threshold.warnings + ([unknown.warning] if unknown.warning else []):
                warnings.warn(f"{c}: threshold: {w}", stacklevel=2)
            if progress:
                ident = "" if identified is None else f", {identified:.0%} of them identified as {c}"
                print(f"{c}: threshold {fit.value:.6g}, unknown-class cut-off {unknown.value:.6g} "
                      f"({fit.n} calibration objects{ident})", flush=True)
    graph = model.graph.to_dict()
    first = per_class[classes[0]]
    bundle = ModelBundle(
        category=UNIFIED_DIR,
        view_names=views,
        graph=GraphSpec(view_names=list(graph["names"] or views), edges=graph["edges"]),
        features=FeaturesSpec(
            backbone=cfg.features.backbone, input_size=int(cfg.features.input_size), weights=cfg.features.weights,
            layer=cfg.features.layer, dtype=cfg.features.dtype, weights_digest=extractor.digest,
            channels=int(extractor.channels), grid=[int(s) for s in extractor.feature_size(extractor.input_size)],
            extractor=extractor.describe(),
        ),
        masks=MasksSpec(provider=cfg.masks.provider, dilation=int(cfg.masks.dilation), mask_root=cfg.masks.mask_root,
                        margin=float(cfg.masks.margin)),
        threshold=first.threshold,
        scoring=scoring,
        flips=dict(cfg.data.flips),
        training=TrainingRecord(
            best_epoch=int(result.best_epoch), best_val_loss=result.best_val_loss, history=list(result.history),
            train_samples=int(len(result.train_index)), val_samples=int(len(result.val_index)),
            calibration_samples=int(sum(len(h[1]) for h in held.values())),
            seconds={"features_and_masks": t_feat, "training": t_train, "total": time.perf_counter() - t0},
            stop_reason=result.stop_reason, device=str(device), precision=precision,
        ),
        supports_missing_views=supports_missing,
        view_dropout=float(cfg.train.view_dropout),
        classes=list(classes),
        class_conditioning=cfg.model.class_conditioning,
        per_class=per_class,
    )
    if ctx.is_main:
        for c in classes:
            if cfg.faults.enabled and fit_camera_fault_stats(cfg, c, splits[c].dataset, out / camera_faults_file(c),
                                                             progress=progress):
                per_class[c].camera_faults = camera_faults_file(c)
            save_calibration_maps(out / calibration_file(c), *cal_store[c])
        bundle.camera_faults = per_class[classes[0]].camera_faults
        save_bundle(out, model, bundle)
    barrier(ctx)
    return bundle


def class_metrics(model, bundle: ModelBundle, category: str, features, masks, labels: np.ndarray, *,
                  batch_size: int = 16, device: torch.device | None = None, precision: str = "fp32") -> dict[str, Any]:
    """Class metrics of one class's test objects (tagged ``features``, ``labels`` 1 = anomalous) for
    ``metrics.json``: the share of normal / anomalous objects flagged as an unknown class under their
    (given) class, and, where the model can identify, the identification accuracy and margins."""
    k = model.class_index(category)
    spec = bundle.per_class[category]
    every = None
    if model.can_identify:
        every = object_scores(model, features, masks, batch_size=batch_size, device=device, precision=precision,
                              all_classes=True)
        own = every[:, k]
    else:
        own = object_scores(model, features, masks, batch_size=batch_size, device=device, precision=precision)
    model.to("cpu")
    labels = np.asarray(labels).astype(bool)
    cut = None if spec.unknown is None else float(spec.unknown.value)

    def rate(sel: np.ndarray) -> float | None:
        return None if cut is None or not sel.any() else float((own[sel] > cut).mean())

    out: dict[str, Any] = {
        "class": category,
        "class_conditioning": bundle.class_conditioning,
        "unknown_class_cutoff": cut,
        "flagged_unknown_rate_normal": rate(~labels),
        "flagged_unknown_rate_anomalous": rate(labels),
        "class_identification_accuracy": None,
    }
    if every is not None:
        best = every.argmin(1)
        srt = np.sort(every, axis=1)
        out["class_identification_accuracy"] = float((best == k).mean())
        out["class_identification_accuracy_normal"] = float((best[~labels] == k).mean()) if (~labels).any() else None
        out["class_identification_margin_median"] = float(np.median(srt[:, 1] - srt[:, 0])) if every.shape[1] > 1 \
            else None
        out["identified_as"] = {c: int((best == j).sum()) for j, c in enumerate(model.classes) if (best == j).any()}
    return out


def identify(model, features: torch.Tensor, mask: torch.Tensor | None,
             present: torch.Tensor | None) -> tuple[int, float]:
    """The most likely class of one object (``features (1, V, C, h, w)``): ``(index, margin)``, the
    margin being the second-lowest minus the lowest mean foreground NLL (inf with one class)."""
    s = model.class_nll(features, mask, present)[0].float()
    order = torch.argsort(s)
    margin = float(s[order[1]] - s[order[0]]) if s.numel() > 1 else float("inf")
    return int(order[0]), margin
