"""Inference with a unified multi-class bundle (``<run>/unified``; issue 23).

:class:`UnifiedPredictor` is the :class:`multiflow.engine.predict.Predictor` of a unified model.
Per object:

1. the class: given by the caller (``class_name``, ``predict --class``, the service's ``class``
   field; ``class_source: "given"``) or identified by the model as the class with the lowest mean
   foreground NLL (``class_source: "identified"``, with ``class_margin``: the second-lowest minus the
   lowest, in NLL units). A model without class conditioning (``class_conditioning: none``) cannot
   identify and needs the class (:class:`DataError` otherwise). Identification uses every view given.
2. the camera-fault check with that class's statistics (faulty views are not scored, as for a
   class model);
3. the anomaly map: the per-pixel NLL under the class, scored and compared with the class's own
   threshold (for the number of views present);
4. the unknown-class check: when the object's mean foreground NLL under the class exceeds the class's
   cut-off (fitted on its held-out calibration objects), the decision is ``UNKNOWN CLASS`` (under
   ``CHECK CAMERA``, the ``product_decision``): an object of a class the model was not trained on,
   or not of the class given, never comes out OK. With views missing the mean runs over the present
   views; the cut-off is the one fitted with every view.

The decision JSON adds ``class``, ``class_source``, ``class_margin`` (null when given),
``class_score`` (the mean foreground NLL under the class) and ``unknown_class_cutoff``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from multiflow.engine.predict import Prediction, Predictor
from multiflow.errors import ConfigError, DataError

UNKNOWN_CLASS = "UNKNOWN CLASS"


class UnifiedPredictor(Predictor):
    """Score new objects with a unified bundle (module docstring).

    Args:
        model_dir: the unified bundle folder (``<run>/unified``).
        class_name: the class of every object scored (default: identified per object); a
            ``class_name`` given to :meth:`predict` takes precedence.
        **kwargs: as :class:`Predictor` (``threshold`` overrides every class's threshold).
    """

    def __init__(self, model_dir: str | os.PathLike, *, class_name: str | None = None, **kwargs: Any) -> None:
        from multiflow.engine.bundle import load_camera_faults

        super().__init__(model_dir, **kwargs)
        if not self.bundle.unified:
            raise ConfigError(f"{self.model_dir}: not a unified multi-class model (model.json has no classes)")
        self.unified_bundle = self.bundle
        self.classes = list(self.bundle.classes)
        self.class_name = self._check_class(class_name)
        self.fault_models = {c: load_camera_faults(self.model_dir, self.bundle.for_class(c)) for c in self.classes}
        if self.class_name:  # the bundle as the given class sees it (threshold, statistics) for reports
            self.bundle = self.unified_bundle.for_class(self.class_name)
            self.threshold = float(self.bundle.threshold.value) if not self.threshold_fixed else self.threshold
        elif not self.threshold_fixed:
            self.threshold = None  # one per class: each decision JSON names the one it used

    def _check_class(self, name: str | None) -> str | None:
        if name is None or name == "":
            return None
        if name not in self.classes:
            raise DataError(f"class {name!r} is not one of this model's classes {self.classes}")
        return name

    @torch.no_grad()
    def predict_batch(self, objects: list) -> list[Prediction]:
        """Objects one by one, in their order (:meth:`predict`): the class (given or identified) and
        its camera-fault statistics are per object, so the class model's batched path does not apply;
        decoding still overlaps the scoring in :func:`multiflow.engine.predict.predict_dataset`."""
        return [self.predict(o.images, o.view_names, o.sample_id, image_paths=o.image_paths, image_root=o.image_root)
                for o in objects]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, view_names: list[str] | None = None, sample_id: str = "", *,
                image_paths: list[str] | None = None, image_root: str | None = None,
                class_name: str | None = None) -> Prediction:
        """Score one object (see :meth:`Predictor.predict` for the arguments); ``class_name`` as in
        the constructor."""
        from multiflow.device import autocast
        from multiflow.engine.unified import identify
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
        name = self._check_class(class_name) or self.class_name
        if name is None and not self.flow.can_identify:
            raise DataError(f"sample {sample_id!r}: this unified model has no class conditioning "
                            "(class_conditioning: none) and cannot identify an object's class: give the class "
                            "(predict --class, the service's class field)")
        h_img, w_img = images.shape[-2:]
        x = self.preprocessor.resize(images)
        n = len(self.view_names)
        order = [v for v in self.view_names if v in given]
        keep = [given.index(v) for v in order]
        pos = [self.view_names.index(v) for v in order]
        paths = None if image_paths is None else [image_paths[k] for k in keep]
        # the backbone features and masks of a view depend on that view's image only: computed once for
        # every given view, the views left out below are only masked
        f_sub, m_sub = self.preprocessor(x[keep], view_names=order, image_paths=paths, image_root=image_root,
                                         sample_id=sample_id)
        feats = f_sub.new_zeros(1, n, *f_sub.shape[2:])
        feats[:, pos] = f_sub
        mask = None
        if m_sub is not None:
            mask = m_sub.new_zeros(1, n, *m_sub.shape[2:])
            mask[:, pos] = m_sub
        self.flow.eval()
        given_present = torch.tensor([v in given for v in self.view_names])
        p_given = None if bool(given_present.all()) else given_present[None].to(feats.device)
        margin = None
        if name is None:
            with autocast(self.device, self.precision):
                k, margin = identify(self.flow, feats, mask, p_given)
            name, source = self.classes[k], "identified"
        else:
            k, source = self.classes.index(name), "given"
        view = self.unified_bundle.for_class(name)
        fault_model = self.fault_models[name]
        faults = []
        if fault_model is not None:
            faults = detect_faults(fault_model, x, given, memory=self.frame_memory, object_id=sample_id or None)
        faulty = {f.view for f in faults}
        usable = [v for v in order if v not in faulty]
        if faulty and not self.supports_missing_views:
            usable = []
        present = torch.tensor([v in usable for v in self.view_names])
        class_score = None
        if usable:
            p_arg = None if bool(present.all()) else present[None].to(feats.device)
            with autocast(self.device, self.precision):
                nll = self.flow(feats, present=p_arg, classes=k, fg=mask).nll
            class_score = float(self.flow._fg_mean(nll.float(), mask, p_arg)[0])
            maps, vs, ss = score_maps(nll.float(), mask, self.aggregation, self.postprocess, present=p_arg)
            maps, view_scores, sample_score = maps[0].cpu(), [float(s) for s in vs[0].cpu()], float(ss[0])
        else:
            maps = torch.full((n, 1, 1), float("nan"))
            view_scores = [float("nan")] * n
            sample_score = float("nan")
        thr = self.threshold if self.threshold_fixed else view.threshold.for_views(len(usable), n)
        decision, product = decide_object(sample_score if usable else None, thr, faults)
        unknown = self.unified_bundle.per_class[name].unknown
        cutoff = None if unknown is None else float(unknown.value)
        if class_score is not None and cutoff is not None and class_score > cutoff:
            if decision == "CHECK CAMERA":
                product = UNKNOWN_CLASS
            else:
                decision = product = UNKNOWN_CLASS
        full = torch.nn.functional.interpolate(maps[:, None], size=(h_img, w_img), mode="bilinear",
                                               align_corners=False)[:, 0]
        return Prediction(
            sample_id=sample_id, decision=decision, sample_score=sample_score, view_scores=view_scores,
            view_names=list(self.view_names), threshold=thr, maps=maps.numpy(), maps_full=full.numpy(),
            missing_views=[v for v in self.view_names if v not in given],
            camera_faults=[f.as_dict() for f in faults], product_decision=product,
            class_info={"class": name, "class_source": source,
                        "class_margin": None if margin is None or not np.isfinite(margin) else float(margin),
                        "class_score": class_score, "unknown_class_cutoff": cutoff},
        )


def open_predictor(model_dir: str | os.PathLike, *, class_name: str | None = None, **kwargs: Any) -> Predictor:
    """The predictor of a trained model folder: a :class:`UnifiedPredictor` for a unified bundle, else
    a :class:`Predictor` (``class_name`` must then be empty or the model's class)."""
    from pathlib import Path

    from multiflow.engine.bundle import read_bundle

    bundle = read_bundle(Path(model_dir))
    if bundle.unified:
        return UnifiedPredictor(model_dir, class_name=class_name, **kwargs)
    if class_name and class_name != bundle.category:
        raise DataError(f"{model_dir}: the model is trained for class {bundle.category!r}, not {class_name!r}")
    return Predictor(model_dir, **kwargs)
