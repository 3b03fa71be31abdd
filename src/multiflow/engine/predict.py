"""Inference on new samples: pass/fail decision, per-view scores and anomaly maps.

:class:`Predictor` loads a trained class model (``<run>/<class>/model.{safetensors,json}``) once,
rebuilds the same frozen backbone (its weight digest, input size and layer must match the ones the
flow was trained on) and mask provider from the model's bundle, and scores samples given as images
``(V, 3, H, W)`` in ``[0, 1]`` with the model's view names, with the bundle's image score
(:mod:`multiflow.scoring`). The decision compares the sample score with the threshold fitted on
held-out normal calibration objects for the number of views present
(:meth:`multiflow.engine.bundle.ThresholdSpec.for_views`).

Throughput (docs/deployment.md, "Throughput and streaming"): :meth:`Predictor.predict_batch`
scores several objects with one masks call, one backbone call on all their views and one flow
call on the predictor's device; :func:`predict_dataset` decodes the next objects in worker threads
(:func:`prefetch`) and writes outputs in a writer thread while a batch is scored, and reports the
seconds per stage (:mod:`multiflow.engine.timing`). The streaming mode for a line is
:mod:`multiflow.engine.watch`.

Missing views and camera faults (docs/deployment.md, "Decision JSON"): a model trained with view
dropout (``model.json``: ``supports_missing_views: true``) scores an object from any non-empty
subset of its cameras; other models refuse incomplete objects with a :class:`DataError` naming the
missing views. When the class folder holds ``camera_faults.json`` (written by ``fit``), every view is
first checked for camera faults (:mod:`multiflow.faults`); the decision is then ``CHECK CAMERA``
with the cameras and reasons, and, where the model supports missing views, the product is scored on
the remaining views (``product_decision``). The camera check uses the flow's evidence too
(:func:`multiflow.faults.check_cameras`): the NLL maps of the given views (an occlusion flag on a
region inside the object where the map peaks is a product defect: ``dismissed_camera_faults``) and,
when the fault model has a flow swap check and every camera is given, the swap gains of every
camera pair (one flow forward of ``1 + V (V - 1) / 2`` assignments; the NLL of the given one is
the product's, so no second forward unless a faulty view is left out). The predictor remembers the previous object's
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
from multiflow.engine.timing import StageTimes
from multiflow.errors import ConfigError, DataError


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
    #: camera-fault flags dismissed as product defects, with the evidence (:mod:`multiflow.faults.detect`)
    dismissed_camera_faults: list[dict[str, Any]] = field(default_factory=list)
    #: the flow's swap gains (every camera pair) when the fault model has a flow-swap check, else None
    swap_gains: np.ndarray | None = None
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
            "dismissed_camera_faults": list(self.dismissed_camera_faults),
        } | ({} if self.class_info is None else dict(self.class_info))


@dataclass
class ObjectImages:
    """One object to score: ``images (V', 3, H, W)`` float in ``[0, 1]`` for the cameras
    ``view_names`` (None: all of the model's, in order), its ``sample_id``, and the files the images
    came from (``image_paths`` in view order, ``image_root``: needed for ``masks.provider=file``)."""

    images: torch.Tensor
    view_names: list[str] | None = None
    sample_id: str = ""
    image_paths: list[str] | None = None
    image_root: str | None = None


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
        precision: ``"fp32"`` (default: the precision the threshold was calibrated in, whatever the
            model was trained in), ``"bf16"`` (bf16 autocast st-networks, coupling math and NLL in
            fp32; fp32 with a notice where bf16 is unsupported) or ``"auto"`` (bf16 where the
            device computes it natively; :func:`multiflow.device.resolve_precision`).
        masks_backend: ``"torch"`` (default: the threshold masks as batched tensor operations on
            ``device``) or ``"numpy"`` (the NumPy reference on the CPU, for comparison);
            :class:`multiflow.engine.preprocess.ViewPreprocessor`.

    :meth:`predict_batch` scores several objects at once (one backbone call on all their views,
    one masks call, one flow call); :meth:`predict` is one object. :attr:`times` accumulates the
    seconds per stage (:class:`multiflow.engine.timing.StageTimes`).
    """

    def __init__(self, model_dir: str | os.PathLike, *, threshold: float | None = None,
                 frozen_check: bool = True, device: str | torch.device = "auto",
                 precision: str = "fp32", masks_backend: str = "torch") -> None:
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
        self.preprocessor = ViewPreprocessor(extractor=self.extractor, bundle=self.bundle, device=self.device,
                                             masks_backend=masks_backend)
        self.times = StageTimes(self.device)
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
        """Score one object (:meth:`predict_batch` of one :class:`ObjectImages`).

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
        obj = ObjectImages(images, None if view_names is None else list(view_names), sample_id,
                           image_paths=image_paths, image_root=image_root)
        return self.predict_batch([obj])[0]

    def _validate(self, obj: ObjectImages) -> list[str]:
        """The object's view names (checked against the model and its images)."""
        images, sample_id = obj.images, obj.sample_id
        if images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"sample {sample_id!r}: images must be (V, 3, H, W), got {tuple(images.shape)}")
        given = list(obj.view_names or self.view_names)
        if len(given) != images.shape[0]:
            raise DataError(f"sample {sample_id!r}: {images.shape[0]} images for {len(given)} views {given}")
        if obj.image_paths is not None and len(obj.image_paths) != len(given):
            raise DataError(f"sample {sample_id!r}: {len(obj.image_paths)} image paths for {len(given)} views {given}")
        self.check_views(given, sample_id)
        return given

    @torch.no_grad()
    def predict_batch(self, objects: list[ObjectImages]) -> list[Prediction]:
        """Score several objects at once, in their order (the frozen-frame memory sees them in it).

        Every given view of every object goes through one masks call and one backbone call
        ``(N, 3, S, S)`` on :attr:`device`, then one flow call ``(B, V, C, h, w)`` (views that are
        not given are zeros and not ``present``). With camera-fault statistics that forward is the
        camera check's evidence too (the NLL maps of every given view; with every camera given and
        a flow-swap check, the swapped assignments ride in the same batch), and only objects that
        lose a faulty view go through the flow again, on the views left. A sample scores as it does
        alone, up to floating-point summation order. Any object's :class:`DataError` (views that do
        not match the model, images of the wrong shape, missing mask files) is raised before
        anything is scored; :func:`predict_dataset` then scores the batch object by object to name it.
        """
        from multiflow.device import autocast, to_device
        from multiflow.faults import check_cameras, decide_object, flow_swap_batch
        from multiflow.scoring import score_maps

        given_all = [self._validate(obj) for obj in objects]
        n, b = len(self.view_names), len(objects)
        xs = [self.preprocessor.resize(obj.images.cpu()) for obj in objects]  # (V', 3, S, S) each
        # every given view of every object, flattened: (N, 3, S, S), one transfer
        keep = {i: list(range(len(given_all[i]))) for i in range(b)}
        names = [v for g in given_all for v in g]
        x_dev = to_device(torch.cat(xs), self.device)
        with self.times.stage("masks"):
            m_flat = self._masks(x_dev, objects, list(range(b)), keep, names)
        with self.times.stage("backbone"):
            f_flat = self.preprocessor.features(x_dev)[0]  # (N, C, h, w)
        feats = f_flat.new_zeros(b, n, *f_flat.shape[1:])
        mask = None if m_flat is None else m_flat.new_zeros(b, n, *m_flat.shape[1:])
        given = torch.zeros(b, n, dtype=torch.bool)
        start = 0
        for i, g in enumerate(given_all):
            pos = [self.view_names.index(v) for v in g]
            stop = start + len(pos)
            feats[i, pos] = f_flat[start:stop]
            if mask is not None:
                mask[i, pos] = m_flat[start:stop]
            given[i, pos] = True
            start = stop
        self.flow.eval()
        nll = torch.empty(b, n, *feats.shape[-2:], device=feats.device)
        gains_all: list[Any] = [None] * b
        swap_rows = [i for i in range(b) if bool(given[i].all())] if (
            self.fault_model is not None and self.fault_model.flow_swap is not None) else []
        rest = [i for i in range(b) if i not in swap_rows]
        with self.times.stage("flow"), autocast(self.device, self.precision):  # bf16: st-networks only
            if swap_rows:
                g, nll_swap = flow_swap_batch(self.flow, feats[swap_rows], fg=None if mask is None else mask[swap_rows])
                nll[swap_rows] = nll_swap.to(nll)
                for row, i in enumerate(swap_rows):
                    gains_all[i] = g[row]
            if rest:
                p_rest = given[rest]
                nll[rest] = self.flow(feats[rest], present=None if bool(p_rest.all()) else p_rest.to(feats.device),
                                      fg=None if mask is None else mask[rest]).nll.float()
        faults_all: list[list] = [[] for _ in range(b)]
        dismissed_all: list[list] = [[] for _ in range(b)]
        usable_all: list[list[str]] = [list(v for v in self.view_names if v in g) for g in given_all]
        if self.fault_model is not None:
            with self.times.stage("faults"):
                for i, obj in enumerate(objects):
                    pos = [self.view_names.index(v) for v in given_all[i]]
                    # the sample id keys the frame memory: the same id again is a retry, not a frozen camera
                    check = check_cameras(self.fault_model, xs[i], given_all[i], memory=self.frame_memory,
                                          object_id=obj.sample_id or None, anomaly_maps=nll[i, pos].float().cpu(),
                                          masks=None if mask is None else mask[i, pos].cpu(), swap_gains=gains_all[i])
                    faults_all[i], dismissed_all[i] = check.faults, check.dismissed
                    faulty = {f.view for f in check.faults}
                    if faulty:
                        usable_all[i] = ([] if not self.supports_missing_views
                                         else [v for v in usable_all[i] if v not in faulty])
        present = torch.tensor([[v in u for v in self.view_names] for u in usable_all], dtype=torch.bool).reshape(b, n)
        again = [i for i in range(b) if usable_all[i] and not torch.equal(present[i], given[i])]
        if again:  # objects that lost a faulty view: the flow on the views left
            with self.times.stage("flow"), autocast(self.device, self.precision):
                nll[again] = self.flow(feats[again], present=present[again].to(feats.device),
                                       fg=None if mask is None else mask[again]).nll.float()
        scored = [i for i in range(b) if usable_all[i]]
        preds: list[Prediction | None] = [None] * b
        with self.times.stage("scoring"):
            if scored:
                p_sc = present[scored]
                p_arg = None if bool(p_sc.all()) else p_sc.to(feats.device)
                m_sc = None if mask is None else mask[scored] * p_sc[:, :, None, None].to(mask)
                maps, vs, ss = score_maps(nll[scored].float(), m_sc, self.aggregation, self.postprocess, present=p_arg)
                maps, vs, ss = maps.cpu(), vs.cpu(), ss.cpu()
                for row, i in enumerate(scored):
                    preds[i] = self._prediction(objects[i], given_all[i], usable_all[i], faults_all[i], maps[row],
                                                [float(s) for s in vs[row]], float(ss[row]), decide_object,
                                                dismissed_all[i], gains_all[i])
            for i, obj in enumerate(objects):
                if preds[i] is None:
                    preds[i] = self._prediction(obj, given_all[i], [], faults_all[i], torch.full((n, 1, 1), float("nan")),
                                                [float("nan")] * n, float("nan"), decide_object, dismissed_all[i],
                                                gains_all[i])
        return preds

    def _masks(self, x: torch.Tensor, objects: list[ObjectImages], scored: list[int], keep: dict[int, list[int]],
               names: list[str]) -> torch.Tensor | None:
        """Grid masks ``(N, h, w)`` of the flattened views: one call per image root (one for all
        objects unless ``masks.provider=file`` reads masks from several data roots)."""
        roots = [objects[i].image_root for i in scored]
        paths: list[str | None] = []
        for i in scored:
            p = objects[i].image_paths
            paths += [None if p is None else p[k] for k in keep[i]]
        if len(set(roots)) <= 1:
            return self.preprocessor.view_masks(x, names, image_paths=paths, image_root=roots[0],
                                                sample_id=objects[scored[0]].sample_id)
        out, start = [], 0
        for i in scored:
            stop = start + len(keep[i])
            out.append(self.preprocessor.view_masks(x[start:stop], names[start:stop], image_paths=paths[start:stop],
                                                    image_root=objects[i].image_root, sample_id=objects[i].sample_id))
            start = stop
        return None if out[0] is None else torch.cat(out)

    def _prediction(self, obj: ObjectImages, given: list[str], usable: list[str], faults: list, maps: torch.Tensor,
                    view_scores: list[float], sample_score: float, decide_object, dismissed: list | None = None,
                    gains: Any = None) -> Prediction:
        n = len(self.view_names)
        thr = self.threshold if self.threshold_fixed else self.bundle.threshold.for_views(len(usable), n)
        decision, product = decide_object(sample_score if usable else None, thr, faults)
        h_img, w_img = obj.images.shape[-2:]
        full = torch.nn.functional.interpolate(maps[:, None], size=(h_img, w_img), mode="bilinear",
                                               align_corners=False)[:, 0]
        return Prediction(
            sample_id=obj.sample_id,
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
            dismissed_camera_faults=list(dismissed or []),
            swap_gains=gains,
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


#: what :func:`save_prediction` writes besides ``result.json``: raw maps and overlays, raw maps, nothing
MAP_OUTPUTS = ("png", "npy", "none")


def save_prediction(pred: Prediction, images: np.ndarray, out_dir: Path, *, vmax: float | None = None,
                    image_views: list[str] | None = None, maps: str = "png") -> None:
    """Write ``<out>/<folder>/<view>.npy`` (raw map), ``<view>.png`` (heat-map overlay) and ``result.json``.

    ``maps``: ``"png"`` (both, default), ``"npy"`` (the raw maps only: the overlays' colour mapping
    and PNG encoding are most of the write time) or ``"none"`` (``result.json`` only).

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
    if maps not in MAP_OUTPUTS:
        raise ConfigError(f"maps must be one of {list(MAP_OUTPUTS)}, got {maps!r}")
    for v, name in enumerate(pred.view_names):
        if maps == "none" or not np.isfinite(pred.maps[v]).any():
            continue  # a view that was missing or not scored (camera fault): no map
        with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, pred.maps[v])
        if maps == "npy":
            continue
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
    """The decision JSON of every scored object (a ``list`` of dicts, in sample-id order),
    ``skipped``: the objects that were not scored, each ``{"sample_id", "reason"}``, and
    ``timing``: objects/s and seconds per stage (:meth:`multiflow.engine.timing.StageTimes.report`)."""

    def __init__(self, rows: list[dict], skipped: list[dict], timing: dict[str, Any] | None = None) -> None:
        super().__init__(rows)
        self.skipped = skipped
        self.timing = timing or {}


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


def prefetch(fn, items, *, workers: int, depth: int, times: StageTimes | None = None):
    """``(item, fn(item))`` for every item, in order, with ``fn`` run ahead in ``workers`` threads
    (at most ``depth`` items decoded ahead: bounded memory) while the caller works on earlier ones.
    ``workers=0``: inline. ``times``: the caller's wait for a result is added as ``decode_wait``."""
    import time
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if workers <= 0:
        for item in items:
            t0 = time.perf_counter()
            out = fn(item)
            if times is not None:
                times.add("decode_wait", time.perf_counter() - t0)
            yield item, out
        return
    it = iter(items)
    queue: deque = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="multiflow-decode") as pool:
        try:
            for item in it:
                queue.append((item, pool.submit(fn, item)))
                if len(queue) >= max(depth, 1):
                    break
            while queue:
                item, fut = queue.popleft()
                t0 = time.perf_counter()
                out = fut.result()
                if times is not None:
                    times.add("decode_wait", time.perf_counter() - t0)
                nxt = next(it, None)
                if nxt is not None:
                    queue.append((nxt, pool.submit(fn, nxt)))
                yield item, out
        finally:  # the caller stopped early: drop what was not started
            for _, fut in queue:
                fut.cancel()


def predict_dataset(predictor: Predictor, dataset, out_dir: str | os.PathLike, *, progress: bool = True,
                    batch_size: int = 1, workers: int = 0, maps: str = "png") -> PredictRun:
    """Score every object of a data set; writes per-object outputs, ``predictions.csv`` and
    ``summary.json``; returns a :class:`PredictRun` (the decision JSONs, the skipped objects and
    the ``timing``).

    Incomplete objects (a missing view file, or one that cannot be read or decoded: the data set's
    ``skipped`` list when it was opened with ``skip_incomplete=True``, or a decode error here) are
    scored on the views that can be read when the model supports missing views (the decision JSON's
    ``missing_views`` names the others); otherwise they are listed in ``summary.json``'s ``skipped``
    with the reason, as are objects the model refuses (:class:`DataError`) and ids that cannot name
    an output folder. The rest of the data set is always scored.

    Throughput: ``workers`` threads decode and resize the files of the next objects while the
    current batch is scored (at most ``workers + 2 * batch_size`` objects ahead; 0 = inline);
    ``batch_size`` objects are scored together (:meth:`Predictor.predict_batch`: one masks call,
    one backbone call on all their views, one flow call); with ``workers`` > 0 the outputs are
    written by one more thread (at most ``2 * batch_size`` objects behind), so the next batch is
    scored meanwhile. ``maps``: what is written besides ``result.json`` (:func:`save_prediction`).
    Objects are scored in sample-id order whatever the batch size. ``summary.json``'s ``timing`` holds objects/s and the seconds per
    stage (:mod:`multiflow.engine.timing`).
    """
    import time

    from tqdm.auto import tqdm

    from multiflow.numbers import check_number

    check_number(batch_size, "batch_size", integer=True, gt=0)
    check_number(workers, "workers", integer=True, ge=0)
    if maps not in MAP_OUTPUTS:
        raise ConfigError(f"maps must be one of {list(MAP_OUTPUTS)}, got {maps!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = getattr(dataset, "image_root", None) or getattr(dataset, "root", None)
    root = None if root is None else str(root)
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
    times = predictor.times
    times.reset()
    t_start = time.perf_counter()

    def decode(item):
        t0 = time.perf_counter()
        res = _read_views(dataset, item[1], item[2])
        times.add("decode", time.perf_counter() - t0)
        return res

    pending: list[tuple[ObjectImages, list[str], str]] = []  # (object, reasons, output folder name)

    def score(batch: list[tuple[ObjectImages, list[str], str]]) -> None:
        try:
            preds = predictor.predict_batch([obj for obj, _, _ in batch])
        except DataError as exc:
            if len(batch) > 1:  # one object spoils the batch: score them one by one to name it
                for one in batch:
                    score([one])
                return
            obj, reasons, name = batch[0]
            folders.pop(name, None)
            skipped.append({"sample_id": obj.sample_id, "reason": "; ".join(reasons + [str(exc)])})
            return
        for (obj, reasons, name), pred in zip(batch, preds):
            writes.append((obj, reasons, name, pred, writer.submit(write, obj, pred) if writer else write(obj, pred)))
        while len(writes) > (2 * batch_size if writer else 0):
            collect(*writes.popleft())

    def write(obj: ObjectImages, pred: Prediction) -> DataError | None:
        t0 = time.perf_counter()
        try:
            save_prediction(pred, obj.images.permute(0, 2, 3, 1).numpy(), out, image_views=obj.view_names, maps=maps)
        except DataError as exc:
            return exc
        finally:
            times.add("write", time.perf_counter() - t0)
        return None

    def collect(obj: ObjectImages, reasons: list[str], name: str, pred: Prediction, result) -> None:
        if writer is not None:
            t0 = time.perf_counter()
            result = result.result()
            times.add("write_wait", time.perf_counter() - t0)
        if result is not None:
            folders.pop(name, None)
            skipped.append({"sample_id": obj.sample_id, "reason": "; ".join(reasons + [str(result)])})
            return
        rows.append(pred.as_dict())
        if reasons:
            incomplete.append({"sample_id": obj.sample_id, "missing_views": pred.missing_views,
                               "reason": "; ".join(reasons)})

    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    writes: deque = deque()
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="multiflow-write") if workers > 0 else None
    bar = tqdm(total=len(todo), desc="predict", disable=not progress)
    for (sid, _, _, why), (views, paths, images, problems) in prefetch(
            decode, todo, workers=workers, depth=workers + 2 * batch_size, times=times):
        bar.update(1)
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
        except DataError as exc:
            skipped.append({"sample_id": sid, "reason": "; ".join(reasons + [str(exc)])})
            continue
        folders[name] = sid
        obj = ObjectImages(torch.from_numpy(np.stack(images)), views, sid, image_paths=paths, image_root=root)
        pending.append((obj, reasons, name))
        if len(pending) >= batch_size:
            score(pending)
            pending = []
    if pending:
        score(pending)
    while writes:
        collect(*writes.popleft())
    if writer is not None:
        writer.shutdown()
    bar.close()
    timing = times.report(len(rows), time.perf_counter() - t_start)
    timing.update(batch_size=int(batch_size), workers=int(workers), device=str(predictor.device),
                  masks_backend=predictor.preprocessor.masks_backend)
    rows.sort(key=lambda r: r["sample_id"])
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
        "decisions": counts, "incomplete": incomplete, "skipped": skipped, "timing": timing,
    })
    return PredictRun(rows, skipped, timing)
