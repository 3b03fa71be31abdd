"""Smoke test of the paper-experiments runner on a tiny synthetic set, and its report logic."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("paper_experiments_under_test", ROOT / "benchmarks" / "paper_experiments.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is created
    spec.loader.exec_module(mod)
    return mod


pe = _load()


def _record(variant, seed, cls, s, i, defect_s=0.5):
    return {"variant": variant, "seed": seed, "category": cls,
            "metrics": {"s_auroc": s, "i_auroc": i, "p_auroc": 0.9, "aupro": 0.8},
            "per_defect": {"AK": {"s_auroc": defect_s, "i_auroc": 0.6, "num_samples": 2}},
            "seconds": 1.0, "cpu_share": 0.5, "train_samples_per_s": 10.0}


def test_mean_std_and_paper_table(tmp_path):
    m, s = pe.mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)
    assert pe.mean_std([4.0]) == (4.0, 0.0)
    paper = pe.load_paper()
    if not paper:
        pytest.skip("paper-results.csv not found next to the repository")
    assert paper[("Multi-Flow[graph=none]", "sample_auroc")] == pytest.approx(94.62)
    assert paper[("PatchCore", "sample_auroc")] == pytest.approx(93.7)


def test_direction_sentence_and_reports(tmp_path):
    variants = pe.build_variants(base_masks="threshold", file_masks=False, isnet=False, patchcore=True)
    names = [v.name for v in variants]
    assert names.count("base") == 1 and "masks-threshold" not in names and "masks-file" not in names
    # graph-none clearly worse than the base over 3 seeds (like the paper), top_only clearly better (unlike it)
    recs = []
    for seed, jitter in zip((0, 1, 2), (0.0, 0.002, -0.002)):
        for cls in ("a", "b"):
            recs.append(_record("base", seed, cls, 0.90 + jitter, 0.85 + jitter))
            recs.append(_record("graph-none", seed, cls, 0.80 + jitter, 0.80 + jitter))
            recs.append(_record("graph-top_only", seed, cls, 0.95 + jitter, 0.90 + jitter))
    data = pe.collect(recs)
    rows = [(lbl, v.name, pm) for v in variants for (t, lbl, pm) in v.rows if t == "table2"]
    sentence = pe.direction_sentence("table2", rows, data, pe.load_paper() or {
        ("Multi-Flow[graph=top_and_ring]", "sample_auroc"): 95.85, ("Multi-Flow[graph=top_and_ring]", "image_auroc"): 90.27,
        ("Multi-Flow[graph=none]", "sample_auroc"): 94.62, ("Multi-Flow[graph=none]", "image_auroc"): 90.25,
        ("Multi-Flow[graph=top_only]", "sample_auroc"): 95.5, ("Multi-Flow[graph=top_only]", "image_auroc"): 90.03})
    same, opposite = sentence.split("opposite direction")
    assert "none S-AUROC -10.00 pp" in same
    assert "top only S-AUROC +5.00 pp" in opposite
    ctx = {"command": "x", "data": "d", "machine": "m", "cpu_share": 0.5, "wall_min": 1.0, "rss": 1.0, "seeds": [0, 1, 2]}
    sections = pe.write_reports(variants, recs, ctx, write_benchmarks=False, results_md=tmp_path / "r.md")
    assert "| none | 80.00 ± 0.20 |" in sections["paper-table2"]
    assert "| ring only | not run |" in sections["paper-table2"]
    text = (tmp_path / "r.md").read_text()
    assert "| graph-none | a | 80.00 ± 0.20 |" in text and "| base | AK | 50.00 ± 0.00 |" in text


def test_runner_smoke_on_tiny_synthetic_data_and_resume(tmp_path, monkeypatch):
    monkeypatch.setitem(pe.QUICK, "n_train", 6)
    monkeypatch.setitem(pe.QUICK, "n_test_good", 3)
    monkeypatch.setitem(pe.QUICK, "n_test_defect", 3)
    monkeypatch.setitem(pe.QUICK, "size", 96)
    md = tmp_path / "results.md"
    argv = ["--quick", "--out", str(tmp_path / "out"), "--no-benchmarks-md", "--results-md", str(md), "--quiet",
            "--threads", "1", "--only", "base", "single-view", "patchcore", "masks-file"]
    assert pe.main(argv) == 0
    run = tmp_path / "out" / "synthetic-quick"
    results = sorted(run.glob("runs/*/seed0/bottle_cap/result.json"))
    assert [p.parts[-4] for p in results] == ["base", "masks-file", "patchcore", "single-view"]
    for p in results:
        rec = json.loads(p.read_text())
        assert 0.0 <= rec["metrics"]["s_auroc"] <= 1.0 and rec["metrics"]["aupro"] is not None
        assert set(rec["per_defect"]) == {"AK", "BX", "CH"}
    sv = json.loads((run / "runs/single-view/seed0/bottle_cap/model.json").read_text())
    assert sv["single_view"] is True
    assert json.loads((run / "runs/base/seed0/bottle_cap/model.json").read_text())["single_view"] is False
    cfg = (run / "runs/masks-file/seed0/config.yaml").read_text()
    assert "provider: file" in cfg and "silhouettes_96" in cfg
    assert "| single-view | bottle_cap |" in md.read_text()
    # a rerun skips every finished run (nothing retrained: result files untouched)
    stamps = {p: p.stat().st_mtime_ns for p in results}
    assert pe.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in results} == stamps
