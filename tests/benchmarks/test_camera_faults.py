"""benchmarks/camera_faults.py: the missing-view scoring helper and the report (the run itself is
``--quick``, a few minutes; not part of the test suite)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import camera_faults as cf  # noqa: E402
from multiflow.flow import MultiFlow, ViewGraph  # noqa: E402


def test_scores_with_present_match_the_model_and_mark_absent_views():
    model = MultiFlow(4, ViewGraph.real_iad(3), n_blocks=2, hidden=8, kernel_sizes=(3, 3), seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    feats = np.random.default_rng(0).normal(size=(5, 4, 4, 3, 3)).astype(np.float32)
    present = np.ones((5, 4), bool)
    present[1, 2] = present[3, 0] = False
    got = cf.scores_with_present(model, feats, None, present)
    assert np.isnan(got[~present]).all() and np.isfinite(got[present]).all()
    want = model.anomaly_map(torch.from_numpy(feats), None, torch.from_numpy(present)).amax(dim=(2, 3)).numpy()
    np.testing.assert_allclose(got[present], want[present], rtol=1e-6)


def test_aurocs_use_present_views_only():
    img = np.array([[1.0, 9.0], [2.0, np.nan], [5.0, 0.0]])
    labels = np.array([[0, 0], [0, 1], [1, 0]])
    present = np.array([[True, False], [True, False], [True, True]])
    s, i = cf.aurocs(img, labels, present)
    # sample scores over present views: 1, 2, 5 with labels 0, 1, 1 -> perfect ranking
    assert s == 1.0
    # images present: (1, 0), (2, 0), (5, 1), (0, 0) -> 5 ranks above all three normal images
    assert i == 1.0


def test_report_table_and_goals():
    per = {"n": 10, "detected": 9, "any_fault_on_camera": 10, "ng_without_detector": 7, "check_camera": 10,
           "product_ng_remaining_views": 1}
    res = {"c": {"detection": {"paper/all": [0.9, 0.8], "dropout/all": [0.895, 0.8],
                               "dropout/1-missing": [[0.88, 0.7], [0.86, 0.7]], "dropout/2-missing": [[0.8, 0.6]],
                               "single-view": [0.85, 0.75]},
                 "faults": {"per_fault": {"blur": per}, "clean": {"normal": [0, 10], "defective": [1, 8]}}}}
    md = cf.report(res, cf.QUICK, "python benchmarks/camera_faults.py --quick")
    assert "| (c) view-dropout model | one missing (worst camera) | 86.00 | 70.00 |" in md
    assert "(b) - (a): -0.50 pp" in md and "-2.50 pp S-AUROC" in md
    assert "| blur | 10 | 90.00 % | 100.00 % | 100.00 % | 70.00 % | 10.00 % |" in md
    assert "0 of 10 clean normal" in md and "1 of 8 clean defective" in md
