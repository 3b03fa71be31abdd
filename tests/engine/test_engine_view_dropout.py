"""View dropout in training: the draw, exact resume, and the loss on the present views only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multiflow.config import TrainConfig, load_config
from multiflow.engine.train import draw_present, train_flow
from multiflow.errors import ConfigError, TrainingError
from multiflow.flow import MultiFlow, ViewGraph


def _model(seed: int = 3) -> MultiFlow:
    return MultiFlow(4, ViewGraph.real_iad(3), n_blocks=2, hidden=8, kernel_sizes=(3, 3), seed=seed)


def _data(n: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, 4, 4, 4, 4)).astype(np.float32)
    masks = rng.random((n, 4, 4, 4)) > 0.3
    return feats, masks


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=3, lr=1e-3, seed=5, val_fraction=0.2, view_dropout=0.5)
    base.update(kw)
    return TrainConfig(**base)


def test_draw_present_rate_no_empty_rows_and_seeded():
    g = torch.Generator().manual_seed(0)
    p = draw_present(4000, 5, 0.3, g)
    assert p.dtype == torch.bool and p.shape == (4000, 5)
    assert p.any(dim=1).all()
    # P(present) = 0.7 plus the rescue of empty rows (0.3^5 / 5 per view): 0.70049
    assert abs(p.float().mean().item() - 0.7005) < 0.01
    again = draw_present(4000, 5, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(p, again)
    heavy = draw_present(2000, 2, 0.95, torch.Generator().manual_seed(1))
    assert heavy.any(dim=1).all() and (heavy.sum(1) == 1).float().mean() > 0.85
    with pytest.raises(TrainingError, match="dropout"):
        draw_present(2, 2, 1.0, g)


def test_resume_with_view_dropout_is_exact(tmp_path):
    feats, masks = _data()
    full = _model()
    res_full = train_flow(full, feats, masks, _cfg(), tmp_path / "a", progress=False)
    part = _model()
    train_flow(part, feats, masks, _cfg(), tmp_path / "b", progress=False, stop_after_epochs=1)
    resumed = _model()
    res_resumed = train_flow(resumed, feats, masks, _cfg(), tmp_path / "b", resume=True, progress=False)
    assert res_full.history == res_resumed.history
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_dropout_changes_training_and_zero_is_the_plain_run(tmp_path):
    feats, masks = _data()
    plain, zero, drop = _model(), _model(), _model()
    h_plain = train_flow(plain, feats, masks, _cfg(view_dropout=0.0), tmp_path / "p", progress=False).history
    h_zero = train_flow(zero, feats, masks, TrainConfig(**{k: v for k, v in _cfg().__dict__.items()
                                                            if k != "view_dropout"}), tmp_path / "z",
                        progress=False).history
    h_drop = train_flow(drop, feats, masks, _cfg(), tmp_path / "d", progress=False).history
    assert h_plain == h_zero
    assert h_drop[0]["train_loss"] != h_plain[0]["train_loss"]
    # validation always uses every view: the first epoch's model differs, but the loss is finite
    assert all(np.isfinite(r["val_loss"]) for r in h_drop)


def test_dropped_views_never_reach_the_loss(tmp_path):
    """One epoch, one batch: junk in exactly the (sample, view) pairs the epoch drops leaves the
    loss and the trained weights bit-identical; junk in a present view does not."""
    from multiflow.engine.train import _epoch_generator, split_train_val

    feats, masks = _data(n=8)
    cfg = _cfg(epochs=1, batch_size=8, val_fraction=0.0, view_dropout=0.4)
    train_idx, _ = split_train_val(8, 0.0, cfg.seed)
    order = train_idx[torch.randperm(len(train_idx), generator=_epoch_generator(cfg.seed, 0, 0)).numpy()]
    present = draw_present(len(order), 4, cfg.view_dropout, _epoch_generator(cfg.seed, 0, 2)).numpy()
    assert (~present).any() and present.any()
    junk = feats.copy()
    rows, views = np.nonzero(~present)
    junk[order[rows], views] = 1e3 * np.random.default_rng(1).normal(size=junk[order[rows], views].shape)
    a, b = _model(), _model()
    ha = train_flow(a, feats, masks, cfg, tmp_path / "a", progress=False).history
    hb = train_flow(b, junk, masks, cfg, tmp_path / "b", progress=False).history
    assert ha == hb
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    r, v = np.argwhere(present)[0]
    wrong = feats.copy()
    wrong[order[r], v] += 1.0
    c = _model()
    hc = train_flow(c, wrong, masks, cfg, tmp_path / "c", progress=False).history
    assert hc != ha


def test_config_validation():
    with pytest.raises(ConfigError, match="view_dropout"):
        load_config(None, ["train.view_dropout=1.0"])
    with pytest.raises(ConfigError, match="single_view"):
        load_config(None, ["train.view_dropout=0.3", "model.single_view=true"])
    assert load_config(None, ["train.view_dropout=0.25"]).train.view_dropout == 0.25
