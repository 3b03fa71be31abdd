"""benchmarks/bench_fusion.py: one tiny run writes its JSON (ratios against conv from the same run)
and the rendered section, without touching BENCHMARKS.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_fusion  # noqa: E402


def test_a_tiny_run_reports_every_fusion_against_conv(tmp_path, capsys):
    md_before = (ROOT / "BENCHMARKS.md").read_text()
    assert bench_fusion.main(["--quick", "--sizes", "4", "--channels", "4", "--threads", "1", "--repeats", "1",
                              "--fusions", "correspondence", "geometry", "--no-benchmarks-md",
                              "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "fusion.json").read_text())
    grid = res["grids"]["4"]
    assert res["setting"]["fusions"] == ["conv", "correspondence", "geometry"]  # conv added as the baseline
    assert grid["conv"]["ratio_wall"] == 1.0 and grid["conv"]["ratio_params"] == 1.0
    assert grid["correspondence"]["params"] > grid["conv"]["params"] == grid["geometry"]["params"]
    assert grid["correspondence"]["flops_per_object"] > grid["conv"]["flops_per_object"] > 0
    assert 0 < grid["cpu_share"] <= 1.0
    out = capsys.readouterr().out
    assert "| 4x4 | correspondence |" in out and "QUICK MODE" in out
    assert (ROOT / "BENCHMARKS.md").read_text() == md_before
