"""Learning-rate schedule and the fusion gates' parameter group (issue 24 §2): the rate of every step
against a hand-written formula, exact resume, the resume guard, early stopping under a cosine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from multiflow.config import TrainConfig, load_config
from multiflow.engine.schedule import LrSchedule, gate_parameter_names, param_groups
from multiflow.engine.train import STATE_FILE, train_flow
from multiflow.errors import CheckpointError, ConfigError, TrainingError
from multiflow.flow import MultiFlow, ViewGraph


def _model(seed: int = 3, randomise: bool = True) -> MultiFlow:
    """A small flow, every parameter (gates included) moved away from its initial value."""
    m = MultiFlow(4, ViewGraph.real_iad(2), n_blocks=2, hidden=8, kernel_sizes=(3, 3), seed=seed)
    if randomise:
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m


def _data(n: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3, 4, 4, 4)).astype(np.float32), rng.random((n, 3, 4, 4)) > 0.3


def _cfg(**kw) -> TrainConfig:
    # 8 training samples (2 held out), batch 3 -> 3 steps per epoch
    base = dict(epochs=3, batch_size=3, lr=1e-2, seed=5, val_fraction=0.2, device="cpu", checkpoint_minutes=0.0)
    base.update(kw)
    return TrainConfig(**base)


COSINE = dict(lr_schedule="cosine", warmup_epochs=1.0, lr_min=1e-3, gamma_lr=5e-2)


def _expected_rate(step: int, *, base: float, lr: float = 1e-2, lr_min: float = 1e-3, warmup: int = 3,
                   total: int = 9) -> float:
    """The rate of 0-based step ``step``: linear warm-up over ``warmup`` steps, then a half cosine from
    ``base`` to ``base * lr_min / lr`` over the remaining planned steps (written out independently)."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / (total - warmup)
    low = base * lr_min / lr
    return low + (base - low) * (1 + math.cos(math.pi * t)) / 2


def _record_rates(model, monkeypatch) -> list[tuple[float, ...]]:
    """Patch AdamW.step to record every group's rate at each step."""
    seen: list[tuple[float, ...]] = []
    step = torch.optim.AdamW.step

    def recording(self, *a, **k):
        seen.append(tuple(float(g["lr"]) for g in self.param_groups))
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    return seen


def test_factor_by_hand():
    s = LrSchedule(kind="cosine", steps_per_epoch=4, epochs=5, warmup_epochs=0.5, lr=1.0, lr_min=0.1)
    assert s.warmup == 2 and s.total == 20
    assert [s.factor(0), s.factor(1)] == [0.5, 1.0]
    assert s.factor(2) == pytest.approx(1.0)  # the cosine starts at the top
    assert s.factor(11) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert s.factor(20) == pytest.approx(0.1)  # the planned end
    c = LrSchedule(kind="constant", steps_per_epoch=4, epochs=5, warmup_epochs=1, lr=1.0)
    assert [c.factor(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0] and not c.is_constant
    assert LrSchedule(kind="constant", steps_per_epoch=4, epochs=5, lr=1.0).is_constant
    with pytest.raises(TrainingError, match="lr_schedule"):
        LrSchedule(kind="step", steps_per_epoch=4, epochs=5, lr=1.0)
    with pytest.raises(TrainingError, match="lr_min"):
        LrSchedule(kind="cosine", steps_per_epoch=4, epochs=5, lr=1.0, lr_min=2.0)


def test_every_step_takes_the_scheduled_rates_and_the_history_records_them(tmp_path, monkeypatch):
    feats, masks = _data()
    seen = _record_rates(None, monkeypatch)
    res = train_flow(_model(), feats, masks, _cfg(**COSINE), tmp_path, progress=False)
    assert len(seen) == 9 and all(len(r) == 2 for r in seen)
    for step, (flow_lr, gate_lr) in enumerate(seen):
        assert flow_lr == pytest.approx(_expected_rate(step, base=1e-2), rel=1e-12), step
        assert gate_lr == pytest.approx(_expected_rate(step, base=5e-2), rel=1e-12), step
    # history: the rates of each epoch's last step
    assert [r["lr"] for r in res.history] == [seen[2][0], seen[5][0], seen[8][0]]
    assert [r["gamma_lr"] for r in res.history] == [seen[2][1], seen[5][1], seen[8][1]]


def test_constant_schedule_is_the_plain_optimiser(tmp_path, monkeypatch):
    """The default never touches the rate and keeps one group: the same model as plain AdamW."""
    feats, masks = _data()
    seen = _record_rates(None, monkeypatch)
    res = train_flow(_model(), feats, masks, _cfg(), tmp_path, progress=False)
    assert seen == [(1e-2,)] * 9 and [r["lr"] for r in res.history] == [1e-2] * 3 and "gamma_lr" not in res.history[0]


def test_gates_get_their_own_group_rate_and_no_weight_decay():
    model = _model(randomise=False)
    names = gate_parameter_names(model)
    assert len(names) == 4 and all(n.endswith(".gamma") for n in names)  # 2 blocks x 2 st-networks
    groups = param_groups(model, _cfg(gamma_lr=0.05, weight_decay=0.1))
    assert [len(g["params"]) for g in groups] == [len(list(model.parameters())) - 4, 4]
    assert groups[1]["lr"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert len(param_groups(model, _cfg())) == 1  # gamma_lr = 0: one group, the paper's optimiser


def test_one_adam_step_moves_each_gate_by_its_own_rate(tmp_path):
    """Adam's first step moves a parameter by its rate times sign(gradient): the gates (starting at 0,
    non-zero gradient) end at +-gamma_lr, while the rest moves by at most lr."""
    feats, masks = _data(n=8)  # one batch of 8: one step
    model = _model(randomise=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_flow(model, feats, masks, _cfg(epochs=1, batch_size=8, val_fraction=0.0, lr=1e-4, gamma_lr=0.05,
                                         weight_decay=0.0), tmp_path, progress=False)
    for name, p in model.state_dict().items():
        moved = (p - before[name]).abs()
        if name.endswith(".gamma"):
            assert torch.allclose(moved, torch.full_like(moved, 0.05), rtol=1e-4), name
        else:
            assert float(moved.max()) <= 1e-4 * 1.001, name


def test_resume_of_a_cosine_run_with_gate_group_is_bit_for_bit(tmp_path):
    feats, masks = _data()
    cfg = _cfg(**COSINE, checkpoint_every=1)
    full = _model()
    res_full = train_flow(full, feats, masks, cfg, tmp_path / "a", progress=False)
    train_flow(_model(), feats, masks, cfg, tmp_path / "b", progress=False, stop_after_epochs=2)
    resumed = _model()
    res = train_flow(resumed, feats, masks, cfg, tmp_path / "b", resume=True, progress=False)
    assert res.history == res_full.history and len(res.history) == 3
    a, b = full.state_dict(), resumed.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], _model().state_dict()[k]) for k in a)  # training changed the model


@pytest.mark.parametrize("change, shown", [
    (dict(lr_schedule="constant"), "train.lr_schedule: 'cosine' in the state, 'constant' now"),
    (dict(gamma_lr=0.0), "train.gamma_lr: 0.05 in the state, 0.0 now"),
    (dict(lr_min=0.0), "train.lr_min: 0.001 in the state, 0.0 now"),
    (dict(warmup_epochs=0.5), "train.warmup_epochs: 1.0 in the state, 0.5 now"),
    (dict(epochs=4), "train.epochs (the planned length of a scheduled learning rate): 3 in the state, 4 now"),
])
def test_resume_refuses_a_changed_schedule(tmp_path, change, shown):
    feats, masks = _data()
    train_flow(_model(), feats, masks, _cfg(**COSINE, checkpoint_every=1), tmp_path, progress=False,
               stop_after_epochs=1)
    with pytest.raises(CheckpointError, match="cannot resume") as err:
        train_flow(_model(), feats, masks, _cfg(**{**COSINE, **change}), tmp_path, resume=True, progress=False)
    assert shown in str(err.value)


def test_a_state_without_schedule_settings_was_constant(tmp_path):
    """A state written before the schedule keys existed: checked as a constant rate with one group."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    feats, masks = _data()
    train_flow(_model(), feats, masks, _cfg(epochs=1), tmp_path, progress=False)
    path = tmp_path / STATE_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key in ("lr_schedule", "warmup_epochs", "lr_min", "gamma_lr", "schedule_epochs"):
        meta["settings"].pop(key)
    save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="train.gamma_lr: 0.0 in the state, 0.05 now"):
        train_flow(_model(), feats, masks, _cfg(epochs=2, gamma_lr=0.05), tmp_path, resume=True, progress=False)
    res = train_flow(_model(), feats, masks, _cfg(epochs=2), tmp_path, resume=True, progress=False)
    assert [r["epoch"] for r in res.history] == [1, 2]


def test_early_stopping_ends_a_cosine_run_before_its_planned_end(tmp_path, monkeypatch):
    """Held-out losses that stop improving after epoch 2: patience 2 stops after epoch 4 of 8; the rates
    up to there are those of the 8-epoch cosine (the planned length defines the decay)."""
    import multiflow.engine.train as tr

    losses = [5.0, 4.0, 4.5, 4.2, 3.0, 2.0, 1.0, 0.5]
    calls: list[int] = []
    monkeypatch.setattr(tr, "evaluate_loss", lambda *_a, **_k: calls.append(1) or losses[len(calls) - 1])
    feats, masks = _data()
    res = train_flow(_model(), feats, masks, _cfg(epochs=8, lr_schedule="cosine", lr_min=1e-3,
                                                  early_stopping_patience=2), tmp_path, progress=False)
    assert len(res.history) == 4 and res.stop_reason.startswith("early stopping after epoch 4")
    assert res.history[-1]["stopped"] == res.stop_reason and res.best_epoch == 2
    for r in res.history:  # the last step of epoch e is step 3e - 1 of 24 planned steps
        assert r["lr"] == pytest.approx(_expected_rate(3 * r["epoch"] - 1, base=1e-2, warmup=0, total=24), rel=1e-12)


def test_config_checks_the_schedule_keys(tmp_path):
    assert load_config(None, ["train.lr_schedule=cosine", "train.warmup_epochs=2", "train.lr_min=1e-5",
                              "train.gamma_lr=0.01"]).train.lr_schedule == "cosine"
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        load_config(None, ["train.lr_schedule=step"])
    with pytest.raises(ConfigError, match="train.lr_min"):
        load_config(None, ["train.lr=1e-4", "train.lr_min=1e-3"])
    with pytest.raises(ConfigError, match="train.gamma_lr"):
        load_config(None, ["train.gamma_lr=-1"])
    with pytest.raises(ConfigError, match="train.warmup_epochs"):
        load_config(None, ["train.epochs=2", "train.warmup_epochs=3"])
