"""ONNX export of the whole inference path: backbone + flow + scoring + threshold.

The exported graph (:class:`InferenceGraph`) computes, for a batch of samples,

* ``images`` ``(B, V, 3, S, S)`` float RGB in ``[0, 1]``, ``S`` = the backbone input size the model
  was trained with (resize outside the graph), normalised ``(x - mean) / std`` per channel;
* features ``(B, V, C, h, w)`` = frozen backbone of every view, rounded to the bundle's
  ``features.dtype`` as the feature cache stores them;
* anomaly maps ``(B, V, h, w)`` = per-pixel NLL of the flow in eval mode (no noise); with a
  foreground ``mask`` ``(B, V, h, w)`` (> 0.5 = foreground, computed outside the graph by
  :class:`multiflow.engine.preprocess.ViewPreprocessor`), the background fill; view scores
  ``(B, V)`` (the model's image score over the foreground, ``max`` by default), sample score ``(B,)`` and
  decision ``(B,)``: all by the same torch functions as every other path
  (:func:`multiflow.scoring.score_maps` with the bundle's :class:`multiflow.scoring.ScorePostprocess`),
  traced into the graph.

A unified multi-class model (``<run>/unified``) is exported as one graph per class
(``export_onnx(..., class_name=...)``, ``multiflow export --class``): the class is baked into the
graph (:class:`ClassBoundFlow`), the threshold is the class's, and the decision also flags an object
whose mean foreground NLL under the class exceeds the class's unknown-class cut-off (``decision``
true = not OK: NG or an unknown class); the metadata names the ``category`` (the class),
``classes`` and ``unknown_class_cutoff``. Identifying the class is not part of an exported graph
(one graph per class; the caller knows the product on the line).

The batch axis is dynamic. The file carries the model's description as ONNX metadata
(``view_names``, ``threshold``, ``input_size``, ``feature_size``, ``aggregation``, ...; read it
with :func:`onnx_metadata`). Export uses the TorchScript-based exporter
(``torch.onnx.export(dynamo=False)``), which needs no network and no onnxscript.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from multiflow._atomic import atomic_path
from multiflow._optional import require
from multiflow.errors import CheckpointError, ConfigError, DataError
from multiflow.scoring import ScorePostprocess, check_aggregation, decide, score_maps

INPUT_NAMES = ("images", "mask")
OUTPUT_NAMES = ("anomaly_maps", "view_scores", "sample_score", "decision")
DEFAULT_OPSET = 17


class ClassBoundFlow(nn.Module):
    """A unified flow with its class fixed (``forward(features)`` as a class model's flow), for export."""

    def __init__(self, flow: nn.Module, class_index: int) -> None:
        super().__init__()
        self.flow = flow.eval()
        self.class_index = int(class_index)

    def forward(self, features: Tensor, fg: Tensor | None = None):
        labels = torch.zeros(features.shape[0], dtype=torch.long, device=features.device) + self.class_index
        return self.flow(features, classes=labels, fg=fg)


class InferenceGraph(nn.Module):
    """Backbone + flow + scoring + threshold as one module (see the module docstring).

    Args:
        extractor: a frozen :class:`multiflow.features.backbones.FeatureExtractor`.
        flow: a trained flow (:class:`multiflow.flow.MultiFlow` or another class with its
            interface, e.g. :class:`multiflow.flow.SingleViewFlow`), put in eval mode here.
        threshold: decision threshold on the sample score.
        aggregation: one of :data:`multiflow.scoring.VIEW_AGGREGATIONS`.
        with_mask: whether :meth:`forward` takes a foreground mask.
        feature_dtype: the bundle's ``features.dtype``; ``"float16"`` rounds the features as the
            feature cache stores them (what the flow was trained and calibrated on).
        postprocess: the image score (:meth:`multiflow.scoring.ScoringSpec.postprocess`; None = the
            paper's max).
    """

    def __init__(self, *, extractor: nn.Module, flow: nn.Module, threshold: float, aggregation: str = "max",
                 with_mask: bool = True, feature_dtype: str = "float32",
                 postprocess: ScorePostprocess | None = None, unknown_cutoff: float | None = None) -> None:
        super().__init__()
        check_aggregation(aggregation)
        if feature_dtype not in ("float16", "float32"):
            raise ConfigError(f"feature_dtype must be float16 or float32, got {feature_dtype!r}")
        self.round_to = torch.float16 if feature_dtype == "float16" else None
        self.extractor = extractor
        self.flow = flow.eval()
        self.aggregation = aggregation
        self.with_mask = bool(with_mask)
        self.input_size = int(extractor.input_size)
        self.postprocess = postprocess if postprocess is not None else ScorePostprocess(image_size=self.input_size)
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))
        # a unified model's class: the decision also flags an object unlike the class (unknown class)
        self.unknown_cutoff = None if unknown_cutoff is None else float(unknown_cutoff)
        self.eval()

    def train(self, mode: bool = True) -> "InferenceGraph":
        """Always in eval mode (inference only)."""
        return super().train(False)

    def forward(self, images: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``images (B, V, 3, S, S)``, ``mask (B, V, h, w)`` or None ->
        ``(maps (B, V, h, w), view_scores (B, V), sample_score (B,), decision (B,) bool)``."""
        if images.dim() != 5 or images.shape[2] != 3:
            raise DataError(f"images must have shape (B, V, 3, S, S), got {tuple(images.shape)}")
        if images.shape[-2] != self.input_size or images.shape[-1] != self.input_size:
            raise DataError(
                f"images must be {self.input_size}x{self.input_size} (the model's input size), "
                f"got {tuple(images.shape[-2:])}; resize before calling"
            )
        b, v = images.shape[0], images.shape[1]
        x = images.reshape(b * v, 3, self.input_size, self.input_size).float()
        x = (x - self.extractor.mean) / self.extractor.std
        feats = self.extractor.body(x)
        feats = feats.reshape(b, v, feats.shape[1], feats.shape[2], feats.shape[3])
        if self.round_to is not None:  # the feature cache's storage precision (features.dtype)
            feats = feats.to(self.round_to).float()
        if mask is not None and (mask.dim() != 4 or tuple(mask.shape[1:]) != (v, *feats.shape[-2:])):
            raise DataError(f"mask must have shape (B, {v}, {feats.shape[-2]}, {feats.shape[-1]}), "
                            f"got {tuple(mask.shape)}")
        nll = self.flow(feats, fg=mask).nll  # (B, V, h, w); the mask is also the fusion's foreground
        maps, view_scores, sample = score_maps(nll, mask, self.aggregation, self.postprocess)
        decision = decide(sample, self.threshold)
        if self.unknown_cutoff is not None:
            from multiflow.flow.unified import UnifiedFlow

            decision = decision | (UnifiedFlow._fg_mean(nll, mask, None) > self.unknown_cutoff)
        return maps, view_scores, sample, decision


def load_inference_graph(model_dir: str | os.PathLike, *, threshold: float | None = None,
                         with_mask: bool = True,
                         class_name: str | None = None) -> tuple[InferenceGraph, dict[str, Any]]:
    """Build the :class:`InferenceGraph` of a trained class model (``<run>/<class>``).

    Returns ``(graph, meta)`` where ``meta`` is the model's bundle as a dict (``threshold`` the value
    used). The backbone is rebuilt exactly as :class:`multiflow.engine.predict.Predictor` does
    (weights digest, input size and layer checked). A unified model needs ``class_name``: the graph
    of that class (module docstring).
    """
    from multiflow.engine.bundle import read_bundle
    from multiflow.engine.unified_predict import open_predictor

    if read_bundle(Path(model_dir)).unified and not class_name:
        raise ConfigError(f"{model_dir} is a unified multi-class model: export one graph per class "
                          "(class_name=..., multiflow export --class NAME)")
    pred = open_predictor(model_dir, class_name=class_name, threshold=threshold, device="cpu")  # traces on the CPU
    flow, cutoff, extra = pred.flow, None, {}
    if getattr(pred, "classes", None):
        flow = ClassBoundFlow(pred.flow, pred.classes.index(class_name))
        spec = pred.unified_bundle.per_class[class_name]
        cutoff = None if spec.unknown is None else float(spec.unknown.value)
        extra = {"classes": list(pred.classes), "unknown_class_cutoff": cutoff}
    graph = InferenceGraph(extractor=pred.extractor, flow=flow, threshold=pred.threshold,
                           aggregation=pred.aggregation, with_mask=with_mask,
                           feature_dtype=pred.bundle.features.dtype, postprocess=pred.postprocess,
                           unknown_cutoff=cutoff)
    return graph, dict(pred.meta, threshold=pred.threshold, view_names=list(pred.view_names), **extra)


def export_onnx(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    with_mask: bool = True,
    threshold: float | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    class_name: str | None = None,
) -> Path:
    """Export a trained class model to ONNX; returns the written path.

    Inputs ``images`` ``(B, V, 3, S, S)`` (and ``mask`` ``(B, V, h, w)`` when ``with_mask``);
    outputs ``anomaly_maps``, ``view_scores``, ``sample_score``, ``decision``; ``B`` dynamic.
    The file is written to a temporary name, checked with ``onnx.checker`` (``check``) and moved
    into place, so a failed export leaves nothing half-written.

    Raises:
        CheckpointError: the model folder cannot be loaded. ConfigError: the export fails.
    """
    onnx = require("onnx", purpose="ONNX export")

    graph, meta = load_inference_graph(model_dir, threshold=threshold, with_mask=with_mask, class_name=class_name)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    v = len(meta["view_names"])
    s = graph.input_size
    h, w = graph.extractor.feature_size(s)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, v, 3, s, s, generator=gen)
    args: tuple[Tensor, ...] = (images,)
    input_names = ["images"]
    if with_mask:
        args = (images, torch.ones(2, v, h, w))
        input_names.append("mask")
    dynamic = {name: {0: "batch"} for name in (*input_names, *OUTPUT_NAMES)}
    try:
        with atomic_path(out) as tmp:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer notes on Python-level shape checks (constant here)
                torch.onnx.export(
                    graph, args, str(tmp), dynamo=False, input_names=input_names, output_names=list(OUTPUT_NAMES),
                    dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True,
                )
            model = onnx.load(str(tmp))
            props = {
                "format": "multiflow-onnx/1",
                "category": str(meta.get("category", "")),
                "view_names": json.dumps(list(meta["view_names"])),
                "threshold": repr(float(meta["threshold"])),
                "aggregation": graph.aggregation,
                "scoring": json.dumps(meta["scoring"]),
                "input_size": str(s),
                "feature_size": json.dumps([int(h), int(w)]),
                "with_mask": json.dumps(bool(with_mask)),
                "backbone": json.dumps(meta["features"]),
                "feature_dtype": meta["features"]["dtype"],
            }
            if "unknown_class_cutoff" in meta:  # one class of a unified model
                props["classes"] = json.dumps(meta["classes"])
                props["unknown_class_cutoff"] = json.dumps(meta["unknown_class_cutoff"])
            onnx.helper.set_model_props(model, props)
            if check:
                onnx.checker.check_model(model)
            onnx.save(model, str(tmp))
    except (RuntimeError, ValueError, TypeError, onnx.checker.ValidationError) as exc:
        raise ConfigError(f"ONNX export of {model_dir} failed: {exc}") from exc
    return out


def onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The multiflow description stored in an exported file (JSON values decoded)."""
    onnx = require("onnx", purpose="reading an ONNX export")

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises several unrelated types for unreadable files
        raise CheckpointError(f"not a readable ONNX file ({exc})", path) from None
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("format") != "multiflow-onnx/1":
        raise CheckpointError("not a multiflow ONNX export (metadata 'format' missing)", path)
    out: dict[str, Any] = dict(props)
    for key in ("view_names", "feature_size", "with_mask", "backbone"):
        out[key] = json.loads(props[key])
    out["scoring"] = json.loads(props.get("scoring", "{}"))
    out["threshold"] = float(props["threshold"])
    out["input_size"] = int(props["input_size"])
    return out
