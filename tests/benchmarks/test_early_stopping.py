"""benchmarks/early_stopping.py: the stop rule against train_flow, and a quick run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
    assert 1 <= rec["es_best_epoch"] <= rec["es_epochs"] and 1 <= rec["full_best_epoch"] <= rec["full_epochs"]
    for m in (rec["es_metrics"], rec["full_metrics"]):
        assert 0.0 <= m["s_auroc"] <= 1.0 and 0.0 <= m["i_auroc"] <= 1.0
    if rec["es_best_epoch"] == rec["full_best_epoch"]:  # same selected weights -> same metrics
        assert rec["es_metrics"]["s_auroc"] == rec["full_metrics"]["s_auroc"]
    assert "Early stopping vs the fixed schedule" in (out / "report.md").read_text()
    assert not (out / "state").exists() or not any((out / "state").rglob("*.safetensors"))
    # a rerun reads the finished cell back instead of training again
    stamp = cells[0].stat().st_mtime_ns
    assert es.main(argv) == 0
    assert cells[0].stat().st_mtime_ns == stamp
