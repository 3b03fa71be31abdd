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
    base = dict(epochs=4, batch_size=3, lr=1e-3, seed=5, val_fraction=0.2, device="cpu")  # exact on CPU
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


class _FakeClock:
    """Monotonic seconds that advance by ``step`` every time they are read."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_interval_checkpoints_resume_exactly_and_write_less(tmp_path, monkeypatch):
    """State written on the wall-clock interval and at the end only; a kill between two interval
    writes resumes from the older one and still ends with the uninterrupted model."""
    import multiflow.engine.train as tr

    feats, masks = _data()
    saved_epochs: list[int] = []
    real_save = tr._save_state

    def spy(path, model, optimizer, best_state, meta):
        saved_epochs.append(meta["epoch"] + 1)
        return real_save(path, model, optimizer, best_state, meta)

    monkeypatch.setattr(tr, "_save_state", spy)
    cfg = _cfg(epochs=6, checkpoint_minutes=2.5, checkpoint_every=0)
    full = _model()
    # the clock is read once at the start and once per epoch: 1 minute per read
    res_full = train_flow(full, feats, masks, cfg, tmp_path / "a", progress=False, clock=_FakeClock(60.0))
    assert saved_epochs == [3, 6]  # 3 minutes after the start, then the end; never every epoch
    assert res_full.files_written["state"] == 2
    final_size = (tmp_path / "a" / STATE_FILE).stat().st_size
    assert final_size < res_full.bytes_written["state"] <= 3 * final_size  # two writes counted

    saved_epochs.clear()
    part = _model()
    train_flow(part, feats, masks, cfg, tmp_path / "b", progress=False, clock=_FakeClock(60.0), stop_after_epochs=5)
    assert saved_epochs == [3]  # killed after epoch 5: the last state is the one of epoch 3
    resumed = _model()
    res_resumed = train_flow(resumed, feats, masks, cfg, tmp_path / "b", resume=True, progress=False,
                             clock=_FakeClock(60.0))
    assert res_resumed.history == res_full.history
    a, b = _state(full), _state(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_old_every_epoch_policy_still_available(tmp_path):
    feats, masks = _data()
    res = train_flow(_model(), feats, masks, _cfg(epochs=3, checkpoint_every=1, checkpoint_minutes=0), tmp_path,
                     progress=False)
    assert res.files_written["state"] == 3


def test_best_model_written_only_when_it_improves(tmp_path):
    from safetensors import safe_open

    from multiflow.engine.train import BEST_FILE

    feats, masks = _data(12)
    res = train_flow(_model(), feats, masks, _cfg(epochs=5, lr=3e-2), tmp_path, progress=False)
    vals = [r["val_loss"] for r in res.history]
    improvements = sum(v < min(vals[:i], default=np.inf) for i, v in enumerate(vals))
    assert res.files_written["best"] == improvements
    assert res.files_written["state"] == 1  # only at the end (the run is shorter than the interval)
    with safe_open(str(tmp_path / BEST_FILE), framework="pt") as f:
        assert int(f.metadata()["epoch"]) == res.best_epoch
        best = {k: f.get_tensor(k) for k in f.keys()}
    model = _model()
    model.load_state_dict(best)
    final = _model()
    train_flow(final, feats, masks, _cfg(epochs=5, lr=3e-2), tmp_path / "again", progress=False)
    for k, v in final.state_dict().items():
        assert torch.equal(v, best[k]), k


def test_early_stopping_stops_records_why_and_resumes_as_stopped(tmp_path):
    feats, masks = _data()
    cfg = _cfg(epochs=6, early_stopping_patience=2, early_stopping_min_delta=1e9)
    res = train_flow(_model(), feats, masks, cfg, tmp_path, progress=False)
    # epoch 1 sets the reference; epochs 2 and 3 fail to beat it by 1e9 -> stop after epoch 3
    assert len(res.history) == 3
    assert "early stopping after epoch 3" in res.stop_reason
    assert res.history[-1]["stopped"] == res.stop_reason
    assert all("stopped" not in r for r in res.history[:-1])
    again = train_flow(_model(), feats, masks, cfg, tmp_path, resume=True, progress=False)
    assert again.history == res.history and again.files_written["state"] == 0
    off = train_flow(_model(), feats, masks, _cfg(epochs=6, early_stopping_patience=0), tmp_path / "off",
                     progress=False)
    assert len(off.history) == 6 and off.stop_reason == ""


def test_early_stopped_run_resumed_without_early_stopping_equals_the_full_schedule(tmp_path):
    """benchmarks/early_stopping.py relies on this: the fixed schedule continues the stopped run."""
    feats, masks = _data()
    stopped = train_flow(_model(), feats, masks, _cfg(epochs=6, lr=3e-2, early_stopping_patience=2,
                                                       early_stopping_min_delta=1e9), tmp_path / "es", progress=False)
    assert len(stopped.history) == 3
    cont_model = _model()
    cont = train_flow(cont_model, feats, masks, _cfg(epochs=6, lr=3e-2), tmp_path / "es", resume=True, progress=False)
    full_model = _model()
    full = train_flow(full_model, feats, masks, _cfg(epochs=6, lr=3e-2), tmp_path / "full", progress=False)
    assert cont.stop_reason == "" and len(cont.history) == 6
    strip = [{k: v for k, v in r.items() if k != "stopped"} for r in cont.history]
    assert strip == full.history and cont.best_epoch == full.best_epoch
    for k, v in full_model.state_dict().items():
        assert torch.equal(v, cont_model.state_dict()[k]), k


def test_training_runs_on_the_device_it_is_given(tmp_path, monkeypatch):
    """The device given to train_flow wins over ``cfg.device`` (resolved once, by the caller): the model
    goes there, every batch is moved there once, and the model computes on exactly those moved tensors.

    ``cpu:0`` is a device object distinct from the ``cpu`` that ``cfg.device`` resolves to, so a loop
    that re-resolved the setting, moved to another device or skipped a transfer fails here on a
    CPU-only machine too; ``cfg.device="cuda"`` without CUDA would raise if it were resolved at all.
    """
    import multiflow.engine.train as tr
    from multiflow.device import to_device as real_to_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    target = torch.device("cpu", 0)
    assert target != torch.device("cpu")
    moved: list[torch.Tensor] = []  # kept alive, so their ids stay unique
    moves: list[tuple[tuple[int, ...], torch.device]] = []

    def recorder(t, device):
        moves.append((tuple(t.shape), device))
        out = real_to_device(t, device)
        moved.append(out)
        return out

    monkeypatch.setattr(tr, "to_device", recorder)
    model = _model()
    placed: list[torch.device] = []
    real_to = model.to
    monkeypatch.setattr(model, "to", lambda dev, *a, **k: (placed.append(torch.device(dev)), real_to(dev, *a, **k))[1])
    inputs: list[bool] = []
    model.register_forward_pre_hook(lambda _m, args: inputs.append(any(args[0] is t for t in moved)))
    feats, masks = _data()
    res = train_flow(model, feats, masks, _cfg(epochs=2, device="cuda"), tmp_path, progress=False, device=target)
    n_train, n_val = len(res.train_index), len(res.val_index)
    n_batches = 2 * (-(-n_train // 3) + -(-n_val // 3))
    assert len(moves) == 2 * n_batches  # features and masks: one transfer per batch each, no per-sample moves
    assert all(dev == target for _, dev in moves)
    assert all(shape[0] <= 3 for shape, _ in moves)
    assert len(inputs) == n_batches and all(inputs)  # every forward (training and held-out) on a moved batch
    assert placed == [target, torch.device("cpu")]  # trained there, returned on the CPU
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_unavailable_device_fails_before_training(tmp_path, monkeypatch):
    from multiflow.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    feats, masks = _data()
    with pytest.raises(ConfigError, match="no CUDA device"):
        train_flow(_model(), feats, masks, _cfg(device="cuda"), tmp_path, progress=False)
    assert not (tmp_path / STATE_FILE).exists()


def test_bf16_training_runs_the_subnets_in_bf16_and_stays_close(tmp_path):
    from multiflow.device import bf16_supported
    from multiflow.flow.subnet import MultiViewSubnet

    if not bf16_supported(torch.device("cpu")):
        pytest.skip("no bf16 on this CPU")
    feats, masks = _data()
    dtypes: set[torch.dtype] = set()
    low = _model()
    for m in low.modules():
        if isinstance(m, MultiViewSubnet):
            m.register_forward_hook(lambda _m, _i, o: dtypes.add(o.dtype))
    res_low = train_flow(low, feats, masks, _cfg(precision="bf16"), tmp_path / "bf16", progress=False)
    res_ref = train_flow(_model(), feats, masks, _cfg(), tmp_path / "fp32", progress=False)
    assert dtypes == {torch.bfloat16}
    for a, b in zip(res_low.history, res_ref.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=2e-2)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=2e-2)
    assert res_low.history != res_ref.history  # bf16 really ran


# ------------------------------------------------------------------ divergence keeps no model (issue 20)
def _no_model_files(folder) -> bool:
    from multiflow.engine.train import BEST_FILE

    return not (folder / BEST_FILE).exists()


def test_nan_held_out_loss_in_every_epoch_stops_and_keeps_no_model(tmp_path):
    """Held-out samples with NaN features: the old loop never improved on inf and returned the initial flow."""
    feats, masks = _data()
    _, val = split_train_val(len(feats), 0.2, seed=5)
    feats[val] = np.nan
    model = _model()
    with pytest.raises(TrainingError, match=r"held-out loss \(val_loss\) is nan at epoch 1\b"):
        train_flow(model, feats, masks, _cfg(checkpoint_every=1), tmp_path, progress=False)
    assert _no_model_files(tmp_path) and not (tmp_path / STATE_FILE).exists()


def test_infinite_held_out_loss_later_removes_the_best_weights(tmp_path, monkeypatch):
    import multiflow.engine.train as tr

    real = tr.evaluate_loss
    calls: list[int] = []

    def diverging(*args, **kw):
        calls.append(1)
        return real(*args, **kw) if len(calls) < 3 else float("inf")

    monkeypatch.setattr(tr, "evaluate_loss", diverging)
    feats, masks = _data()
    best_there: list[bool] = []  # at the end of epoch 2: the best weights of epoch 1 are on disk
    with pytest.raises(TrainingError, match=r"held-out loss \(val_loss\) is inf at epoch 3\b"):
        train_flow(_model(), feats, masks, _cfg(epochs=5, checkpoint_every=1), tmp_path, progress=False,
                   on_epoch=lambda r: best_there.append(not _no_model_files(tmp_path)))
    assert best_there == [False, True]
    assert _no_model_files(tmp_path)  # ... and were removed when the run diverged
    assert (tmp_path / STATE_FILE).exists()  # the resume state of epoch 2 stays (no model, an earlier state)


class _PoisonedFeatures:
    """Array-like features that turn NaN from the ``after``-th read on (as a corrupt cache would)."""

    def __init__(self, base: np.ndarray, after: int) -> None:
        self.base, self.after, self.reads = base, after, 0
        self.shape = base.shape

    def __getitem__(self, idx):
        self.reads += 1
        out = np.array(self.base[idx])
        return out * np.nan if self.reads > self.after else out


def test_non_finite_training_loss_names_the_epoch_and_removes_the_best_weights(tmp_path):
    feats, masks = _data()
    # epoch 1 reads 3 training batches (8 samples, batch 3) and 1 held-out batch; epoch 2's first batch is NaN
    poisoned = _PoisonedFeatures(feats, after=4)
    with pytest.raises(TrainingError, match=r"training loss became nan at epoch 2, batch 1/3"):
        train_flow(_model(), poisoned, masks, _cfg(), tmp_path, progress=False)
    assert _no_model_files(tmp_path)


def test_no_trained_epoch_is_an_error_not_the_initial_flow(tmp_path):
    feats, masks = _data()
    with pytest.raises(TrainingError, match=r"no epoch was trained \(train.epochs=0\)"):
        train_flow(_model(), feats, masks, _cfg(epochs=0), tmp_path, progress=False)


def test_a_diverged_fit_leaves_no_model_in_the_run_folder(tmp_path, monkeypatch):
    """fit_category writes its bundle only after train_flow returns: a divergence leaves no model.json,
    no weights (model.safetensors, best.safetensors) and no camera statistics."""
    import multiflow.engine.train as tr
    from multiflow import api
    from multiflow.synth import generate_dataset

    real = tr.evaluate_loss
    calls: list[int] = []
    monkeypatch.setattr(tr, "evaluate_loss",
                        lambda *a, **k: calls.append(1) or (real(*a, **k) if len(calls) < 2 else float("nan")))
    data = tmp_path / "data"
    generate_dataset(data, classes=["toy_brick"], n_train=6, n_test_good=1, n_test_defect=1, size=64, seed=3,
                     progress=False)
    overrides = [f"data.root={data}", "data.categories=[toy_brick]", "data.resolution=64",
                 "features.input_size=64", f"features.cache_dir={tmp_path / 'cache'}", "model.hidden=8",
                 "model.n_blocks=2", "model.kernel_sizes=[3,3]", "train.epochs=3", "train.batch_size=2",
                 "train.val_fraction=0.4", f"out={tmp_path / 'results'}", "name=r", "train.device=cpu"]
    with pytest.raises(TrainingError, match=r"held-out loss \(val_loss\) is nan at epoch 2\b"):
        api.fit(overrides=overrides, progress=False)
    folder = tmp_path / "results" / "r" / "toy_brick"
    left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert len(calls) == 2 and left == []  # best weights of epoch 1 written, then removed; nothing else
    assert (tmp_path / "results" / "r" / "config.yaml").is_file()  # the run itself was set up


# ------------------------------------------------------------------ resume refuses changed settings (issue 20)
@pytest.mark.parametrize("key, new, shown", [
    ("lr", 2e-3, "train.lr: 0.001 in the state, 0.002 now"),
    ("betas", [0.8, 0.95], "train.betas: [0.9, 0.95] in the state, [0.8, 0.95] now"),
    ("weight_decay", 0.1, "train.weight_decay: 1e-05 in the state, 0.1 now"),
    ("batch_size", 4, "train.batch_size: 3 in the state, 4 now"),
    ("view_dropout", 0.3, "train.view_dropout: 0.0 in the state, 0.3 now"),
    ("val_fraction", 0.3, "train.val_fraction: 0.2 in the state, 0.3 now"),
    ("select", "last", "train.select: 'best_val' in the state, 'last' now"),
])
def test_resume_refuses_a_changed_setting_that_changes_the_model(tmp_path, key, new, shown):
    feats, masks = _data()
    train_flow(_model(), feats, masks, _cfg(epochs=1), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="cannot resume") as err:
        train_flow(_model(), feats, masks, _cfg(epochs=2, **{key: new}), tmp_path, resume=True, progress=False)
    assert shown in str(err.value) and str(tmp_path / STATE_FILE) in str(err.value)


def test_resume_names_every_changed_setting(tmp_path):
    feats, masks = _data()
    train_flow(_model(), feats, masks, _cfg(epochs=1), tmp_path, progress=False)
    with pytest.raises(CheckpointError) as err:
        train_flow(_model(), feats, masks, _cfg(epochs=2, lr=5e-4, batch_size=2, seed=6), tmp_path, resume=True,
                   progress=False)
    msg = str(err.value)
    for shown in ("train.lr: 0.001 in the state, 0.0005 now", "train.batch_size: 3 in the state, 2 now",
                  "train.seed: 5 in the state, 6 now"):
        assert shown in msg
    assert "weight_decay" not in msg and "view_dropout" not in msg  # unchanged settings are not named


def test_resume_may_extend_the_schedule_and_change_how_it_is_written(tmp_path):
    """epochs, early stopping, checkpoint policy and threads do not change an epoch's work: allowed."""
    feats, masks = _data()
    full = _model()
    res_full = train_flow(full, feats, masks, _cfg(epochs=4), tmp_path / "full", progress=False)
    train_flow(_model(), feats, masks, _cfg(epochs=2), tmp_path / "b", progress=False)
    longer = _model()
    res = train_flow(longer, feats, masks, _cfg(epochs=4, checkpoint_every=1, checkpoint_minutes=0, threads=1,
                                                early_stopping_patience=50, early_stopping_min_delta=0.5),
                     tmp_path / "b", resume=True, progress=False)
    assert res.history == res_full.history and res.files_written["state"] == 2
    for k, v in full.state_dict().items():
        assert torch.equal(v, longer.state_dict()[k]), k


def _strip_settings(path) -> None:
    """Rewrite a state as a multiflow without recorded settings wrote it."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.pop("settings", None)
    save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})


def test_resume_of_an_older_state_checks_the_optimiser_it_holds_and_warns(tmp_path):
    feats, masks = _data()
    train_flow(_model(), feats, masks, _cfg(epochs=1), tmp_path, progress=False)
    _strip_settings(tmp_path / STATE_FILE)
    with pytest.warns(UserWarning, match="batch_size, val_fraction, view_dropout, select, precision"):
        with pytest.raises(CheckpointError, match=r"train.lr: 0.001 in the state, 0.002 now"):
            train_flow(_model(), feats, masks, _cfg(epochs=2, lr=2e-3), tmp_path, resume=True, progress=False)
    with pytest.warns(UserWarning, match="cannot check"):
        res = train_flow(_model(), feats, masks, _cfg(epochs=2), tmp_path, resume=True, progress=False)
    assert [r["epoch"] for r in res.history] == [1, 2]
