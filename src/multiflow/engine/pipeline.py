"""The end-to-end pipeline: data -> cached features and masks -> flow -> scores, metrics, pictures.

One model per class (category). A run folder looks like::

    results/<run>/
        config.yaml                      the full configuration of the run
        <category>/model.safetensors     the flow (weights + its constructor config)
        <category>/model.json            what inference needs: backbone, masks, views, threshold
        <category>/train_state/          resumable training state
        <category>/metrics.json          evaluation of the test split (after ``multiflow test``)
        <category>/scores.csv            per-sample and per-view scores of the test split
        <category>/adeval.pkl            predictions in ADEval's format
        <category>/figures/*.png         Fig. 5 layouts, ROC, histograms, worst FP / FN
        metrics.json / metrics.csv / metrics.md / report.html

Everything that defines a model is in the two ``model.*`` files; loading them executes no code.

Under ``torchrun`` (see :mod:`multiflow.engine.distributed`) the ranks share feature and mask
extraction (rank 0 writes the shared cache, :func:`multiflow.features.cache.build_entry`),
training is data parallel, anomaly maps are computed on shards and all-gathered, and only rank 0
writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from multiflow._atomic import write_json
from multiflow.config import DataConfig, FeatureConfig, MaskConfig, ModelConfig, RunConfig, dump_config
from multiflow.errors import CheckpointError, ConfigError, DataError

BUNDLE_FORMAT = "multiflow-model/1"


# ----------------------------------------------------------------------------------- helpers
def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def cache_dir(cfg: FeatureConfig) -> Path:
    """Feature/mask cache root: ``features.cache_dir``, else ``$MULTIFLOW_CACHE``, else ~/.cache/multiflow."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("MULTIFLOW_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "multiflow"


def list_categories(data: DataConfig) -> list[str]:
    """The classes a run covers: ``data.categories`` or every class found under ``data.root``."""
    if data.categories:
        return list(data.categories)
    if data.format == "folder":
        return [Path(data.root).resolve().name]
    if data.format == "manifest":
        return [Path(data.manifest).stem]
    from multiflow.data.realiad import list_categories as realiad_categories

    cats = realiad_categories(data.root, json_variant=data.json_variant, resolution=data.resolution or None)
    if not cats:
        raise DataError(f"no Real-IAD class JSON found under {data.root} ({data.json_variant})", data.root)
    return list(cats)


def open_dataset(data: DataConfig, category: str, split: str, image_size: int | None, *, load_masks: bool = True):
    """A dataset of ``split`` for ``category`` from whichever source ``data.format`` names."""
    if not data.root and data.format != "manifest":
        raise ConfigError("data.root is not set (give --data or data.root in the configuration)")
    views = list(data.views) or None
    if data.format == "realiad":
        from multiflow.data.realiad import RealIADDataset

        return RealIADDataset(
            data.root,
            category,
            split=split,
            json_variant=data.json_variant,
            resolution=data.resolution or None,
            image_size=image_size,
            views=views,
            flips=data.flips or None,
            skip_incomplete=data.skip_incomplete,
            load_masks=load_masks,
        )
    if data.format == "folder":
        from multiflow.data.folder import FolderDataset

        if not views:
            raise ConfigError("data.views must list the camera names (in view order) for the folder format")
        return FolderDataset(
            data.root, split=split, views=views, category=category, image_size=image_size, flips=data.flips or None,
            skip_incomplete=data.skip_incomplete, load_masks=load_masks,
        )
    from multiflow.data.manifest import ManifestDataset

    if not views:
        raise ConfigError("data.views must list the camera names (in view order) for the manifest format")
    return ManifestDataset(
        data.manifest, split=split, views=views, category=category, image_size=image_size, flips=data.flips or None,
        skip_incomplete=data.skip_incomplete, load_masks=load_masks,
    )


def build_graph(model: ModelConfig, view_names: list[str]):
    """The view graph of ``model.graph`` for these views (first view = top camera for Real-IAD)."""
    from multiflow.flow import ViewGraph

    n = len(view_names)
    ring = list(model.ring_order) or None
    if model.graph == "full":
        return ViewGraph.full(n, names=view_names)
    if model.graph == "none":
        return ViewGraph.none(n, names=view_names)
    return ViewGraph.real_iad(
        n - 1,
        ring_order=ring,
        top=model.graph in ("real_iad", "top_only"),
        neighbours=model.graph in ("real_iad", "ring"),
        names=view_names,
    )


def build_flow(model: ModelConfig, channels: int, view_names: list[str], seed: int):
    from multiflow.flow import MultiFlow

    return MultiFlow(
        channels,
        build_graph(model, view_names),
        n_blocks=model.n_blocks,
        hidden=model.hidden,
        kernel_sizes=model.kernel_sizes,
        clamp=model.clamp,
        fusion=model.fusion,
        noise=model.noise,
        noise_std=model.noise_std,
        share_side_weights=model.share_side_weights,
        heads=model.heads,
        seed=seed,
    )


def build_extractor(cfg: FeatureConfig):
    from multiflow.features.backbones import build_backbone

    return build_backbone(
        cfg.backbone, input_size=cfg.input_size, weights=cfg.weights or None, layers=cfg.layer or None
    )


def build_mask_provider(cfg: MaskConfig, dataset=None):
    from multiflow.features.masks import make_provider

    if cfg.provider == "file":
        if not cfg.mask_root:
            raise ConfigError("masks.provider=file needs masks.mask_root (a tree of masks parallel to the images)")
        image_root = getattr(dataset, "image_root", None) or getattr(dataset, "root", "")
        return make_provider("file", mask_root=cfg.mask_root, image_root=image_root)
    return make_provider(cfg.provider)


def run_device(cfg: RunConfig, device: torch.device | None = None) -> tuple[torch.device, str]:
    """``(device, precision)`` of this process: the given ``device``, else the rank's device under
    ``torchrun``, else ``train.device`` resolved (:func:`multiflow.device.resolve_device`); the
    precision is ``train.precision`` where the device supports it (else fp32, with a notice)."""
    from multiflow.device import resolve_device, resolve_precision
    from multiflow.engine.distributed import current_context

    ctx = current_context()
    if device is None:
        device = ctx.device if ctx.enabled else resolve_device(cfg.train.device)
    return device, resolve_precision(cfg.train.precision, device, notice=ctx.is_main)


@dataclass
class PreparedSplit:
    """A split with its cached features ``(N, V, C, h, w)`` and grid masks ``(N, V, h, w)`` (or None)."""

    dataset: Any
    features: np.ndarray
    masks: np.ndarray | None
    sample_ids: list[str]
    view_names: list[str]


def prepare_split(cfg: RunConfig, category: str, split: str, extractor, *, progress: bool = True,
                  device: torch.device | None = None) -> PreparedSplit:
    """Open a split, extract (or reuse) its features and foreground masks.

    The backbone runs on ``device`` (moved there; default: where it is). Under ``torchrun`` the
    samples are shared among the ranks and every rank gets the whole result
    (:func:`multiflow.features.cache.build_entry`); every rank must call this.
    """
    from multiflow.engine.distributed import current_context
    from multiflow.features.cache import extract_features
    from multiflow.features.masks import compute_masks

    ds = open_dataset(cfg.data, category, split, cfg.features.input_size, load_masks=False)
    if len(ds) == 0:
        raise DataError(f"the {split} split of {category!r} has no samples", getattr(ds, "json_path", cfg.data.root))
    root = cache_dir(cfg.features)
    ctx = current_context()
    if device is not None:
        extractor.to(device)
    feats = extract_features(
        ds, extractor, root, batch_size=cfg.features.batch_size, dtype=cfg.features.dtype,
        num_workers=cfg.features.num_workers, progress=progress, ctx=ctx,
    )
    masks = None
    if cfg.masks.provider != "none":
        provider = build_mask_provider(cfg.masks, ds)
        cm = compute_masks(
            ds, provider, root, grid=extractor.feature_size(extractor.input_size),
            dilation=cfg.masks.dilation, batch_size=cfg.features.batch_size,
            num_workers=cfg.features.num_workers, progress=progress, ctx=ctx,
        )
        masks = cm.grid
    return PreparedSplit(ds, feats.features, masks, list(feats.sample_ids), list(ds.view_names))


# ------------------------------------------------------------------------------ model bundle
def save_bundle(folder: Path, model, meta: dict[str, Any]) -> None:
    """Write ``model.safetensors`` (the flow) and ``model.json`` (inference metadata), atomically."""
    from multiflow.flow import save_flow

    folder.mkdir(parents=True, exist_ok=True)
    save_flow(model, folder / "model.safetensors")
    write_json(folder / "model.json", dict(meta, format=BUNDLE_FORMAT), default=_json_default)


def check_backbone(extractor, meta: dict[str, Any], where: Path) -> None:
    """The backbone rebuilt for inference must have the weights the flow was trained on."""
    want = (meta.get("extractor") or {}).get("weights_digest")
    if not want:
        raise CheckpointError("model.json records no backbone weights digest (extractor.weights_digest)", where)
    if extractor.digest != want:
        raise CheckpointError(
            f"the backbone's weights ({extractor.digest[:12]}…) differ from those the model was trained "
            f"with ({want[:12]}…): same backbone, input size and weights file?",
            where,
        )


def load_bundle(folder: str | Path):
    """Load a trained class model: returns ``(flow, meta)``. Never executes code from the files."""
    from multiflow.flow import load_flow

    folder = Path(folder)
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        raise CheckpointError("model.json not found (is this a trained class folder of a run?)", meta_path)
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"not valid JSON: {exc}", meta_path) from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"not a multiflow model description (format {BUNDLE_FORMAT} expected)", meta_path)
    model = load_flow(folder / "model.safetensors")
    model.eval()
    return model, meta


# ------------------------------------------------------------------------------------ fitting
def fit_category(cfg: RunConfig, category: str, run_dir: Path, *, resume: bool = False, progress: bool = True,
                 device: torch.device | None = None) -> dict:
    """Train the flow of one class and calibrate its threshold on held-out normal training samples.

    Features, training and scoring run on ``device`` (default: :func:`run_device`)."""
    from multiflow.engine.distributed import barrier, compute_maps_sharded, current_context
    from multiflow.engine.scoring import calibrate_threshold, sample_scores
    from multiflow.engine.train import train_flow

    ctx = current_context()
    progress = progress and ctx.is_main
    device, precision = run_device(cfg, device)
    t0 = time.perf_counter()
    out = run_dir / category
    extractor = build_extractor(cfg.features)
    train = prepare_split(cfg, category, "train", extractor, progress=progress, device=device)
    t_feat = time.perf_counter() - t0
    feats, masks, flow_views, model_cfg = train.features, train.masks, train.view_names, cfg.model
    n_views = len(train.view_names)
    if cfg.model.single_view:
        # baseline: every image an independent sample of one single-view flow (no cross-view links)
        from multiflow.baselines.single_view import single_view_indices, to_single_view

        feats, masks = to_single_view(feats, masks)
        flow_views, model_cfg = ["view"], dataclasses.replace(cfg.model, graph="none")
    model = build_flow(model_cfg, extractor.channels, flow_views, cfg.train.seed)
    result = train_flow(
        model, feats, masks, cfg.train, out / "train_state", resume=resume, progress=progress, device=device
    )
    val = result.val_index if result.val_index is not None and len(result.val_index) else result.train_index
    if cfg.model.single_view:
        # calibrate on whole samples (max over views): those with at least one held-out image
        val = single_view_indices(val, n_views)
        val_feats, val_masks = to_single_view(
            train.features[val], None if train.masks is None else train.masks[val]
        )
    else:
        val = np.sort(val)
        val_feats = train.features[val]
        val_masks = None if train.masks is None else train.masks[val]
    val_maps = compute_maps_sharded(model, val_feats, val_masks, ctx, batch_size=cfg.eval.batch_size,
                                    device=device, precision=precision)
    model.to("cpu")  # the flow returns to the CPU where it is saved
    if cfg.model.single_view:
        from multiflow.baselines.single_view import from_single_view

        val_maps = from_single_view(val_maps, n_views)
    val_scores = sample_scores(val_maps, cfg.eval.aggregation)
    threshold = calibrate_threshold(val_scores, cfg.train.threshold_quantile)
    meta = {
        "category": category,
        "view_names": train.view_names,
        "extractor": extractor.describe(),
        "features": {
            "backbone": cfg.features.backbone, "input_size": cfg.features.input_size,
            "weights": cfg.features.weights, "layer": cfg.features.layer,
        },
        "masks": {"provider": cfg.masks.provider, "dilation": cfg.masks.dilation, "mask_root": cfg.masks.mask_root},
        "flips": cfg.data.flips,
        "aggregation": cfg.eval.aggregation,
        "threshold": threshold,
        "threshold_quantile": cfg.train.threshold_quantile,
        "threshold_source": "held-out normal training samples" if len(result.val_index) else "training samples",
        "val_sample_scores": {"n": int(len(val_scores)), "mean": float(val_scores.mean()), "max": float(val_scores.max())},
        "single_view": bool(cfg.model.single_view),
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "device": str(device),
        "precision": precision,
        "best_val_loss": result.best_val_loss,
        "history": result.history,
        "train_samples": int(len(result.train_index)),
        "val_samples": int(len(result.val_index)),
        "seconds": {"features_and_masks": t_feat, "total": time.perf_counter() - t0},
    }
    if ctx.is_main:
        save_bundle(out, model, meta)
    barrier(ctx)
    return meta


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
    device, _ = run_device(cfg)
    for category in list_categories(cfg.data):
        if progress:
            print(f"== {category}: training on {device}", flush=True)
        fit_category(cfg, category, run_dir, resume=resume, progress=progress, device=device)
    return run_dir


# ---------------------------------------------------------------------------------- evaluation
def _native_size(path: str) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except OSError as exc:
        raise DataError(f"cannot read image header: {exc}", path) from None


def ground_truth_masks(dataset, index: int) -> np.ndarray:
    """``(V, H, W)`` bool ground-truth masks of sample ``index`` at the native resolution
    (views without a mask file are all-False), with the data set's load-time flips applied."""
    from multiflow.data.images import flips_for, load_mask

    rec = dataset.samples[index]
    flips = flips_for(dataset.flips, rec.view_names)
    out = []
    for v, (img, mpath) in enumerate(zip(rec.image_paths, rec.mask_paths)):
        size = _native_size(img)
        if mpath is None:
            out.append(np.zeros(size, dtype=bool))
        else:
            m, _ = load_mask(mpath, expected_size=size, flip=flips[v])
            out.append(m.numpy().astype(bool))
    shapes = {m.shape for m in out}
    if len(shapes) > 1:
        raise DataError(f"sample {rec.sample_id}: views have different sizes {sorted(shapes)}", rec.image_paths[0])
    return np.stack(out)


def evaluate_category(
    run_dir: Path, category: str, cfg: RunConfig, *, progress: bool = True, pictures: bool | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Evaluate one class model on its test split; writes metrics, scores, ADEval pkl and figures.

    Features and anomaly maps are computed on ``device`` (default: :func:`run_device`)."""
    from multiflow.engine.distributed import compute_maps_sharded, current_context
    from multiflow.engine.scoring import image_scores, sample_scores
    from multiflow.metrics import StreamingEvaluator, evaluate_exact, write_adeval_pkl

    ctx = current_context()
    progress = progress and ctx.is_main
    device, precision = run_device(cfg, device)
    folder = run_dir / category
    model, meta = load_bundle(folder)
    extractor = build_extractor(cfg.features)
    check_backbone(extractor, meta, folder / "model.json")
    test = prepare_split(cfg, category, "test", extractor, progress=progress, device=device)
    if test.view_names != meta["view_names"]:
        raise DataError(f"test views {test.view_names} differ from the model's {meta['view_names']}", folder)
    if meta.get("single_view"):
        from multiflow.baselines.single_view import from_single_view, to_single_view

        sv_feats, sv_masks = to_single_view(test.features, test.masks)
        maps = compute_maps_sharded(model, sv_feats, sv_masks, ctx, batch_size=cfg.eval.batch_size,
                                    progress=progress, device=device, precision=precision)
        maps = from_single_view(maps, len(test.view_names))
    else:
        maps = compute_maps_sharded(model, test.features, test.masks, ctx, batch_size=cfg.eval.batch_size,
                                    progress=progress, device=device, precision=precision)
    if not ctx.is_main:
        return {}  # rank 0 computes the metrics from the gathered maps and writes everything
    ds = test.dataset
    defects = [r.defect for r in ds.samples]
    how = meta.get("aggregation", cfg.eval.aggregation)
    img_scores = image_scores(maps)
    if cfg.eval.pixel_metrics:
        gt_size = ground_truth_masks(ds, 0).shape[-2:]
        if cfg.eval.streaming:
            ev = StreamingEvaluator(how=how, expected_views=len(test.view_names))
            for i in range(len(ds)):
                ev.update(maps[i : i + 1], ground_truth_masks(ds, i)[None], sample_ids=[test.sample_ids[i]],
                          defects=[defects[i]], image_scores=img_scores[i : i + 1])
            result = ev.compute()
        else:
            gt = np.zeros((len(ds), len(test.view_names), *gt_size), dtype=bool)
            for i in range(len(ds)):
                gt[i] = ground_truth_masks(ds, i)
            result = evaluate_exact(maps, gt, image_scores=img_scores, sample_ids=test.sample_ids,
                                    defects=defects, how=how)
    else:
        labels = np.array([ds.image_labels(i) for i in range(len(ds))])
        result = evaluate_exact(maps, None, labels=labels, image_scores=img_scores,
                                sample_ids=test.sample_ids, defects=defects, how=how)
    labels = np.array([ds.image_labels(i) for i in range(len(ds))])
    s_scores = sample_scores(maps, how)
    threshold = float(meta["threshold"])
    decisions = s_scores > threshold
    s_labels = labels.max(1)
    metrics = result.as_dict()
    metrics["threshold"] = threshold
    metrics["decision_accuracy"] = float((decisions == s_labels.astype(bool)).mean())
    metrics["false_positive_rate_at_threshold"] = float(decisions[s_labels == 0].mean()) if (s_labels == 0).any() else None
    metrics["true_positive_rate_at_threshold"] = float(decisions[s_labels == 1].mean()) if (s_labels == 1).any() else None
    write_json(folder / "metrics.json", metrics, default=_json_default)
    _write_scores_csv(folder / "scores.csv", test.sample_ids, defects, test.view_names, img_scores, labels, s_scores, decisions)
    write_adeval_pkl(
        folder / "adeval.pkl",
        image_paths=[p for r in ds.samples for p in r.image_paths],
        anomaly_maps=maps.reshape(-1, *maps.shape[-2:]),
        image_scores=img_scores.reshape(-1),
        mask_paths=[m for r in ds.samples for m in r.mask_paths],
    )
    if cfg.eval.pictures if pictures is None else pictures:
        _category_pictures(folder, category, ds, maps, img_scores, s_scores, labels, threshold, test.view_names, how)
    return metrics


def _write_scores_csv(path, sample_ids, defects, views, img_scores, labels, s_scores, decisions) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "defect", "label", "sample_score", "decision"]
                   + [f"score_{v}" for v in views] + [f"label_{v}" for v in views])
        for i, sid in enumerate(sample_ids):
            w.writerow([sid, defects[i], int(labels[i].max()), f"{s_scores[i]:.6f}", "NG" if decisions[i] else "OK"]
                       + [f"{x:.6f}" for x in img_scores[i]] + [int(x) for x in labels[i]])
    os.replace(tmp, path)


def _upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(maps).float()[:, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def _category_pictures(folder, category, ds, maps, img_scores, s_scores, labels, threshold, views, how) -> None:
    from multiflow.report import plot_histogram, plot_roc, plot_sample

    fig_dir = folder / "figures"
    s_labels = labels.max(1)
    plot_roc(
        {"sample-wise": (s_labels, s_scores), "image-wise": (labels.reshape(-1), img_scores.reshape(-1))},
        fig_dir / "roc.png", title=f"{category}: ROC",
    )
    plot_histogram(s_scores[s_labels == 0], s_scores[s_labels == 1], fig_dir / "histogram.png",
                   threshold=threshold, title=f"{category}: sample scores ({how} over views)")
    vmin, vmax = float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9))
    chosen: list[tuple[str, int]] = []
    defects = [r.defect for r in ds.samples]
    for d in sorted(set(defects)):
        idx = [i for i in range(len(ds)) if defects[i] == d and s_labels[i] == 1]
        if idx:
            chosen.append((f"example_{d}", max(idx, key=lambda i: s_scores[i])))
    normal = np.flatnonzero(s_labels == 0)
    anomalous = np.flatnonzero(s_labels == 1)
    for k, i in enumerate(normal[np.argsort(-s_scores[normal])][:3]):
        chosen.append((f"worst_false_positive_{k + 1}", int(i)))
    for k, i in enumerate(anomalous[np.argsort(s_scores[anomalous])][:3]):
        chosen.append((f"worst_false_negative_{k + 1}", int(i)))
    for name, i in chosen:
        rec = ds.samples[i]
        gt = ground_truth_masks(ds, i)
        from multiflow.data.images import flips_for, load_image

        flips = flips_for(ds.flips, rec.view_names)
        imgs = np.stack([
            load_image(p, size=gt.shape[-2:], flip=flips[v])[0].permute(1, 2, 0).numpy()
            for v, p in enumerate(rec.image_paths)
        ])
        up = _upsample(maps[i], gt.shape[-2:])
        verdict = "NG" if s_scores[i] > threshold else "OK"
        plot_sample(
            imgs, up, gt, views, fig_dir / f"{name}.png",
            title=f"{category} {rec.sample_id} ({rec.defect}): score {s_scores[i]:.2f} -> {verdict}",
            vmin=vmin, vmax=vmax, view_scores=list(img_scores[i]),
        )


METRIC_COLUMNS = [("s_auroc", "S-AUROC"), ("i_auroc", "I-AUROC"), ("p_auroc", "P-AUROC"), ("aupro", "AUPRO"),
                  ("s_ap", "S-AP"), ("i_ap", "I-AP"), ("s_f1_max", "S-F1max"), ("i_f1_max", "I-F1max")]


def metrics_table(per_class: dict[str, dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table in the paper's layout (classes as rows, metrics in %, mean last) + CSV rows."""
    rows = []
    for cat, m in per_class.items():
        rows.append({"class": cat, **{k: m.get(k) for k, _ in METRIC_COLUMNS}})
    mean = {"class": "mean"}
    for k, _ in METRIC_COLUMNS:
        vals = [r[k] for r in rows]
        mean[k] = None if any(v is None for v in vals) else float(np.mean(vals))
    rows.append(mean)

    def fmt(v):
        return "-" if v is None else f"{100 * v:.2f}"

    head = "| class | " + " | ".join(lbl for _, lbl in METRIC_COLUMNS) + " |"
    sep = "|---|" + "|".join("---:" for _ in METRIC_COLUMNS) + "|"
    lines = [head, sep] + [
        f"| {r['class']} | " + " | ".join(fmt(r[k]) for k, _ in METRIC_COLUMNS) + " |" for r in rows
    ]
    return "\n".join(lines), rows


def evaluate_run(run_dir: str | Path, cfg: RunConfig | None = None, *, progress: bool = True,
                 pictures: bool | None = None) -> dict[str, Any]:
    """Evaluate every trained class of a run; writes the run's metrics tables and report.html."""
    from multiflow.config import load_config
    from multiflow.engine.distributed import barrier, init_distributed
    from multiflow.report import write_html_report

    ctx = init_distributed()
    progress = progress and ctx.is_main
    run_dir = Path(run_dir)
    if cfg is None:
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError("config.yaml not found: not a multiflow run folder", run_dir)
        cfg = load_config(run_dir / "config.yaml")
    cats = [c for c in list_categories(cfg.data) if (run_dir / c / "model.json").is_file()]
    if not cats:
        raise CheckpointError("no trained class models (…/<class>/model.json) in this run folder", run_dir)
    per_class = {}
    device, _ = run_device(cfg)
    for cat in cats:
        if progress:
            print(f"== {cat}: evaluating on {device}", flush=True)
        per_class[cat] = evaluate_category(run_dir, cat, cfg, progress=progress, pictures=pictures, device=device)
    barrier(ctx)
    if not ctx.is_main:
        return {"per_class": {}, "table": "", "per_defect": "", "rows": []}
    md, rows = metrics_table(per_class)
    per_defect = _per_defect_table(per_class)
    write_json(run_dir / "metrics.json", {"per_class": per_class, "mean": rows[-1]}, default=_json_default)
    tmp = run_dir / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, run_dir / "metrics.csv")
    (run_dir / "metrics.md.tmp").write_text(md + "\n\n" + per_defect + "\n")
    os.replace(run_dir / "metrics.md.tmp", run_dir / "metrics.md")
    sections = []
    for cat in cats:
        figs = sorted((run_dir / cat / "figures").glob("*.png"))
        sections.append((cat, [str(p.relative_to(run_dir)) for p in figs]))
    write_html_report(
        run_dir / "report.html", title=f"multiflow run {run_dir.name}", metrics_markdown=md,
        sections=sections, extra_markdown=per_defect,
    )
    return {"per_class": per_class, "table": md, "per_defect": per_defect, "rows": rows}


def _per_defect_table(per_class: dict[str, dict[str, Any]]) -> str:
    lines = ["| class | defect | samples | S-AUROC | I-AUROC |", "|---|---|---:|---:|---:|"]
    for cat, m in per_class.items():
        for d, r in sorted((m.get("per_defect") or {}).items()):
            s = "-" if r.get("s_auroc") is None else f"{100 * r['s_auroc']:.2f}"
            i = "-" if r.get("i_auroc") is None else f"{100 * r['i_auroc']:.2f}"
            lines.append(f"| {cat} | {d} | {r.get('num_samples')} | {s} | {i} |")
    return "\n".join(lines)
