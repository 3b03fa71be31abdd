"""Inference on new samples: pass/fail decision, per-view scores and anomaly maps.

:class:`Predictor` loads a trained class model (``<run>/<class>/model.{safetensors,json}``) once,
rebuilds the same frozen backbone (its weight digest, input size and layer must match the ones the
flow was trained on) and mask provider from the model's bundle, and scores samples given as images
``(V, 3, H, W)`` in ``[0, 1]`` with the model's view names, with the bundle's image score and
per-view calibration (:mod:`multiflow.scoring`). The decision compares the sample score with the threshold calibrated on
held-out normal training samples.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multiflow._atomic import atomic_path, write_json, write_text
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

    Everything comes from the model's bundle (:mod:`multiflow.engine.bundle`): backbone (weights
    digest, input size, layer checked), feature dtype, masks (margin included), flips, aggregation,
    image score and calibration, threshold. The
    images go through the one preprocessing path (:class:`multiflow.engine.preprocess.ViewPreprocessor`),
    so a sample scores here as it does in ``multiflow test``.

    Args:
        model_dir: ``<run>/<class>`` folder holding ``model.safetensors`` and ``model.json``.
        threshold: override the calibrated threshold.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a device, resolved once
            (:func:`multiflow.device.resolve_device`): backbone and flow run there; maps come back
            to the CPU.
        precision: ``"fp32"`` or ``"bf16"`` (bf16 autocast st-networks, coupling math and NLL in
            fp32; fp32 with a notice where bf16 is unsupported).
    """

    def __init__(self, model_dir: str | os.PathLike, *, threshold: float | None = None,
                 device: str | torch.device = "auto", precision: str = "fp32") -> None:
        from multiflow.device import resolve_device, resolve_precision
        from multiflow.engine.bundle import BUNDLE_FILE, check_backbone, load_bundle
        from multiflow.engine.factories import build_extractor
        from multiflow.engine.preprocess import ViewPreprocessor

        self.model_dir = Path(model_dir)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.flow, self.bundle = load_bundle(self.model_dir)
        self.flow.to(self.device)
        self.extractor = build_extractor(self.bundle.features.to_config())
        check_backbone(self.extractor, self.bundle, self.model_dir / BUNDLE_FILE)
        self.extractor.to(self.device)
        self.preprocessor = ViewPreprocessor(extractor=self.extractor, bundle=self.bundle, device=self.device)
        self.view_names: list[str] = list(self.bundle.view_names)
        self.threshold = float(self.bundle.threshold.value if threshold is None else threshold)
        self.aggregation = self.bundle.scoring.aggregation
        self.input_size = int(self.bundle.features.input_size)
        self.single_view = bool(self.bundle.single_view)
        # the model's image score and per-view calibration (identity for the paper's scoring)
        self.postprocess = self.bundle.scoring.postprocess(self.input_size)

    @property
    def meta(self) -> dict[str, Any]:
        """The bundle as a JSON dict (read-only view for reports and the service)."""
        return self.bundle.to_dict()

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
    def predict(self, images: torch.Tensor, view_names: list[str] | None = None, sample_id: str = "", *,
                image_paths: list[str] | None = None, image_root: str | None = None) -> Prediction:
        """Score one sample.

        Args:
            images: ``(V, 3, H, W)`` float in ``[0, 1]``, in the data set's orientation (load-time
                flips applied); any ``H, W`` (resized as the data sets resize).
            image_paths, image_root: the files the images came from and the data root they lie in;
                needed when the model uses mask files (``masks.provider=file``).
        """
        from multiflow.device import autocast
        from multiflow.scoring import score_maps

        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"sample {sample_id!r}: images must be (V, 3, H, W), got {tuple(images.shape)}")
        self.check_views(list(view_names or self.view_names), sample_id)
        h_img, w_img = images.shape[-2:]
        # features and masks (1, V, ...) on self.device, one transfer per sample
        feats, mask = self.preprocessor(images, image_paths=image_paths, image_root=image_root, sample_id=sample_id)
        self.flow.eval()
        with autocast(self.device, self.precision):  # bf16: the st-networks only; the NLL stays fp32
            if self.single_view:  # one shared single-view flow: every view is its own sample
                nll = self.flow(feats.transpose(0, 1)).nll.transpose(0, 1)  # (1, V, h, w)
            else:
                nll = self.flow(feats).nll
        maps, vs, ss = score_maps(nll.float(), mask, self.aggregation, self.postprocess)
        maps, view_scores, sample_score = maps[0].cpu(), vs[0].cpu(), float(ss[0])
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
        with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, pred.maps[v])
        norm = np.clip((pred.maps_full[v] - lo) / max(hi - lo, 1e-9), 0, 1)
        heat = (cm.jet(norm)[..., :3] * 255).astype(np.uint8)
        img = images[v]
        if img.dtype != np.uint8:
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        over = (0.55 * img + 0.45 * heat).astype(np.uint8)
        with atomic_path(folder / f"{name}.png") as tmp:
            Image.fromarray(over).save(tmp, format="PNG")
    write_json(folder / "result.json", pred.as_dict())


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
        root = getattr(dataset, "image_root", None) or getattr(dataset, "root", None)
        pred = predictor.predict(s.images, s.view_names, s.sample_id, image_paths=list(rec.image_paths),
                                 image_root=None if root is None else str(root))
        save_prediction(pred, s.images.permute(0, 2, 3, 1).numpy(), out)
        rows.append(pred.as_dict())
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["sample_id", "decision", "sample_score", "threshold"] + [f"score_{v}" for v in predictor.view_names])
    for r in rows:
        w.writerow([r["sample_id"], r["decision"], f"{r['sample_score']:.6f}", f"{r['threshold']:.6f}"]
                   + [f"{r['view_scores'][v]:.6f}" for v in predictor.view_names])
    write_text(out / "predictions.csv", buf.getvalue())
    return rows
