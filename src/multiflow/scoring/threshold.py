"""The decision threshold as a statistical estimate with a stated false-reject rate (issue 20).

The user states the target: the false-reject rate ``alpha`` (``threshold.false_reject``, default
1 %) of new *good* objects, and the confidence ``1 - delta`` (``threshold.confidence``, default
90 %) with which the target must hold. The threshold is fitted on the sample scores of held-out
normal *calibration* objects, which neither trained the flow nor selected its epoch
(:func:`multiflow.engine.pipeline.fit_category` keeps them apart), so their scores are
exchangeable with the scores of new good objects.

Decision rule (:func:`fit_threshold`), on the ``n`` calibration scores ``s_1 <= ... <= s_n`` left
after the outlier screen:

1. **Outlier screen.** With ``n >= 3``, a score whose robust z-score
   ``(x - median) / (1.4826 * MAD)`` (on log scores when all scores are positive, else on the
   scores) exceeds the cutoff for ``n`` objects is a *suspected outlier*: excluded from the fit,
   and recorded (sample id and score) for the user to check. The cutoff
   (:func:`outlier_cutoff`) is at least :data:`OUTLIER_Z` and at least the 99th percentile of the
   largest robust z-score among ``n`` Gaussian scores (seeded simulation), so a sample of normal
   spread is flagged in at most about 1 % of fits, also at small ``n``, where the MAD is noisy.
   Only high scores are screened (a low score cannot raise the threshold). One normal object
   scoring 10x the others therefore leaves the threshold where the others put it.
2. **Distribution-free order statistic**, when ``n >= needed_n``. With ``t = s_(k)`` the false-reject
   rate ``FRR = 1 - F(s_(k))`` of new good objects is ``Beta(n - k + 1, k)``-distributed for any
   continuous score distribution ``F``; ``k`` is the smallest rank with
   ``P(FRR <= alpha) = I_alpha(n - k + 1, k) >= 1 - delta``. It exists iff
   ``1 - (1 - alpha)^n >= 1 - delta``, i.e. ``n >= needed_n = ceil(log(delta) / log(1 - alpha))``
   (230 objects for 1 % at 90 %). (The weaker conformal statement ``E[FRR] <= alpha``, rank
   ``ceil((n + 1)(1 - alpha))``, would need ``n >= 1/alpha - 1``, 99 objects; it states no confidence.)
3. **Gaussian tail**, when ``2 <= n < needed_n`` (too few objects for the distribution-free bound):
   a Gaussian fitted to the log scores (``gaussian_log``; to the scores, ``gaussian``, when one is
   <= 0) that passed the outlier screen (sample mean and standard deviation), and the one-sided
   normal tolerance bound ``mean + k * sd`` with ``k = t'_{n-1}(1 - delta; z_{1-alpha} sqrt(n)) / sqrt(n)``
   (non-central t): under the Gaussian assumption, ``P(FRR <= alpha) = 1 - delta`` exactly. (The
   robustness comes from the screen: the bound with median and MAD in place of mean and sd would
   cover only about 75 % of the time at a stated 90 %, measured in the tests.) The threshold is
   never below the highest calibration score that is not a suspected outlier. A warning names
   ``needed_n``. (That floor is at least the conformal order statistic, rank ``ceil((n + 1)(1 -
   alpha))``, whose expected false-reject rate is at most ``alpha`` for any distribution once
   ``n >= 1 / alpha - 1``: good objects' scores have heavy right tails, a rare look of a good part,
   which a Gaussian fitted to the bulk does not see; the largest of ~200 cross-fitted scores does,
   see ``threshold.cross_fit``.)
4. Fewer than 2 objects: no threshold can be estimated; :class:`multiflow.errors.DataError`.

Everything is recorded in :class:`ThresholdFit` (value, method, ``n``, target, confidence,
``needed_n``, order-statistic rank, outliers, warning), which the bundle stores.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from multiflow.errors import ConfigError, DataError

__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_FALSE_REJECT", "OUTLIER_Z", "ThresholdFit", "check_target", "fit_threshold",
           "needed_objects", "suspected_outliers"]

#: The default target: at most 1 % of new good objects rejected ...
DEFAULT_FALSE_REJECT = 0.01
#: ... with 90 % confidence.
DEFAULT_CONFIDENCE = 0.9
#: Smallest robust z-score cutoff for a suspected outlier (:func:`outlier_cutoff`).
OUTLIER_Z = 5.0
_MAD_TO_SIGMA = 1.4826
#: what the too-few-objects warning advises unless the caller knows better (``remedy``)
REMEDY = ("hold out more normal objects (threshold.calibration_fraction), cross-fit (threshold.cross_fit) or add "
          "normal training objects")
METHODS = ("order_statistic", "gaussian_log", "gaussian")


def check_target(false_reject: Any, confidence: Any, where: str = "threshold") -> tuple[float, float]:
    """``(false_reject, confidence)`` as floats, or a :class:`ConfigError` naming ``where``: each must
    be a finite number strictly between 0 and 1."""
    out = []
    for name, v in (("false_reject", false_reject), ("confidence", confidence)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise ConfigError(f"{where}.{name} must be a number, got {v!r}")
        f = float(v)
        if not math.isfinite(f) or not 0.0 < f < 1.0:
            raise ConfigError(f"{where}.{name} must be a finite number with 0 < {name} < 1, got {v!r}")
        out.append(f)
    return out[0], out[1]


def needed_objects(false_reject: float, confidence: float) -> int:
    """Fewest calibration objects for the distribution-free bound: ``ceil(log(1 - conf) / log(1 - alpha))``."""
    a, c = check_target(false_reject, confidence)
    return int(math.ceil(math.log1p(-c) / math.log1p(-a) - 1e-12))


@dataclass
class ThresholdFit:
    """A fitted threshold and what it was fitted for (see the module docstring).

    ``value``: the threshold (``score > value`` = NG); ``method``: one of :data:`METHODS`; ``n``:
    calibration objects used (outliers excluded); ``false_reject``, ``confidence``: the target;
    ``needed_n``: calibration objects the distribution-free bound needs for that target; ``rank``:
    the order statistic used (1-based, ``order_statistic`` only); ``outliers``: suspected outliers
    excluded (``{"sample_id", "score"}``); ``warning``: what the user should know (too few
    objects, outliers), empty when nothing.
    """

    value: float
    method: str
    n: int
    false_reject: float
    confidence: float
    needed_n: int
    rank: int = 0
    outliers: list[dict[str, Any]] = field(default_factory=list)
    warning: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown threshold method {self.method!r}; one of {METHODS}")
        if not math.isfinite(float(self.value)):
            raise ConfigError(f"threshold {self.value!r} is not a finite number")
        check_target(self.false_reject, self.confidence)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "ThresholdFit":
        if not isinstance(d, dict):
            raise ConfigError(f"a threshold fit must be a mapping, got {type(d).__name__}")
        names = {"value", "method", "n", "false_reject", "confidence", "needed_n", "rank", "outliers", "warning"}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"threshold fit: unknown key(s) {unknown}")
        return cls(value=float(d["value"]), method=str(d["method"]), n=int(d["n"]),
                   false_reject=float(d["false_reject"]), confidence=float(d["confidence"]),
                   needed_n=int(d["needed_n"]), rank=int(d.get("rank", 0)),
                   outliers=[{"sample_id": str(o["sample_id"]), "score": float(o["score"])}
                             for o in d.get("outliers", [])],
                   warning=str(d.get("warning", "")))


def _robust_center_scale(x: np.ndarray) -> tuple[float, float]:
    """``(median, 1.4826 * MAD)``; the sample standard deviation where the MAD is 0."""
    med = float(np.median(x))
    scale = _MAD_TO_SIGMA * float(np.median(np.abs(x - med)))
    if scale <= 0 and x.size >= 2:
        scale = float(np.std(x, ddof=1))
    return med, scale


def _transform(s: np.ndarray) -> tuple[np.ndarray, bool]:
    """Log scores when every score is positive (NLL scores spread multiplicatively), else the scores."""
    if np.all(s > 0):
        return np.log(s), True
    return s, False


@functools.lru_cache(maxsize=None)
def outlier_cutoff(n: int) -> float:
    """Robust z-score cutoff for ``n`` scores: ``max(OUTLIER_Z, q)`` with ``q`` the 99th percentile of
    the largest robust z-score of ``n`` standard Gaussian scores (20000 draws, fixed seed; ``n``
    above 200 uses 200's value: the MAD is then stable)."""
    m = min(int(n), 200)
    x = np.random.default_rng(20).standard_normal((20000, m))
    med = np.median(x, axis=1, keepdims=True)
    mad = _MAD_TO_SIGMA * np.median(np.abs(x - med), axis=1, keepdims=True)
    z = ((x - med) / np.maximum(mad, 1e-12)).max(axis=1)
    return max(OUTLIER_Z, float(np.quantile(z, 0.99)))


def suspected_outliers(scores: Any) -> np.ndarray:
    """Bool ``(n,)``: the scores whose robust z-score exceeds :func:`outlier_cutoff` (high side only;
    nothing is flagged with fewer than 3 scores or without spread)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size < 3:
        return np.zeros(s.size, dtype=bool)
    x, _ = _transform(s)
    med, scale = _robust_center_scale(x)
    if not scale > 0:
        return np.zeros(s.size, dtype=bool)
    return (x - med) / scale > outlier_cutoff(s.size)


@functools.lru_cache(maxsize=1024)
def _tolerance_factor(n: int, false_reject: float, confidence: float) -> float:
    """One-sided normal tolerance factor ``k``: ``P(mu_hat + k sigma_hat >= q_{1-alpha}) = confidence``."""
    from scipy import stats

    z = stats.norm.ppf(1.0 - false_reject)
    return float(stats.nct.ppf(confidence, df=n - 1, nc=z * math.sqrt(n)) / math.sqrt(n))


def fit_threshold(scores: Any, sample_ids: Sequence[str] | None = None, *,
                  false_reject: float = DEFAULT_FALSE_REJECT, confidence: float = DEFAULT_CONFIDENCE,
                  what: str = "held-out normal objects", remedy: str = "") -> ThresholdFit:
    """Fit the threshold on calibration sample scores ``(n,)`` (see the module docstring).

    ``sample_ids`` name the objects (for the outlier record; default: their positions); ``what``
    describes them in messages; ``remedy`` replaces the advice of the too-few-objects warning. Raises :class:`DataError` on non-finite scores or fewer than 2
    usable objects, :class:`ConfigError` on a bad target.
    """
    from scipy import stats

    alpha, conf = check_target(false_reject, confidence)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    ids = [str(i) for i in (range(s.size) if sample_ids is None else sample_ids)]
    if len(ids) != s.size:
        raise DataError(f"{len(ids)} sample ids for {s.size} calibration scores")
    if not np.isfinite(s).all():
        bad = [ids[i] for i in np.flatnonzero(~np.isfinite(s))[:5]]
        raise DataError(f"threshold: the calibration scores of {bad} are not finite numbers")
    flagged = suspected_outliers(s)
    outliers = [{"sample_id": ids[i], "score": float(s[i])} for i in np.flatnonzero(flagged)]
    kept = np.sort(s[~flagged])
    n = int(kept.size)
    need = needed_objects(alpha, conf)
    target = f"a false-reject rate of at most {alpha:.3g} at {conf:.0%} confidence"
    if n < 2:
        raise DataError(
            f"threshold: {n} {what} left (of {s.size}; suspected outliers excluded: {outliers}); at least 2 are "
            f"needed to estimate a threshold and {need} for {target} without a distribution assumption: hold out "
            "more normal objects (threshold.calibration_fraction) or add normal training objects"
        )
    notes = []
    if n >= need:
        ks = np.arange(1, n + 1)
        ok = stats.beta.cdf(alpha, n - ks + 1, ks) >= conf
        rank = int(ks[np.argmax(ok)])
        value, method = float(kept[rank - 1]), "order_statistic"
    else:
        x, logged = _transform(kept)
        bound = float(x.mean()) + _tolerance_factor(n, alpha, conf) * float(x.std(ddof=1))
        value = float(np.exp(bound) if logged else bound)
        value = max(value, float(kept[-1]))
        rank, method = 0, "gaussian_log" if logged else "gaussian"
        notes.append(
            f"only {n} {what} for {target}: the distribution-free bound needs {need}; the threshold "
            f"{value:.6g} extrapolates a Gaussian fitted to the {'log ' if logged else ''}scores (an assumption): "
            + (remedy or REMEDY)
        )
    if outliers:
        listed = ", ".join(f"{o['sample_id']} (score {o['score']:.6g})" for o in outliers)
        notes.append(f"suspected outlier(s) among the {what}, excluded from the threshold: {listed}; check them "
                     "(a defective or mislabelled part, or a camera problem)")
    return ThresholdFit(value=value, method=method, n=n, false_reject=alpha, confidence=conf, needed_n=need,
                        rank=rank, outliers=outliers, warning="; ".join(notes))
