"""benchmarks/swap_evidence.py: the calibration rules of the swap check judged on simulated clean
evidence whose distribution is known, so the right answers are known too."""

from __future__ import annotations

import sys
from math import erf, sqrt
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import swap_evidence as se  # noqa: E402


def _phi(x: float) -> float:
    return 0.5 * (1.0 + erf(x / sqrt(2.0)))


def _evidence(n: int, seed: int) -> np.ndarray:
    """``(n, 3, 2)``: three pairs; the gain alone separates pair 0 well, pair 1 poorly and pair 2 not
    at all, the image score adds independent evidence of the same strength on pairs 1 and 2."""
    rng = np.random.default_rng(seed)
    gain = np.array([-2.0, -0.3, 0.0]) + np.array([0.3, 0.15, 0.1]) * rng.standard_normal((n, 3))
    img = np.array([-1.0, -0.3, -0.2]) + np.array([0.3, 0.15, 0.1]) * rng.standard_normal((n, 3))
    return np.stack([gain, img], axis=2)


def test_gaussian_rule_keeps_its_budget_and_beats_the_tail_max_rule():
    res = se.evaluate(_evidence(2000, 0), n_cal=200, splits=3, false_alarm=0.01)
    g, t, both = res["gaussian"], res["tail max"], res["gaussian, flow + image"]
    assert g["false_alarm"] <= 0.02 and both["false_alarm"] <= 0.02
    assert g["detection"] > t["detection"]
    # pair 2: the gain carries nothing, so the gain-only rules never flag it; the image score does
    assert g["per_pair"][2] == 0.0 and t["per_pair"][2] < 0.01 and both["per_pair"][2] > 0.5
    assert g["per_pair"][0] > 0.99
    # pair 1 (separation d = 4 from the gain, 4 sqrt 2 with the image score): the flow + image rule
    # detects more, and neither beats what the whole budget on this pair alone would give
    assert both["per_pair"][1] > g["per_pair"][1]
    z = 2.3263478740408408  # upper 0.01 point
    assert g["per_pair"][1] <= _phi(4.0 - z) + 0.02
    assert both["per_pair"][1] <= _phi(4.0 * sqrt(2.0) - z) + 0.02


def test_flags_follow_the_sign_of_a_swap():
    """A swap negates the evidence: a clean object's mirror image is flagged where it is clearly swapped."""
    cal = _evidence(300, 1)
    new = _evidence(50, 2)
    for rule in se.RULES:
        assert se.flags(rule, cal, -new, 0.01)[:, 0].mean() > 0.95, rule
        assert not se.flags(rule, cal, new, 0.01)[:, 0].any(), rule
    with pytest.raises(ValueError):
        se.flags("nonsense", cal, new, 0.01)


def test_report_lists_every_rule_per_class():
    res = se.evaluate(_evidence(120, 3), n_cal=40, splits=2, false_alarm=0.005)

    class A:
        splits, calibration, false_alarm = 2, 40, 0.005

    md = se.report({"c": (res, ["C1-C2", "C1-C3", "C2-C3"])}, A, "cmd")
    for rule in se.RULES:
        assert f"| c | {rule} | " in md
    assert "worst pair" in md and "C2-C3 0.0 %" in md
