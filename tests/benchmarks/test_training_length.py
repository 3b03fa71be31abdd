"""The training-length benchmark: its step counts, resumable record loading and its verdicts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import training_length as tl  # noqa: E402


def _write_run(out: Path, run: str, variant: str, s_auroc: dict[int, float], n_train: int, epochs: int) -> None:
    for seed, s in s_auroc.items():
        for c in tl.pe.FULL["classes"]:
            folder = out / run / "runs" / variant / f"seed{seed}" / c
            folder.mkdir(parents=True)
            rec = {"variant": variant, "seed": seed, "category": c, "seconds": 2.0, "cpu_share": 0.5,
                   "metrics": {"s_auroc": s, "i_auroc": s, "p_auroc": 0.9, "aupro": 0.8}}
            (folder / "result.json").write_text(json.dumps(rec))
            meta = {"train_samples": n_train, "history": [{}] * epochs, "best_epoch": 3 if epochs < 40 else 20}
            (folder / "model.json").write_text(json.dumps(meta))


def test_records_steps_and_verdicts(tmp_path):
    seeds = tl.pe.FULL["seeds"]
    assert len(seeds) >= 2
    _write_run(tmp_path, "synthetic-full", "base", {s: 0.80 + 0.001 * s for s in seeds}, 24, 8)
    _write_run(tmp_path, "synthetic-full", "single-view", {s: 0.90 + 0.001 * s for s in seeds}, 120, 8)
    _write_run(tmp_path, "synthetic-e40", "base", {s: 0.95 + 0.001 * s for s in seeds}, 24, 40)
    assert tl.load_records(tmp_path, "synthetic-e24", ["base"]) is None  # missing: would be run
    base8 = tl.load_records(tmp_path, "synthetic-full", ["base"])
    sv8 = tl.load_records(tmp_path, "synthetic-full", ["single-view"])
    base40 = tl.load_records(tmp_path, "synthetic-e40", ["base"])
    assert {r["steps"] for r in base8} == {6 * 8} and {r["steps"] for r in sv8} == {30 * 8}
    assert {r["steps"] for r in base40} == {6 * 40}  # equal steps to the single-view flow at 8 epochs
    md = tl.report([("base", 8, base8), ("base", 40, base40), ("single-view", 8, sv8)], "cmd")
    assert "| Multi-Flow (base) | 40 | 240 | 20 | 95.10 ± 0.10 |" in md
    assert "at 8 epochs: S-AUROC +10.00 pp (single-view better)" in md
    assert "at 40 epochs: S-AUROC -5.00 pp (Multi-Flow better)" in md
    assert "| Multi-Flow (base) | 8 | 48 | 3 |" in md  # the selected (best held-out) epoch
    assert "At 40 epochs it is at most 20" in md  # the longest run stopped improving early
    assert "selected its last epoch" not in md  # the single-view flow's best epoch (3) is not its last (8)


def test_run_names_reuse_the_suite_at_its_own_length():
    assert tl.run_name(tl.pe.FULL["epochs"]) == "synthetic-full"
    assert tl.run_name(24) == "synthetic-e24"
