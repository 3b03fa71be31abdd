"""A unified flow under DDP (2 gloo processes on CPU) = one process: the class tag travels with the
features through ShardedLoss (``model.noise`` -> ``nll_of_noised``) and the sharded maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.ddp import spawn_local

from multiflow.config import TrainConfig
from multiflow.engine.distributed import DistContext, compute_maps_sharded
from multiflow.engine.train import train_flow
from multiflow.engine.unified import ClassRows
from multiflow.flow import ViewGraph
from multiflow.flow.unified import UnifiedFlow

CFG = dict(epochs=2, batch_size=3, lr=2e-3, seed=7, val_fraction=0.2, device="cpu")


def _model(conditioning: str) -> UnifiedFlow:
    m = UnifiedFlow(4, ViewGraph.real_iad(2), classes=["a", "b"], class_conditioning=conditioning, n_blocks=2,
                    hidden=8, kernel_sizes=(3, 3), noise="softflow", seed=3)
    m.set_class_weights([5, 4])
    return m


def _data():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 3, 4, 4, 4)).astype(np.float32)
    b = (rng.normal(size=(4, 3, 4, 4, 4)) + 1.0).astype(np.float32)
    masks = (rng.random((9, 3, 4, 4)) > 0.4).astype(np.float32)
    feats = ClassRows([(a, np.arange(5), 0), (b, np.arange(4), 1)], tag=True)
    return feats, masks


def _run(ctx: DistContext, state_dir: str, out: str, conditioning: str) -> None:
    torch.set_num_threads(1)
    feats, masks = _data()
    model = _model(conditioning)
    res = train_flow(model, feats, masks, TrainConfig(**CFG), state_dir, progress=False)
    maps = compute_maps_sharded(model, feats, masks, ctx, batch_size=2)
    if ctx.is_main:
        torch.save({"state": model.state_dict(), "history": res.history, "maps": maps}, out)


@pytest.mark.parametrize("conditioning", ["embedding", "latent"])
def test_two_processes_train_the_same_unified_model_as_one(tmp_path, conditioning):
    _run(DistContext(), str(tmp_path / "single"), str(tmp_path / "single.pt"), conditioning)
    spawn_local(_run, 2, str(tmp_path / "ddp"), str(tmp_path / "ddp.pt"), conditioning)
    one = torch.load(tmp_path / "single.pt", weights_only=False)
    two = torch.load(tmp_path / "ddp.pt", weights_only=False)
    fresh = _model(conditioning).state_dict()
    moved = {}
    for k, v in one["state"].items():
        torch.testing.assert_close(two["state"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        moved[k] = float((v - fresh[k]).abs().max())
    name = "class_embedding" if conditioning == "embedding" else "latent_mean"
    assert moved[name] > 1e-4  # the class parameters trained (through the tag) in both
    for a, b in zip(one["history"], two["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    np.testing.assert_allclose(two["maps"], one["maps"], rtol=1e-4, atol=1e-4)
