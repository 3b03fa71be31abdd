"""Predictor: the configured device and precision reach the backbone and the flow (checked on the meta
device, so that the test can fail on a CPU-only machine: issue 21)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multiflow.device import bf16_supported
from multiflow.engine.predict import Predictor
from multiflow.errors import ConfigError


def _images(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, 3, 80, 80, generator=torch.Generator().manual_seed(seed))


def test_predictor_runs_on_its_device(tiny_model):
    pred = Predictor(tiny_model, device="cpu")
    seen: list[torch.device] = []
    pred.flow.flow.register_forward_pre_hook(lambda _m, args: seen.append(args[0].device))
    pred.extractor.body.register_forward_pre_hook(lambda _m, args: seen.append(args[0].device))
    out = pred.predict(_images())
    assert pred.device == torch.device("cpu")
    assert len(seen) == 2 and all(d == pred.device for d in seen)
    assert isinstance(out.maps, np.ndarray) and out.maps.dtype == np.float32


class _Reached(Exception):
    """Raised by a forward hook once the flow's input was seen (meta tensors hold no values to score)."""


def test_predictor_moves_backbone_flow_and_inputs_to_its_device(tiny_model, monkeypatch):
    """On a CPU-only machine every tensor is on the CPU whether or not the code moves it; the meta
    device tells them apart: the resolved device must hold every parameter and buffer of the
    backbone, the flow and the scoring, and the images must reach the backbone and the flow there."""
    import multiflow.device

    meta = torch.device("meta")
    monkeypatch.setattr(multiflow.device, "resolve_device", lambda spec="auto", **_: meta)
    pred = Predictor(tiny_model, device="cpu")
    assert pred.device == meta and pred.preprocessor.device == meta
    for name, module in [("flow", pred.flow), ("backbone", pred.extractor), ("scoring", pred.postprocess)]:
        tensors = list(module.parameters()) + list(module.buffers())
        assert tensors or name == "scoring"
        assert {t.device for t in tensors} <= {meta}, f"{name} was not moved to the predictor's device"
    seen: dict[str, torch.device] = {}

    def at_backbone(_m, args):  # returns None: a pre-hook's return value would replace the input
        seen["backbone"] = args[0].device

    def at_flow(_m, args):
        seen["flow"] = args[0].device
        raise _Reached

    pred.extractor.body.register_forward_pre_hook(at_backbone)
    pred.flow.flow.register_forward_pre_hook(at_flow)
    with pytest.raises(_Reached):
        pred.predict(_images())
    assert seen == {"backbone": meta, "flow": meta}


def test_predictor_refuses_an_unavailable_device(tiny_model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        Predictor(tiny_model, device="cuda")


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no bf16 on this CPU")
def test_bf16_prediction_is_close_to_fp32(tiny_model):
    ref = Predictor(tiny_model, device="cpu").predict(_images(1))
    low = Predictor(tiny_model, device="cpu", precision="bf16").predict(_images(1))
    np.testing.assert_allclose(low.maps, ref.maps, rtol=2e-2, atol=2e-2)
    assert low.sample_score == pytest.approx(ref.sample_score, rel=2e-2)
    assert not np.array_equal(low.maps, ref.maps)  # bf16 really ran
