"""multiflow.scoring.threshold: a threshold with a stated false-reject rate, checked by simulation
against known score distributions (the true false-reject rate of a threshold t is 1 - F(t)).

Each test also computes what the old rule (the 0.99 quantile of the held-out scores,
``np.quantile(s, 0.99)``) gives on the same data, and shows that it fails the property."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from multiflow.errors import ConfigError, DataError
from multiflow.scoring import ThresholdFit, check_target, fit_threshold, needed_objects

ALPHA, CONF = 0.01, 0.9


def _old_rule(scores):
    return float(np.quantile(scores, 0.99))


def test_needed_objects_is_the_order_statistic_requirement():
    assert needed_objects(0.01, 0.9) == 230  # 1 - 0.99^230 >= 0.9 > 1 - 0.99^229
    assert 1 - 0.99 ** 230 >= 0.9 > 1 - 0.99 ** 229
    assert needed_objects(0.05, 0.9) == 45
    for bad in (float("nan"), float("inf"), 0.0, 1.0, -0.1, "0.1", True):
        with pytest.raises(ConfigError, match="false_reject"):
            check_target(bad, 0.9)
        with pytest.raises(ConfigError, match="confidence"):
            check_target(0.01, bad)


def test_order_statistic_meets_the_target_with_the_stated_confidence():
    """n >= needed_n: over repeated calibration sets from a skewed distribution, the true false-reject
    rate is <= 1 % in at least 90 % of the fits (binomial slack); the old 0.99 quantile is not."""
    rng = np.random.default_rng(0)
    dist = stats.lognorm(s=0.6, scale=2.0)
    n, reps = 300, 600
    ok_new = ok_old = 0
    for _ in range(reps):
        s = dist.rvs(size=n, random_state=rng)
        fit = fit_threshold(s, false_reject=ALPHA, confidence=CONF)
        assert fit.method == "order_statistic" and fit.n == n and 1 <= fit.rank <= n
        assert fit.value == np.sort(s)[fit.rank - 1] and fit.warning == ""
        ok_new += dist.sf(fit.value) <= ALPHA
        ok_old += dist.sf(_old_rule(s)) <= ALPHA
    slack = 3 * math.sqrt(CONF * (1 - CONF) / reps)
    assert ok_new / reps >= CONF - slack
    assert ok_old / reps < CONF - slack  # the old rule: about half of the fits reject too many


@pytest.mark.parametrize("n", [5, 20, 60])
def test_gaussian_tail_meets_the_target_when_its_assumption_holds(n):
    """Too few objects (n < 230): the log-Gaussian tolerance bound covers the 99 % quantile of
    log-normal scores with the stated 90 %; a median/MAD version would not (documented choice)."""
    rng = np.random.default_rng(n)
    dist = stats.lognorm(s=0.3, scale=2.2)
    reps = 1500
    ok = 0
    for _ in range(reps):
        fit = fit_threshold(dist.rvs(size=n, random_state=rng), false_reject=ALPHA, confidence=CONF)
        assert fit.method == "gaussian_log" and fit.needed_n == 230
        ok += dist.sf(fit.value) <= ALPHA
    slack = 3 * math.sqrt(CONF * (1 - CONF) / reps)
    assert abs(ok / reps - CONF) <= slack + 0.02


def test_a_heavy_tail_needs_many_calibration_objects():
    """Good objects' scores with a heavy right tail (a log-normal bulk and 5 % rare looks, shaped
    like terminal_block's measured scores): 20 calibration objects (the default split at N = 200)
    reject far more than 1 % of new good objects on average, because 20 objects rarely show the
    tail; 200 (a cross-fitted class of 200 objects) keep the expected rate at the target, because
    the threshold is never below the largest calibration score that is not a suspected outlier."""
    bulk, tail, w = stats.lognorm(s=0.06, scale=1.8), stats.lognorm(s=0.06, scale=2.2), 0.05

    def draw(n, rng):
        return np.where(rng.random(n) < w, tail.rvs(size=n, random_state=rng), bulk.rvs(size=n, random_state=rng))

    rng = np.random.default_rng(11)
    frr = {n: np.mean([(1 - w) * bulk.sf(v) + w * tail.sf(v) for v in
                       (fit_threshold(draw(n, rng)).value for _ in range(300))]) for n in (20, 200)}
    assert frr[20] > 2 * ALPHA
    assert frr[200] <= ALPHA


def test_too_few_objects_warn_naming_how_many_are_needed():
    s = [2.1, 2.3, 2.2, 2.5, 2.0]
    fit = fit_threshold(s, ["a", "b", "c", "d", "e"])
    assert fit.n == 5 and fit.needed_n == 230
    assert "only 5 held-out normal objects" in fit.warning and "needs 230" in fit.warning
    assert fit.value >= max(s)  # never below a normal calibration object
    # a larger target needs fewer objects
    assert fit_threshold(np.linspace(1, 2, 50), false_reject=0.05).method == "order_statistic"
    with pytest.raises(DataError, match="at least 2"):
        fit_threshold([1.0])
    with pytest.raises(DataError, match=r"\['b'\] are not finite"):
        fit_threshold([1.0, float("nan"), 2.0], ["a", "b", "c"])


def test_one_odd_object_moves_the_threshold_less_than_the_spread_of_the_others_and_is_named():
    """The issue's case: 19 held-out normal objects score about 2.2, one scores 22 (10x). The
    threshold with it differs from the threshold without it by less than the spread of the 19; the
    odd object is named with its score. The old rule lands near 19.9."""
    rng = np.random.default_rng(4)
    others = 2.2 + 0.05 * rng.standard_normal(19)
    ids = [f"obj{i:02d}" for i in range(20)]
    spread = float(others.max() - others.min())
    without = fit_threshold(others, ids[:19])
    with_odd = fit_threshold(np.append(others, 22.0), ids)
    assert abs(with_odd.value - without.value) < spread
    assert with_odd.outliers == [{"sample_id": "obj19", "score": 22.0}] and without.outliers == []
    assert "obj19 (score 22)" in with_odd.warning and "suspected outlier" in with_odd.warning
    assert with_odd.n == 19
    assert abs(_old_rule(np.append(others, 22.0)) - _old_rule(others)) > 10 * spread  # the old rule
    # also where the distribution-free bound applies, and on scores <= 0 (no log)
    big = 2.2 + 0.05 * rng.standard_normal(400)
    a, b = fit_threshold(big), fit_threshold(np.append(big, 22.0))
    assert abs(a.value - b.value) < float(big.max() - big.min()) and len(b.outliers) == 1
    neg = others - 3.0
    a, b = fit_threshold(neg), fit_threshold(np.append(neg, 22.0 - 3.0))
    assert a.method == "gaussian" and abs(a.value - b.value) < spread and len(b.outliers) == 1


@pytest.mark.parametrize("n", [3, 4, 6, 10, 30, 300])
def test_normal_spread_is_rarely_flagged(n):
    """Scores of normal spread (log-normal) are flagged in about 1 % of fits at most, also at small
    n where the MAD is noisy (a fixed cutoff of 5 flags 10 % of 3-object sets)."""
    rng = np.random.default_rng(n)
    reps = 600
    flagged = sum(bool(fit_threshold(stats.lognorm(s=0.3, scale=2.0).rvs(size=n, random_state=rng)).outliers)
                  for _ in range(reps))
    assert flagged / reps <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / reps)


def test_fit_round_trips_and_refuses_malformed_records():
    fit = fit_threshold(np.append(np.linspace(1.0, 1.5, 9), 40.0), [str(i) for i in range(10)])
    back = ThresholdFit.from_dict(fit.to_dict())
    assert back == fit
    with pytest.raises(ConfigError, match="method"):
        ThresholdFit.from_dict(fit.to_dict() | {"method": "quantile"})
    with pytest.raises(ConfigError, match="unknown key"):
        ThresholdFit.from_dict(fit.to_dict() | {"extra": 1})
    with pytest.raises(ConfigError, match="false_reject"):
        ThresholdFit.from_dict(fit.to_dict() | {"false_reject": float("nan")})
