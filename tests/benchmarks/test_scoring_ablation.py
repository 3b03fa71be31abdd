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


def _record(variant, seed, category, s_by_combo):
    combos = {}
    for score, _ in sa.IMAGE_SCORES:
        for cal in sa.CALIBRATIONS:
            name = sa.combo_name(score, cal)
            s = s_by_combo.get(name, 0.70)
            combos[name] = {"metrics": {"s_auroc": s, "i_auroc": s - 0.1, "p_auroc": 0.9, "aupro": 0.8},
                            "per_defect": {"AK": {"s_auroc": s, "i_auroc": 0.5}, "BX": {"s_auroc": 0.6, "i_auroc": None}}}
    return {"variant": variant, "seed": seed, "category": category, "combos": combos, "fit_seconds": 10.0}


def test_report_rows_deltas_and_best_combination():
    recs = []
    for seed in (0, 1):
        for c in ("a", "b"):
            recs.append(_record("paper", seed, c, {"max+none": 0.70 + 0.01 * seed, "quantile+tail": 0.90 + 0.01 * seed}))
            recs.append(_record("margin", seed, c, {"max+none": 0.71 + 0.01 * seed}))
    md = sa.report(recs, "python benchmarks/scoring_ablation.py", 60.0)
    assert "| paper | max | none | 70.50 ± 0.71 | 60.50 ± 0.71 | 90.00 ± 0.00 | 80.00 ± 0.00 | +0.00 | +0.00 | 10 |" in md
    assert "| paper | quantile | tail | 90.50 ± 0.71 |" in md and "| +20.00 * | +20.00 * |" in md
    assert "| margin | max | none | 71.50 ± 0.71 |" in md and "| +1.00 | +1.00 |" in md  # within seed noise: no *
    assert "Best S-AUROC: `paper` with `quantile+tail`" in md
    assert "| AK | 70.5 / 50.0 | 90.5 / 50.0 |" in md and "| BX | 60.0 / - | 60.0 / - |" in md
    assert md.count("\n| paper |") == len(sa.IMAGE_SCORES) * len(sa.CALIBRATIONS)


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
    assert "| paper | smoothed_max | tail |" in out and "Per defect type" in out
    assert sa.main(argv) == 0  # finished: read back, nothing retrained (the model files are gone)
