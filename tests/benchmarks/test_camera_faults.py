"""benchmarks/camera_faults.py: the missing-view scoring helper, the fault cases, the flow-swap table
and the report (the run itself is ``--quick``, a few minutes; not part of the test suite)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import camera_faults as cf  # noqa: E402
from multiflow.flow import MultiFlow, ViewGraph  # noqa: E402


@pytest.fixture(scope="module")
def model():
    m = MultiFlow(4, ViewGraph.real_iad(3), n_blocks=2, hidden=8, kernel_sizes=(3, 3), seed=1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def test_absent_views_do_not_change_the_scores_of_the_present_ones(model):
    feats = np.random.default_rng(0).normal(size=(5, 4, 4, 3, 3)).astype(np.float32)
    present = np.ones((5, 4), bool)
    present[1, 2] = present[3, 0] = False
    got = cf.scores_with_present(model, feats, None, present)
    assert np.isnan(got[~present]).all() and np.isfinite(got[present]).all()
    other = feats.copy()
    other[1, 2] += 100.0  # garbage in a view that is absent
    other[3, 0] -= 100.0
    np.testing.assert_array_equal(cf.scores_with_present(model, other, None, present)[present], got[present])
    # ... while a present view's features do change them
    other[0, 1] += 5.0
    assert not np.allclose(cf.scores_with_present(model, other, None, present)[0], got[0])


def test_scores_are_the_maximum_over_the_foreground(model):
    feats = np.random.default_rng(1).normal(size=(2, 4, 4, 3, 3)).astype(np.float32)
    present = np.ones((2, 4), bool)
    full = cf.scores_with_present(model, feats, None, present)
    maps = model.anomaly_map(torch.from_numpy(feats), None, None).numpy()
    masks = np.ones((2, 4, 3, 3), np.float32)
    peak = np.unravel_index(maps[0, 0].argmax(), (3, 3))
    masks[0, 0][peak] = 0.0  # the peak pixel is background now
    got = cf.scores_with_present(model, feats, masks, present)
    assert got[0, 0] < full[0, 0]
    np.testing.assert_allclose(got[1], full[1], rtol=1e-6)


def test_aurocs_use_present_views_only():
    img = np.array([[1.0, 9.0], [2.0, np.nan], [5.0, 0.0]])
    labels = np.array([[0, 0], [0, 1], [1, 0]])
    present = np.array([[True, False], [True, False], [True, True]])
    s, i = cf.aurocs(img, labels, present)
    assert s == 1.0 and i == 1.0  # with view 1 of sample 0 counted, both would drop (9.0 is normal)
    s_all, _ = cf.aurocs(np.nan_to_num(img), labels, np.ones_like(present))
    assert s_all < 1.0


def test_fault_cases_cover_cameras_and_pairs_and_are_bounded():
    kinds = ("blur", "swapped")
    every = cf.fault_cases(kinds, 5, [3, 7, 9], 0, seed=0)
    assert sum(k == "blur" for k, _, _ in every) == 5 * 3
    swaps = [w for k, w, _ in every if k == "swapped"]
    assert len(swaps) == 10 * 3 and (1, 3) in swaps and all(a < b for a, b in swaps)
    few = cf.fault_cases(kinds, 5, [3, 7, 9], 4, seed=0)
    assert [k for k, _, _ in few] == ["blur"] * 4 + ["swapped"] * 4
    assert set(few) <= set(every) and few == cf.fault_cases(kinds, 5, [3, 7, 9], 4, seed=0)
    assert few != cf.fault_cases(kinds, 5, [3, 7, 9], 4, seed=1)


def _result(per, clean_normal=(0, 10), swaps=(), null=None, combined=(0, 1)):
    """A class result as faults() writes it; ``combined``: flagged (clean normal, clean defective) by
    the combined rule of the dropout model."""
    return {"detection": {"paper/all": [0.9, 0.8], "dropout/all": [0.895, 0.8],
                          "dropout/1-missing": [[0.88, 0.7], [0.86, 0.7]], "dropout/2-missing": [[0.8, 0.6]]},
            "faults": {"per_fault": {"blur": per}, "decider": "dropout",
                       "clean": {"normal": {"n": clean_normal[1], "flagged": clean_normal[0],
                                            "checks": {"overexposure/clip_high": clean_normal[0]},
                                            "combined": {"dropout": {"flagged": combined[0], "dismissed": 0,
                                                                     "checks": {"swapped/flow_swap": combined[0]}}}},
                                 "defective": {"n": 8, "flagged": 2, "checks": {"occlusion/occlusion": 2},
                                               "combined": {"dropout": {"flagged": combined[1], "dismissed": 1,
                                                                        "checks": {"occlusion/occlusion": combined[1]}}}}},
                       "swaps": list(swaps), "flow_swap_clean": null or {},
                       "threshold": 6.5, "calibration": {"n_objects": 200, "method": "conformal"},
                       "flow_swap_check": {"dropout": {"pairs": ["C2-C4"], "cut": [1.0], "separation": [2.0],
                                                       "expected_detection": [0.7], "pair_false_alarm": [0.005],
                                                       "false_alarm": 0.005, "n_objects": 20, "method": "gaussian",
                                                       "image_threshold": 7.0}}}}


def test_report_table_and_goals():
    per = {"n": 10, "detected": 9, "image_detected": 8, "any_fault_on_camera": 10, "other_cameras_flagged": 0,
           "dismissed": 0, "check_camera": 10, "product_ng_remaining_views": 1,
           "checks": {"blur/sharpness": 9, "occlusion/occlusion": 1}}
    res = {"c": _result(per, (1, 10)), "d": _result(per, (1, 10), combined=(1, 0))}
    md = cf.report(res, cf.QUICK, "python benchmarks/camera_faults.py --quick")
    assert "| (c) view-dropout model | one missing (worst camera) | 86.00 | 70.00 |" in md
    assert "(b) - (a): -0.50 pp" in md and "-2.50 pp S-AUROC" in md
    assert ("| blur | 20 | 90.00 % | 80.00 % | 100.00 % | 0.00 % | 0.00 % | 100.00 % | 10.00 % | "
            "blur/sharpness 18, occlusion/occlusion 2 |") in md
    # per class and pooled: false faults (combined), image checks alone, product defects taken, detection, AUROCs
    assert "| c | 0/10 (0.00 %) | 1/10 (10.00 %) | 1/8 (12.50 %) | 90.00 % (9/10) | 90.00 / 89.50 | 80.00 / 80.00 |" in md
    assert "| d | 1/10 (10.00 %) | 1/10 (10.00 %) | 0/8 (0.00 %) |" in md
    assert "| pooled | 1/20 (5.00 %) | 2/20 (10.00 %) | 1/16 (6.25 %) | 90.00 % (18/20) |" in md
    assert "image checks alone 2 (10.00 %; checks: overexposure/clip_high 2); combined rule with the dropout flow 1" in md
    assert "objects with a flag dismissed as product: 2" in md
    assert "tau 6.50 from 200 training objects (conformal)" in md
    assert ("c/dropout: 0.005 from 20 calibration objects (gaussian), expected detection 70.0 % (mean over pairs), "
            "image tau 7.00") in md
    assert "single-view" not in md  # not among the quick variants


def test_flow_swap_table_counts_swaps_and_swaps_every_clean_object():
    """Per pair: the swap cases (AUROC, image, flow, either) and, from the clean gains alone (a swap
    turns a gain into its negative), the flow check on every clean object swapped and the best a
    cut-off on this pair could do at the flow's budget (checked against math.erf)."""
    from math import erf, sqrt

    clean = [-3.0, -1.0, 0.5, -2.0]
    null = {"dropout": {"C2-C4": clean}}
    swaps = [{"pair": ["C2", "C4"], "object": k, "detected": d, "gain": {"dropout": g}, "flow_detected": {"dropout": fd}}
             for k, (g, d, fd) in enumerate([(2.0, True, True), (0.0, False, False), (5.0, False, True)])]
    res = {"c": _result({"n": 0, "detected": 0, "any_fault_on_camera": 0, "other_cameras_flagged": 0, "check_camera": 0,
                         "product_ng_remaining_views": 0, "checks": {}}, swaps=swaps, null=null)}
    (row,) = cf.flow_swap_table(res)
    # AUROC: gains 2 and 5 beat all four clean gains, 0.0 beats three of four -> (4 + 4 + 3) / 12
    assert row[:3] == ("dropout", "C2-C4", 3) and row[3] == pytest.approx(11 / 12)
    assert row[4] == pytest.approx(1 / 3) and row[5] == pytest.approx(2 / 3)  # image: case 0; flow: cases 0, 2
    assert row[6] == pytest.approx(2 / 3)  # image OR flow: cases 0 and 2
    assert row[7] == 2.0 and row[8] == 0.7
    assert row[9] == pytest.approx(0.5)  # swapped clean gains 3, 1, -0.5, 2: two above the cut-off 1.0
    mu, sd = np.mean(clean), np.std(clean, ddof=1)
    z = 2.5758293035489  # upper 0.005 point of the standard normal
    assert row[10] == pytest.approx(0.5 * (1 + erf((-2 * mu / sd - z) / sqrt(2))), rel=1e-6)
    md = cf.report(res, cf.QUICK, "cmd")
    assert "| dropout | C2-C4 | 3 | 91.67 | 33.33 % | 66.67 % | 66.67 % | 2.0 | 70.00 % | 50.00 % |" in md


def test_clean_flow_evidence_is_batched_and_resumes_after_a_kill(model, tmp_path, monkeypatch):
    """The gains and maps of every clean object equal flow_swap_batch per object; a run killed after
    the first chunk continues from the saved file (only the rest goes through the flow)."""
    from types import SimpleNamespace

    import multiflow.faults.flow_swap as fsw

    feats = np.random.default_rng(2).normal(size=(11, 4, 4, 3, 3)).astype(np.float32)
    split = SimpleNamespace(features=feats, sample_ids=[f"s{i}" for i in range(11)])
    pred = SimpleNamespace(flow=model, device=torch.device("cpu"), precision="fp32")
    gains, nll = cf.clean_flow_evidence(pred, "paper", split, tmp_path, "c", progress=False, batch=2)
    for i in (0, 5, 10):
        g, m = fsw.flow_swap_batch(model, torch.from_numpy(feats[i:i + 1]))
        np.testing.assert_allclose(gains[i], g[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(nll[i], m[0].numpy(), rtol=1e-5, atol=1e-6)
    # a run killed after the first chunk (16 objects per chunk at batch 2: use batch 1 -> chunks of 8)
    path = tmp_path / "flow_paper.npz"
    np.savez(path, gains=gains[:8], nll=nll[:8], done=8, ids=np.asarray(split.sample_ids))
    seen = []
    real = fsw.swap_gains_in_batches
    monkeypatch.setattr(fsw, "swap_gains_in_batches", lambda flow, f, **k: seen.append(len(f)) or real(flow, f, **k))
    g2, n2 = cf.clean_flow_evidence(pred, "paper", split, tmp_path, "c", progress=False, batch=1)
    assert seen == [3]
    np.testing.assert_allclose(g2, gains, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(n2, nll, rtol=1e-5, atol=1e-6)
