"""Score layer: probabilities -> raw anomaly scores -> 0..100 normalised scores.

Vectorised numpy, independent of the rest of the package but for one compiled kernel
(``adjobs._normaliser``, which steps a normaliser through many buckets for
:meth:`Normaliser.walk`). The rules follow our summary of Elasticsearch ML in ``analysis.md``
(sections A.4, A.5, A.6); where that summary leaves a choice open, the choice and its reason
are documented next to the code.

Rules in one place:

* **Probability -> raw score** (A.5, :func:`raw_score`): piecewise in ``ln(1/p)`` with knots at
  ``p = 0.05`` (score 0), ``1e-4`` (1), ``1e-50`` (50) and the smallest positive normal double
  ``~2.2e-308`` (100). :func:`inverse_raw_score` undoes it.
* **Aggregation up the results tree** (A.5, :func:`aggregate`): a joint probability (Fisher:
  ``-2 sum ln p`` against a chi-squared with ``2n`` degrees of freedom) and an "m-th most extreme
  of n" probability (a binomial tail) are combined by geometric weighting; if both exceed
  ``0.035`` the raw score is 0. Presets :data:`PEOPLE`, :data:`ATTRIBUTES`, :data:`DETECTORS`.
  :func:`aggregate_groups` does every node of one tree level in one vectorised call. Unlike ES
  we do not stretch the tail below the smallest double (ES's "80% of the score range" trick):
  aggregates that extreme all score 100.
* **Single- vs multi-bucket** (A.5, :func:`multi_bucket_impact`, :func:`combine_single_multi`).
* **Severity** (A.4, :func:`severity`): ``< 25`` warning, ``< 50`` minor, ``< 75`` major, else
  critical.
* **Normalisation** (A.6, :class:`Normaliser`): the minimum of a noise ceiling, a percentile
  ceiling, a per-scope max-score ceiling and a probability cap (:func:`probability_cap`), capped
  at 100. A raw score of 0 always normalises to 0.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np

from . import _normaliser

__all__ = [
    "ATTRIBUTES",
    "BIG_CHANGE_FACTOR",
    "BIG_UPDATE_RATIO",
    "BIG_UPDATE_SCORE",
    "DETECTORS",
    "DISCRETISATION_FACTOR",
    "FORGET_AFTER_BUCKETS",
    "KNOT_POINTS",
    "LARGEST_SIGNIFICANT_PROBABILITY",
    "MAXIMUM_ANOMALOUS_PROBABILITY",
    "MINUSCULE_PROBABILITY",
    "PEOPLE",
    "SMALLEST_PROBABILITY",
    "SMALL_PROBABILITY",
    "STANDARD_BUCKET_LENGTH",
    "AggregateResult",
    "AggregationStyle",
    "GroupAggregates",
    "Normaliser",
    "aggregate",
    "aggregate_groups",
    "big_updates",
    "chi2_sf",
    "combine_single_multi",
    "extreme_probability",
    "grouped_least_extreme_probabilities",
    "inverse_raw_score",
    "joint_probability",
    "least_extreme_probabilities",
    "multi_bucket_impact",
    "probability_cap",
    "raw_score",
    "severity",
]

# --------------------------------------------------------------------------------------------
# Constants (analysis.md A.5, A.6)
# --------------------------------------------------------------------------------------------

LARGEST_SIGNIFICANT_PROBABILITY = 0.05
SMALL_PROBABILITY = 1e-4
MINUSCULE_PROBABILITY = 1e-50
#: The smallest positive *normal* double (~2.2e-308); probabilities are clamped up to it.
SMALLEST_PROBABILITY = float(np.finfo(np.float64).tiny)
#: If both the joint and the extreme probability exceed this, the aggregate raw score is 0.
MAXIMUM_ANOMALOUS_PROBABILITY = 0.035
#: Raw scores are discretised to multiples of 1/1000 in the normaliser's quantile summary.
DISCRETISATION_FACTOR = 1000
MAX_RAW_SCORE = 100.0
#: The maximum normalised score.
MAX_NORMALISED_SCORE = 100.0
#: A scope's max raw score growing by more than this factor asks for renormalisation.
BIG_CHANGE_FACTOR = 1.1
#: A renormalised score replaces the one stored only when the change is "big" (ES
#: ``Normalizer.isBigUpdate``, which keeps renormalisation from rewriting results for changes
#: nobody would see): it moves the score into another severity band (of SEVERITY_BAND), or
#: by BIG_UPDATE_SCORE or more, or one of the two is below BIG_UPDATE_RATIO of the other.
BIG_UPDATE_SCORE = 1.5
BIG_UPDATE_RATIO = 0.33
SEVERITY_BAND = 25.0
#: A scope's max raw score is forgotten after this many buckets without a value for it.
FORGET_AFTER_BUCKETS = 50
#: Bucket length (s) the percentile knot points are calibrated for.
STANDARD_BUCKET_LENGTH = 1800
#: (percentile, normalised score) knot points of the percentile ceiling.
KNOT_POINTS: tuple[tuple[float, float], ...] = (
    (0.0, 0.0),
    (70.0, 1.0),
    (85.0, 1.2),
    (90.0, 1.5),
    (95.0, 3.0),
    (97.0, 20.0),
    (99.0, 50.0),
    (99.9, 90.0),
    (100.0, 100.0),
)
NOISE_PERCENTILE = 50.0
NOISE_MULTIPLIER = 1.0
#: Two-sided confidence of the interval around a raw score's empirical percentile.
PERCENTILE_CONFIDENCE = 0.70
#: Upper tail used to extrapolate percentiles beyond the observed scores: the top 1% of the
#: scores, and at least this many of them (peaks over a threshold, see ``Normaliser``).
TAIL_FRACTION = 0.01
TAIL_MIN_SCORES = 10
#: Multi-bucket impact range (A.4, A.5).
MIN_MULTI_BUCKET_IMPACT = -5.0
MAX_MULTI_BUCKET_IMPACT = 5.0

_LN_SMALL = math.log(1.0 / SMALL_PROBABILITY)  # ln 1e4
_LN_MINUSCULE = math.log(1.0 / MINUSCULE_PROBABILITY)  # ln 1e50
_LN_SMALLEST = -math.log(SMALLEST_PROBABILITY)  # ~708.4
_LN_LARGEST_SIGNIFICANT = math.log(LARGEST_SIGNIFICANT_PROBABILITY)
# Slope of the probability cap in ln p: raw score 1 at 1e-4 minus raw score 0 at 0.05 over the
# log-probability distance (A.6 item 4), ~ -0.1609.
_CAP_SLOPE = 1.0 / (math.log(SMALL_PROBABILITY) - _LN_LARGEST_SIGNIFICANT)
# z such that [F - z s, F + z s] is a central 70% interval of a standard normal.
_Z_PERCENTILE = NormalDist().inv_cdf(0.5 + PERCENTILE_CONFIDENCE / 2.0)
_STATE_VERSION = 1


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _float_array(values: Any, what: str) -> np.ndarray:
    """``values`` as a float64 array; NaN is an error because it has no meaningful score."""
    arr = np.asarray(values, dtype=np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{what} must not contain NaN")
    return arr


def _probabilities(p: Any) -> np.ndarray:
    """Probabilities clamped to [smallest positive normal double, 1]; NaN raises."""
    return np.clip(_float_array(p, "probabilities"), SMALLEST_PROBABILITY, 1.0)


def _scalar_or_array(arr: np.ndarray) -> Any:
    """A 0-d result as a numpy scalar (a ``float`` subclass), any other shape as the array."""
    return arr[()] if arr.ndim == 0 else arr


# --------------------------------------------------------------------------------------------
# Probability <-> raw score (A.5)
# --------------------------------------------------------------------------------------------


def raw_score(p: Any) -> Any:
    """Map probabilities to raw anomaly scores in [0, 100] (A.5, "Probability -> raw score").

    The map is non-increasing and continuous. It spends (0, 1] on the common range
    ``[1e-4, 0.05)`` linearly in ``1/p``, so ordinary anomalies are spread out; (1, 50] on
    ``[1e-50, 1e-4)`` and (50, 100] on ``[2.2e-308, 1e-50)`` linearly in ``ln(1/p)``, so extreme
    probabilities still rank but cannot run off to infinity.

    ``p`` is clamped to ``[SMALLEST_PROBABILITY, 1]`` (so 0 and negatives score 100, values
    above 1 score 0). NaN raises :class:`ValueError`. Scalars give a scalar, arrays an array.
    """
    p = _probabilities(p)
    with np.errstate(divide="ignore"):
        inv = 1.0 / p
    ln_inv = -np.log(p)
    out = np.zeros(p.shape, dtype=np.float64)
    common = (p < LARGEST_SIGNIFICANT_PROBABILITY) & (p >= SMALL_PROBABILITY)
    out[common] = (inv[common] - 20.0) / (10000.0 - 20.0)
    small = (p < SMALL_PROBABILITY) & (p >= MINUSCULE_PROBABILITY)
    out[small] = 1.0 + 49.0 * (ln_inv[small] - _LN_SMALL) / (_LN_MINUSCULE - _LN_SMALL)
    tiny = p < MINUSCULE_PROBABILITY
    out[tiny] = 50.0 + 50.0 * (ln_inv[tiny] - _LN_MINUSCULE) / (_LN_SMALLEST - _LN_MINUSCULE)
    return _scalar_or_array(np.clip(out, 0.0, MAX_RAW_SCORE))


def _log_probability_from_raw(score: np.ndarray) -> np.ndarray:
    """``ln p`` for raw scores in [0, 100]; a score of 0 maps to ``ln 0.05`` (the boundary)."""
    out = np.full(score.shape, _LN_LARGEST_SIGNIFICANT, dtype=np.float64)
    common = (score > 0.0) & (score <= 1.0)
    out[common] = -np.log(20.0 + 9980.0 * score[common])
    small = (score > 1.0) & (score <= 50.0)
    out[small] = -(_LN_SMALL + (score[small] - 1.0) / 49.0 * (_LN_MINUSCULE - _LN_SMALL))
    tiny = score > 50.0
    out[tiny] = -(_LN_MINUSCULE + (score[tiny] - 50.0) / 50.0 * (_LN_SMALLEST - _LN_MINUSCULE))
    return out


def inverse_raw_score(score: Any) -> Any:
    """The probability whose raw score is ``score`` (inverse of :func:`raw_score`).

    Every ``p >= 0.05`` scores 0, so 0 maps back to the boundary value 0.05. Scores are clamped
    to [0, 100]; NaN raises. The normaliser uses this to cap scores by probability (A.6 item 4)
    for results that only carry a raw score, e.g. aggregates.
    """
    s = np.clip(_float_array(score, "raw scores"), 0.0, MAX_RAW_SCORE)
    p = np.maximum(np.exp(_log_probability_from_raw(s)), SMALLEST_PROBABILITY)
    return _scalar_or_array(np.where(s > 0.0, p, LARGEST_SIGNIFICANT_PROBABILITY))


def probability_cap(p: Any) -> Any:
    """The probability cap on normalised scores (A.6 item 4), in [0, 100].

    ``100 * (0.95 * M * (ln p - ln 0.05) + 0.05)`` with ``M = 1 / (ln 1e-4 - ln 0.05)``:
    5 at ``p = 0.05``, ~29.6 at 0.01, ~64.8 at 1e-3 and 100 from 1e-4 down. It stops moderately
    unusual events from scoring high before the history is long enough for the percentile
    ceiling to know better. Values outside [0, 100] (``p > 0.05`` and ``p < 1e-4``) are clipped.
    """
    ln_p = np.log(_probabilities(p))
    cap = 100.0 * (0.95 * _CAP_SLOPE * (ln_p - _LN_LARGEST_SIGNIFICANT) + 0.05)
    return _scalar_or_array(np.clip(cap, 0.0, MAX_NORMALISED_SCORE))


def _probability_cap_from_raw(score: np.ndarray) -> np.ndarray:
    """:func:`probability_cap` of :func:`inverse_raw_score`, in closed form.

    For raw scores in (0, 1] ``ln p - ln 0.05 = -ln(1 + 499 s)``; above 1 the probability is
    below 1e-4 so the cap is 100. Going through ``p`` would work too, but this form is monotone
    in ``s`` to the last bit, which keeps the normalised score monotone in the raw score.
    """
    cap = 100.0 * (0.05 - 0.95 * _CAP_SLOPE * np.log1p(499.0 * np.minimum(score, 1.0)))
    return np.clip(cap, 0.0, MAX_NORMALISED_SCORE)


# --------------------------------------------------------------------------------------------
# Severity (A.4)
# --------------------------------------------------------------------------------------------


def severity(score: Any) -> Any:
    """Severity band(s) of normalised score(s): ``< 25`` warning, ``< 50`` minor, ``< 75`` major,
    else critical (A.4, the bands Kibana colours by).

    Scalars give a ``str``, arrays a numpy array of ``str``. NaN raises.
    """
    s = _float_array(score, "scores")
    out = np.select(
        [s < 25.0, s < 50.0, s < 75.0], ["warning", "minor", "major"], default="critical"
    )
    return str(out[()]) if out.ndim == 0 else out


def big_updates(old: Any, new: Any) -> np.ndarray:
    """Whether each renormalised score ``new`` is a big enough change from the stored ``old``
    to be written (ES ``Normalizer.isBigUpdate``): a change of band (``score // 25``, so 100
    is a band of its own, as in ES's integer division), a change of at least 1.5, or one score
    less than 0.33 times the other. Scores are 0..100, so no band arithmetic sees a sign."""
    old = np.asarray(old, dtype=np.float64)
    new = np.asarray(new, dtype=np.float64)
    return ((np.trunc(old / SEVERITY_BAND) != np.trunc(new / SEVERITY_BAND))
            | (np.abs(old - new) >= BIG_UPDATE_SCORE)
            | np.where(old > new, old * BIG_UPDATE_RATIO > new, new * BIG_UPDATE_RATIO > old))


# --------------------------------------------------------------------------------------------
# Aggregation up the results tree (A.5)
# --------------------------------------------------------------------------------------------


def _log_factorials(n: int) -> np.ndarray:
    """``ln k!`` for k = 0..n (cumulative sum of logs: exact enough, O(n), no lgamma ufunc)."""
    out = np.zeros(n + 1, dtype=np.float64)
    if n > 0:
        np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)), out=out[1:])
    return out


def _logsumexp(terms: np.ndarray) -> float:
    top = float(np.max(terms))
    if top == -math.inf:
        return -math.inf
    return top + math.log(float(np.sum(np.exp(terms - top))))


def _log_chi2_sf_even(x: float, dof: int) -> float:
    """``ln P(X >= x)`` for X chi-squared with an even number of degrees of freedom.

    With ``dof = 2n`` the survival function has the closed form
    ``exp(-x/2) * sum_{k<n} (x/2)^k / k!`` (the Poisson / Erlang identity); summing in log space
    keeps it accurate for both huge ``x`` (tiny tail) and large ``n``.
    """
    n = dof // 2
    y = 0.5 * x
    if y <= 0.0:
        return 0.0
    k = np.arange(n, dtype=np.float64)
    terms = k * math.log(y) - _log_factorials(n - 1)
    return min(-y + _logsumexp(terms), 0.0)


def chi2_sf(x: float, dof: int) -> float:
    """Survival function ``P(X >= x)`` of a chi-squared with an even ``dof`` (>= 2).

    Only even degrees of freedom are needed (Fisher's method uses ``2n``), and for those the
    closed form needs no special functions, hence no scipy.
    """
    if dof < 2 or dof % 2:
        raise ValueError(f"dof must be an even integer >= 2, got {dof}")
    if math.isnan(x):
        raise ValueError("x must not be NaN")
    return math.exp(_log_chi2_sf_even(float(x), int(dof)))


def _clean_ps(ps: Any) -> np.ndarray:
    return _probabilities(ps).ravel()


def _log_joint(ps: np.ndarray) -> float:
    """ln of :func:`joint_probability` for clamped probabilities."""
    if ps.size == 0:
        return 0.0
    statistic = -2.0 * float(np.sum(np.log(ps)))
    return _log_chi2_sf_even(statistic, 2 * ps.size)


def joint_probability(ps: Any) -> float:
    """Probability of a joint sample at least as unlikely as ``ps`` (independent, uniform p's).

    Fisher's method: under the null ``-2 sum ln p_i`` is chi-squared with ``2n`` degrees of
    freedom, so the answer is its survival function at the observed statistic. One probability
    returns itself. Empty input returns 1. Clamped to at least ``SMALLEST_PROBABILITY``.
    """
    log_p = _log_joint(_clean_ps(ps))
    return max(math.exp(log_p), SMALLEST_PROBABILITY)


@functools.lru_cache(maxsize=256)
def _binomial_tail_terms(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the terms ``k = m..n`` of :func:`_log_binomial_tail` share whatever ``x`` is:
    ``ln C(n, k)``, ``k`` and ``n - k``. Cached (read-only): the bucket-level scores ask for
    the same few ``n`` in every bucket."""
    log_fact = _log_factorials(n)
    k = np.arange(m, n + 1, dtype=np.float64)
    ki = k.astype(np.int64)
    log_choose = log_fact[n] - log_fact[ki] - log_fact[n - ki]
    rest = n - k
    for arr in (log_choose, k, rest):
        arr.flags.writeable = False
    return log_choose, k, rest


def _log_binomial_tail(n: int, m: int, x: float) -> float:
    """``ln P(Binomial(n, x) >= m)`` summed term by term in log space (no cancellation)."""
    if x >= 1.0:
        return 0.0
    log_choose, k, rest = _binomial_tail_terms(n, m)
    terms = log_choose + k * math.log(x) + rest * math.log1p(-x)
    return min(_logsumexp(terms), 0.0)


def extreme_probability(ps: Any, m: int = 1) -> float:
    """Probability that the m-th smallest of ``n`` uniform values is at most the observed one.

    If ``x`` is the m-th smallest of ``ps``, that is ``P(Binomial(n, x) >= m)``; for ``m = 1``
    it is ``1 - (1 - min p)^n``, the chance that the least likely of n independent tests is at
    least this unlikely. ``m`` is clamped to ``[1, n]``. Empty input returns 1.
    """
    arr = _clean_ps(ps)
    if arr.size == 0:
        return 1.0
    m = min(max(int(m), 1), arr.size)
    x = float(np.partition(arr, m - 1)[m - 1])
    log_p = _log_binomial_tail(arr.size, m, x)
    return max(math.exp(log_p), SMALLEST_PROBABILITY)



def least_extreme_probabilities(groups: list[Any]) -> np.ndarray:
    """``extreme_probability(ps, 1)`` of every ``ps`` in ``groups``, equal bit for bit, with a
    few numpy calls per group size instead of several per group: the bucket-level scores of
    an upload need it for a few hundred tiny groups (:func:`grouped_least_extreme_probabilities`
    takes them flat)."""
    sizes = [int(np.size(ps)) for ps in groups]
    flat = np.concatenate([np.ravel(ps) for ps in groups]) if groups else np.empty(0)
    return grouped_least_extreme_probabilities(flat, sizes)


def grouped_least_extreme_probabilities(flat: Any, sizes: Any) -> np.ndarray:
    """:func:`least_extreme_probabilities` of the groups that ``flat`` holds one after the
    other, ``sizes[i]`` values in group ``i``.

    Groups of one size share their binomial terms, so their term rows stack into one matrix;
    the row-wise max, exp and (pairwise) sum are the same element operations as the 1-D ones.
    The logs of the minima and of the row sums are taken with :mod:`math`, as there."""
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
    out = np.ones(len(sizes), dtype=np.float64)
    if len(sizes) == 0 or not sizes.any():
        return out
    # Clamped all at once (elementwise, as group by group); each group's minimum by reduceat
    # over the non-empty groups' starts (an empty group would take its neighbour's value).
    flat = _clean_ps(flat)
    filled = sizes > 0
    starts = (np.cumsum(sizes) - sizes)[filled]
    minima = np.ones(len(sizes), dtype=np.float64)
    minima[filled] = np.minimum.reduceat(flat, starts)
    unusual = minima < 1.0
    for n in sorted({n for n in sizes.tolist() if n > 0}):
        rows = np.flatnonzero((sizes == n) & unusual)
        if len(rows) == 0:
            continue
        x = minima[rows].tolist()
        if n == 1:
            # The one term is ln x (C(1, 1) = 1, (1 - x)^0 = 1) and its exp(0) is exactly 1:
            # the same arithmetic without the matrix.
            out[rows] = [max(math.exp(min(math.log(v), 0.0)), SMALLEST_PROBABILITY)
                         for v in x]
            continue
        log_x = np.array([math.log(v) for v in x])
        log_1mx = np.array([math.log1p(-v) for v in x])
        log_choose, k, rest = _binomial_tail_terms(n, 1)
        terms = log_choose + k * log_x[:, None] + rest * log_1mx[:, None]
        top = terms.max(axis=1)
        sums = np.sum(np.exp(terms - top[:, None]), axis=1)
        out[rows] = [max(math.exp(min(-math.inf if t == -math.inf else t + math.log(total),
                                      0.0)), SMALLEST_PROBABILITY)
                     for t, total in zip(top.tolist(), sums.tolist(), strict=True)]
    return out


def _log_sidak(log_p: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``ln(1 - (1 - p)^k)``: the Sidak correction for taking the minimum of ``k`` tests.

    For tiny ``p`` the exact form underflows; there ``ln k + ln p`` is exact to O(k p).
    """
    p = np.exp(log_p)
    tiny = p < 1e-12
    with np.errstate(divide="ignore"):
        exact = np.log(-np.expm1(k * np.log1p(-np.where(tiny, 0.5, p))))
    out = np.where(tiny, log_p + np.log(k), exact)
    return np.minimum(np.where(k <= 1, log_p, out), 0.0)


class AggregateResult(NamedTuple):
    """An aggregated probability with its log and raw score."""

    probability: float
    log_probability: float
    raw_score: float


def aggregate(
    ps: Any,
    joint_weight: float,
    extreme_weight: float,
    max_extreme: int,
    min_extreme: int = 1,
) -> AggregateResult:
    """Combine child probabilities into one node of the results tree (A.5, "Aggregation").

    * ``ln p_joint`` = :func:`joint_probability` (catches many moderately unlikely children);
    * ``ln p_extreme`` = the smallest :func:`extreme_probability` over
      ``m = min_extreme..min(max_extreme, n)`` (catches a few very unlikely children). Taking the
      minimum over ``k`` values of ``m`` is ``k`` looks at the data, so it is Sidak-corrected:
      ``1 - (1 - p)^k``. That is conservative (the tests are positively correlated) but keeps
      the result a valid probability; for ``k = 1`` it changes nothing;
    * ``ln p = joint_weight * ln p_joint + extreme_weight * ln p_extreme`` (geometric weighting);
    * the raw score is :func:`raw_score` of ``p``, except that it is 0 when both ``p_joint`` and
      ``p_extreme`` exceed ``MAXIMUM_ANOMALOUS_PROBABILITY`` (0.035): nothing is anomalous.

    With weights summing to 1, one probability aggregates to itself. Empty input gives
    probability 1 and raw score 0. NaN raises.
    """
    arr = _clean_ps(ps)
    if arr.size == 0:
        return AggregateResult(1.0, 0.0, 0.0)
    res = aggregate_groups(
        arr,
        np.zeros(arr.size, dtype=np.int64),
        joint_weight,
        extreme_weight,
        max_extreme,
        min_extreme,
    )
    return AggregateResult(
        float(res.probability[0]), float(res.log_probability[0]), float(res.raw_score[0])
    )


class GroupAggregates(NamedTuple):
    """Per-group results of :func:`aggregate_groups`, one entry per sorted unique group."""

    groups: np.ndarray
    probability: np.ndarray
    log_probability: np.ndarray
    raw_score: np.ndarray


def _group_logsumexp(terms: np.ndarray, starts: np.ndarray, gi: np.ndarray) -> np.ndarray:
    """``ln sum exp`` of ``terms`` per contiguous group (groups start at ``starts``)."""
    top = np.maximum.reduceat(terms, starts)
    shift = np.where(np.isfinite(top), top, 0.0)
    total = np.add.reduceat(np.exp(terms - shift[gi]), starts)
    with np.errstate(divide="ignore"):
        return shift + np.log(total)


def aggregate_groups(
    ps: Any,
    groups: Any,
    joint_weight: float,
    extreme_weight: float,
    max_extreme: int,
    min_extreme: int = 1,
) -> GroupAggregates:
    """:func:`aggregate` for many groups at once: one call per bucket and tree level.

    ``groups`` labels each probability (any sortable values: ints, strings); the result holds
    the sorted unique labels and, for each, what :func:`aggregate` gives for that group's
    probabilities. Vectorised over all groups: O(N log N) for N probabilities plus
    O(N * max_extreme), with no Python loop over groups or probabilities, so population jobs
    with ~100,000 people per bucket stay cheap.

    How: sort by (group, p). The joint probability of a group of ``n`` with statistic
    ``y = -sum ln p`` is ``exp(-y) sum_{k<n} y^k / k!`` (:func:`joint_probability`): element
    ``k`` of the group supplies term ``k``. The m-th-extreme probability
    ``P(Binomial(n, x_m) >= m)`` sums terms ``k = m..n``: element ``k - 1`` supplies term ``k``.
    Sums run in log space per group with ``reduceat``.
    """
    arr = _clean_ps(ps)
    labels = np.asarray(groups).ravel()
    if labels.shape != arr.shape:
        raise ValueError(f"need one group per probability ({arr.size}), got {labels.shape}")
    if arr.size == 0:
        empty = np.zeros(0, dtype=np.float64)
        return GroupAggregates(labels[:0], empty, empty.copy(), empty.copy())
    keys, inv = np.unique(labels, return_inverse=True)
    inv = inv.ravel()
    order = np.lexsort((arr, inv))
    p = arr[order]
    gi = inv[order]
    n_total = p.size
    starts = np.searchsorted(gi, np.arange(keys.size), side="left")
    sizes = np.diff(np.append(starts, n_total))
    pos = np.arange(n_total) - starts[gi]  # 0-based rank within the group
    log_fact = _log_factorials(int(sizes.max()))
    ln_p = np.log(p)
    n_g = sizes[gi].astype(np.float64)

    # Joint probability (Fisher): term k = pos.
    y = -np.add.reduceat(ln_p, starts)
    ln_y = np.log(np.where(y > 0.0, y, 1.0))  # y = 0 only if every p is 1: term 0 alone
    joint_terms = np.where(pos == 0, 0.0, pos * ln_y[gi]) - log_fact[pos]
    log_joint = np.where(y > 0.0, -y + _group_logsumexp(joint_terms, starts, gi), 0.0)
    log_joint = np.minimum(log_joint, 0.0)

    # m-th most extreme, m = lo..hi per group, minimum over m then Sidak for the looks taken.
    hi = np.minimum(max(int(max_extreme), 1), sizes)
    lo = np.minimum(max(int(min_extreme), 1), hi)
    k = (pos + 1).astype(np.float64)  # term k = pos + 1, i.e. 1..n
    nk = n_g - k
    log_choose = log_fact[sizes[gi]] - log_fact[pos + 1] - log_fact[sizes[gi] - pos - 1]
    log_extreme = np.zeros(keys.size, dtype=np.float64)
    for m in range(1, int(hi.max()) + 1):
        valid = (m >= lo) & (m <= hi)
        x = p[np.minimum(starts + m - 1, n_total - 1)]
        ln_x = np.log(x)
        ln_1mx = np.log1p(-np.minimum(x, np.nextafter(1.0, 0.0)))  # x = 1 is handled below
        terms = log_choose + k * ln_x[gi] + nk * ln_1mx[gi]
        terms = np.where(k >= m, terms, -np.inf)
        tail = np.where(x >= 1.0, 0.0, np.minimum(_group_logsumexp(terms, starts, gi), 0.0))
        log_extreme = np.where(valid, np.minimum(log_extreme, tail), log_extreme)
    log_extreme = _log_sidak(log_extreme, (hi - lo + 1).astype(np.float64))

    log_p = joint_weight * log_joint + extreme_weight * log_extreme
    log_p = np.maximum(log_p, math.log(SMALLEST_PROBABILITY))
    probability = np.maximum(np.exp(log_p), SMALLEST_PROBABILITY)
    limit = math.log(MAXIMUM_ANOMALOUS_PROBABILITY)
    quiet = (log_joint > limit) & (log_extreme > limit)
    score = np.where(quiet, 0.0, np.atleast_1d(raw_score(probability)))
    return GroupAggregates(keys, probability, log_p, score)


@dataclass(frozen=True)
class AggregationStyle:
    """Weights and extreme-sample range for one level of the results tree (A.5)."""

    joint_weight: float
    extreme_weight: float
    min_extreme: int
    max_extreme: int

    def aggregate(self, ps: Any) -> AggregateResult:
        """:func:`aggregate` with this style's parameters."""
        return aggregate(
            ps, self.joint_weight, self.extreme_weight, self.max_extreme, self.min_extreme
        )


#: Over / partition values: only the most extreme child counts.
PEOPLE = AggregationStyle(joint_weight=0.0, extreme_weight=1.0, min_extreme=1, max_extreme=1)
#: By values: half joint, half the most extreme of the 1..5 smallest.
ATTRIBUTES = AggregationStyle(joint_weight=0.5, extreme_weight=0.5, min_extreme=1, max_extreme=5)
#: Detectors: half joint, half the single most extreme.
DETECTORS = AggregationStyle(joint_weight=0.5, extreme_weight=0.5, min_extreme=1, max_extreme=1)


# --------------------------------------------------------------------------------------------
# Single- vs multi-bucket (A.5)
# --------------------------------------------------------------------------------------------


def multi_bucket_impact(p_single: Any, p_multi: Any) -> Any:
    """Which feature drove the anomaly, in [-5, +5] (A.4, A.5 "Multi-bucket features").

    Each probability's *significance* is its log distance below the 0.05 significance
    threshold, ``e = max(0, ln 0.05 - ln p)`` (0 for an unremarkable probability). Then

        impact = 5 * (e_multi - e_single) / max(e_single, e_multi)

    i.e. ``-5 * (1 - e_multi / e_single)`` when the single bucket is the more significant and
    ``+5 * (1 - e_single / e_multi)`` otherwise: -5 exactly when only the single-bucket
    probability is significant, +5 when only the multi-bucket one is, 0 when both are equally
    significant or neither is. It is continuous and antisymmetric, and depends only on the ratio
    of the two log-significances, so it does not change when both get more extreme together.
    Scalars give a float, arrays an array. A NaN probability means "that feature was not
    available" (e.g. too little history for the multi-bucket model) and counts as not
    significant.
    """
    ls = _log_significance(p_single)
    lm = _log_significance(p_multi)
    ls, lm = np.broadcast_arrays(ls, lm)
    top = np.maximum(ls, lm)
    safe = np.where(top > 0.0, top, 1.0)
    impact = np.where(top > 0.0, MAX_MULTI_BUCKET_IMPACT * ((lm - ls) / safe), 0.0)
    impact = np.clip(impact, MIN_MULTI_BUCKET_IMPACT, MAX_MULTI_BUCKET_IMPACT) + 0.0
    return float(impact) if impact.ndim == 0 else impact


def _log_significance(p: Any) -> np.ndarray:
    """``max(0, ln 0.05 - ln p)``; 0 for NaN (feature not available)."""
    arr = np.clip(np.asarray(p, dtype=np.float64), SMALLEST_PROBABILITY, 1.0)
    e = np.maximum(_LN_LARGEST_SIGNIFICANT - np.log(arr), 0.0)
    return np.where(np.isnan(arr), 0.0, e)


def combine_single_multi(p_single: Any, p_multi: Any) -> Any:
    """The record probability from the single- and multi-bucket probabilities.

    The record is as anomalous as the more anomalous of the two features, but looking at two
    tests and keeping the smaller p would overstate the evidence, so the minimum is
    Sidak-corrected for two tests: ``1 - (1 - min)^2`` (about ``2 * min`` when small, a factor
    that costs ~0.7 in ``ln p``, i.e. little raw score in the extreme range). The two features
    overlap only in the current bucket (the multi-bucket one averages 12), so treating them as
    close to independent is the honest correction. Result in ``[min, 1]``.

    A NaN probability means "that feature was not available" (e.g. too little history for the
    multi-bucket model): the other one is returned as it is, with no correction (only one test
    was looked at). Both NaN give NaN.
    """
    ps = np.clip(np.asarray(p_single, dtype=np.float64), SMALLEST_PROBABILITY, 1.0)
    pm = np.clip(np.asarray(p_multi, dtype=np.float64), SMALLEST_PROBABILITY, 1.0)
    lo = np.fmin(ps, pm)  # fmin ignores a NaN operand
    with np.errstate(divide="ignore"):  # lo = 1: log1p(-1) = -inf, and the answer is 1
        p = -np.expm1(2.0 * np.log1p(-lo))
    p = np.clip(np.maximum(p, lo), SMALLEST_PROBABILITY, 1.0)
    p = np.where(np.isnan(ps) | np.isnan(pm), lo, p)
    return float(p) if p.ndim == 0 else p


# --------------------------------------------------------------------------------------------
# Normaliser (A.6)
# --------------------------------------------------------------------------------------------


def _raw_scores(values: Any) -> np.ndarray:
    arr = _float_array(values, "raw scores")
    if arr.ndim > 1:
        raise ValueError("raw scores must be 1-D")
    return np.clip(np.atleast_1d(arr), 0.0, MAX_RAW_SCORE)


def _discretise(raw: np.ndarray) -> np.ndarray:
    return np.floor(raw * DISCRETISATION_FACTOR + 0.5).astype(np.int64)


#: The default of ``dict.get`` mapped over scopes: 0.0 for a scope not held.
_ZEROS = itertools.repeat(0.0)


def _scope_list(scopes: Any, n: int) -> list[str]:
    """One scope key (str) per score: None -> the single scope "", a str -> that for all."""
    if scopes is None:
        return [""] * n
    if isinstance(scopes, str):
        return [scopes] * n
    names = scopes.tolist() if isinstance(scopes, np.ndarray) else list(scopes)
    # As numpy's str arrays, in which the scope table is kept, hold them: no trailing NULs.
    # (Checked for all names at once: strings without any NUL, the usual case, are kept.)
    if not (set(map(type, names)) <= {str} and "\x00" not in "".join(names)):
        names = [str(name).rstrip("\x00") for name in names]
    if len(names) != n:
        raise ValueError(f"need one scope per raw score ({n}), got {len(names)}")
    return names


class Normaliser:
    """Raw score -> 0..100 normalised score for one results level of one job (A.6).

    State:

    * a quantile summary of every raw score seen: an exact sparse histogram of the scores
      discretised to 1/1000 (sorted ``int64`` bin keys with ``int64`` counts). Raw scores lie
      in [0, 100], so it holds at most 100,001 bins (<= 1.6 MB) whatever the history length; in
      practice scores cluster and it holds a few thousand. No decay: every score counts forever.
    * per scope (a partition value or a person; any string), the maximum raw score and the
      number of buckets since the scope last had a score; a scope is forgotten after
      ``forget_after`` (50) buckets without one, so the table holds only recently active scopes.

    Call :meth:`update` once per finalised bucket with all its raw scores (including zeros, and
    with empty arrays for a bucket with none, so that scopes age), then :meth:`normalise` the
    same scores. :meth:`normalise` does not change state, so it can also score interim results.

    The normalised score is the minimum of, capped at 100:

    1. *noise ceiling*: ``knot(noise percentile) * max(0, 1 + 10 * multiplier * (raw - noise
       raw))``, where the noise raw score is the noise percentile (median) of the summary and
       ``knot(.)`` interpolates the knot points (0.714 at the 50th percentile), plus
       ``100 * max(0, 2 * min(F(0) / noise fraction, 1) - 1)`` which lifts the ceiling out of
       the way when most scores are zero (then the median says nothing about noise);
    2. *percentile ceiling*: the fraction ``F`` of scores strictly below this one, with a 70%
       Wilson interval ``[lo, hi]`` for ``n`` scores, each end converted to a 30-minute-bucket
       percentile ``100 * P^(1/f)``, ``f = min(1, bucket_span / 1800)``, mapped through the knot
       points and averaged. In the upper tail ``F`` is extrapolated (:meth:`_tail_fraction`):
       above the top ``k`` scores (``k`` = 1% of ``n``, at least 10, at most the number of
       positive scores less one), whose excesses over the next one ``u`` have mean ``beta``,
       ``F = max(F, 1 - (k / n) exp(-(raw - u) / beta))`` (peaks over a threshold with
       exponential excesses, the natural tail of raw scores, which are about ``ln(1/p)``).
       The empirical ``F`` cannot tell a new maximum that barely passes the old one from one
       far beyond anything seen; the tail fit can, so a score far beyond the history reaches
       the top knots sooner, while the Wilson interval (applied to the extrapolated ``F``)
       still keeps short histories from claiming high percentiles. Histories with fewer than
       11 positive scores, or a flat top, are not extrapolated;
    3. *max-score ceiling*: ``100 * min(1.5 r, 0.5 + 0.5 r)``, ``r = raw / max raw of the
       scope`` (not applied to a scope with no positive max);
    4. *probability cap*: :func:`probability_cap`.

    Scores are rounded to 4 decimals. A raw score of 0 always gives 0.
    """

    def __init__(
        self,
        bucket_span: float = 300,
        *,
        noise_percentile: float = NOISE_PERCENTILE,
        noise_multiplier: float = NOISE_MULTIPLIER,
        knots: Any = KNOT_POINTS,
        forget_after: int = FORGET_AFTER_BUCKETS,
    ) -> None:
        if not bucket_span > 0:
            raise ValueError("bucket_span must be positive")
        if not 0.0 < noise_percentile <= 100.0:
            raise ValueError("noise_percentile must be in (0, 100]")
        if not noise_multiplier >= 0.0:
            raise ValueError("noise_multiplier must be >= 0")
        if int(forget_after) < 1:
            raise ValueError("forget_after must be >= 1")
        kn = np.asarray(knots, dtype=np.float64)
        if (
            kn.ndim != 2
            or kn.shape[1] != 2
            or kn.shape[0] < 2
            or kn[0, 0] != 0.0
            or kn[-1, 0] != 100.0
            or np.any(np.diff(kn[:, 0]) <= 0.0)
            or np.any(np.diff(kn[:, 1]) < 0.0)
        ):
            raise ValueError(
                "knots must be (percentile, score) pairs from 0 to 100, percentiles increasing "
                "and scores non-decreasing"
            )
        self.bucket_span = float(bucket_span)
        self.noise_percentile = float(noise_percentile)
        self.noise_multiplier = float(noise_multiplier)
        self.knots: tuple[tuple[float, float], ...] = tuple((float(x), float(y)) for x, y in kn)
        self.forget_after = int(forget_after)
        #: The constants of the C kernels that walk the state and normalise scores.
        self._rules = _normaliser.Rules(
            kn[:, 0], kn[:, 1], self.noise_percentile, self.noise_multiplier,
            1.0 / self.bucket_factor, _Z_PERCENTILE, _Z_PERCENTILE**2, _CAP_SLOPE,
            MAX_NORMALISED_SCORE, float(DISCRETISATION_FACTOR), TAIL_MIN_SCORES)
        self._keys = np.zeros(0, dtype=np.int64)
        self._counts = np.zeros(0, dtype=np.int64)
        self._scopes = np.zeros(0, dtype="<U1")
        self._scope_max = np.zeros(0, dtype=np.float64)
        self._scope_age = np.zeros(0, dtype=np.int64)
        #: ``(scope table, its names as a list, name -> position)`` of the last table
        #: :meth:`_scope_numbers` listed: a walk that changes no scope keeps the table.
        self._scope_cache: tuple[np.ndarray, list[str], dict[str, int]] | None = None
        #: Whether the last :meth:`update` raised some scope's max raw score by more than
        #: ``BIG_CHANGE_FACTOR`` (a new scope with a positive score counts): renormalise.
        self.big_change = False

    # -- introspection ------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Number of raw scores in the quantile summary."""
        return int(self._counts.sum())

    @property
    def bucket_factor(self) -> float:
        """``f = min(1, bucket_span / 1800)``: percentiles are raised to ``1/f``."""
        return min(1.0, self.bucket_span / STANDARD_BUCKET_LENGTH)

    def max_score(self, scope: str = "") -> float | None:
        """The remembered max raw score of ``scope``, or None if unknown or forgotten."""
        idx, found = self._lookup(np.asarray([scope], dtype=str))
        return float(self._scope_max[idx[0]]) if found[0] else None

    def _scope_numbers(self) -> tuple[list[str], dict[str, int]]:
        """The scopes held, as a list and numbered in that order; listed once per table."""
        cached = self._scope_cache
        if cached is None or cached[0] is not self._scopes:
            held = self._scopes.tolist()
            cached = self._scope_cache = (self._scopes, held,
                                          dict(zip(held, range(len(held)), strict=True)))
        return cached[1], cached[2]

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index of each key in the sorted scope table and whether it is there."""
        if self._scopes.size == 0:
            return np.zeros(keys.shape, dtype=np.intp), np.zeros(keys.shape, dtype=bool)
        idx = np.minimum(np.searchsorted(self._scopes, keys), self._scopes.size - 1)
        return idx, self._scopes[idx] == keys

    # -- update -------------------------------------------------------------------------------

    def update(self, raw_scores: Any, scopes: Any = None) -> bool:
        """Add one finalised bucket's raw scores; return (and store in :attr:`big_change`)
        whether some scope's max raw score grew by more than 10%.

        ``scopes``: one string per score, a single string for all, or None (one scope "").
        Raw scores are clipped to [0, 100]; NaN raises. O(n log n), no per-score Python work.
        """
        raw = _raw_scores(raw_scores)
        s = np.asarray(_scope_list(scopes, raw.size), dtype=str)

        if raw.size:
            bins, bin_counts = np.unique(_discretise(raw), return_counts=True)
            keys, inv = np.unique(np.concatenate([self._keys, bins]), return_inverse=True)
            counts = np.zeros(keys.size, dtype=np.int64)
            np.add.at(counts, inv, np.concatenate([self._counts, bin_counts]))
            self._keys, self._counts = keys, counts

        self._scope_age += 1
        big = False
        if raw.size:
            uniq, inv = np.unique(s, return_inverse=True)
            order = np.lexsort((raw, inv))
            last = np.searchsorted(inv[order], np.arange(uniq.size), side="right") - 1
            bucket_max = raw[order][last]
            idx, found = self._lookup(uniq)
            old = np.zeros(uniq.size, dtype=np.float64)
            old[found] = self._scope_max[idx[found]]
            new = np.maximum(old, bucket_max)
            big = bool(np.any(new > BIG_CHANGE_FACTOR * old))
            self._scope_max[idx[found]] = new[found]
            self._scope_age[idx[found]] = 0
            fresh = ~found
            if fresh.any():
                names = np.concatenate([self._scopes, uniq[fresh]])
                maxima = np.concatenate([self._scope_max, new[fresh]])
                ages = np.concatenate([self._scope_age, np.zeros(int(fresh.sum()), dtype=np.int64)])
                order = np.argsort(names, kind="stable")
                self._scopes, self._scope_max, self._scope_age = (
                    names[order],
                    maxima[order],
                    ages[order],
                )
        self._forget_idle_scopes()
        self.big_change = big
        return big

    def _forget_idle_scopes(self) -> None:
        """Drop the scopes that have gone ``forget_after`` buckets without a score."""
        keep = self._scope_age < self.forget_after
        if not keep.all():
            self._scopes = self._scopes[keep]
            self._scope_max = self._scope_max[keep]
            self._scope_age = self._scope_age[keep]

    def update_quiet(self, buckets: int, zeros: int = 0) -> None:
        """``buckets`` finalised buckets in a row whose scores are all 0, ``zeros`` of them
        in all: the quantiles count the zeros and every scope ages by ``buckets``, as that
        many :meth:`update` calls with no positive score would do, in O(scopes)."""
        if buckets <= 0:
            return
        if zeros > 0:
            if self._keys.size and self._keys[0] == 0:
                self._counts = self._counts.copy()
                self._counts[0] += zeros
            else:
                self._keys = np.concatenate([np.zeros(1, dtype=np.int64), self._keys])
                self._counts = np.concatenate([np.array([zeros], dtype=np.int64),
                                               self._counts])
        self._scope_age = self._scope_age + buckets
        self._forget_idle_scopes()
        self.big_change = False

    def walk(self, raw_scores: Any, scopes: Any, step_scores: Any, step_zeros: Any,
             step_buckets: Any) -> tuple[np.ndarray, np.ndarray]:
        """Many finalised buckets in a row, in one call: each *step* is a bucket with scores,
        or a run of buckets without; return every score normalised against the state right
        after its step, and per step whether it was a big change.

        Step ``t`` stands for ``step_buckets[t]`` (>= 1) buckets and adds the next
        ``step_scores[t]`` of ``raw_scores`` (with their ``scopes``) and ``step_zeros[t]``
        zeros that belong to no scope. ``update(scores, scopes)`` then ``normalise(scores,
        scopes)`` is the step ``(len(scores), 0, 1)``, and ``update_quiet(buckets, zeros)``
        the step ``(0, zeros, buckets)``: the scores are identical to such calls bucket by
        bucket, and so is the state afterwards (:attr:`big_change` is the last step's).
        """
        step_buckets = np.ascontiguousarray(step_buckets, dtype=np.int64)
        if step_buckets.size and step_buckets.min() < 1:
            raise ValueError("every step stands for at least one bucket")
        return self.walk_checked(_raw_scores(raw_scores), scopes,
                                 np.ascontiguousarray(step_scores, dtype=np.int64),
                                 np.ascontiguousarray(step_zeros, dtype=np.int64), step_buckets)

    def walk_checked(self, raw: np.ndarray, scopes: Any, step_scores: np.ndarray,
                     step_zeros: np.ndarray, step_buckets: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`walk` of arguments known to be as it makes them: raw scores a 1-D float64
        array in [0, MAX_RAW_SCORE] (as :func:`raw_score` gives them), the steps int64
        arrays of at least one bucket each (the scopes are checked here, as there)."""
        # The scopes held, then the new ones, numbered in that order (a dict: the scopes
        # are few, the entries many).
        held, number = self._scope_numbers()
        names = _scope_list(scopes, raw.size)
        new = [name for name in dict.fromkeys(names) if name not in number]  # in order
        if new:
            number = dict(number)
            number.update(zip(new, range(len(number), len(number) + len(new)), strict=True))
        entry_scope = np.fromiter(map(number.__getitem__, names), dtype=np.int64,
                                  count=raw.size)
        present = np.zeros(len(number), dtype=np.uint8)
        scope_max = np.zeros(len(number), dtype=np.float64)
        scope_age = np.zeros(len(number), dtype=np.int64)
        present[:len(held)], scope_max[:len(held)], scope_age[:len(held)] = (
            1, self._scope_max, self._scope_age)
        # The kernel discretises the scores and walks a dense histogram over the keys held
        # or about to be; the keys left with scores come back.
        scores, big, self._keys, self._counts = _normaliser.walk_raw(
            self._rules, self._keys, self._counts, raw, entry_scope, step_scores, step_zeros,
            step_buckets, present, scope_max, scope_age, self.forget_after, TAIL_FRACTION)
        if not new and present.all():
            # The same scopes, in the same order: the table (and its listing) stays.
            self._scope_max, self._scope_age = scope_max, scope_age
        else:
            names = held + new
            alive = sorted(np.flatnonzero(present).tolist(), key=names.__getitem__)
            self._scopes = (np.array([names[i] for i in alive], dtype=str) if alive
                            else np.zeros(0, dtype="<U1"))
            self._scope_max, self._scope_age = scope_max[alive], scope_age[alive]
        if step_buckets.size:
            self.big_change = bool(big[-1])
        return scores, big

    # -- normalise ----------------------------------------------------------------------------

    def normalise(
        self, raw_scores: Any, scopes: Any = None, probabilities: Any = None
    ) -> np.ndarray:
        """Normalised scores (0..100, 4 decimals) for raw scores, against the current state.

        ``scopes`` as in :meth:`update`. ``probabilities`` (optional, one per score) feed the
        probability cap; when None, each score's probability is recovered from the raw score
        with :func:`inverse_raw_score`, which is what ES does and is right for aggregated
        results whose raw score is :func:`raw_score` of their probability. Before any
        :meth:`update` there is nothing to calibrate against and every score is 0.
        """
        raw = _raw_scores(raw_scores)
        n = self.count
        if raw.size == 0 or n == 0:
            return np.zeros(raw.shape, dtype=np.float64)
        d = _discretise(raw)
        cum = np.concatenate([[0], np.cumsum(self._counts)])
        q = self.noise_percentile / 100.0
        j = min(int(np.searchsorted(cum[1:], q * n, side="left")), self._keys.size - 1)
        zeros = int(self._counts[0]) if self._keys[0] == 0 else 0
        below = cum[np.searchsorted(self._keys, d, side="left")]
        held = dict(zip(self._scope_numbers()[0], self._scope_max.tolist(), strict=True))
        scope_max = np.fromiter(map(held.get, _scope_list(scopes, raw.size), _ZEROS),
                                dtype=np.float64, count=raw.size)
        tail_k, tail_u, tail_excess = self._tail(n, zeros)
        cap = None
        if probabilities is not None:
            p = _float_array(probabilities, "probabilities")
            if p.shape != raw.shape:
                raise ValueError(f"need one probability per raw score ({raw.size})")
            cap = np.atleast_1d(np.asarray(probability_cap(p), dtype=np.float64))
        return _normaliser.scores(self._rules, raw, d, cap, n, zeros, int(self._keys[j]),
                                  below, scope_max, tail_k, tail_u, tail_excess)

    def _tail(self, n: int, zeros: int) -> tuple[int, int, int]:
        """The tail fit of the histogram: ``k`` (1% of ``n``, at least ``TAIL_MIN_SCORES``,
        at most the positive scores less one; below the minimum: no fit), the (k + 1)-th
        largest score ``u`` and the excess of the k largest over ``u``, summed."""
        k = min(max(TAIL_MIN_SCORES, int(TAIL_FRACTION * n)), n - zeros - 1)
        if k < TAIL_MIN_SCORES:
            return k, 0, 0
        # the k + 1 largest scores (with multiplicity), from the top of the histogram
        rev_keys, rev_counts = self._keys[::-1], self._counts[::-1]
        j = int(np.searchsorted(np.cumsum(rev_counts), k + 1, side="left"))
        top = np.repeat(rev_keys[: j + 1], rev_counts[: j + 1])[: k + 1]
        u = int(top[k])
        return k, u, int(np.sum(top[:k] - u))

    # -- state --------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """The complete state as plain JSON-able values (ints, floats, strs, lists).

        ``json.dumps`` / ``json.loads`` round-trips it exactly (floats are written with
        ``repr``), and :meth:`from_state` rebuilds a normaliser that scores identically.
        """
        return {
            "version": _STATE_VERSION,
            "bucket_span": self.bucket_span,
            "noise_percentile": self.noise_percentile,
            "noise_multiplier": self.noise_multiplier,
            "knots": [[x, y] for x, y in self.knots],
            "forget_after": self.forget_after,
            "bins": self._keys.tolist(),
            "counts": self._counts.tolist(),
            "scopes": self._scopes.tolist(),
            "scope_max": self._scope_max.tolist(),
            "scope_age": self._scope_age.tolist(),
            "big_change": self.big_change,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Normaliser:
        """Rebuild a normaliser from :meth:`to_state` output; malformed state raises
        :class:`ValueError`."""
        try:
            if state["version"] != _STATE_VERSION:
                raise ValueError(f"unsupported normaliser state version {state['version']!r}")
            norm = cls(
                state["bucket_span"],
                noise_percentile=state["noise_percentile"],
                noise_multiplier=state["noise_multiplier"],
                knots=state["knots"],
                forget_after=state["forget_after"],
            )
            keys = np.asarray(state["bins"], dtype=np.int64).reshape(-1)
            counts = np.asarray(state["counts"], dtype=np.int64).reshape(-1)
            scopes = np.asarray(state["scopes"], dtype=str).reshape(-1)
            if scopes.size == 0:
                scopes = np.zeros(0, dtype="<U1")
            scope_max = np.asarray(state["scope_max"], dtype=np.float64).reshape(-1)
            scope_age = np.asarray(state["scope_age"], dtype=np.int64).reshape(-1)
            big_change = bool(state["big_change"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed normaliser state: {exc!r}") from exc
        if (
            keys.size != counts.size
            or np.any(np.diff(keys) <= 0)
            or np.any(keys < 0)
            or np.any(keys > DISCRETISATION_FACTOR * int(MAX_RAW_SCORE))
            or np.any(counts <= 0)
        ):
            raise ValueError("malformed normaliser state: bad quantile histogram")
        if (
            not scopes.size == scope_max.size == scope_age.size
            or (scopes.size > 1 and not np.all(scopes[:-1] < scopes[1:]))
            or np.isnan(scope_max).any()
            or np.any(scope_age < 0)
        ):
            raise ValueError("malformed normaliser state: bad scope table")
        norm._keys, norm._counts = keys, counts
        norm._scopes, norm._scope_max, norm._scope_age = scopes, scope_max, scope_age
        norm.big_change = big_change
        return norm
