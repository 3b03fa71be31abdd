"""Inference on new samples: pass/fail decision, per-view scores and anomaly maps.

:class:`Predictor` loads a trained class model (``<run>/<class>/model.{safetensors,json}``) once,
rebuilds the same frozen backbone (its weight digest must match the one the flow was trained on)
and mask provider, and scores samples given as images ``(V, 3, H, W)`` in ``[0, 1]`` with the
model's view names. The decision compares the sample score with the threshold calibrated on
held-out normal training samples.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id,
            "decision": self.decision,
            "sample_score": self.sample_score,
            "threshold": self.threshold,
            "view_scores": dict(zip(self.view_names, self.view_scores)),
        }


class Predictor:
    """Score new multi-view samples with a trained class model.

    Args:
        model_dir: ``<run>/<class>`` folder holding ``model.safetensors`` and ``model.json``.
        threshold: override the calibrated threshold.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a device: backbone and flow run
            there (:func:`multiflow.device.resolve_device`); maps come back to the CPU.
        precision: ``"fp32"`` or ``"bf16"`` (bf16 autocast st-networks; fp32 where unsupported).
    """

    def __init__(self, model_dir: str | os.PathLike, *, threshold: float | None = None,
                 device: str | torch.device = "auto", precision: str = "fp32") -> None:
        from multiflow.config import FeatureConfig, MaskConfig
        from multiflow.device import resolve_device, resolve_precision
        from multiflow.engine.pipeline import build_extractor, build_mask_provider, check_backbone, load_bundle

        self.model_dir = Path(model_dir)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.flow, self.meta = load_bundle(self.model_dir)
        self.flow.to(self.device)
        f = self.meta["features"]
        self.extractor = build_extractor(
            FeatureConfig(backbone=f["backbone"], input_size=int(f["input_size"]), weights=f.get("weights") or "",
                          layer=f.get("layer") or "")
        )
        check_backbone(self.extractor, self.meta, self.model_dir / "model.json")
        self.extractor.to(self.device)
        m = self.meta["masks"]
        self.mask_cfg = MaskConfig(provider=m["provider"], dilation=int(m["dilation"]), mask_root=m.get("mask_root", ""))
        self.masker = None if m["provider"] in ("none", "file") else build_mask_provider(self.mask_cfg)
        self.view_names: list[str] = list(self.meta["view_names"])
        self.threshold = float(self.meta["threshold"] if threshold is None else threshold)
        self.aggregation = self.meta.get("aggregation", "max")
        self.input_size = int(f["input_size"])
        self.single_view = bool(self.meta.get("single_view", False))

    def check_views(self, view_names: list[str], sample_id: str = "") -> None:
        missing = [v for v in self.view_names if v not in view_names]
        extra = [v for v in view_names if v not in self.view_names]
        if missing or extra or list(view_names) != self.view_names:
            where = f"sample {sample_id!r}: " if sample_id else ""
            raise DataError(
                f"{where}views {list(view_names)} do not match the model's {self.view_names}"
                + (f"; missing: {missing}" if missing else "")
                + (f"; unknown: {extra}" if extra else "")
            )

    @torch.no_grad()
    def predict(self, images: torch.Tensor, view_names: list[str] | None = None, sample_id: str = "") -> Prediction:
        """Score one sample. ``images``: ``(V, 3, H, W)`` float in ``[0, 1]`` (any H, W: resized)."""
        from multiflow.device import autocast, to_device
        from multiflow.features.masks import postprocess_mask
        from multiflow.metrics import aggregate_views, image_scores_from_maps

        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"sample {sample_id!r}: images must be (V, 3, H, W), got {tuple(images.shape)}")
        self.check_views(list(view_names or self.view_names), sample_id)
        h_img, w_img = images.shape[-2:]
        x = images.float()
        if (h_img, w_img) != (self.input_size, self.input_size):
            x = torch.nn.functional.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        feats = self.extractor.forward_views(to_device(x[None], self.device))  # (1, V, C, h, w), on the device
        grid = tuple(feats.shape[-2:])
        mask = None
        if self.masker is not None:
            arr = x.permute(0, 2, 3, 1).numpy()
            mask = torch.from_numpy(
                np.stack([postprocess_mask(self.masker(arr[v]), grid, dilation=self.mask_cfg.dilation)[1]
                          for v in range(arr.shape[0])])
            )[None]
            mask = to_device(mask, self.device)
        with autocast(self.device, self.precision):
            if self.single_view:  # one shared single-view flow: every view is its own sample
                maps = self.flow.anomaly_map(feats.transpose(0, 1), None if mask is None else mask.transpose(0, 1))
                maps = maps[:, 0]  # (V, h, w)
            else:
                maps = self.flow.anomaly_map(feats, mask)[0]  # (V, h, w)
        maps = maps.float().cpu()
        view_scores = image_scores_from_maps(maps)
        sample_score = float(aggregate_views(view_scores[None], self.aggregation)[0])
        full = torch.nn.functional.interpolate(maps[:, None], size=(h_img, w_img), mode="bilinear",
                                               align_corners=False)[:, 0]
        return Prediction(
            sample_id=sample_id,
            decision="NG" if sample_score > self.threshold else "OK",
            sample_score=sample_score,
            view_scores=[float(s) for s in view_scores],
            view_names=list(self.view_names),
            threshold=self.threshold,
            maps=maps.numpy(),
            maps_full=full.numpy(),
        )


def save_prediction(pred: Prediction, images: np.ndarray, out_dir: Path, *, vmax: float | None = None) -> None:
    """Write ``<out>/<sample_id>/<view>.npy`` (raw map), ``<view>.png`` (heat-map overlay) and ``result.json``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import cm
    from PIL import Image

    folder = out_dir / pred.sample_id.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    lo = pred.threshold * 0.5 if vmax is None else 0.0
    hi = max(pred.threshold * 1.5, float(pred.maps_full.max())) if vmax is None else vmax
    for v, name in enumerate(pred.view_names):
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
        w.writerow(["sample_id", "decision", "sample_score", "threshold"] + [f"score_{v}" for v in predictor.view_names])
        for r in rows:
            w.writerow([r["sample_id"], r["decision"], f"{r['sample_score']:.6f}", f"{r['threshold']:.6f}"]
                       + [f"{r['view_scores'][v]:.6f}" for v in predictor.view_names])
    os.replace(tmp, out / "predictions.csv")
    return rows
