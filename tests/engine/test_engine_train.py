"""Training loop: resume equivalence, divergence errors, checkpoint safety, held-out split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multiflow.config import TrainConfig
from multiflow.engine.train import STATE_FILE, split_train_val, train_flow
from multiflow.errors import CheckpointError, TrainingError
from multiflow.flow import MultiFlow, ViewGraph


def _model(seed: int = 3) -> MultiFlow:
    return MultiFlow(4, ViewGraph.real_iad(2), n_blocks=2, hidden=8, kernel_sizes=(3, 3), seed=seed)


def _data(n: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, 3, 4, 4, 4)).astype(np.float32)
    masks = rng.random((n, 3, 4, 4)) > 0.3
    return feats, masks


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=4, batch_size=3, lr=1e-3, seed=5, val_fraction=0.2)
    base.update(kw)
    return TrainConfig(**base)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path):
    feats, masks = _data()
    full = _model()
    res_full = train_flow(full, feats, masks, _cfg(checkpoint_every=1), tmp_path / "a", progress=False)

    part = _model()
    train_flow(part, feats, masks, _cfg(checkpoint_every=1), tmp_path / "b", progress=False, stop_after_epochs=2)
    resumed = _model()  # a fresh process would rebuild the model from its config
    res_resumed = train_flow(resumed, feats, masks, _cfg(checkpoint_every=1), tmp_path / "b", resume=True, progress=False)

    assert res_full.history == res_resumed.history
    assert res_full.best_epoch == res_resumed.best_epoch
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and training really changed the model
    assert any(not torch.equal(a[k], _state(_model())[k]) for k in a)


def test_existing_state_needs_resume(tmp_path):
    feats, masks = _data()
    train_flow(_model(), feats, masks, _cfg(epochs=1), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="resume"):
        train_flow(_model(), feats, masks, _cfg(epochs=1), tmp_path, progress=False)


def test_resume_refuses_a_different_seed(tmp_path):
    feats, masks = _data()
    train_flow(_model(), feats, masks, _cfg(epochs=1), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="seed"):
        train_flow(_model(), feats, masks, _cfg(epochs=2, seed=6), tmp_path, resume=True, progress=False)


def test_corrupt_state_is_a_clear_error(tmp_path):
    feats, masks = _data()
    (tmp_path / STATE_FILE).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=STATE_FILE):
        train_flow(_model(), feats, masks, _cfg(), tmp_path, resume=True, progress=False)


def test_non_finite_loss_names_epoch_and_batch(tmp_path):
    feats, masks = _data()
    feats[:] = np.inf  # every batch diverges
    with pytest.raises(TrainingError, match=r"epoch 1, batch 1/"):
        train_flow(_model(), feats, np.ones_like(masks), _cfg(), tmp_path, progress=False)


def test_split_is_deterministic_disjoint_and_complete():
    tr, va = split_train_val(50, 0.1, seed=1)
    tr2, va2 = split_train_val(50, 0.1, seed=1)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert len(va) == 5 and len(tr) == 45
    assert set(tr).isdisjoint(va) and set(tr) | set(va) == set(range(50))
    _, va3 = split_train_val(50, 0.1, seed=2)
    assert not np.array_equal(va, va3)


def test_best_validation_epoch_is_restored(tmp_path):
    feats, masks = _data(12)
    model = _model()
    seen = []
    res = train_flow(model, feats, masks, _cfg(epochs=3), tmp_path, progress=False, on_epoch=seen.append)
    vals = [r["val_loss"] for r in res.history]
    assert res.best_epoch == int(np.argmin(vals)) + 1
    assert res.best_val_loss == pytest.approx(min(vals))
    assert len(seen) == 3
