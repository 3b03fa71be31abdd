"""Inference on new samples: pass/fail decision, per-view scores and anomaly maps.

:class:`Predictor` loads a trained class model (``<run>/<class>/model.{safetensors,json}``) once,
rebuilds the same frozen backbone (its weight digest must match the one the flow was trained on)
and mask provider, and scores samples given as images ``(V, 3, H, W)`` in ``[0, 1]`` with the
model's view names. The decision compares the sample score with the threshold calibrated on
held-out normal training samples.

Missing views and camera faults (docs/deployment.md, "Decision JSON"): a model trained with view
dropout (``model.json``: ``supports_missing_views: true``) scores an object from any non-empty
subset of its cameras; other models refuse incomplete objects with a :class:`DataError` naming the
missing views. When the class folder holds ``camera_faults.json`` (written by ``fit``), every view is
first checked for camera faults (:mod:`multiflow.faults`); the decision is then ``CHECK CAMERA``
with the cameras and reasons, and, where the model supports missing views, the product is scored on
the remaining views (``product_decision``). The predictor remembers the previous object's
fingerprints for the frozen-frame check, so objects must be given in acquisition order.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multiflow.errors import DataError


@dataclass
class Prediction:
    """Result for one sample. ``maps``: ``(V, h, w)`` at the feature grid; ``maps_full``:
    ``(V, H, W)`` bilinearly upsampled to the input image size."""

    sample_id: str
    decision: str
    sample_score: float
    view_scores: list[float]
    view_names: list[str]
    threshold: float
    maps: np.ndarray
    maps_full: np.ndarray
    missing_views: list[str] = field(default_factory=list)
    camera_faults: list[dict[str, Any]] = field(default_factory=list)
    product_decision: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The decision JSON (schema: docs/deployment.md); NaN scores (views not scored) become null."""

        def num(x: float | None) -> float | None:
            return None if x is None or not np.isfinite(x) else float(x)

        return {
            "sample_id": self.sample_id,
            "decision": self.decision,
            "product_decision": self.product_decision,
            "sample_score": num(self.sample_score),
            "threshold": self.threshold,
            "view_scores": {v: num(s) for v, s in zip(self.view_names, self.view_scores)},
            "missing_views": list(self.missing_views),
            "camera_faults": list(self.camera_faults),
        }


class Predictor:
    """Score new multi-view samples with a trained class model.

    Args:
        model_dir: ``<run>/<class>`` folder holding ``model.safetensors`` and ``model.json``.
        threshold: override the calibrated threshold.
    """

    def __init__(self, model_dir: str | os.PathLike, *, threshold: float | None = None) -> None:
        from multiflow.config import FeatureConfig, MaskConfig
        from multiflow.engine.pipeline import build_extractor, build_mask_provider, check_backbone, load_bundle

        self.model_dir = Path(model_dir)
        self.flow, self.meta = load_bundle(self.model_dir)
        f = self.meta["features"]
        self.extractor = build_extractor(
            FeatureConfig(backbone=f["backbone"], input_size=int(f["input_size"]), weights=f.get("weights") or "",
                          layer=f.get("layer") or "")
        )
        check_backbone(self.extractor, self.meta, self.model_dir / "model.json")
        m = self.meta["masks"]
        self.mask_cfg = MaskConfig(provider=m["provider"], dilation=int(m["dilation"]), mask_root=m.get("mask_root", ""))
        self.masker = None if m["provider"] in ("none", "file") else build_mask_provider(self.mask_cfg)
        self.view_names: list[str] = list(self.meta["view_names"])
        self.threshold = float(self.meta["threshold"] if threshold is None else threshold)
        self.aggregation = self.meta.get("aggregation", "max")
        self.input_size = int(f["input_size"])
        self.single_view = bool(self.meta.get("single_view", False))
        self.supports_missing_views = bool(self.meta.get("supports_missing_views", False))
        self.fault_model = None
        faults_path = self.model_dir / "camera_faults.json"
        if faults_path.is_file():
            from multiflow.faults import CameraFaultModel, FrameMemory

            self.fault_model = CameraFaultModel.load(faults_path)
            if self.fault_model.view_names != self.view_names:
                raise DataError(f"cameras {self.fault_model.view_names} differ from the model's {self.view_names}",
                                faults_path)
            self.frame_memory = FrameMemory()

    def check_views(self, view_names: list[str], sample_id: str = "") -> None:
        missing = [v for v in self.view_names if v not in view_names]
        extra = [v for v in view_names if v not in self.view_names]
        if self.supports_missing_views and not extra and view_names and len(set(view_names)) == len(view_names):
            return  # any non-empty subset of the cameras, in any order
        if missing and not extra and not self.supports_missing_views:
            where = f"sample {sample_id!r}: " if sample_id else ""
            raise DataError(
                f"{where}missing view(s) {missing}: this model was trained without view dropout "
                "(model.json supports_missing_views is false) and needs every camera "
                f"{self.view_names}; retrain with train.view_dropout > 0 to score incomplete objects"
            )
        if missing or extra or list(view_names) != self.view_names:
            where = f"sample {sample_id!r}: " if sample_id else ""
            raise DataError(
                f"{where}views {list(view_names)} do not match the model's {self.view_names}"
                + (f"; missing: {missing}" if missing else "")
                + (f"; unknown: {extra}" if extra else "")
            )

    @torch.no_grad()
    def predict(self, images: torch.Tensor, view_names: list[str] | None = None, sample_id: str = "") -> Prediction:
        """Score one object. ``images``: ``(V', 3, H, W)`` float in ``[0, 1]`` (any H, W: resized) for
        the cameras ``view_names`` (default: all of the model's, in order; a subset only when the
        model supports missing views)."""
        from multiflow.faults import decide, detect_faults

        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"sample {sample_id!r}: images must be (V, 3, H, W), got {tuple(images.shape)}")
        given = list(view_names or self.view_names)
        if len(given) != images.shape[0]:
            raise DataError(f"sample {sample_id!r}: {images.shape[0]} images for {len(given)} views {given}")
        self.check_views(given, sample_id)
        faults = []
        if self.fault_model is not None:
            faults = detect_faults(self.fault_model, images, given, memory=self.frame_memory)
        faulty = {f.view for f in faults}
        usable = [v for v in self.view_names if v in given and v not in faulty]
        if faulty and not self.supports_missing_views:
            usable = []  # the product cannot be scored without every camera
        h_img, w_img = images.shape[-2:]
        full_images = images.new_zeros(len(self.view_names), 3, h_img, w_img)
        for k, v in enumerate(given):
            full_images[self.view_names.index(v)] = images[k]
        present = torch.tensor([v in usable for v in self.view_names])
        if usable:
            maps = self._maps(full_images, present if not bool(present.all()) else None)
            view_scores = [float(maps[k].max()) if present[k] else float("nan") for k in range(len(self.view_names))]
            sample_score = float(self._aggregate([s for s, p in zip(view_scores, present) if p]))
        else:
            maps = torch.full((len(self.view_names), 1, 1), float("nan"))
            view_scores = [float("nan")] * len(self.view_names)
            sample_score = float("nan")
        decision, product = decide(None if not usable else sample_score, self.threshold, faults)
        full = torch.nn.functional.interpolate(maps[:, None], size=(h_img, w_img), mode="bilinear",
                                               align_corners=False)[:, 0]
        return Prediction(
            sample_id=sample_id,
            decision=decision,
            sample_score=sample_score,
            view_scores=view_scores,
            view_names=list(self.view_names),
            threshold=self.threshold,
            maps=maps.numpy(),
            maps_full=full.numpy(),
            missing_views=[v for v in self.view_names if v not in given],
            camera_faults=[f.as_dict() for f in faults],
            product_decision=product,
        )

    def _aggregate(self, scores: list[float]) -> float:
        from multiflow.metrics import aggregate_views

        return float(aggregate_views(torch.tensor([scores], dtype=torch.float64), self.aggregation)[0])

    def _maps(self, x: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """Anomaly maps ``(V, h, w)`` of all ``V`` views ``x (V, 3, H, W)``; NaN for absent views."""
        from multiflow.features.masks import postprocess_mask

        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = torch.nn.functional.interpolate(x.float(), size=(self.input_size,) * 2, mode="bilinear",
                                                align_corners=False)
        feats = self.extractor.forward_views(x[None])  # (1, V, C, h, w)
        grid = tuple(feats.shape[-2:])
        mask = None
        if self.masker is not None:
            arr = x.permute(0, 2, 3, 1).numpy()
            mask = torch.from_numpy(
                np.stack([postprocess_mask(self.masker(arr[v]), grid, dilation=self.mask_cfg.dilation)[1]
                          for v in range(arr.shape[0])])
            )[None]
        if self.single_view:  # one shared single-view flow: every view is its own sample
            maps = self.flow.anomaly_map(feats.transpose(0, 1), None if mask is None else mask.transpose(0, 1))
            return maps[:, 0]  # (V, h, w)
        return self.flow.anomaly_map(feats, mask, None if present is None else present[None])[0]


def save_prediction(pred: Prediction, images: np.ndarray, out_dir: Path, *, vmax: float | None = None) -> None:
    """Write ``<out>/<sample_id>/<view>.npy`` (raw map), ``<view>.png`` (heat-map overlay) and ``result.json``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import cm
    from PIL import Image

    folder = out_dir / pred.sample_id.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    lo = pred.threshold * 0.5 if vmax is None else 0.0
    finite = np.isfinite(pred.maps_full)
    top = float(pred.maps_full[finite].max()) if finite.any() else pred.threshold
    hi = max(pred.threshold * 1.5, top) if vmax is None else vmax
    for v, name in enumerate(pred.view_names):
        if not np.isfinite(pred.maps[v]).any():
            continue  # a view that was missing or not scored (camera fault): no map
        np.save(folder / f"{name}.npy", pred.maps[v])
        norm = np.clip((pred.maps_full[v] - lo) / max(hi - lo, 1e-9), 0, 1)
        heat = (cm.jet(norm)[..., :3] * 255).astype(np.uint8)
        img = images[v]
        if img.dtype != np.uint8:
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        over = (0.55 * img + 0.45 * heat).astype(np.uint8)
        tmp = folder / f".{name}.png.tmp"
        Image.fromarray(over).save(tmp, format="PNG")
        os.replace(tmp, folder / f"{name}.png")
    tmp = folder / "result.json.tmp"
    tmp.write_text(json.dumps(pred.as_dict(), indent=2))
    os.replace(tmp, folder / "result.json")


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"


def predict_dataset(predictor: Predictor, dataset, out_dir: str | os.PathLike, *, progress: bool = True) -> list[dict]:
    """Score every sample of a data set; writes per-sample outputs and ``predictions.csv``."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(len(dataset)), desc="predict", disable=not progress):
        rec = dataset.samples[i]
        predictor.check_views(list(rec.view_names), rec.sample_id)
        s = dataset[i]
        pred = predictor.predict(s.images, s.view_names, s.sample_id)
        save_prediction(pred, s.images.permute(0, 2, 3, 1).numpy(), out)
        rows.append(pred.as_dict())
    tmp = out / "predictions.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "decision", "product_decision", "sample_score", "threshold"]
                   + [f"score_{v}" for v in predictor.view_names] + ["missing_views", "camera_faults"])
        for r in rows:
            w.writerow([r["sample_id"], r["decision"], r["product_decision"] or "", _fmt(r["sample_score"]),
                        f"{r['threshold']:.6f}"] + [_fmt(r["view_scores"][v]) for v in predictor.view_names]
                       + [" ".join(r["missing_views"]),
                          "; ".join(f"{f['view']}: {f['fault']}" for f in r["camera_faults"])])
    os.replace(tmp, out / "predictions.csv")
    return rows
