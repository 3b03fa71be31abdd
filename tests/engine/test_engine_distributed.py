"""Distributed data parallel (2 gloo processes on CPU) = one process on the same global batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multiflow.config import TrainConfig
import torch.distributed as dist

from multiflow.engine.distributed import (
    DistContext,
    compute_maps_sharded,
    shard_range,
    shutdown_distributed,
)
from multiflow.engine.maps import compute_maps
from multiflow.engine.train import STATE_FILE, train_flow
from multiflow.flow import MultiFlow, ViewGraph
from support.ddp import spawn_local

def _sample_scores(maps: np.ndarray) -> np.ndarray:
    """``(N, V, h, w)`` -> ``(N,)``: max over pixels, then over views (the paper's sample score)."""
    from multiflow.scoring import aggregate_views, image_scores_from_maps

    return aggregate_views(image_scores_from_maps(maps), "max").numpy()


# 9 samples, 2 held out -> 7 training samples in batches of 3, 3, 1: the last global batch leaves
# rank 1 with an empty shard, and the 3-sample batches split unevenly (2 + 1).
CFG = dict(epochs=2, batch_size=3, lr=2e-3, seed=7, val_fraction=0.2, device="cpu")


def _model(fusion: str = "conv") -> MultiFlow:
    rig = None
    if fusion == "geometry":
        from multiflow.flow.geometry import camera_rig_config
        from multiflow.synth.generator import camera_rig_record
        from multiflow.synth.geometry import camera_rig

        rig = camera_rig_config(camera_rig_record("t", camera_rig(n_views=3, size=64), [])["views"], ["C1", "C2", "C3"])
    return MultiFlow(4, ViewGraph.real_iad(2), n_blocks=2, hidden=8, kernel_sizes=(3, 3), noise="softflow", seed=3,
                     fusion=fusion, heads=2, camera_rig=rig)


def _data(with_masks: bool):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(9, 3, 4, 4, 4)).astype(np.float32)
    masks = (rng.random((9, 3, 4, 4)) > 0.4).astype(np.float32) if with_masks else None
    return feats, masks


#: a learning-rate schedule with the fusion gates in their own group (issue 24)
SCHEDULE = dict(lr_schedule="cosine", warmup_epochs=0.5, lr_min=1e-4, gamma_lr=1e-2)


def _run(ctx: DistContext, state_dir: str, out: str, with_masks: bool, view_dropout: float = 0.0,
         scheduled: bool = False, fusion: str = "conv") -> None:
    torch.set_num_threads(1)
    feats, masks = _data(with_masks)
    model = _model(fusion)
    cfg = TrainConfig(**CFG, view_dropout=view_dropout, **(SCHEDULE if scheduled else {}))
    res = train_flow(model, feats, masks, cfg, state_dir, progress=False)
    maps = compute_maps_sharded(model, feats, masks, ctx, batch_size=2)
    if ctx.is_main:
        torch.save({"state": model.state_dict(), "history": res.history, "best": res.best_epoch, "maps": maps}, out)


@pytest.mark.parametrize("with_masks,view_dropout,scheduled,fusion", [
    (True, 0.0, False, "conv"), (False, 0.0, False, "conv"), (True, 0.4, False, "conv"), (True, 0.0, True, "conv"),
    # the fusions of issue 24: masks reach the operators as their foreground on every rank
    pytest.param(True, 0.4, False, "global_context", marks=pytest.mark.slow),
    pytest.param(True, 0.0, False, "correspondence", marks=pytest.mark.slow),
    pytest.param(False, 0.4, False, "geometry", marks=pytest.mark.slow),
])
def test_two_processes_train_the_same_model_and_metrics_as_one(tmp_path, with_masks, view_dropout, scheduled, fusion):
    _run(DistContext(), str(tmp_path / "single"), str(tmp_path / "single.pt"), with_masks, view_dropout, scheduled,
         fusion)
    spawn_local(_run, 2, str(tmp_path / "ddp"), str(tmp_path / "ddp.pt"), with_masks, view_dropout, scheduled, fusion)
    one = torch.load(tmp_path / "single.pt", weights_only=False)
    two = torch.load(tmp_path / "ddp.pt", weights_only=False)
    moved = 0.0
    for k, v in one["state"].items():
        torch.testing.assert_close(two["state"][k], v, rtol=1e-4, atol=1e-5, msg=k)
        moved = max(moved, float((v - _model(fusion).state_dict()[k]).abs().max()))
    assert moved > 1e-3  # training really changed the weights (the comparison is not trivial)
    assert two["best"] == one["best"]
    for a, b in zip(one["history"], two["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        assert b["lr"] == a["lr"] and b.get("gamma_lr") == a.get("gamma_lr")  # every rank on the same schedule
    if scheduled:
        last = one["history"][-1]  # the cosine has decayed; the gates' rate follows it at 5x
        assert last["lr"] < CFG["lr"] and last["gamma_lr"] == pytest.approx(5 * last["lr"])
    np.testing.assert_allclose(two["maps"], one["maps"], rtol=1e-4, atol=1e-4)
    # the same metrics: sample scores and their ranking (AUROC against fixed labels)
    from sklearn.metrics import roc_auc_score

    labels = np.array([0, 1, 0, 1, 1, 0, 0, 1, 0])
    s1, s2 = _sample_scores(one["maps"]), _sample_scores(two["maps"])
    np.testing.assert_allclose(s2, s1, rtol=1e-5)
    assert roc_auc_score(labels, s2) == roc_auc_score(labels, s1)
    # only rank 0 wrote a training state, and it holds the final model
    assert (tmp_path / "ddp" / STATE_FILE).is_file()
    assert not list((tmp_path / "ddp").glob("*.tmp"))


def test_shard_range_is_a_balanced_ordered_partition():
    for n in range(0, 12):
        for w in range(1, 5):
            parts = [shard_range(n, r, w) for r in range(w)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(parts[r][1] == parts[r + 1][0] for r in range(w - 1))
            sizes = [e - s for s, e in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_single_process_sharded_maps_are_the_plain_maps():
    feats, masks = _data(True)
    model = _model()
    np.testing.assert_array_equal(compute_maps_sharded(model, feats, masks, DistContext(), batch_size=4),
                                  compute_maps(model, feats, masks, batch_size=4))


def _cli_in_group(ctx: DistContext, out: str) -> None:
    from multiflow.cli import main

    code = main(["params", "--channels", "8", "--views", "3"])
    with open(f"{out}.{ctx.rank}", "w") as f:
        f.write(f"{code} {dist.is_initialized()}")


def test_cli_leaves_the_process_group_together_on_every_rank(tmp_path):
    # under torchrun the CLI meets the other ranks at a barrier, then destroys the group
    # (a rank that tore down its gloo connections early made a peer abort in about 1 of 10 runs)
    spawn_local(_cli_in_group, 2, str(tmp_path / "rank"))
    for r in range(2):
        assert (tmp_path / f"rank.{r}").read_text() == "0 False"


def test_shutdown_without_a_process_group_does_nothing():
    assert not dist.is_initialized()
    shutdown_distributed()
    shutdown_distributed(wait=False)
    assert not dist.is_initialized()


def _run_bf16(ctx: DistContext, state_dir: str, out: str) -> None:
    from multiflow.flow.subnet import MultiViewSubnet

    torch.set_num_threads(1)
    feats, masks = _data(True)
    model = _model()
    dtypes: set[str] = set()
    for m in model.modules():
        if isinstance(m, MultiViewSubnet):
            m.register_forward_hook(lambda _m, _i, o: dtypes.add(str(o.dtype)))
    res = train_flow(model, feats, masks, TrainConfig(**CFG, precision="bf16"), state_dir, progress=False)
    maps = compute_maps_sharded(model, feats, masks, ctx, batch_size=2, precision="bf16")
    if ctx.is_main:
        torch.save({"history": res.history, "maps": maps, "dtypes": sorted(dtypes)}, out)


def test_ddp_honours_bf16(tmp_path):
    from multiflow.device import bf16_supported

    if not bf16_supported(torch.device("cpu")):
        pytest.skip("no bf16 on this CPU")
    _run_bf16(DistContext(), str(tmp_path / "single"), str(tmp_path / "single.pt"))
    spawn_local(_run_bf16, 2, str(tmp_path / "ddp"), str(tmp_path / "ddp.pt"))
    one = torch.load(tmp_path / "single.pt", weights_only=False)
    two = torch.load(tmp_path / "ddp.pt", weights_only=False)
    assert one["dtypes"] == two["dtypes"] == ["torch.bfloat16"]  # the st-networks ran in bf16 on the ranks
    for a, b in zip(one["history"], two["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-2)
    np.testing.assert_allclose(two["maps"], one["maps"], rtol=2e-2, atol=2e-2)
