"""Score layer (analysis.md A.4-A.6): raw scores, aggregation, severity and the normaliser.

Expected values are worked out by hand from the spec's formulas (written out again here, not
taken from the module), or are properties the spec demands (monotone, bounded, 0 -> 0, exact
state round trip).
"""

from __future__ import annotations

import itertools
import json
import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adjobs import scoring
from adjobs.scoring import (
    ATTRIBUTES,
    DETECTORS,
    PEOPLE,
    Normaliser,
    aggregate,
    aggregate_groups,
    big_updates,
    chi2_sf,
    combine_single_multi,
    extreme_probability,
    inverse_raw_score,
    joint_probability,
    multi_bucket_impact,
    probability_cap,
    raw_score,
    severity,
)

TINY = 2.2250738585072014e-308  # smallest positive normal double
LN_1E4 = 4 * math.log(10)
LN_1E50 = 50 * math.log(10)
LN_TINY = -math.log(TINY)

probs = st.floats(min_value=1e-300, max_value=1.0, allow_nan=False)
unit_probs = st.floats(min_value=1e-12, max_value=1.0, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------


def one_minus_pow(q: float, k: int) -> float:
    """1 - (1 - q)^k without cancellation for small q."""
    return 1.0 if q >= 1.0 else -math.expm1(k * math.log1p(-q))


def ref_joint(ps: list[float]) -> float:
    """Fisher: P(chi2_{2n} >= -2 sum ln p) = exp(-y) sum_{k<n} y^k / k!, y = -sum ln p."""
    y = -math.fsum(math.log(p) for p in ps)
    return math.exp(-y) * math.fsum(y**k / math.factorial(k) for k in range(len(ps)))


def ref_extreme(ps: list[float], m: int) -> float:
    """P(Binomial(n, x) >= m) with x the m-th smallest p."""
    n = len(ps)
    x = sorted(ps)[m - 1]
    return math.fsum(math.comb(n, k) * x**k * (1 - x) ** (n - k) for k in range(m, n + 1))


def ref_aggregate(ps: list[float], wj: float, we: float, lo: int, hi: int) -> tuple[float, float]:
    n = len(ps)
    hi = min(hi, n)
    lo = min(lo, hi)
    pj = ref_joint(ps)
    pe_min = min(ref_extreme(ps, m) for m in range(lo, hi + 1))
    k = hi - lo + 1
    pe = one_minus_pow(pe_min, k)
    p = pj**wj * pe**we
    score = 0.0 if (pj > 0.035 and pe > 0.035) else float(raw_score(p))
    return p, score


def ref_wilson(frac: float, n: int) -> tuple[float, float]:
    z = NormalDist().inv_cdf(0.85)
    denom = 1 + z * z / n
    centre = (frac + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(frac * (1 - frac) / n + z * z / (4 * n * n))
    return centre - half, centre + half


KNOTS = [(0, 0), (70, 1), (85, 1.2), (90, 1.5), (95, 3), (97, 20), (99, 50), (99.9, 90), (100, 100)]


def ref_knot(pct: float) -> float:
    for (x0, y0), (x1, y1) in itertools.pairwise(KNOTS):
        if pct <= x1:
            return y0 + (y1 - y0) * (pct - x0) / (x1 - x0)
    return 100.0


# ---------------------------------------------------------------------------------------------
# raw_score / inverse_raw_score (A.5)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (1.0, 0.0),
        (0.5, 0.0),
        (0.05, 0.0),
        (0.01, (100 - 20) / 9980),
        (1e-3, (1000 - 20) / 9980),
        (1e-4, 1.0),
        (1e-27, 25.5),  # 1 + 49 * (27 - 4) / (50 - 4)
        (1e-50, 50.0),
        (1e-179, 50 + 50 * (179 * math.log(10) - LN_1E50) / (LN_TINY - LN_1E50)),
        (TINY, 100.0),
    ],
)
def test_raw_score_worked_values(p, expected):
    assert raw_score(p) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_raw_score_clamps_and_shapes():
    out = raw_score(np.array([0.0, -1.0, 2.0, 5e-324]))
    assert out.tolist() == [100.0, 100.0, 0.0, 100.0]
    assert isinstance(raw_score(0.01), float)
    assert raw_score(np.array([[0.01]])).shape == (1, 1)


def test_raw_score_nan_raises():
    with pytest.raises(ValueError, match="NaN"):
        raw_score([0.1, float("nan")])


@pytest.mark.parametrize("knot", [0.05, 1e-4, 1e-50])
def test_raw_score_continuous_at_knots(knot):
    below, above = np.nextafter(knot, 0.0), np.nextafter(knot, 1.0)
    assert raw_score(below) == pytest.approx(raw_score(knot), abs=1e-9)
    assert raw_score(above) == pytest.approx(raw_score(knot), abs=1e-9)


@given(st.lists(probs, min_size=2, max_size=50))
def test_raw_score_non_increasing_and_bounded(ps):
    p = np.sort(np.array(ps))
    r = raw_score(p)
    assert np.all(np.diff(r) <= 0.0)
    assert np.all((r >= 0.0) & (r <= 100.0))


@given(st.floats(min_value=1e-6, max_value=100.0))
def test_inverse_raw_score_round_trips(score):
    assert raw_score(inverse_raw_score(score)) == pytest.approx(score, rel=1e-9, abs=1e-12)


def test_inverse_raw_score_values():
    assert inverse_raw_score(0.0) == 0.05
    assert inverse_raw_score(1.0) == pytest.approx(1e-4, rel=1e-12)
    assert inverse_raw_score(50.0) == pytest.approx(1e-50, rel=1e-12)
    assert inverse_raw_score(100.0) == pytest.approx(TINY, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# probability_cap (A.6 item 4)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "expected", "tol"),
    [(0.05, 5.0, 1e-9), (0.01, 29.6, 0.05), (1e-3, 64.8, 0.05), (1e-4, 100.0, 1e-9)],
)
def test_probability_cap_worked_values(p, expected, tol):
    assert probability_cap(p) == pytest.approx(expected, abs=tol)


def test_probability_cap_exact_formula_and_clipping():
    m = 1 / (math.log(1e-4) - math.log(0.05))
    assert m == pytest.approx(-0.1609, abs=1e-4)
    assert probability_cap(0.01) == pytest.approx(
        100 * (0.95 * m * (math.log(0.01) - math.log(0.05)) + 0.05), rel=1e-12
    )
    assert probability_cap(1e-20) == 100.0
    assert probability_cap(1.0) == 0.0
    assert 0.0 < probability_cap(0.06) < 5.0


@given(st.lists(probs, min_size=2, max_size=30))
def test_probability_cap_non_increasing(ps):
    caps = probability_cap(np.sort(np.array(ps)))
    assert np.all(np.diff(caps) <= 0.0)
    assert np.all((caps >= 0.0) & (caps <= 100.0))


# ---------------------------------------------------------------------------------------------
# severity (A.4)
# ---------------------------------------------------------------------------------------------


def test_severity_band_edges():
    scores = [0, 24.99, 25, 49.99, 50, 74.99, 75, 100]
    expected = ["warning", "warning", "minor", "minor", "major", "major", "critical", "critical"]
    assert severity(np.array(scores)).tolist() == expected
    assert severity(75.0) == "critical"
    assert severity(24.99) == "warning"
    with pytest.raises(ValueError):
        severity(float("nan"))


@pytest.mark.parametrize(("old", "new", "big"), [
    (10.0, 11.4, False),  # the same band, under 1.5, neither below a third of the other
    (10.0, 11.5, True),  # 1.5 or more
    (11.5, 10.0, True),
    (24.9, 25.1, True),  # into another band, by 0.2
    (74.99, 75.0, True),
    (99.0, 100.0, True),  # 100 is a band of its own (ES divides as integers)
    (1.0, 0.34, False),
    (1.0, 0.33, False),  # 0.33 times the old one is not below it
    (1.0, 0.32, True),
    (0.32, 1.0, True),
    (0.0, 0.5, True),  # anything from 0 is more than three times it
    (0.0, 0.0, False),
    (50.0, 50.0, False),
])
def test_big_updates_are_the_renormalised_scores_es_writes(old, new, big):
    assert big_updates(old, new).tolist() == big
    assert big_updates([old, 50.0], [new, 50.0]).tolist() == [big, False]


# ---------------------------------------------------------------------------------------------
# Aggregation (A.5)
# ---------------------------------------------------------------------------------------------


def test_chi2_sf_known_values():
    # dof 2: exp(-x/2); tabulated 5% critical values for 4 and 10 dof.
    assert chi2_sf(3.0, 2) == pytest.approx(math.exp(-1.5), rel=1e-12)
    assert chi2_sf(9.4877, 4) == pytest.approx(0.05, abs=2e-5)
    assert chi2_sf(18.307, 10) == pytest.approx(0.05, abs=2e-5)
    assert chi2_sf(0.0, 6) == 1.0
    with pytest.raises(ValueError):
        chi2_sf(1.0, 3)


def test_joint_probability_two_values_by_hand():
    # y = -ln(0.01) = 4.60517; Q = e^-y (1 + y) = 0.01 * 5.60517
    assert joint_probability([0.1, 0.1]) == pytest.approx(0.0560517019, rel=1e-9)
    assert joint_probability([1.0, 1.0, 1.0]) == 1.0
    assert joint_probability([]) == 1.0


@given(probs)
def test_joint_probability_of_one_is_itself(p):
    assert joint_probability([p]) == pytest.approx(p, rel=1e-9)


@given(st.lists(st.floats(min_value=1e-8, max_value=1.0), min_size=1, max_size=12))
def test_joint_probability_matches_fisher_reference(ps):
    got = joint_probability(ps)
    assert got == pytest.approx(ref_joint(ps), rel=1e-8, abs=1e-300)
    assert math.prod(ps) * (1 - 1e-9) <= got <= 1.0


def test_joint_probability_extreme_inputs_stay_finite():
    assert joint_probability([1e-300] * 1000) == TINY
    assert 0.0 < joint_probability(np.full(100_000, 0.5)) <= 1.0
    assert joint_probability(np.full(10_000, 0.999)) == pytest.approx(1.0, abs=1e-12)


@given(st.lists(unit_probs, min_size=1, max_size=40))
def test_extreme_probability_m1(ps):
    n = len(ps)
    expected = one_minus_pow(min(ps), n)
    assert extreme_probability(ps, 1) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_extreme_probability_by_hand():
    ps = [0.3, 0.1, 0.2]
    # m = 2: x = 0.2, P(Bin(3, .2) >= 2) = 3 * .04 * .8 + .008
    assert extreme_probability(ps, 2) == pytest.approx(0.104, rel=1e-12)
    # m = n: x = max, P = x^n
    assert extreme_probability(ps, 3) == pytest.approx(0.027, rel=1e-12)
    # m above n is clamped to n
    assert extreme_probability(ps, 7) == pytest.approx(0.027, rel=1e-12)
    assert extreme_probability([], 1) == 1.0


@given(st.lists(unit_probs, min_size=1, max_size=15), st.integers(1, 15))
def test_extreme_probability_matches_binomial_reference(ps, m):
    m = min(m, len(ps))
    assert extreme_probability(ps, m) == pytest.approx(ref_extreme(ps, m), rel=1e-8, abs=1e-300)



@given(st.lists(st.lists(unit_probs, max_size=12), max_size=30))
def test_least_extreme_probabilities_equal_one_call_per_group_bit_for_bit(groups):
    batched = scoring.least_extreme_probabilities([np.array(ps) for ps in groups])
    one_by_one = [extreme_probability(ps, 1) for ps in groups]
    assert batched.tolist() == one_by_one


def test_least_extreme_probabilities_by_hand():
    # 1 - (1 - 0.1)^3 = 0.271; one value is itself; empty and all-ones groups give 1;
    # a probability of 0 is clamped to the smallest normal double.
    out = scoring.least_extreme_probabilities(
        [np.array([0.3, 0.1, 0.2]), np.array([0.25]), np.array([]), np.array([1.0, 1.0]),
         np.array([0.0, 0.5])])
    assert out[0] == pytest.approx(0.271, rel=1e-12)
    assert out[1] == pytest.approx(0.25, rel=1e-15)
    assert out[2:4].tolist() == [1.0, 1.0]
    assert out[4] == pytest.approx(2 * TINY, rel=1e-12)


def test_extreme_probability_terms_are_cached_read_only_and_answer_the_same():
    ps = [0.3, 0.1, 0.2]
    first = extreme_probability(ps, 2)
    log_choose, k, rest = scoring._binomial_tail_terms(3, 2)
    # ln C(3, k) for k = 2, 3, and n - k
    assert np.exp(log_choose).tolist() == pytest.approx([3.0, 1.0], rel=1e-12)
    assert k.tolist() == [2.0, 3.0] and rest.tolist() == [1.0, 0.0]
    assert not log_choose.flags.writeable
    assert scoring._binomial_tail_terms(3, 2)[0] is log_choose  # the cached arrays
    assert extreme_probability(ps, 2) == first == pytest.approx(0.104, rel=1e-12)
    # x = 1 (every p is 1) short-cuts to probability 1
    assert extreme_probability([1.0, 1.0], 1) == 1.0

def test_style_presets():
    assert (PEOPLE.joint_weight, PEOPLE.extreme_weight) == (0.0, 1.0)
    assert (PEOPLE.min_extreme, PEOPLE.max_extreme) == (1, 1)
    assert (ATTRIBUTES.joint_weight, ATTRIBUTES.extreme_weight) == (0.5, 0.5)
    assert (ATTRIBUTES.min_extreme, ATTRIBUTES.max_extreme) == (1, 5)
    assert (DETECTORS.joint_weight, DETECTORS.extreme_weight) == (0.5, 0.5)
    assert (DETECTORS.min_extreme, DETECTORS.max_extreme) == (1, 1)
    assert scoring.MAXIMUM_ANOMALOUS_PROBABILITY == 0.035


@pytest.mark.parametrize("style", [PEOPLE, ATTRIBUTES, DETECTORS])
@given(p=probs)
def test_aggregate_single_probability_returns_it(style, p):
    res = style.aggregate([p])
    assert res.probability == pytest.approx(p, rel=1e-9)
    expected_score = 0.0 if p > 0.035 else float(raw_score(p))
    assert res.raw_score == pytest.approx(expected_score, rel=1e-9, abs=1e-12)


def test_aggregate_detectors_by_hand():
    # pj: y = -(ln .01 + ln .5) = 5.29832, Q = e^-y (1 + y) = .005 * 6.29832
    # pe: 1 - .99^2 = .0199; p = sqrt(pj pe)
    pj = 0.005 * (1 + math.log(200))
    pe = 0.0199
    p = math.sqrt(pj * pe)
    res = DETECTORS.aggregate([0.01, 0.5])
    assert p == pytest.approx(0.025033, rel=1e-4)
    assert res.probability == pytest.approx(p, rel=1e-9)
    assert res.log_probability == pytest.approx(math.log(p), rel=1e-9)
    assert res.raw_score == pytest.approx((1 / p - 20) / 9980, rel=1e-9)


def test_aggregate_attributes_takes_min_over_m_with_sidak():
    ps = [0.001, 0.002, 0.9]
    y = -(math.log(0.001) + math.log(0.002) + math.log(0.9))
    pj = math.exp(-y) * (1 + y + y * y / 2)
    pe_m2 = 3 * 0.002**2 * 0.998 + 0.002**3  # m = 2 is the smallest of m = 1, 2, 3
    assert pe_m2 < 1 - 0.999**3 and pe_m2 < 0.9**3
    pe = 1 - (1 - pe_m2) ** 3
    res = ATTRIBUTES.aggregate(ps)
    assert res.probability == pytest.approx(math.sqrt(pj * pe), rel=1e-9)
    assert res.raw_score == pytest.approx(float(raw_score(math.sqrt(pj * pe))), rel=1e-9)


def test_aggregate_zero_when_both_above_threshold():
    res = DETECTORS.aggregate([0.2, 0.3])
    pj = 0.06 * (1 - math.log(0.06))
    pe = 1 - 0.8**2
    assert res.probability == pytest.approx(math.sqrt(pj * pe), rel=1e-9)
    assert res.raw_score == 0.0


def test_aggregate_joint_alone_can_make_it_anomalous():
    ps = [0.1] * 20
    pj = ref_joint(ps)
    pe = 1 - 0.9**20
    assert pj < 0.035 < pe
    res = DETECTORS.aggregate(ps)
    p = math.sqrt(pj * pe)
    assert res.probability == pytest.approx(p, rel=1e-9)
    assert res.raw_score == pytest.approx(float(raw_score(p)), rel=1e-9)
    assert res.raw_score > 0.0


def test_aggregate_people_is_extreme_m1():
    ps = [0.04, 0.2, 0.7, 0.01]
    res = PEOPLE.aggregate(ps)
    assert res.probability == pytest.approx(1 - 0.99**4, rel=1e-12)
    assert aggregate([], 0.5, 0.5, 1) == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        aggregate([0.1, float("nan")], 0.5, 0.5, 1)


@settings(deadline=None)
@given(
    st.lists(st.tuples(st.floats(1e-9, 1.0), st.integers(0, 6)), min_size=1, max_size=40),
    st.sampled_from([PEOPLE, ATTRIBUTES, DETECTORS]),
)
def test_aggregate_groups_matches_reference_per_group(rows, style):
    ps = [p for p, _ in rows]
    groups = [f"g{g}" for _, g in rows]
    res = aggregate_groups(
        ps, groups, style.joint_weight, style.extreme_weight, style.max_extreme, style.min_extreme
    )
    assert res.groups.tolist() == sorted(set(groups))
    for i, g in enumerate(res.groups):
        sub = [p for p, lab in zip(ps, groups, strict=True) if lab == g]
        p, score = ref_aggregate(
            sub, style.joint_weight, style.extreme_weight, style.min_extreme, style.max_extreme
        )
        assert res.probability[i] == pytest.approx(p, rel=1e-7, abs=1e-300)
        assert res.raw_score[i] == pytest.approx(score, rel=1e-7, abs=1e-9)


def test_aggregate_groups_empty_and_shape_errors():
    res = aggregate_groups([], [], 0.5, 0.5, 1)
    assert res.probability.size == 0 and res.groups.size == 0
    with pytest.raises(ValueError):
        aggregate_groups([0.1, 0.2], ["a"], 0.5, 0.5, 1)


# ---------------------------------------------------------------------------------------------
# Single vs multi bucket (A.5)
# ---------------------------------------------------------------------------------------------


def test_multi_bucket_impact_values():
    assert multi_bucket_impact(1e-6, 0.5) == -5.0
    assert multi_bucket_impact(0.5, 1e-6) == 5.0
    assert multi_bucket_impact(1e-6, 1e-6) == 0.0
    assert multi_bucket_impact(0.2, 0.9) == 0.0
    # e_single = ln(.05 / 1e-4) = ln 500, e_multi = ln(.05 / 1e-8) = ln 5e6
    expected = 5 * (1 - math.log(500) / math.log(5e6))
    assert expected == pytest.approx(2.98553, abs=1e-5)
    assert multi_bucket_impact(1e-4, 1e-8) == pytest.approx(expected, rel=1e-12)
    assert multi_bucket_impact(1e-8, 1e-4) == pytest.approx(-expected, rel=1e-12)
    out = multi_bucket_impact(np.array([1e-6, 0.5]), np.array([0.5, 1e-6]))
    assert out.tolist() == [-5.0, 5.0]


@given(unit_probs, unit_probs)
def test_multi_bucket_impact_bounded_antisymmetric(ps, pm):
    a = multi_bucket_impact(ps, pm)
    assert -5.0 <= a <= 5.0
    assert multi_bucket_impact(pm, ps) == pytest.approx(-a, abs=1e-12)
    if ps < 0.05 <= pm:
        assert a == -5.0


def test_combine_single_multi_values():
    assert combine_single_multi(1e-6, 0.5) == pytest.approx(1 - (1 - 1e-6) ** 2, rel=1e-9)
    assert combine_single_multi(0.3, 0.5) == pytest.approx(0.51, rel=1e-12)
    assert combine_single_multi(1e-300, 1e-200) == pytest.approx(2e-300, rel=1e-9)


def test_nan_means_feature_not_available():
    nan = float("nan")
    assert combine_single_multi(1e-6, nan) == 1e-6
    assert combine_single_multi(nan, 0.3) == 0.3
    assert math.isnan(combine_single_multi(nan, nan))
    out = combine_single_multi(np.array([0.3, nan]), np.array([0.5, 1e-3]))
    assert out.tolist() == [pytest.approx(0.51, rel=1e-12), 1e-3]
    assert multi_bucket_impact(1e-6, nan) == -5.0
    assert multi_bucket_impact(nan, 1e-6) == 5.0
    assert multi_bucket_impact(0.5, nan) == 0.0


@given(unit_probs, unit_probs)
def test_combine_single_multi_between_min_and_twice_min(ps, pm):
    p = combine_single_multi(ps, pm)
    lo = min(ps, pm)
    assert lo <= p <= min(1.0, 2 * lo) * (1 + 1e-12)
    assert p == combine_single_multi(pm, ps)


# ---------------------------------------------------------------------------------------------
# Normaliser (A.6)
# ---------------------------------------------------------------------------------------------


def test_empty_normaliser_scores_zero():
    norm = Normaliser(300)
    assert norm.normalise([0.0, 1.0, 50.0]).tolist() == [0.0, 0.0, 0.0]
    assert norm.count == 0


def test_noise_ceiling_by_hand():
    # History: 100 scores of 0.5, none zero, so the median is 0.5 and nothing relaxes the
    # noise ceiling: knot(50) = 50/70, ceiling = 50/70 * (1 + 10 * (2.0 - 0.5)) = 11.4286.
    # Scope "b" has no max; p(raw 2) ~ 1.2e-5 < 1e-4 caps at 100; percentile ceiling ~74.5.
    norm = Normaliser(1800)
    norm.update([0.5] * 100, "a")
    assert norm.normalise([2.0], "b").tolist() == [round(50 / 70 * 16, 4)]


def test_percentile_ceiling_by_hand():
    # History: 60 zeros and 40 scores of 0.5 in scope "a". Raw 0.5: 60 of 100 strictly below.
    # Noise ceiling relaxed (+100: F(0) = .6 >= .5); max ceiling 100 (r = 1); probability cap
    # at p = 1/5010 is ~89.4. The percentile ceiling is the binding one.
    for span, power in [(1800, 1.0), (3600, 1.0), (300, 6.0)]:
        norm = Normaliser(span)
        norm.update([0.0] * 60 + [0.5] * 40, "a")
        lo, hi = ref_wilson(0.6, 100)
        expected = (ref_knot(100 * lo**power) + ref_knot(100 * hi**power)) / 2
        got = norm.normalise([0.5], "a")[0]
        assert got == pytest.approx(expected, abs=1e-4)
    assert Normaliser(1800).bucket_factor == 1.0
    assert Normaliser(300).bucket_factor == pytest.approx(1 / 6)


def test_percentile_tail_is_extrapolated_by_hand():
    # 980 zeros, ten 1.0s, ten 2.0s, then the query 5.0 (a job updates before it normalises):
    # n = 1001 with 21 positive scores, so k = max(10, 1% of n) = 10. The top 11 are 5.0 and
    # ten 2.0s, so u = 2.0; the mean excess over u is beta = 0.3, so the tail beyond 5.0 is
    # (10 / 1001) exp(-3 / 0.3), far below the empirical 1 - 1000/1001. Noise (mostly zeros),
    # max (r = 1) and probability (p << 1e-4) ceilings are all 100: the percentile one binds.
    norm = Normaliser(1800)
    norm.update([0.0] * 980 + [1.0] * 10 + [2.0] * 10, "a")
    norm.update([5.0], "a")
    frac = 1.0 - (10 / 1001) * math.exp(-3.0 / 0.3)
    lo, hi = ref_wilson(frac, 1001)
    expected = (ref_knot(100 * lo) + ref_knot(100 * hi)) / 2
    assert norm.normalise([5.0], "a")[0] == pytest.approx(expected, abs=1e-4)
    # Below u nothing changes: 2.0 has 990 of 1001 scores strictly below it.
    lo, hi = ref_wilson(990 / 1001, 1001)
    assert norm.normalise([2.0], "a")[0] == pytest.approx(
        (ref_knot(100 * lo) + ref_knot(100 * hi)) / 2, abs=1e-4)


def test_far_beyond_the_history_scores_higher_than_just_beyond_it():
    # The empirical percentile of a new maximum is the same however far it lies beyond the
    # previous one; the tail fit is not. 5-minute buckets, 3,000 scores of history.
    rng = np.random.default_rng(3)
    history = np.where(rng.uniform(size=3000) < 0.05, rng.exponential(0.3, size=3000), 0.0)
    top = float(history.max())
    scores = []
    for query in (top + 0.01, top + 3.0):
        norm = Normaliser(300)
        norm.update(history, "a")
        norm.update([query], "a")
        scores.append(norm.normalise([query], "a")[0])
    assert scores[1] > scores[0] + 5.0
    assert scores[1] > 75.0


def test_max_score_ceiling_by_hand():
    # 10,000 zeros and one 10: percentile ceilings ~98, noise relaxed, p << 1e-4 so cap 100.
    norm = Normaliser(1800)
    norm.update([0.0] * 10_000 + [10.0], "a")
    out = norm.normalise([5.0, 2.0], ["a", "a"])
    assert out.tolist() == [75.0, 30.0]  # 100 * min(1.5 r, .5 + .5 r) at r = .5, .2
    assert norm.max_score("a") == 10.0


def test_probability_cap_binds_for_moderate_probability():
    norm = Normaliser(1800)
    norm.update([0.0] * 10_000, "a")
    r = float(raw_score(0.01))
    norm.update([r], "a")
    assert norm.normalise([r], "a")[0] == round(probability_cap(0.01), 4) == 29.6028
    # An explicit probability feeds the cap instead of the one implied by the raw score.
    assert norm.normalise([r], "a", probabilities=[0.05])[0] == 5.0


def test_largest_ever_with_small_p_and_long_history_scores_near_100():
    rng = np.random.default_rng(7)
    for span, floor in [(1800, 95.0), (300, 90.0)]:
        norm = Normaliser(span)
        for _ in range(300):
            norm.update(raw_score(rng.uniform(size=100)), [f"e{i}" for i in range(100)])
        top = float(raw_score(1e-6))
        norm.update([top], "e3")
        score = norm.normalise([top], "e3")[0]
        assert floor <= score <= 100.0


def test_early_on_unusual_events_stay_low():
    norm = Normaliser(300)
    for _ in range(3):
        norm.update([0.0], "x")
    for p in (1e-3, 1e-8):
        r = float(raw_score(p))
        norm.update([r], "x")
        assert norm.normalise([r], "x")[0] < 25.0


def test_scopes_keep_separate_maxima():
    norm = Normaliser(1800)
    norm.update([0.0] * 10_000, "z")
    norm.update([10.0, 1.0], ["a", "b"])
    assert norm.max_score("a") == 10.0 and norm.max_score("b") == 1.0
    out = norm.normalise([1.0, 1.0], ["a", "b"])
    assert out[0] == pytest.approx(15.0)  # r = .1: 100 * 1.5 * .1
    assert out[1] > 90.0


def test_scopes_are_named_as_numpy_str_arrays_hold_them():
    # Trailing NULs are dropped and other objects made strs, as a numpy str array would:
    # the scope table is one; names that are plain strs without a NUL are taken as they are.
    norm = Normaliser(1800)
    norm.update([0.0] * 10_000, "z")
    norm.update([10.0, 1.0, 4.0], ["a", "b", "c\x00d"])
    clean = norm.normalise([1.0, 1.0, 1.0, 1.0], ["a", "b", "c\x00d", "new"])
    assert clean[0] == pytest.approx(15.0) and clean[1] > 90.0 and clean[3] > 90.0
    assert clean[2] != clean[3]  # a NUL inside a name is part of it
    for names in (["a\x00", np.str_("b"), "c\x00d", "new\x00\x00"],
                  np.array(["a", "b", "c\x00d", "new"])):
        assert norm.normalise([1.0, 1.0, 1.0, 1.0], names).tolist() == clean.tolist()


def test_big_change():
    norm = Normaliser(300)
    assert norm.update([1.0], "a") is True  # new scope with a positive score
    assert norm.update([1.05], "a") is False
    assert norm.big_change is False
    assert norm.update([1.2], "a") is True
    assert norm.big_change is True
    assert norm.update([0.0, 1.3], ["b", "a"]) is False  # 1.3 < 1.1 * 1.2; b stays at 0
    assert norm.update([0.0], "c") is False


def test_scope_forgotten_after_50_buckets_without_a_value():
    norm = Normaliser(300)
    norm.update([3.0], "a")
    for _ in range(49):
        norm.update([0.0], "b")
    assert norm.max_score("a") == 3.0
    norm.update([], None)  # an empty bucket ages scopes too
    assert norm.max_score("a") is None
    assert norm.max_score("b") == 0.0
    assert norm.update([3.0], "a") is True  # it comes back as a new scope


def test_bad_inputs_raise():
    norm = Normaliser(300)
    with pytest.raises(ValueError):
        norm.update([float("nan")])
    with pytest.raises(ValueError):
        norm.update([1.0, 2.0], ["a"])
    norm.update([1.0])
    with pytest.raises(ValueError):
        norm.normalise([1.0], None, [0.1, 0.2])
    with pytest.raises(ValueError):
        Normaliser(0)
    with pytest.raises(ValueError):
        Normaliser.from_state({"version": 99})
    with pytest.raises(ValueError):
        Normaliser.from_state({"version": 1})


histories = st.lists(
    st.lists(
        st.one_of(st.just(0.0), st.floats(0.0, 1.0), st.floats(0.0, 100.0)),
        min_size=0,
        max_size=30,
    ),
    min_size=1,
    max_size=15,
)


def build(history, span=300):
    norm = Normaliser(span)
    for i, bucket in enumerate(history):
        norm.update(bucket, [f"s{(i + j) % 3}" for j in range(len(bucket))])
    return norm


@settings(deadline=None)
@given(
    histories,
    st.lists(st.floats(0.0, 100.0), min_size=1, max_size=40),
    st.sampled_from([300, 1800, 7200]),
)
def test_normalised_monotone_bounded_and_zero(history, queries, span):
    norm = build(history, span)
    raw = np.sort(np.array(queries + [0.0]))
    for scope in ("s0", "s1", "new"):
        out = norm.normalise(raw, scope)
        assert np.all(np.diff(out) >= 0.0)
        assert np.all((out >= 0.0) & (out <= 100.0))
        assert np.all(out[raw == 0.0] == 0.0)


@settings(deadline=None)
@given(histories, st.lists(st.floats(0.0, 100.0), min_size=1, max_size=20))
def test_state_round_trip_is_exact(history, queries):
    norm = build(history)
    state = norm.to_state()
    restored = Normaliser.from_state(json.loads(json.dumps(state)))
    assert restored.to_state() == state
    scopes = [f"s{i % 4}" for i in range(len(queries))]
    assert np.array_equal(norm.normalise(queries, scopes), restored.normalise(queries, scopes))
    # Both carry on identically.
    assert norm.update(queries, scopes) == restored.update(queries, scopes)
    assert restored.to_state() == norm.to_state()


def test_state_contents():
    norm = Normaliser(600, noise_percentile=40.0)
    norm.update([0.0, 0.0, 1.2344, 1.2346], ["b", "a", "a", "c"])
    state = norm.to_state()
    assert state["bins"] == [0, 1234, 1235]
    assert state["counts"] == [2, 1, 1]
    assert state["scopes"] == ["a", "b", "c"]
    assert state["scope_max"] == [1.2344, 0.0, 1.2346]
    assert state["scope_age"] == [0, 0, 0]
    assert state["bucket_span"] == 600.0 and state["noise_percentile"] == 40.0
    assert state["knots"][-2] == [99.9, 90.0]


def test_large_bucket_is_vectorised():
    rng = np.random.default_rng(3)
    norm = Normaliser(300)
    raw = raw_score(rng.uniform(size=100_000) ** 3)
    scopes = np.array([f"p{i}" for i in range(100_000)])
    norm.update(raw, scopes)
    out = norm.normalise(raw, scopes)
    assert out.shape == (100_000,)
    assert np.all(out[raw == 0.0] == 0.0)
    order = np.argsort(raw)
    # Every scope holds one score, so each is its own max: the max ceiling never binds and
    # the score is monotone in raw across scopes too.
    assert np.all(np.diff(out[order]) >= 0.0)


def test_update_quiet_is_the_same_as_updating_bucket_by_bucket_with_zeros():
    stepwise = Normaliser(600)
    batched = Normaliser(600)
    for n in (stepwise, batched):
        n.update(np.array([0.0, 3.0, 40.0]), ["x", "y", "x"])
        n.update(np.array([1.5]), ["z"])
    for _ in range(7):
        stepwise.update(np.zeros(4))
    # Scores of 0 in scope "" only: the stepwise path also keeps scope "" alive at max 0.
    batched.update_quiet(7, zeros=28)
    probe = np.array([0.5, 3.0, 40.0, 60.0])
    np.testing.assert_array_equal(stepwise.normalise(probe, "x"), batched.normalise(probe, "x"))
    assert stepwise.count == batched.count == 32
    for _ in range(50):
        stepwise.update(np.zeros(0))
    batched.update_quiet(50)
    assert stepwise.max_score("x") is None and batched.max_score("x") is None
    assert stepwise.big_change is False and batched.big_change is False


def _walk_plan(seed: int, steps: int) -> list[tuple]:
    """Buckets with scores (some 0, some scope "", some 100) and runs of quiet buckets."""
    rng = np.random.default_rng(seed)
    plan: list[tuple] = []
    for _ in range(steps):
        if rng.random() < 0.3:
            plan.append(("quiet", int(rng.integers(1, 4)), int(rng.integers(0, 30))))
            continue
        m = int(rng.integers(1, 12))
        raw = np.where(rng.random(m) < 0.4, 0.0, rng.exponential(3.0, m) + 0.001)
        if rng.random() < 0.1:
            raw[0] = 100.0
        plan.append(("bucket", np.clip(raw, 0.0, 100.0),
                     [str(x) for x in rng.choice(["", "a", "b", "c", "dd"], m)]))
    return plan


def _bucket_by_bucket(norm: Normaliser, plan: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    scores, bigs = [], []
    for kind, first, second in plan:
        if kind == "quiet":
            norm.update_quiet(first, second)
            bigs.append(False)
        else:
            bigs.append(norm.update(first, second))
            scores.append(norm.normalise(first, second))
    return np.concatenate(scores), np.array(bigs)


def _walked(norm: Normaliser, plan: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    raw, scopes, counts, zeros, buckets = [], [], [], [], []
    for kind, first, second in plan:
        if kind == "quiet":
            raw_n, scopes_n, zeros_n, buckets_n = [], [], second, first
        else:
            raw_n, scopes_n, zeros_n, buckets_n = list(first), second, 0, 1
        raw += raw_n
        scopes += scopes_n
        counts.append(len(raw_n))
        zeros.append(zeros_n)
        buckets.append(buckets_n)
    return norm.walk(np.array(raw), scopes, counts, zeros, buckets)


@pytest.mark.parametrize("seed", range(40))
def test_walk_is_bit_identical_to_bucket_by_bucket_updates(seed):
    # Scopes are forgotten quickly, so some are dropped and come back within the walk; after
    # ~150 buckets the histogram holds enough positive scores for the tail fit.
    forget = 1 + seed % 7
    plan = _walk_plan(seed, 40 + 5 * seed)
    stepwise, walked = Normaliser(900, forget_after=forget), Normaliser(900, forget_after=forget)
    warm = len(plan) // 3
    _bucket_by_bucket(stepwise, plan[:warm])
    _bucket_by_bucket(walked, plan[:warm])
    expected, expected_big = _bucket_by_bucket(stepwise, plan[warm:])
    scores, big = _walked(walked, plan[warm:])
    np.testing.assert_array_equal(scores, expected)
    np.testing.assert_array_equal(big, expected_big)
    assert json.dumps(walked.to_state()) == json.dumps(stepwise.to_state())


def test_walk_scores_each_bucket_against_the_state_right_after_it():
    walked, stepwise = Normaliser(1800), Normaliser(1800)
    scores, big = walked.walk(np.array([2.0, 0.0, 2.0, 4.0]), ["a", "", "a", "b"],
                              [2, 0, 2], [0, 3, 0], [1, 5, 1])
    assert stepwise.update(np.array([2.0, 0.0]), ["a", ""]) is True
    first = stepwise.normalise(np.array([2.0, 0.0]), ["a", ""])
    stepwise.update_quiet(5, 3)
    stepwise.update(np.array([2.0, 4.0]), ["a", "b"])
    second = stepwise.normalise(np.array([2.0, 4.0]), ["a", "b"])
    np.testing.assert_array_equal(scores, np.concatenate([first, second]))
    # A causal walk: the first bucket's 2.0 is not scored against the later 4.0.
    assert scores[0] > 0.0 and scores[1] == 0.0 and scores[2] < scores[3]
    assert big.tolist() == [True, False, True]
    assert walked.count == stepwise.count == 7
    with pytest.raises(ValueError, match="at least one bucket"):
        walked.walk(np.zeros(0), [], [0], [0], [0])


# -- the compiled normalised score against numpy ------------------------------------------------


def _numpy_normalised(norm: Normaliser, raw: np.ndarray,
                      scopes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The normalisation rules of :class:`Normaliser`'s docstring, written with numpy
    from its state: the reference the C kernel (``_normaliser.normalised_score``) must
    reproduce. Also which ceiling bound each score (0 noise, 1 percentile, 2 max, 3 cap)."""
    keys, counts = norm._keys, norm._counts
    n = int(counts.sum())
    d = np.floor(raw * scoring.DISCRETISATION_FACTOR + 0.5).astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(counts)])
    q = norm.noise_percentile / 100.0
    noise_key = keys[min(int(np.searchsorted(cum[1:], q * n, side="left")), keys.size - 1)]
    zeros = int(counts[0]) if keys[0] == 0 else 0
    below = cum[np.searchsorted(keys, d, side="left")]
    held = dict(zip(norm._scopes.tolist(), norm._scope_max.tolist(), strict=True))
    scope_max = np.array([held.get(s, 0.0) for s in scopes])
    kx, ky = np.array(norm.knots).T
    # 1. noise ceiling
    relax = 100.0 * np.maximum(2.0 * np.minimum((zeros / n) / q, 1.0) - 1.0, 0.0)
    strength = 10.0 * norm.noise_multiplier * (d - noise_key) / scoring.DISCRETISATION_FACTOR
    noise = float(np.interp(norm.noise_percentile, kx, ky)) * np.maximum(1.0 + strength, 0.0)
    noise = noise + relax
    # 2. percentile ceiling, with the exponential tail over the top k scores
    frac = below / n
    k, u, excess = norm._tail(n, zeros)
    if k >= scoring.TAIL_MIN_SCORES and excess > 0:
        tail = (k / n) * np.exp(-np.maximum(d - u, 0) / (excess / k))
        frac = np.where(d > u, np.maximum(frac, 1.0 - tail), frac)
    z = NormalDist().inv_cdf(0.5 + scoring.PERCENTILE_CONFIDENCE / 2.0)
    z2n = z**2 / n
    centre = (frac + 0.5 * z2n) / (1.0 + z2n)
    half = (z / (1.0 + z2n)) * np.sqrt(frac * (1.0 - frac) / n + 0.25 * z2n / n)
    lo, hi = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
    power = 1.0 / norm.bucket_factor
    pct = 0.5 * (np.interp(100.0 * lo**power, kx, ky) + np.interp(100.0 * hi**power, kx, ky))
    # 3. max-score ceiling; 4. probability cap
    ratio = np.minimum(raw / np.where(scope_max > 0.0, scope_max, 1.0), 1.0)
    max_ceiling = np.where(scope_max > 0.0, 100.0 * np.minimum(1.5 * ratio, 0.5 + 0.5 * ratio),
                           100.0)
    cap = scoring.probability_cap(scoring.inverse_raw_score(raw))
    ceilings = np.array([noise, pct, max_ceiling, cap])
    score = np.clip(ceilings.min(axis=0), 0.0, 100.0)
    return np.where(raw > 0.0, np.round(score, 4), 0.0) + 0.0, ceilings.argmin(axis=0)


def _probed_normaliser(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A normaliser fed a random history, then probed: its scores, the numpy reference's
    scores and which ceiling bound each (see :func:`_numpy_normalised`)."""
    rng = np.random.default_rng(seed)
    span = [1800, 60, 3600, 300, 86400, 900][seed % 6]
    norm = Normaliser(span, noise_multiplier=[1.0, 0.0, 2.5][seed % 3])
    scopes = [f"s{i}" for i in range(5)]
    # Short histories, where the percentile and the cap bind, and long ones, where the
    # noise and the scopes' maxima do; every fourth of tiny scores only, where the cap binds.
    for _ in range(2 + 20 * (seed // 2) if seed % 2 else 3000):
        size = int(rng.integers(0, 8))
        # mostly small raw scores, some zeros, a few large ones
        raw = np.where(rng.random(size) < 0.3, 0.0, rng.exponential(2.0, size))
        raw[rng.random(size) < 0.05] = rng.uniform(20, 100)
        if seed % 4 == 3:
            raw *= 0.001
        chosen = [scopes[i] for i in rng.integers(0, 5, size)]
        norm.update(raw, chosen)
    probe = np.concatenate([[0.0, 1e-9, 0.5, 1.0, 100.0], rng.exponential(5.0, 200),
                            rng.uniform(0, 100, 50), rng.uniform(0, 0.02, 20)])
    probe_scopes = [scopes[i] if i < 5 else "unseen" for i in rng.integers(0, 6, probe.size)]
    compiled = norm.normalise(probe, probe_scopes)
    expected, bound = _numpy_normalised(norm, np.clip(probe, 0.0, 100.0), probe_scopes)
    return compiled, expected, bound


@pytest.mark.parametrize("seed", range(12))
def test_the_compiled_normalised_score_is_the_numpy_rules(seed):
    compiled, expected, _ = _probed_normaliser(seed)
    # numpy's SIMD exp, log1p and pow may differ from libm's in the last bit, which can
    # move a score across a rounding boundary of its 4 decimals: at most 1e-4, and rarely.
    np.testing.assert_allclose(compiled, expected, rtol=0, atol=1.0001e-4)
    assert np.mean(compiled == expected) >= 0.98
    assert compiled[0] == 0.0 and compiled.max() > 0.0


def test_the_probed_normalisers_exercise_every_ceiling():
    # The parity above checks each rule only where it is the binding one.
    bound = {}
    for seed in range(12):
        compiled, _, binding = _probed_normaliser(seed)
        for ceiling in set(binding[compiled > 0].tolist()):
            bound.setdefault(ceiling, []).append(seed)
    assert sorted(bound) == [0, 1, 2, 3]
    # the percentile everywhere, the max ceiling in every long history
    assert bound[1] == list(range(12))
    assert set(range(0, 12, 2)) <= set(bound[2])


def test_scope_names_are_kept_as_numpy_str_arrays_hold_them():
    from adjobs.scoring import _scope_list

    plain = ["a", "b", "a"]
    assert _scope_list(plain, 3) == plain
    # numpy's str arrays drop trailing NULs: so does the scope table, and only those
    assert _scope_list(["a\x00", "b\x00c", "d"], 3) == ["a", "b\x00c", "d"]
    assert _scope_list([np.str_("x"), 7], 2) == ["x", "7"]
    assert _scope_list(np.array(["p", "q"]), 2) == ["p", "q"]
    assert _scope_list(None, 2) == ["", ""] and _scope_list("s", 2) == ["s", "s"]
    with pytest.raises(ValueError, match="one scope per raw score"):
        _scope_list(["a"], 2)



def test_the_walk_lays_out_its_histogram_from_the_keys_held_and_the_new_scores():
    from adjobs import _normaliser, scoring

    rules = scoring.Normaliser(900)._rules
    raw = np.array([0.0004, 2.5, 2.5004, 0.0, 99.9996])  # keys 0, 2500, 2500, 0, 99_999.6+
    held_keys, held_counts = np.array([7, 2500, 30_000]), np.array([2, 1, 4])

    def walk(keys=held_keys, counts=held_counts, entries=(5,), zeros=(3,), ages=(1,)):
        return _normaliser.walk_raw(rules, keys, counts, raw, np.zeros(5, dtype=np.int64),
                                    np.array(entries), np.array(zeros), np.array(ages),
                                    np.ones(1, dtype=np.uint8), np.zeros(1), np.zeros(1, np.int64),
                                    50, scoring.TAIL_FRACTION)

    scores, big, keys, counts = walk()
    discretised = np.floor(raw * scoring.DISCRETISATION_FACTOR + 0.5).astype(np.int64)
    assert keys.tolist() == sorted({0, *held_keys.tolist(), *discretised.tolist()})
    # every score is counted under its key, the 3 zeros under 0, the held counts kept
    expected = dict(zip(held_keys.tolist(), held_counts.tolist(), strict=True))
    for key in [*discretised.tolist(), 0, 0, 0]:
        expected[key] = expected.get(key, 0) + 1
    assert dict(zip(keys.tolist(), counts.tolist(), strict=True)) == expected
    assert len(scores) == 5 and len(big) == 1
    with pytest.raises(ValueError, match="ascend"):
        walk(keys=held_keys[::-1].copy())
    with pytest.raises(ValueError, match="steps"):
        walk(entries=(4,))
    with pytest.raises(ValueError, match="one count per key"):
        walk(counts=held_counts[:2].copy())
