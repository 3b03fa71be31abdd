"""benchmarks/convergence.py: the level-off rule by hand, the run summary, and a tiny real run that is
interrupted, continued and compared with an uninterrupted one."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import convergence as cv  # noqa: E402


def test_level_off_epoch_rule():
    # lowest 1.00 at epoch 5; within 0.01: epoch 3 (1.009) is the first
    losses = [2.0, 1.2, 1.009, 1.02, 1.0, 1.005]
    assert cv.level_off_epoch(losses, 0.01) == 3
    assert cv.level_off_epoch(losses, 0.0) == 5
    assert cv.level_off_epoch(losses, 1.0) == 1


def _record(val, *, best, stop="", seconds=10.0, steps_per_epoch=45):
    h = [{"epoch": e + 1, "train_loss": v + 0.1, "val_loss": v, "seconds": seconds, "cpu_share": 0.4,
          "steps": (e + 1) * steps_per_epoch, "gamma_abs": 0.01 * (e + 1), "lr": 1e-3} for e, v in enumerate(val)]
    return {"history": h, "best_epoch": best, "best_val_loss": min(val), "stop_reason": stop}


def test_summary_counts_steps_and_time_to_the_level_off_epoch():
    s = cv.summarise(_record([2.0, 1.2, 1.009, 1.02, 1.0, 1.005], best=5, stop="early stopping after epoch 6"), 0.01)
    assert s["level_epoch"] == 3 and s["steps_to_level"] == 135 and s["seconds_to_level"] == 30.0
    assert s["converged"] and s["stopped_early"] and s["epochs"] == 6 and s["gamma_abs"] == pytest.approx(0.05)
    assert s["s_per_step"] == pytest.approx(60.0 / 270) and s["cpu_share"] == pytest.approx(0.4)
    # the lowest loss at the cap and no early stop: still falling, not converged
    s = cv.summarise(_record([2.0, 1.5, 1.2], best=3), 0.01)
    assert not s["converged"] and not s["stopped_early"] and s["level_epoch"] == 3


@pytest.mark.slow
def test_quick_run_interrupted_continued_equals_uninterrupted(tmp_path, capsys):
    base = ["--quick", "--quiet", "--threads", "1", "--fusions", "conv", "--schedules", "cosine-gates",
            "--no-benchmarks-md"]
    a = tmp_path / "a"
    # a sitting that ends after the first epoch: the run is left unfinished with its state
    assert cv.main([*base, "--out", str(a), "--max-minutes", "1e-6"]) == 0
    run = cv.run_dir(a, "toy_brick", "conv", "cosine-gates", 0)
    assert not (run / "result.json").exists() and (run / "train_state" / "state.safetensors").is_file()
    # the rerun continues it to the end, records every epoch and frees the state
    assert cv.main([*base, "--out", str(a)]) == 0
    rec = json.loads((run / "result.json").read_text())
    h = rec["history"]
    assert [r["epoch"] for r in h] == [1, 2, 3] and not (run / "train_state").exists()
    assert [r["steps"] for r in h] == [rec["steps_per_epoch"] * e for e in (1, 2, 3)]
    assert all(r["seconds"] > 0 and 0 < r["cpu_share"] <= 1 and "gamma_lr" in r for r in h)
    assert h[0]["lr"] < h[1]["lr"]  # warm-up (2 epochs): the rate rises, then the cosine takes it down
    assert h[2]["gamma_lr"] == pytest.approx(10 * h[2]["lr"])  # the gates' own rate follows the same schedule
    assert set(rec["per_defect"]) == {"HS", "FM", "ML"}
    # an uninterrupted run on the same data (copied) gives the same curve and the same model
    b = tmp_path / "b"
    b.mkdir()
    for sub in ("data", "cache"):
        shutil.copytree(a / sub, b / sub)
    assert cv.main([*base, "--out", str(b)]) == 0
    other = json.loads((cv.run_dir(b, "toy_brick", "conv", "cosine-gates", 0) / "result.json").read_text())
    for key in ("train_loss", "val_loss", "lr", "gamma_lr", "gamma_abs"):
        assert [r[key] for r in other["history"]] == [r[key] for r in h], key
    assert other["metrics"] == rec["metrics"]
    md = (a / "report.md").read_text()
    assert "| toy_brick | conv | cosine-gates | 3 (" in md and "| epoch | toy_brick conv cosine-gates s0 |" in md
    assert (a / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a finished run is not trained again; other settings in the same folder are refused
    stamp = (run / "result.json").stat().st_mtime_ns
    assert cv.main([*base, "--out", str(a)]) == 0
    assert (run / "result.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert cv.main([*base, "--out", str(a), "--epochs", "4"]) == 2
    assert "epochs: 3 there, 4 now" in capsys.readouterr().err
    assert cv.main([*base, "--out", str(a), "--fusions", "no_such_fusion"]) == 2
