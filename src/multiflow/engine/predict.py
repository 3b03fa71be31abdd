"""Inference on new samples: pass/fail decision, per-view scores and anomaly maps.

:class:`Predictor` loads a trained class model (``<run>/<class>/model.{safetensors,json}``) once,
rebuilds the same frozen backbone (its weight digest, input size and layer must match the ones the
flow was trained on) and mask provider from the model's bundle, and scores samples given as images
``(V, 3, H, W)`` in ``[0, 1]`` with the model's view names, with the bundle's image score
(:mod:`multiflow.scoring`). The decision compares the sample score with the threshold fitted on
held-out normal calibration objects for the number of views present
(:meth:`multiflow.engine.bundle.ThresholdSpec.for_views`).

Missing views and camera faults (docs/deployment.md, "Decision JSON"): a model trained with view
dropout (``model.json``: ``supports_missing_views: true``) scores an object from any non-empty
subset of its cameras; other models refuse incomplete objects with a :class:`DataError` naming the
missing views. When the class folder holds ``camera_faults.json`` (written by ``fit``), every view is
first checked for camera faults (:mod:`multiflow.faults`); the decision is then ``CHECK CAMERA``
with the cameras and reasons, and, where the model supports missing views, the product is scored on
the remaining views (``product_decision``). The predictor remembers the previous object's
fingerprints for the frozen-frame check, so objects must be given in acquisition order; a request
with the previous object's sample id is a retry and is compared with the object before it.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
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
    missing_views: list[str] = field(default_factory=list)
    camera_faults: list[dict[str, Any]] = field(default_factory=list)
    product_decision: str | None = None
    #: a unified model's class fields (``class``, ``class_source``, ``class_margin``, ``class_score``,
    #: ``unknown_class_cutoff``; :mod:`multiflow.engine.unified_predict`); None for a class model
    class_info: dict[str, Any] | None = None

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
        } | ({} if self.class_info is None else dict(self.class_info))


class Predictor:
    """Score new multi-view samples with a trained class model.

    Everything comes from the model's bundle (:mod:`multiflow.engine.bundle`): backbone (weights
    digest, input size, layer checked), feature dtype, masks (margin included), flips, aggregation,
    image score, threshold. The
    images go through the one preprocessing path (:class:`multiflow.engine.preprocess.ViewPreprocessor`),
    so a sample scores here as it does in ``multiflow test``.

    Args:
        model_dir: ``<run>/<class>`` folder holding ``model.safetensors`` and ``model.json``.
        threshold: override the calibrated threshold (a finite number, else :class:`ConfigError`).
        frozen_check: remember each object's fingerprints for the frozen-frame check (objects
            must then come in acquisition order); False for tools that score parts in any order.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a device, resolved once
            (:func:`multiflow.device.resolve_device`): backbone and flow run there; maps come back
            to the CPU.
        precision: ``"fp32"`` or ``"bf16"`` (bf16 autocast st-networks, coupling math and NLL in
            fp32; fp32 with a notice where bf16 is unsupported).
    """

    def __init__(self, model_dir: str | os.PathLike, *, threshold: float | None = None,
                 frozen_check: bool = True, device: str | torch.device = "auto",
                 precision: str = "fp32") -> None:
        from multiflow.device import resolve_device, resolve_precision
        from multiflow.engine.bundle import BUNDLE_FILE, check_backbone, load_bundle, load_camera_faults
        from multiflow.engine.factories import build_extractor
        from multiflow.engine.preprocess import ViewPreprocessor
        from multiflow.numbers import check_number

        if threshold is not None:  # before anything is loaded: NaN would turn every part OK
            threshold = check_number(threshold, "threshold")
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
        self.threshold_fixed = threshold is not None  # else: the bundle's threshold for the views present
        self.aggregation = self.bundle.scoring.aggregation
        self.input_size = int(self.bundle.features.input_size)
        self.supports_missing_views = bool(self.bundle.supports_missing_views)
        self.fault_model = load_camera_faults(self.model_dir, self.bundle)
        self.frame_memory = None
        if self.fault_model is not None and frozen_check:
            from multiflow.faults import FrameMemory

            self.frame_memory = FrameMemory()
        # the model's image score (identity for the paper's max)
        self.postprocess = self.bundle.scoring.postprocess(self.input_size).to(self.device)

    @property
    def meta(self) -> dict[str, Any]:
        """The bundle as a JSON dict (read-only view for reports and the service)."""
        return self.bundle.to_dict()

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
    def predict(self, images: torch.Tensor, view_names: list[str] | None = None, sample_id: str = "", *,
                image_paths: list[str] | None = None, image_root: str | None = None) -> Prediction:
        """Score one object.

        Args:
            images: ``(V', 3, H, W)`` float in ``[0, 1]`` for the cameras ``view_names`` (default:
                all of the model's, in order; a non-empty subset, in any order, only when the model
                supports missing views), in the data set's orientation (load-time flips applied);
                any ``H, W`` (resized as the data sets resize).
            image_paths, image_root: the files the images came from (in the order of ``view_names``)
                and the data root they lie in; needed when the model uses mask files
                (``masks.provider=file``).

        The camera-fault check (when the bundle names statistics) sees the images as the
        preprocessing path resized them; faulty views are not scored (module docstring).
        """
        from multiflow.device import autocast
        from multiflow.faults import decide_object, detect_faults
        from multiflow.scoring import score_maps

        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"sample {sample_id!r}: images must be (V, 3, H, W), got {tuple(images.shape)}")
        given = list(view_names or self.view_names)
        if len(given) != images.shape[0]:
            raise DataError(f"sample {sample_id!r}: {images.shape[0]} images for {len(given)} views {given}")
        if image_paths is not None and len(image_paths) != len(given):
            raise DataError(f"sample {sample_id!r}: {len(image_paths)} image paths for {len(given)} views {given}")
        self.check_views(given, sample_id)
        h_img, w_img = images.shape[-2:]
        x = self.preprocessor.resize(images)  # (V', 3, S, S): what the cache and the flow see
        faults = []
        if self.fault_model is not None:
            # the sample id keys the frame memory: the same id again is a retry, not a frozen camera
            faults = detect_faults(self.fault_model, x, given, memory=self.frame_memory, object_id=sample_id or None)
        faulty = {f.view for f in faults}
        usable = [v for v in self.view_names if v in given and v not in faulty]
        if faulty and not self.supports_missing_views:
            usable = []  # the product cannot be scored without every camera
        n = len(self.view_names)
        present = torch.tensor([v in usable for v in self.view_names])
        if usable:
            keep = [given.index(v) for v in usable]
            pos = [self.view_names.index(v) for v in usable]
            paths = None if image_paths is None else [image_paths[k] for k in keep]
            f_sub, m_sub = self.preprocessor(x[keep], view_names=usable, image_paths=paths, image_root=image_root,
                                             sample_id=sample_id)
            feats = f_sub.new_zeros(1, n, *f_sub.shape[2:])
            feats[:, pos] = f_sub
            mask = None
            if m_sub is not None:
                mask = m_sub.new_zeros(1, n, *m_sub.shape[2:])
                mask[:, pos] = m_sub
            all_present = bool(present.all())
            p_arg = None if all_present else present[None].to(feats.device)
            self.flow.eval()
            with autocast(self.device, self.precision):  # bf16: the st-networks only; the NLL stays fp32
                nll = self.flow(feats, present=p_arg).nll
            maps, vs, ss = score_maps(nll.float(), mask, self.aggregation, self.postprocess, present=p_arg)
            maps, view_scores, sample_score = maps[0].cpu(), [float(s) for s in vs[0].cpu()], float(ss[0])
        else:
            maps = torch.full((n, 1, 1), float("nan"))
            view_scores = [float("nan")] * n
            sample_score = float("nan")
        thr = self.threshold if self.threshold_fixed else self.bundle.threshold.for_views(len(usable), n)
        decision, product = decide_object(sample_score if usable else None, thr, faults)
        full = torch.nn.functional.interpolate(maps[:, None], size=(h_img, w_img), mode="bilinear",
                                               align_corners=False)[:, 0]
        return Prediction(
            sample_id=sample_id,
            decision=decision,
            sample_score=sample_score,
            view_scores=view_scores,
            view_names=list(self.view_names),
            threshold=thr,
            maps=maps.numpy(),
            maps_full=full.numpy(),
            missing_views=[v for v in self.view_names if v not in given],
            camera_faults=[f.as_dict() for f in faults],
            product_decision=product,
        )


def output_folder_name(sample_id: str) -> str:
    """The name of a sample's output folder (a child of the output folder): the id with ``/`` and
    ``\\`` as ``_`` (folder-format ids are ``<defect>/<sample>``), so ``../x`` becomes ``.._x`` and
    ``/abs`` ``_abs``. An id that would still name the output folder itself or its parent (empty,
    ``.``, ``..``), holds control characters or is too long for a file name is a :class:`DataError`
    naming the id."""
    name = str(sample_id).replace("/", "_").replace("\\", "_")
    if name in ("", ".", ".."):
        raise DataError(f"sample id {sample_id!r} cannot name an output folder (it would be the output folder "
                        "or its parent); rename the sample")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise DataError(f"sample id {sample_id!r} holds control characters; it cannot name an output folder")
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        raise DataError(f"sample id {sample_id[:40]!r}... is longer than a file name may be (255 bytes)")
    return name


def save_prediction(pred: Prediction, images: np.ndarray, out_dir: Path, *, vmax: float | None = None,
                    image_views: list[str] | None = None) -> None:
    """Write ``<out>/<folder>/<view>.npy`` (raw map), ``<view>.png`` (heat-map overlay) and ``result.json``.

    ``<folder>`` is :func:`output_folder_name` of the sample id: never outside ``out_dir`` (an id
    that would leave it is a :class:`DataError` naming the id, raised before anything is written).
    ``images`` ``(V', H, W, 3)`` are the object's images for the cameras ``image_views`` (default:
    all of the prediction's views, in order); views without a map (missing, camera fault) are skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import cm
    from PIL import Image

    folder = out_dir / output_folder_name(pred.sample_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise DataError(f"sample {pred.sample_id!r}: output {folder.name!r} exists and is not a plain folder", out_dir)
    folder.mkdir(exist_ok=True)
    if folder.resolve().parent != out_dir.resolve():  # belt and braces: the folder is a child of out_dir
        raise DataError(f"sample {pred.sample_id!r}: output folder {folder.name!r} leaves the output folder", out_dir)
    lo = pred.threshold * 0.5 if vmax is None else 0.0
    finite = np.isfinite(pred.maps_full)
    top = float(pred.maps_full[finite].max()) if finite.any() else pred.threshold
    hi = max(pred.threshold * 1.5, top) if vmax is None else vmax
    for v, name in enumerate(pred.view_names):
        if not np.isfinite(pred.maps[v]).any():
            continue  # a view that was missing or not scored (camera fault): no map
        with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, pred.maps[v])
        norm = np.clip((pred.maps_full[v] - lo) / max(hi - lo, 1e-9), 0, 1)
        heat = (cm.jet(norm)[..., :3] * 255).astype(np.uint8)
        img = images[v if image_views is None else list(image_views).index(name)]
        if img.dtype != np.uint8:
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        over = (0.55 * img + 0.45 * heat).astype(np.uint8)
        with atomic_path(folder / f"{name}.png") as tmp:
            Image.fromarray(over).save(tmp, format="PNG")
    write_json(folder / "result.json", pred.as_dict())


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"


class PredictRun(list):
    """The decision JSON of every scored object (a ``list`` of dicts, in sample-id order) and
    ``skipped``: the objects that were not scored, each ``{"sample_id", "reason"}``."""

    def __init__(self, rows: list[dict], skipped: list[dict]) -> None:
        super().__init__(rows)
        self.skipped = skipped


def _read_views(dataset, views: list[str], paths: list[str]) -> tuple[list[str], list[str], list[np.ndarray], dict[str, str]]:
    """Decode the given views one by one with the data set's decoding (size, flips, JPEG mode);
    returns ``(views read, their files, images (3, H, W), {view: why it could not be read})``."""
    from multiflow.data.images import flips_for, read_image_array

    ok_views, ok_paths, images, problems = [], [], [], {}
    for view, path, flip in zip(views, paths, flips_for(getattr(dataset, "flips", None), views)):
        try:
            img, _ = read_image_array(path, size=getattr(dataset, "image_size", None), flip=flip,
                                      fast_jpeg=bool(getattr(dataset, "fast_jpeg", False)))
        except DataError as exc:
            problems[view] = str(exc)
            continue
        ok_views.append(view)
        ok_paths.append(path)
        images.append(img)
    if len({im.shape for im in images}) > 1:
        problems["*"] = f"views have different image sizes {sorted({im.shape for im in images})}"
    return ok_views, ok_paths, images, problems


def predict_dataset(predictor: Predictor, dataset, out_dir: str | os.PathLike, *, progress: bool = True) -> PredictRun:
    """Score every object of a data set; writes per-object outputs, ``predictions.csv`` and
    ``summary.json``; returns a :class:`PredictRun` (the decision JSONs and the skipped objects).

    Incomplete objects (a missing view file, or one that cannot be read or decoded: the data set's
    ``skipped`` list when it was opened with ``skip_incomplete=True``, or a decode error here) are
    scored on the views that can be read when the model supports missing views (the decision JSON's
    ``missing_views`` names the others); otherwise they are listed in ``summary.json``'s ``skipped``
    with the reason, as are objects the model refuses (:class:`DataError`) and ids that cannot name
    an output folder. The rest of the data set is always scored.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = getattr(dataset, "image_root", None) or getattr(dataset, "root", None)
    # (sample id, views present, their files, why views are missing): complete objects, then incomplete ones
    todo: list[tuple[str, list[str], list[str], str]] = [
        (rec.sample_id, list(rec.view_names), list(rec.image_paths), "") for rec in dataset.samples]
    skipped: list[dict[str, str]] = []
    for k in getattr(dataset, "skipped", []):
        if predictor.supports_missing_views and k.usable:
            todo.append((k.sample_id, [v for v, _ in k.usable], [f for _, f in k.usable], k.reason))
        else:
            why = (f"{k.reason}; no view is usable" if predictor.supports_missing_views else
                   f"{k.reason}; this model needs every camera (trained without view dropout)")
            skipped.append({"sample_id": k.sample_id, "reason": why})
    todo.sort(key=lambda t: t[0])
    rows, incomplete, folders = [], [], {}
    for sid, views, paths, why in tqdm(todo, desc="predict", disable=not progress):
        views, paths, images, problems = _read_views(dataset, views, paths)
        reasons = [why] if why else []
        reasons += [f"view {v}: {p}" if v != "*" else p for v, p in problems.items()]
        try:
            if "*" in problems or not views:  # the reasons already say why
                raise DataError("no view can be scored" if not views else "the views cannot be scored together")
            if problems or why:  # the model refuses an incomplete object with a DataError naming the views
                predictor.check_views(views, sid)
            name = output_folder_name(sid)
            if name in folders:
                raise DataError(f"sample {sid!r}: its output folder {name!r} is already used by sample {folders[name]!r}")
            x = torch.from_numpy(np.stack(images))
            pred = predictor.predict(x, views, sid, image_paths=paths, image_root=None if root is None else str(root))
            save_prediction(pred, x.permute(0, 2, 3, 1).numpy(), out, image_views=views)
        except DataError as exc:
            skipped.append({"sample_id": sid, "reason": "; ".join(reasons + [str(exc)])})
            continue
        folders[name] = sid
        rows.append(pred.as_dict())
        if reasons:
            incomplete.append({"sample_id": sid, "missing_views": pred.missing_views, "reason": "; ".join(reasons)})
    skipped.sort(key=lambda d: d["sample_id"])
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["sample_id", "decision", "product_decision", "sample_score", "threshold"]
               + [f"score_{v}" for v in predictor.view_names] + ["missing_views", "camera_faults"])
    for r in rows:
        w.writerow([r["sample_id"], r["decision"], r["product_decision"] or "", _fmt(r["sample_score"]),
                    f"{r['threshold']:.6f}"] + [_fmt(r["view_scores"][v]) for v in predictor.view_names]
                   + [" ".join(r["missing_views"]),
                      "; ".join(f"{f['view']}: {f['fault']}" for f in r["camera_faults"])])
    write_text(out / "predictions.csv", buf.getvalue())
    counts = {d: sum(r["decision"] == d for r in rows) for d in ("OK", "NG", "CHECK CAMERA")}
    if any(r["decision"] == "UNKNOWN CLASS" for r in rows):  # a unified model's (engine/unified_predict.py)
        counts["UNKNOWN CLASS"] = sum(r["decision"] == "UNKNOWN CLASS" for r in rows)
    write_json(out / "summary.json", {
        "model": str(predictor.model_dir), "threshold": predictor.threshold, "scored": len(rows),
        "decisions": counts, "incomplete": incomplete, "skipped": skipped,
    })
    return PredictRun(rows, skipped)
