"""benchmarks/early_stopping.py: the stop rule against train_flow, and a quick run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import early_stopping as es  # noqa: E402


def test_stop_epoch_rule():
    # best at epoch 2; patience 2 waits through epochs 3 and 4 and stops at 4
    assert es.stop_epoch([5.0, 4.0, 4.5, 4.2, 3.0], 2) == 4
    # a run that improves every epoch never stops early
    assert es.stop_epoch([5.0, 4.0, 3.0], 1) == 3
    # stopping on the last epoch is no stop at all
    assert es.stop_epoch([5.0, 4.0, 4.5], 1) == 3
    # min delta: 3.95 is not better than 4.0 by more than 0.1
    assert es.stop_epoch([5.0, 4.0, 3.95, 3.99, 2.0], 2, min_delta=0.1) == 4
    assert es.stop_epoch([5.0, 4.0, 3.95, 3.99, 2.0], 2) == 5


def test_quick_run_matches_train_flow_and_resumes(tmp_path):
    out = tmp_path / "es"
    argv = ["--quick", "--out", str(out), "--quiet", "--no-benchmarks-md"]
    assert es.main(argv) == 0
    cells = list((out / "cells").rglob("*.json"))
    assert len(cells) == 1
    rec = json.loads(cells[0].read_text())
    assert rec["full_epochs"] == es.QUICK["epochs"] and 1 <= rec["es_epochs"] <= rec["full_epochs"]
    # the rule the benchmark replays on the full run's losses is the one train_flow applied
    assert es.stop_epoch(rec["val_loss"], rec["patience"]) == rec["es_epochs"]
    assert bool(rec["stop_reason"]) == (rec["es_epochs"] < rec["full_epochs"])
    # each run selects the epoch of its lowest held-out loss (the ES run's are the full run's first epochs)
    losses = rec["val_loss"]
    assert len(losses) == rec["full_epochs"]
    assert rec["full_best_epoch"] == int(np.argmin(losses)) + 1
    assert rec["es_best_epoch"] == int(np.argmin(losses[: rec["es_epochs"]])) + 1
    # the fixed schedule the benchmark gets by continuing the early-stopped run is the uninterrupted one
    full, metrics = _uninterrupted_full_schedule(out, tmp_path / "independent")
    assert [r["val_loss"] for r in full.history] == losses
    assert full.best_epoch == rec["full_best_epoch"]
    assert metrics == rec["full_metrics"]
    if rec["es_best_epoch"] == rec["full_best_epoch"]:  # same selected weights -> same metrics
        assert rec["es_metrics"]["s_auroc"] == rec["full_metrics"]["s_auroc"]
    assert "Early stopping vs the fixed schedule" in (out / "report.md").read_text()
    assert not (out / "state").exists() or not any((out / "state").rglob("*.safetensors"))
    # a rerun reads the finished cell back instead of training again
    stamp = cells[0].stat().st_mtime_ns
    assert es.main(argv) == 0
    assert cells[0].stat().st_mtime_ns == stamp


def _uninterrupted_full_schedule(out: Path, state: Path):
    """The quick cell trained once over the whole schedule (no early stopping, no resume), with the
    benchmark's data, configuration and metrics; returns its TrainResult and metrics."""
    import argparse
    import dataclasses

    from benchmarks import paper_experiments as pe
    from multiflow.engine.factories import build_extractor, build_flow, run_device
    from multiflow.engine.train import train_flow

    sizes = dict(es.QUICK)
    (cls,), (seed,) = sizes["classes"], sizes["seeds"]
    cfg = pe.make_config(argparse.Namespace(base_masks="", config=None, epochs=0, set=[]), out / "data",
                         out / "cache", sizes["classes"], sizes)
    data = es.load_class(cfg, cls, build_extractor(cfg.features), progress=False)
    tcfg = dataclasses.replace(cfg.train, seed=seed, early_stopping_patience=0, checkpoint_minutes=0.0,
                               checkpoint_every=0)
    device, precision = run_device(tcfg)
    model = build_flow(cfg.model, data.channels, data.view_names, seed)
    res = train_flow(model, data.train_features, data.train_masks, tcfg, state, progress=False, device=device)
    metrics = es._metrics(model, data, dict(device=device, precision=precision))
    return res, json.loads(json.dumps(metrics, default=float))  # as the cell record stores them


# a hand-worked held-out loss sequence: best 4.0 at epoch 2; patience 2 waits through epochs 3 and 4
SCRIPTED = [5.0, 4.0, 4.5, 4.2, 3.0, 2.0]


def test_train_flow_stops_selects_and_resumes_as_worked_out_by_hand(tmp_path, monkeypatch):
    """train_flow on scripted held-out losses: it stops where the benchmark's rule says, selects the
    argmin of the losses it saw, and its continuation without early stopping selects the overall argmin."""
    from safetensors import safe_open

    import multiflow.engine.train as tr
    from multiflow.config import TrainConfig
    from multiflow.flow import MultiFlow, ViewGraph

    calls: list[int] = []

    def scripted(*_a, **_k):
        calls.append(1)
        return SCRIPTED[len(calls) - 1]

    monkeypatch.setattr(tr, "evaluate_loss", scripted)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(10, 3, 4, 4, 4)).astype(np.float32)

    def model():
        return MultiFlow(4, ViewGraph.real_iad(2), n_blocks=1, hidden=4, kernel_sizes=(3,), seed=3)

    base = dict(epochs=len(SCRIPTED), batch_size=4, lr=1e-3, seed=5, val_fraction=0.2, device="cpu",
                checkpoint_minutes=0.0)
    stopped = tr.train_flow(model(), feats, None, TrainConfig(**base, early_stopping_patience=2), tmp_path,
                            progress=False)
    assert es.stop_epoch(SCRIPTED, 2) == 4
    assert len(stopped.history) == 4 and [r["val_loss"] for r in stopped.history] == SCRIPTED[:4]
    assert stopped.stop_reason == ("early stopping after epoch 4: val_loss did not improve by more than 0 "
                                   "for 2 epochs (best 4.000000)")
    assert stopped.best_epoch == 2 and stopped.best_val_loss == 4.0
    with safe_open(str(tmp_path / tr.BEST_FILE), framework="pt") as f:
        assert f.metadata()["epoch"] == "2"

    full = tr.train_flow(model(), feats, None, TrainConfig(**base), tmp_path, resume=True, progress=False)
    assert [r["val_loss"] for r in full.history] == SCRIPTED and full.stop_reason == ""
    assert full.best_epoch == int(np.argmin(SCRIPTED)) + 1 == 6
    assert len(calls) == len(SCRIPTED)  # the continuation ran epochs 5 and 6 only


@pytest.mark.parametrize("min_delta, stop", [(0.1, 4), (0.0, 6)])
def test_min_delta_of_train_flow_is_the_rule_of_the_benchmark(tmp_path, monkeypatch, min_delta, stop):
    """3.95 does not beat 4.0 by more than 0.1: with that delta the wait runs out at epoch 4; without it
    3.95 and 2.0 are new bests and the run never stops."""
    import multiflow.engine.train as tr
    from multiflow.config import TrainConfig
    from multiflow.flow import MultiFlow, ViewGraph

    losses = [5.0, 4.0, 3.95, 3.99, 2.0, 1.0]
    calls: list[int] = []
    monkeypatch.setattr(tr, "evaluate_loss", lambda *_a, **_k: calls.append(1) or losses[len(calls) - 1])
    feats = np.random.default_rng(0).normal(size=(10, 3, 4, 4, 4)).astype(np.float32)
    res = tr.train_flow(MultiFlow(4, ViewGraph.real_iad(2), n_blocks=1, hidden=4, kernel_sizes=(3,), seed=3),
                        feats, None, TrainConfig(epochs=6, batch_size=4, seed=5, val_fraction=0.2, device="cpu",
                                                 early_stopping_patience=2, early_stopping_min_delta=min_delta),
                        tmp_path, progress=False)
    assert len(res.history) == es.stop_epoch(losses, 2, min_delta=min_delta) == stop
