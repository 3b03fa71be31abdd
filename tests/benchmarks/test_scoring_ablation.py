"""The scoring ablation: its report (rows, deltas, per-defect) and a tiny end-to-end run whose
post-hoc paper scoring reproduces the pipeline's own evaluation of the same model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import scoring_ablation as sa  # noqa: E402


def _record(variant, seed, category, s_by_combo, test_s=None):
    combos = {}
    for label, _, _ in sa.IMAGE_SCORES:
        for cal in sa.REPORTED_CALIBRATIONS:
            name = sa.combo_name(label, cal)
            s = s_by_combo.get(name, 0.70)
            combos[name] = {"metrics": {"s_auroc": s, "i_auroc": s - 0.1, "p_auroc": 0.9, "aupro": 0.8},
                            "per_defect": {"AK": {"s_auroc": s, "i_auroc": 0.5}, "BX": {"s_auroc": 0.6, "i_auroc": None}}}
    test = None if test_s is None else {"s_auroc": test_s, "i_auroc": test_s, "p_auroc": 0.9, "aupro": 0.8}
    return {"variant": variant, "seed": seed, "category": category, "combos": combos, "fit_seconds": 10.0,
            "test_metrics": test, "train_seconds": {"total": 12.0, "features_and_masks": 2.0},
            "train_samples_per_s": 4.0, "channels": 192, "grid": 8}


def test_paired_delta_and_noise_rule():
    recs = [_record("paper", s, c, {"max+none": 0.70 + 0.05 * s, "max+zscore": 0.71 + 0.05 * s}) for s in (0, 1, 2)
            for c in ("a", "b")]
    d = sa.paired_delta(recs, ("paper", "max+zscore"), ("paper", "max+none"), "s_auroc")
    # the seeds differ by 5 pp, but the paired difference is +1 pp on every (seed, class) run: beyond noise
    assert d == pytest.approx((1.0, 0.0, 6)) and sa.beyond_noise(d)
    recs2 = recs + [_record("margin", s, c, {"max+none": 0.70 + 0.05 * s + (0.02 if c == "a" else -0.02)})
                    for s in (0, 1, 2) for c in ("a", "b")]
    d2 = sa.paired_delta(recs2, ("margin", "max+none"), ("paper", "max+none"), "s_auroc")
    # +2 pp on one class, -2 on the other: the class averages agree, the runs do not
    assert d2[0] == pytest.approx(0.0, abs=1e-9) and d2[1] == pytest.approx(2.19089, abs=1e-4)
    assert not sa.beyond_noise(d2)
    assert not sa.beyond_noise((5.0, 0.0, 1))  # one run is never evidence


def test_report_rows_deltas_bf16_per_defect_and_costs():
    recs = []
    for seed in (0, 1):
        for c in ("a", "b"):
            recs.append(_record("paper", seed, c, {"max+none": 0.70 + 0.01 * seed,
                                                   "quantile@0.95+tail": 0.90 + 0.01 * seed}, test_s=0.70 + 0.01 * seed))
            recs.append(_record("margin", seed, c, {"max+none": 0.71 + 0.02 * seed}))
            recs.append(_record("bf16", seed, c, {}, test_s=0.705 + 0.01 * seed))
    md = sa.report(recs, "python benchmarks/scoring_ablation.py", 60.0)
    assert "| paper configuration | paper | max+none | 70.50 ± 0.71 | 60.50 ± 0.71 | 90.00 ± 0.00 | 80.00 ± 0.00 " \
           "| +0.00 ± 0.00 | +0.00 ± 0.00 |" in md
    assert "| calibration zscore | paper | max+zscore | 70.00 ± 0.00 |" in md
    assert "| mask margin 0.05 | margin | max+none | 72.00 ± 1.41 |" in md
    assert "| +1.50 ± 0.58 * | +1.50 ± 0.58 * |" in md  # paired: +1, +1, +2, +2 pp on the four runs
    assert "| best combination (by mean Δ S/I) | paper | quantile@0.95+tail | 90.50 ± 0.71 |" in md
    assert "| +20.00 ± 0.00 * | +20.00 ± 0.00 * |" in md
    assert "| bf16 | 70.50 ± 0.71 | 70.50 ± 0.71 |" not in md and "| bf16 | 71.00 ± 0.71 |" in md
    assert "| +0.50 ± 0.00 * |" in md  # bf16 vs fp32, paired
    assert "| AK | 70.5 | 72.0 | 90.5 |" in md and "| BX | 60.0 | 60.0 | 60.0 |" in md
    assert "| paper | 10 | 4.00 | 192 x 8x8 | 12288 |" in md
    assert md.count("\n| paper | ") == len(sa.IMAGE_SCORES) * len(sa.REPORTED_CALIBRATIONS) + 1  # grid + cost row
    assert "| bf16 | max |" not in md  # precision is not a scoring switch: not in the grid


@pytest.mark.slow
def test_quick_run_matches_the_pipeline_and_resumes(tmp_path, capsys):
    argv = ["--quick", "--only", "paper", "--out", str(tmp_path), "--no-benchmarks-md", "--quiet"]
    assert sa.main(argv) == 0
    run = tmp_path / "synthetic-quick"
    rec = json.loads((run / "scoring" / "paper" / "seed0" / "bottle_cap.json").read_text())
    assert len(rec["combos"]) == len(sa.IMAGE_SCORES) * len(sa.CALIBRATIONS)
    # the post-hoc paper scoring (max + none) is exactly what `multiflow test` measured on the same model
    evaluated = json.loads((run / "runs" / "paper" / "seed0" / "bottle_cap" / "result.json").read_text())["metrics"]
    for k, v in evaluated.items():
        assert rec["combos"]["max+none"]["metrics"][k] == pytest.approx(v, abs=1e-9), k
    assert not (run / "runs" / "paper" / "seed0" / "bottle_cap" / "model.safetensors").exists()  # dropped once scored
    out = capsys.readouterr().out
    assert "| paper | smoothed_max@8 | none |" in out and "Per defect type" in out
    assert "| paper | smoothed_max@8 | tail |" not in out  # removed: only shown from records that carry it
    assert sa.main(argv) == 0  # finished: read back, nothing retrained (the model files are gone)
